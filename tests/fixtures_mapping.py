"""Mapping texts and helpers shared by the mapping tests (configuration and records)."""

from __future__ import annotations

import io
import textwrap

import pytest

from batch.config.mapping import load_mapping_text
from batch.config.yamlload import ConfigError
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping

MINIMAL = """\
format: csv
fields:
  usageplacecode: {column: code}
  time: {column: t}
  status: {column: s}
"""


def mapping_problems(text: str, file: str = "m.yaml") -> list[str]:
    """The problems a mapping text is refused with (it must be refused)."""
    with pytest.raises(ConfigError) as info:
        load_mapping_text(textwrap.dedent(text), file)
    return [str(p) for p in info.value.problems]


def compile_mapping(text: str) -> CompiledMapping:
    return CompiledMapping(load_mapping_text(textwrap.dedent(text)))


def map_bytes(mapping: str | CompiledMapping, data: bytes | str, chunk_size: int = 5000, general: bool = False):
    """[(line, event or None, [error dicts])] for a whole file."""
    compiled = mapping if isinstance(mapping, CompiledMapping) else compile_mapping(mapping)
    if isinstance(data, str):
        data = data.encode()
    if general:
        original = CompiledMapping.start

        def start(self):
            run = original(self)
            run._fast_mapper = lambda bound, index: None  # type: ignore[method-assign]  # every record the general way
            return run

        compiled.start = start.__get__(compiled)  # type: ignore[method-assign]  # runs without the fast path
    out = []
    for records in mapped_chunks(compiled, io.BytesIO(data), chunk_size=chunk_size):
        for record in records:
            out.append((record.line, record.event, [e.as_dict() for e in record.errors]))
    return out


# invoices one row per invoice (mode: rows)
ROWS = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: code}
  time: {column: time}
  status: {column: status}
  description: {column: note, default_by_status: {disconnected: Katkaistu}}
invoices:
  mode: rows
  invoicenumber: {column: inv}
  jobid: {column: job}
"""
ROWS_HEADER = "id,code,time,status,note,inv,job\n"
