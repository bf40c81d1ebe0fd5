"""The rejected-rows file (issue 11, point 9): the original records, read back by the feed's own
mapping as they were read from the original; real files, every shipped sample's dialect."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from batch.config.inbox import InboxSettings
from batch.config.mapping import Mapping, load_mapping, load_mapping_text
from batch.inbox.local import LocalInbox
from batch.store.rejected import original_from_archive, original_names, rejected_name, write_rejected
from batch.transform.extract import mapped_file
from batch.transform.mapping import CompiledMapping

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {  # sample -> mapping (every text sample; the workbook has its own test)
    "finnish_cp1252.csv": "finnish_cp1252.yaml",
    "finnish_gzip.csv.gz": "finnish_gzip.yaml",
    "erp_export.xml": "erp_export.yaml",
    "erp_zip.zip": "erp_zip.yaml",
    "utf8_iso.csv": "utf8_iso.yaml",
    "mds7_rows.txt": "mds7_rows.yaml",
    "mainframe_fixed.txt": "mainframe_fixed.yaml",
    "mainframe_ebcdic.dat": "mainframe_ebcdic.yaml",
    "invalid_records.csv": "invalid_records.yaml",
    "invoice_pairs.csv": "invoice_pairs.yaml",
    "record_types.csv": "record_types.yaml",
}


def records(mapping: Mapping, path: Path) -> list[tuple[int, Any, list[tuple[Any, ...]]]]:
    """(line, event, [(field, source, value)]) of every mapped record of the file."""
    compiled = CompiledMapping(mapping)
    return [(record.line, record.event, [(e.field, e.source, e.value) for e in record.errors])
            for chunk in mapped_file(compiled, path) for record in chunk]


def without_lines(found: list[tuple[int, Any, list[tuple[Any, ...]]]]) -> list[tuple[Any, ...]]:
    return [(event, errors) for _, event, errors in found]


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_record_chosen_reads_back_as_the_same_records(sample: str, tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings" / SAMPLES[sample])
    original = records(mapping, ROOT / "samples" / sample)
    written = write_rejected(tmp_path, sample, ROOT / "samples" / sample, mapping, [line for line, _, _ in original])
    assert written is not None and written.name == rejected_name(sample, mapping.format)
    assert without_lines(records(mapping, written)) == without_lines(original)


@pytest.mark.parametrize(("sample", "chosen"), [
    ("finnish_cp1252.csv", [1]),      # banner and header lines kept, and the footer (skip_footer)
    ("utf8_iso.csv", [1]),            # a record with a quoted line break: both lines
    ("mds7_rows.txt", [1]),           # rows mode: every row of the event (UTF-16 with its BOM)
    ("erp_export.xml", [0, 2]),       # XML: the records inside the root, namespaces kept
    ("erp_zip.zip", [1]),             # inside a zip
    ("finnish_gzip.csv.gz", [2]),     # inside a gzip file
    ("mainframe_fixed.txt", [1]),     # fixed width: header and trailer lines kept
    ("mainframe_ebcdic.dat", [0, 2]),  # EBCDIC records without separators: the HDR and TRL records kept
])
def test_some_records_chosen_read_back_as_exactly_those(sample: str, chosen: list[int], tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings" / SAMPLES[sample])
    original = records(mapping, ROOT / "samples" / sample)
    lines = [original[index][0] for index in chosen]
    written = write_rejected(tmp_path, sample, ROOT / "samples" / sample, mapping, lines)
    assert written is not None
    assert without_lines(records(mapping, written)) == without_lines([original[index] for index in chosen])


def test_names_keep_the_inputs_extension_a_compressed_files_inner_one_and_a_workbook_is_a_csv() -> None:
    assert rejected_name("export.csv", "csv") == "export.csv.rejected.csv"
    assert rejected_name("mds7.txt", "csv") == "mds7.txt.rejected.txt"
    assert rejected_name("export.csv.gz", "csv") == "export.csv.gz.rejected.csv"
    assert rejected_name("export.zip", "xml") == "export.zip.rejected.xml"
    assert rejected_name("MF.DATA", "fixed") == "MF.DATA.rejected.DATA"
    assert rejected_name("billing.xlsx", "xlsx") == "billing.xlsx.rejected.csv"
    long = rejected_name("a" * 300 + ".csv", "csv")
    assert len(long.encode()) <= 255 and long.endswith(".rejected.csv")


def test_exact_bytes_of_a_csv_with_a_multi_line_record_and_crlf(tmp_path: Path) -> None:
    mapping = load_mapping_text(
        "format: csv\ncsv: {delimiter: ';', header_line: 2, skip_footer: 1}\n"
        "fields:\n  usageplacecode: {column: P}\n  time: {column: T}\n  status: {const: connected}\n"
        "  description: {column: D}\n")
    data = ("banner\r\nP;T;D\r\n1;2024-01-01 00:00:00;a\r\n2;bad;\"two\r\nlines\"\r\n3;2024-01-01 00:00:00;c\r\n"
            "END 3\r\n")
    source = tmp_path / "in.csv"
    source.write_bytes(data.encode("utf-8"))
    written = write_rejected(tmp_path, "in.csv", source, mapping, [4])
    assert written is not None
    assert written.read_bytes() == b"banner\r\nP;T;D\r\n2;bad;\"two\r\nlines\"\r\nEND 3\r\n"


def test_exact_xml_document_with_the_root_its_namespaces_and_the_records_ancestors(tmp_path: Path) -> None:
    mapping = load_mapping_text(
        "format: xml\nxml:\n  record_path: /e:Export/e:Events/e:Event\n  namespaces: {e: 'urn:x'}\n"
        "fields:\n  usageplacecode: {xpath: 'e:P'}\n  time: {xpath: 'e:T'}\n  status: {const: connected}\n")
    source = tmp_path / "in.xml"
    source.write_text('<?xml version="1.0"?>\n<Export xmlns="urn:x" version="2"><Head>h</Head>\n<Events day="1">\n'
                      "<Event><P>1</P><T>x</T></Event>\n<Event><P>2</P><T>y</T></Event>\n"
                      "<Event><P>3</P><T>z</T></Event>\n</Events></Export>\n")
    written = write_rejected(tmp_path, "in.xml", source, mapping, [4, 6])
    assert written is not None
    assert written.read_text() == (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        '<Export xmlns="urn:x" version="2"><Events day="1">\n'
        '<Event xmlns="urn:x"><P>1</P><T>x</T></Event>\n'  # each record declares what it uses
        '<Event xmlns="urn:x"><P>3</P><T>z</T></Event>\n'
        "</Events>\n</Export>\n")


def test_a_gzip_inputs_rejected_rows_are_written_uncompressed(tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings/finnish_gzip.yaml")
    inside = gzip.decompress((ROOT / "samples/finnish_gzip.csv.gz").read_bytes())
    written = write_rejected(tmp_path, "x.csv.gz", ROOT / "samples/finnish_gzip.csv.gz", mapping, [5])
    assert written is not None and written.name == "x.csv.gz.rejected.csv"
    lines = inside.splitlines(keepends=True)
    assert written.read_bytes() == b"".join(lines[:3] + [lines[4], lines[-1]])


def test_a_zip_member_is_read_by_its_pattern(tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings/erp_zip.yaml")
    with zipfile.ZipFile(ROOT / "samples/erp_zip.zip") as archive:
        assert len(archive.namelist()) >= 1
    original = records(mapping, ROOT / "samples/erp_zip.zip")
    written = write_rejected(tmp_path, "erp_zip.zip", ROOT / "samples/erp_zip.zip", mapping, [original[-1][0]])
    assert written is not None and written.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert without_lines(records(mapping, written)) == without_lines(original[-1:])


def test_a_workbook_gives_a_csv_with_the_header_and_the_cell_values(tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings/workbook_billing.yaml")
    original = records(mapping, ROOT / "samples/workbook_billing.xlsx")
    lines = [line for line, _, _ in original]
    written = write_rejected(tmp_path, "workbook_billing.xlsx", ROOT / "samples/workbook_billing.xlsx", mapping,
                             lines[1:2])
    assert written is not None and written.name == "workbook_billing.xlsx.rejected.csv"
    rows = list(csv.reader(io.StringIO(written.read_bytes().decode("utf-8"), newline="")))
    assert rows[0] == ["Tunnus", "Käyttöpaikka", "Asiakas", "Aika", "Tila", "Lasku", "Työ", "Selite"]
    assert len(rows) == 2 and rows[1][0] == original[1][1]["id"]


def test_nothing_chosen_writes_nothing_and_removes_an_earlier_one(tmp_path: Path) -> None:
    mapping = load_mapping(ROOT / "config/mappings/finnish_cp1252.yaml")
    source = ROOT / "samples/finnish_cp1252.csv"
    assert write_rejected(tmp_path, "finnish_cp1252.csv", source, mapping, [4]) is not None
    assert write_rejected(tmp_path, "finnish_cp1252.csv", source, mapping, []) is None
    assert list(tmp_path.iterdir()) == []  # no temporaries either


def test_the_original_is_found_through_the_inbox_by_size_and_sha256_and_removed_after(tmp_path: Path) -> None:
    """`retry`'s original: the archive's file of that name, or a stamped one, whose size and hash
    match, fetched into the staging folder (only candidates of the right size) and removed after."""
    assert original_names("k.csv", ["k.csv", "k.20261128T020000Z.csv", "k.20261129T020000Z.csv", "k.csv.done",
                                    "kk.csv", "k.20261129T020000Z-2.csv"]) == [
        "k.csv", "k.20261129T020000Z.csv", "k.20261129T020000Z-2.csv", "k.20261128T020000Z.csv"]
    assert original_names("latin\\xe4.csv", [os.fsdecode(b"latin\xe4.csv")]) == [os.fsdecode(b"latin\xe4.csv")]
    inbox_folder = tmp_path / "inbox"
    archive = inbox_folder / "archive"
    archive.mkdir(parents=True)
    original = b"id\nK-1\n"
    (archive / "k.csv").write_bytes(b"id\nK-9\n")                 # a later drop of the name: same size, not it
    (archive / "k.20261129T020000Z.csv").write_bytes(original)
    (archive / "k.20261128T020000Z.csv").write_bytes(b"id\nK-1 longer\n")  # another size: never fetched
    fetched: list[str] = []
    staging = tmp_path / "staging" / "originals"
    with LocalInbox(InboxSettings(inbox=str(inbox_folder), mode="polling")) as inbox:
        real = inbox.fetch_archived

        def counted(name: str, *args: Any) -> Path:
            fetched.append(name)
            return real(name, *args)

        inbox.fetch_archived = counted  # type: ignore[method-assign,assignment]  # to see which candidates are read
        sha = hashlib.sha256(original).hexdigest()
        with original_from_archive(inbox, staging, "k.csv", len(original), sha) as found:
            assert found is not None and found.read_bytes() == original and found.parent == staging
            assert list(staging.iterdir()) == [found]  # the candidate that did not match is gone already
        assert fetched == ["k.csv", "k.20261129T020000Z.csv"] and list(staging.iterdir()) == []
        with original_from_archive(inbox, staging, "k.csv", len(original), "0" * 64) as missing:
            assert missing is None
        (archive / "k.20261129T020000Z.csv").unlink()
        with original_from_archive(inbox, staging, "k.csv", len(original), sha) as missing:
            assert missing is None
        assert (archive / "k.csv").read_bytes() == b"id\nK-9\n" and list(staging.iterdir()) == []
