"""One export file -> mapped records, chunk by chunk: the reader the mapping asks for, then the mapper.

Shared by `preview` and the pipeline so that what an administrator previews is exactly what the
service will send. A file's XML is parsed in a child process (batch.transform.xmlprocess): the
parser's name dictionary grows with every distinct name a file holds and never shrinks, so a
hostile file must not be parsed in the service's own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from batch.transform.gctune import fewer_collections
from batch.transform.mapping import CompiledMapping, MappedRecord
from batch.transform.readers import DEFAULT_CHUNK_SIZE, read_csv, read_fixed, read_xml
from batch.transform.xmlprocess import read_xml_file


def mapped_file(
    compiled: CompiledMapping, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[list[MappedRecord]]:
    """The mapped records of the file at `path` (what the pipeline and `preview` read)."""
    with open(path, "rb") as stream:
        yield from mapped_chunks(compiled, stream, chunk_size, xml_in_child=True)


def mapped_chunks(
    compiled: CompiledMapping, stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, xml_in_child: bool = False
) -> Iterator[list[MappedRecord]]:
    """Yields lists of mapped records in file order. Raises readers.FileError for a file-level fault.

    `xml_in_child`: parse XML in a child process (`stream` must then be a real file)."""
    mapping = compiled.mapping
    if mapping.format == "xml":
        assert mapping.xml is not None
        if xml_in_child:
            name = repr(getattr(stream, "name", "the file"))
            chunks = read_xml_file(stream, mapping.xml, compiled.xml_plan(), chunk_size, name)
        else:
            chunks = read_xml(stream, mapping.xml, compiled.xml_plan(), chunk_size)
    elif mapping.format == "fixed":
        assert mapping.fixed is not None
        chunks = read_fixed(stream, mapping.fixed, compiled.required_columns(), chunk_size)
    else:
        assert mapping.csv is not None
        chunks = read_csv(stream, mapping.csv, compiled.required_columns(), chunk_size)
    run = compiled.start()
    with fewer_collections():
        for chunk in chunks:
            records = run.map_chunk(chunk)
            if records:
                yield records
        tail = run.finish()
        if tail:
            yield tail
