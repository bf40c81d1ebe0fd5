"""One export file -> mapped records, chunk by chunk: the reader the mapping asks for, then the mapper.

Shared by `preview` and the pipeline so that what an administrator previews is exactly what the
service will send.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from batch.mapping import CompiledMapping, MappedRecord
from batch.readers import DEFAULT_CHUNK_SIZE, read_csv, read_xml


def mapped_chunks(
    compiled: CompiledMapping, stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[list[MappedRecord]]:
    """Yields lists of mapped records in file order. Raises readers.FileError for a file-level fault."""
    mapping = compiled.mapping
    if mapping.format == "xml":
        assert mapping.xml is not None
        chunks = read_xml(stream, mapping.xml, compiled.xml_plan(), chunk_size)
    else:
        assert mapping.csv is not None
        chunks = read_csv(stream, mapping.csv, compiled.required_columns(), chunk_size)
    run = compiled.start()
    with _fewer_collections():
        for chunk in chunks:
            records = run.map_chunk(chunk)
            if records:
                yield records
        tail = run.finish()
        if tail:
            yield tail


@contextmanager
def _fewer_collections(threshold: int = 50_000) -> Iterator[None]:
    """Mapping allocates millions of small dicts that live on; CPython's cyclic collector,
    at its default threshold of 700 allocations, rescans them over and over and doubles the
    time per record (12 -> 6 us measured). Nothing here makes reference cycles, so collect
    less often while a file is mapped, and restore the setting afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(max(threshold, previous[0]), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
