"""One export file -> mapped records, chunk by chunk: the reader the mapping asks for, then the mapper.

Shared by `preview` and the pipeline so that what an administrator previews is exactly what the
service will send. A gzip or zip file is unwrapped first (compressed.py), whatever its name. A
file's XML is parsed in a child process (batch.transform.xmlprocess): the parser's name
dictionary grows with every distinct name a file holds and never shrinks, so a hostile file
must not be parsed in the service's own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from batch.transform.compressed import opened_export
from batch.transform.fixed import read_fixed
from batch.transform.gctune import fewer_collections
from batch.transform.mapping import CompiledMapping, MappedChunk, MappingRun
from batch.transform.readers import DEFAULT_CHUNK_SIZE, read_csv, read_xml
from batch.transform.records import Chunk
from batch.transform.xmlprocess import read_xml_file


def mapped_file(
    compiled: CompiledMapping, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, run: MappingRun | None = None
) -> Iterator[MappedChunk]:
    """The mapped records of the file at `path` (what the pipeline and `preview` read)."""
    with open(path, "rb") as stream:
        yield from mapped_chunks(compiled, stream, chunk_size, run, xml_in_child=True)


def mapped_chunks(
    compiled: CompiledMapping, stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, run: MappingRun | None = None,
    xml_in_child: bool = False,
) -> Iterator[MappedChunk]:
    """Yields the mapped records chunk by chunk, in file order: a list of MappedRecords, or a
    mapping.ValidChunk (iterating it gives its MappedRecords) when all of a chunk's records are
    valid. Raises readers.FileError for a file-level fault.

    `run`: the caller's MappingRun (from compiled.start()), to read its counts afterwards
    (`run.filtered`: records the mapping's `keep` rule left out). `xml_in_child`: parse XML in a
    child process (`stream` must then be a real file; the child unwraps a compressed one)."""
    mapping = compiled.mapping
    if mapping.format == "xlsx":
        from batch.config.mapping import XlsxOptions
        from batch.transform.workbook import read_xlsx  # only workbook feeds pay for importing openpyxl

        yield from _mapped(compiled, read_xlsx(
            stream, mapping.xlsx or XlsxOptions(), compiled.required_columns(), mapping.compression, chunk_size), run)
        return
    if mapping.format == "xml" and xml_in_child:
        assert mapping.xml is not None
        name = repr(getattr(stream, "name", "the file"))
        compression = mapping.compression.model_dump() if mapping.compression is not None else None
        yield from _mapped(compiled, read_xml_file(
            stream, mapping.xml, compiled.xml_plan(), chunk_size, name, compression), run)
        return
    with opened_export(stream, mapping.compression) as export:
        yield from _mapped(compiled, _chunks(compiled, export, chunk_size), run)


def _chunks(compiled: CompiledMapping, stream: BinaryIO, chunk_size: int) -> Iterator[Chunk]:
    mapping = compiled.mapping
    if mapping.format == "xml":
        assert mapping.xml is not None
        return read_xml(stream, mapping.xml, compiled.xml_plan(), chunk_size)
    if mapping.format == "fixed":
        assert mapping.fixed is not None
        return read_fixed(stream, mapping.fixed, compiled.required_columns(), chunk_size)
    assert mapping.csv is not None
    return read_csv(stream, mapping.csv, compiled.required_columns(), chunk_size)


def _mapped(compiled: CompiledMapping, chunks: Iterator[Chunk], run: MappingRun | None) -> Iterator[MappedChunk]:
    run = run or compiled.start()
    with fewer_collections():
        for chunk in chunks:
            records = run.mapped(chunk)
            if records:
                yield records
        tail = run.finish()
        if tail:
            yield tail
