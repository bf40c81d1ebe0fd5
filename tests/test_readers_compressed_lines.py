"""A decoding error inside a compressed file names its line (issue 11, point 2): the line of the
file inside, found by inflating the file again from its start on the error path."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pytest

from batch.cli import commands as cli
from batch.config.mapping import load_mapping_text
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError

CSV_MAPPING = """
format: csv
csv: {delimiter: ";"}
fields:
  id: {column: Id}
  usageplacecode: {column: Place}
  time: {column: When, formats: ["%d.%m.%Y %H:%M"]}
  status: {column: S, map: {K: disconnected}}
"""
FIXED_MAPPING = """
format: fixed
fixed:
  encoding: utf-8
  columns:
    - {name: Id, start: 1, width: 8}
    - {name: Place, start: 9, width: 18}
    - {name: When, start: 27, width: 16}
    - {name: S, start: 43, width: 1}
fields:
  id: {column: Id}
  usageplacecode: {column: Place}
  time: {column: When, formats: ["%d.%m.%Y %H:%M"]}
  status: {column: S, map: {K: disconnected}}
"""
# 9,000 lines (~400 KB): the bad byte lies far past the first block any reader takes
LINES = 9_000
BAD_LINE = 8_765


def export(fixed: bool = False) -> bytes:
    rows = [] if fixed else [b"Id;Place;When;S\n"]
    for number in range(2, LINES + 1):
        ident = (f"Ä-{number:06d}" if number == BAD_LINE else f"Z-{number:06d}").encode("cp1252")
        if fixed:
            rows.append(ident + b"643007572062400001" + b"5.2.2024 06:30  K\n")
        else:
            rows.append(ident + b";643007572062400001;5.2.2024 06:30;K\n")
    return b"".join(rows)  # fixed width has no header line: the bad line is one earlier


def zipped(data: bytes, method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("export.csv", data)
    return buffer.getvalue()


def refused(mapping: str, data: bytes) -> str:
    compiled = CompiledMapping(load_mapping_text(mapping))
    with pytest.raises(FileError) as info:
        for _ in mapped_chunks(compiled, io.BytesIO(data)):
            pass
    return str(info.value)


UTF8_HINT = "(is the file cp1252 or iso-8859-1 rather than utf-8?)"


@pytest.mark.parametrize("wrap", [
    gzip.compress,
    lambda data: zipped(data, zipfile.ZIP_DEFLATED),
    lambda data: zipped(data, zipfile.ZIP_STORED),
], ids=["gzip", "zip", "zip-stored"])
def test_the_line_of_an_undecodable_byte_inside_a_compressed_csv(wrap):
    data = export()
    assert refused(CSV_MAPPING, data) == (  # as for the file uncompressed
        f"line {BAD_LINE}: cannot decode the file as utf-8-sig: bytes c4 2d 30 30 are not valid {UTF8_HINT}")
    assert refused(CSV_MAPPING, wrap(data)) == (
        f"line {BAD_LINE}: cannot decode the file as utf-8-sig: bytes c4 2d 30 30 are not valid {UTF8_HINT}")


def test_the_line_of_an_undecodable_byte_inside_a_compressed_fixed_width_file():
    assert refused(FIXED_MAPPING, gzip.compress(export(fixed=True))) == (
        f"line {BAD_LINE - 1}: cannot decode the file as utf-8-sig: bytes c4 2d 30 30 are not valid {UTF8_HINT}")


def test_preview_names_the_line_inside_the_gzip(tmp_path: Path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(CSV_MAPPING, encoding="utf-8")
    (tmp_path / "export.csv.gz").write_bytes(gzip.compress(export()))
    assert cli.run(["preview", str(mapping), str(tmp_path / "export.csv.gz")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'export.csv.gz'}: line {BAD_LINE}: cannot decode the file as utf-8-sig: bytes "
        f"c4 2d 30 30 are not valid {UTF8_HINT}\n")
