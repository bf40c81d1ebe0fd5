"""Compressed exports (issue 11, point 2): gzip and zip recognised by their first bytes whatever the
file is called, inflated as they are read, with limits against zip bombs; workbooks and old .xls
files handed to a text feed are named for what they are."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import pytest

from batch.cli import commands as cli
from batch.config.mapping import CompressionOptions, load_mapping_text
from batch.transform.compressed import (
    INFLATED_FLOOR,
    MAX_ZIP_DIRECTORY_BYTES,
    MAX_ZIP_ENTRIES,
    check_zip_directory,
    opened_export,
)
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError

MAPPING = """
format: csv
csv: {{delimiter: ";"}}
{compression}
fields:
  id: {{column: Id}}
  usageplacecode: {{column: Place}}
  time: {{column: When, formats: ["%d.%m.%Y %H:%M"]}}
  status: {{column: S, map: {{K: disconnected, KY: connected}}}}
"""
CSV = (
    b"Id;Place;When;S\r\n"
    b"Z-1;643007572062400001;5.2.2024 06:30;K\r\n"
    b"Z-2;643007572062400002;5.2.2024 07:45;KY\r\n"
)
EVENTS = [
    (2, {"id": "Z-1", "usageplacecode": "643007572062400001", "time": "2024-02-05 06:30:00", "status": "disconnected"}),
    (3, {"id": "Z-2", "usageplacecode": "643007572062400002", "time": "2024-02-05 07:45:00", "status": "connected"}),
]


def events(data: bytes, compression: str = "") -> list:
    compiled = CompiledMapping(load_mapping_text(MAPPING.format(compression=compression)))
    return [(r.line, r.event) for chunk in mapped_chunks(compiled, io.BytesIO(data), chunk_size=1) for r in chunk]


def refused(data: bytes, compression: str = "") -> str:
    with pytest.raises(FileError) as info:
        events(data, compression)
    return str(info.value)


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_gzip_file_is_read_as_the_export_inside():
    assert events(gzip.compress(CSV)) == EVENTS


def test_gzip_of_several_members_and_plain_text_alike():
    assert events(gzip.compress(CSV[:40]) + gzip.compress(CSV[40:])) == EVENTS
    assert events(CSV) == EVENTS


def test_a_zip_with_one_file():
    assert events(zipped({"export/2024-02-05.csv": CSV})) == EVENTS


def test_a_stored_zip_member_too():
    assert events(zipped({"a.csv": CSV}, zipfile.ZIP_STORED)) == EVENTS


def test_a_zip_member_chosen_by_pattern():
    data = zipped({"LUEMINUT.txt": b"read me", "export_20240205.csv": CSV, "folder/": b""})
    assert events(data, "compression: {member: 'export_*.csv'}") == EVENTS
    assert events(data, "compression: {member: export_20240205.csv}") == EVENTS


def test_a_zip_of_several_files_needs_member():
    data = zipped({"LUEMINUT.txt": b"read me", "export_1.csv": CSV, "export_2.csv": CSV})
    assert refused(data) == (
        "the zip holds 3 files ('LUEMINUT.txt', 'export_1.csv', 'export_2.csv'): say which one to read with "
        "compression.member (a name or a pattern such as 'export_*.csv')"
    )
    assert refused(data, "compression: {member: 'export_*.csv'}") == (
        "the zip has 2 members that match compression.member 'export_*.csv' ('export_1.csv', 'export_2.csv'): "
        "make the pattern match one"
    )
    assert refused(data, "compression: {member: '*.xml'}") == (
        "the zip has no member that matches compression.member '*.xml': it holds 'LUEMINUT.txt', 'export_1.csv', "
        "'export_2.csv'"
    )
    assert refused(zipped({})) == "the file is an empty zip: it holds no file"


def test_an_inflated_size_over_the_limit_is_a_file_level_error():
    big = CSV + b"Z-3;643007572062400003;5.2.2024 08:00;K\r\n" * 60_000  # 2.5 MB
    assert refused(gzip.compress(big), "compression: {max_inflated_mb: 1}") == (
        "the gzip data inflates to more than compression.max_inflated_mb (1 MB): refused as a possible zip bomb; "
        "if the export is genuine, raise compression.max_inflated_mb / compression.max_ratio in the mapping"
    )
    # a zip says how large its member is: refused before anything is inflated
    assert refused(zipped({"big.csv": big}), "compression: {max_inflated_mb: 1}") == (
        f"zip member 'big.csv' would inflate to {len(big):,} bytes, more than compression.max_inflated_mb (1 MB): "
        "refused as a possible zip bomb; if the export is genuine, raise compression.max_inflated_mb / "
        "compression.max_ratio in the mapping"
    )


def test_a_zip_bomb_is_refused_by_its_ratio():
    bomb = CSV + b" " * (INFLATED_FLOOR + (1 << 20))  # 17 MB of blanks: deflate makes ~17 kB of it
    packed = gzip.compress(bomb, compresslevel=9)
    message = refused(packed)
    assert message == (
        f"the gzip data inflates to more than compression.max_ratio (200) times its compressed size of "
        f"{len(packed):,} bytes: refused as a possible zip bomb; if the export is genuine, raise "
        "compression.max_inflated_mb / compression.max_ratio in the mapping"
    )
    member = zipped({"bomb.csv": bomb})
    info = zipfile.ZipFile(io.BytesIO(member)).infolist()[0]
    assert refused(member) == (
        f"zip member 'bomb.csv' would inflate {info.file_size // info.compress_size:,} times "
        f"({info.compress_size:,} bytes to {info.file_size:,}), more than compression.max_ratio (200): refused as "
        "a possible zip bomb; if the export is genuine, raise compression.max_inflated_mb / compression.max_ratio "
        "in the mapping"
    )
    # the same file with a higher limit is read through
    with opened_export(io.BytesIO(packed), CompressionOptions(max_ratio=5000)) as export:
        assert len(export.read()) == len(bomb)


def test_a_zip_whose_directory_lists_too_many_entries_is_refused_before_it_is_read():
    many = zipped({f"part{n}.csv": b"" for n in range(MAX_ZIP_ENTRIES + 1)}, zipfile.ZIP_STORED)
    message = refused(many)
    assert message.startswith(f"the zip file's directory lists {MAX_ZIP_ENTRIES + 1:,} entries in ")
    assert message.endswith(f"bytes: more than the {MAX_ZIP_ENTRIES:,} entries or {MAX_ZIP_DIRECTORY_BYTES:,} bytes "
                            "read (an export zip holds one file, a workbook a few dozen parts)")
    # more than 65,535 entries: the count is in the zip64 end record
    zip64 = zipped({f"p{n}": b"" for n in range(70_000)}, zipfile.ZIP_STORED)
    assert refused(zip64).startswith("the zip file's directory lists 70,000 entries in ")
    # an end record that understates the count: the directory's size still bounds what is read
    names = {f"{'n' * 200}{n}.csv": b"" for n in range(MAX_ZIP_DIRECTORY_BYTES // 250)}
    lying = bytearray(zipped(names, zipfile.ZIP_STORED))
    end = lying.rindex(b"PK\x05\x06")
    lying[end + 8:end + 12] = struct.pack("<HH", 1, 1)
    assert "bytes: more than the 10,000 entries or" in refused(bytes(lying))
    check_zip_directory(io.BytesIO(zipped({"a.csv": CSV})))  # one member: nothing to say


def test_a_workbook_whose_directory_lists_too_many_parts_is_refused():
    from batch.config.mapping import XlsxOptions
    from batch.transform.workbook import read_xlsx

    many = zipped({"xl/workbook.xml": b"<workbook/>", **{f"xl/p{n}.xml": b"" for n in range(MAX_ZIP_ENTRIES)}},
                  zipfile.ZIP_STORED)
    with pytest.raises(FileError) as info:
        next(read_xlsx(io.BytesIO(many), XlsxOptions(), []))
    assert str(info.value).startswith(f"the zip file's directory lists {MAX_ZIP_ENTRIES + 1:,} entries")


def test_inflating_is_streamed_not_whole():
    lines = b"Z-3;643007572062400003;5.2.2024 08:00;K\r\n" * 1_000_000  # 41 MB inflated
    with opened_export(io.BytesIO(gzip.compress(CSV + lines, compresslevel=1)), CompressionOptions()) as export:
        assert export.readline() == b"Id;Place;When;S\r\n"
        inflated_so_far = export.raw.count  # type: ignore[attr-defined]
    assert inflated_so_far <= 1 << 16


def test_a_truncated_gzip_is_damaged():
    data = gzip.compress(CSV * 100)
    assert refused(data[: len(data) // 2]) == (
        "the gzip data is damaged: Compressed file ended before the end-of-stream marker was reached "
        "(was the upload cut short?)"
    )


def test_compressed_twice_is_refused():
    assert refused(gzip.compress(gzip.compress(CSV))) == (
        "the gzip data holds another compressed file: compress the export once"
    )


def test_a_workbook_or_an_old_xls_in_a_text_feed_is_named_for_what_it_is():
    workbook = zipped({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
    assert refused(workbook) == (
        "the file is an Excel workbook (.xlsx), not text: set format: xlsx in the mapping (see config/README.md, "
        "'Workbooks')"
    )
    assert refused(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 500) == (
        "the file is an old Excel workbook (.xls), not text: save it as .xlsx (and use format: xlsx) or as CSV"
    )


def test_options_are_checked_at_load():
    from tests.fixtures_mapping import mapping_problems

    text = MAPPING.format(compression="compression: {member: '', max_ratio: 1, max_inflated_mb: 0}")
    assert mapping_problems(text) == [
        "m.yaml:4:15: compression.member: String should have at least 1 character (got '')",
        "m.yaml:4:27: compression.max_ratio: Input should be greater than or equal to 2 (got 1)",
        "m.yaml:4:41: compression.max_inflated_mb: Input should be greater than or equal to 1 (got 0)",
    ]


def test_preview_of_a_gz_file_whatever_its_name(tmp_path: Path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING.format(compression=""), encoding="utf-8")
    for name in ("export.csv.gz", "export.csv"):
        (tmp_path / name).write_bytes(gzip.compress(CSV))
        assert cli.run(["preview", "--json", str(mapping), str(tmp_path / name)]) == 0
        out, err = capsys.readouterr()
        assert err == f"{tmp_path / name}: 2 records, 2 valid, 0 invalid\n"


def test_an_encoding_error_inside_a_gzip_is_about_the_text_inside():
    # before: any .gz was "cannot decode the file as utf-8-sig: bytes 1f 8b 08 00 ... (is the file cp1252 ...)"
    assert refused(gzip.compress(CSV.replace(b"Z-2", "Ä-2".encode("cp1252")))) == (
        "line 3: cannot decode the file as utf-8-sig: bytes c4 2d 32 3b are not valid (is the file cp1252 or iso-8859-1 "
        "rather than utf-8?)"
    )


def test_the_callers_stream_stays_open():
    for data in (CSV, gzip.compress(CSV), zipped({"a.csv": CSV})):
        stream = io.BytesIO(data)
        with opened_export(stream, None) as export:
            export.read()
        del export
        import gc

        gc.collect()
        assert not stream.closed
