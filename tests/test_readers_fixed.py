"""Fixed-width exports (mainframe record layouts), one record a line (batch/transform/fixed.py)."""

from __future__ import annotations

import io

import pytest

from batch.config.mapping import load_mapping_text
from batch.config.yamlload import ConfigError
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError

MAPPING = """
format: fixed
fixed:
  encoding: {encoding}
  skip_lines: 1
  skip_footer: 1
  columns:
    - {{name: Id, start: 1, width: 4}}
    - {{name: Place, start: 5, width: 18}}
    - {{name: When, start: 23, width: 14}}
    - {{name: S, start: 37, width: 1}}
    - {{name: Note, start: 38, width: 20}}
fields:
  id: {{column: Id, required: true}}
  usageplacecode: {{column: Place}}
  time: {{column: When, formats: ["%Y%m%d%H%M%S"]}}
  status: {{column: S, map: {{D: disconnected, R: connected, N: not_disconnected}}}}
  description: {{column: Note}}
"""


def records(data: bytes, encoding: str = "cp1252") -> list:
    compiled = CompiledMapping(load_mapping_text(MAPPING.format(encoding=encoding)))
    return [record for chunk in mapped_chunks(compiled, io.BytesIO(data), chunk_size=2) for record in chunk]


def line(ident: str, place: str, when: str, status: str, note: str = "") -> str:
    return ident.ljust(4) + place.ljust(18) + when.ljust(14) + status + note


def test_columns_lines_banner_footer_and_blank_lines():
    text = "\r\n".join([
        "HEADER RECORD",
        line("A1", "643007572062400001", "20240306071500", "D", "Päätetty"),
        "",
        line("A2", "643007572062400002", "20240306093015", "R"),
        line("A3", "643007572062400003", "20240306110000", "N", "Gate locked"),
        "TRAILER 3",
    ]) + "\r\n"
    found = records(text.encode("cp1252"))
    assert [(r.line, r.event["id"], r.event["status"]) for r in found] == [
        (2, "A1", "disconnected"), (4, "A2", "connected"), (5, "A3", "not_disconnected"),
    ]
    assert found[0].event["description"] == "Päätetty"
    assert found[0].event["time"] == "2024-03-06 07:15:00"
    assert "description" not in found[1].event  # an empty column is left out


def test_a_short_line_leaves_its_missing_columns_empty():
    text = "H\n" + line("A1", "643007572062400001", "2024030607", "") + "\nT\n"
    [record] = records(text.encode("cp1252"))
    assert not record.ok
    assert [(e.line, e.field) for e in record.errors] == [(2, "time"), (2, "status")]


def test_utf8_with_a_byte_order_mark():
    text = "H\n" + line("A1", "643007572062400001", "20240306071500", "D", "Käyttöpaikka") + "\nT\n"
    [record] = records(b"\xef\xbb\xbf" + text.encode("utf-8"), encoding="utf-8")
    assert record.event["description"] == "Käyttöpaikka"


def test_a_byte_the_encoding_cannot_decode_names_its_line():
    good = line("A1", "643007572062400001", "20240306071500", "D").encode("cp1252")
    data = b"H\n" + good + b"\n" + good.replace(b"A1", b"A2") + b"\x81\n" + b"T\n"
    with pytest.raises(FileError) as error:
        records(data)
    assert error.value.line == 3 and "cp1252" in error.value.message


@pytest.mark.parametrize(
    "columns, field, message",
    [
        ("[{name: Id, start: 1, width: 4}, {name: Place, start: 3, width: 18}]", "column: Id",
         "fixed: columns 'Id' and 'Place' overlap (character 3)"),
        ("[{name: Id, start: 1, width: 4}, {name: Place, start: 5, width: 18}]", "column: Nope",
         "fields.usageplacecode: column 'Nope' is not in fixed.columns (Id, Place)"),
        ("[{name: Id, start: 1, width: 4}, {name: Place, start: 5, width: 18}]", "xpath: Place",
         "fields.usageplacecode: 'xpath' is for XML feeds; this feed is fixed-width: use 'column'"),
    ],
)
def test_layout_mistakes_are_refused_at_load(columns, field, message):
    text = f"""format: fixed
fixed:
  columns: {columns}
fields:
  usageplacecode: {{{field}}}
  time: {{const: "2024-01-01 00:00:00"}}
  status: {{const: connected}}
"""
    with pytest.raises(ConfigError) as error:
        load_mapping_text(text, "m.yaml")
    assert any(message in str(problem) for problem in error.value.problems), error.value.problems
