"""Workbooks (issue 11, point 5): format xlsx, the sheet by name or position, a title row above
the header, date-time cells in the feed's time zone, whole numbers without a fraction, and each
record's line the row number of the sheet."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from batch.config.mapping import load_mapping, load_mapping_text
from batch.config.service import ReceiptOptions
from batch.pipeline import receipt_format_for
from batch.store.receipts import write_receipt
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError
from tests.fixtures_mapping import mapping_problems

MAPPING = """
format: xlsx
xlsx: {options}
time_zone: Europe/Helsinki
fields:
  id: {{column: Tunnus}}
  usageplacecode: {{column: Käyttöpaikka}}
  time: {{column: Aika, source_time_zone: {zone}}}
  status: {{column: Tila, map: {{K: disconnected, KY: connected}}}}
invoices:
  mode: columns
  invoicenumber: {{column: Lasku, split: ","}}
  jobid: {{column: Työ, split: ","}}
"""
HEADER = ["Tunnus", "Käyttöpaikka", "Aika", "Tila", "Lasku", "Työ"]


def workbook(rows: list[list[Any]], title: bool = True, instructions: bool = True) -> bytes:
    book = Workbook()
    first = book.active
    assert first is not None
    if instructions:
        first.title = "Ohjeet"
        first.append(["Täytä tapahtumat välilehdelle Tapahtumat."])
        sheet = book.create_sheet("Tapahtumat")
    else:
        sheet = first
        sheet.title = "Tapahtumat"
    if title:
        sheet.append(["Katkaisut ja kytkennät, helmikuu 2024"])
    sheet.append(HEADER)
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def mapped(data: bytes, options: str = "{sheet: Tapahtumat, header_row: 2}", zone: str = "Europe/Helsinki") -> list:
    compiled = CompiledMapping(load_mapping_text(MAPPING.format(options=options, zone=zone)))
    return [(r.line, r.event, [e.as_dict() for e in r.errors])
            for chunk in mapped_chunks(compiled, io.BytesIO(data), chunk_size=2) for r in chunk]


ROWS: list[list[Any]] = [
    ["W-1", "643007572062400001", datetime(2024, 2, 5, 6, 30), "K", 594294, 1234],
    ["W-2", "643007572062400002", datetime(2024, 2, 5, 14, 5, 10), "KY", 594295.0, 1235.0],
    [None, None, None, None, None, None],  # a blank row
    ["W-3", "643007572062400003", "2024-02-06 08:00:00", "K", "594296,594297", "1236,1237"],
]


def test_sheet_by_name_title_row_dates_and_whole_numbers():
    assert mapped(workbook(ROWS)) == [
        (3, {"id": "W-1", "usageplacecode": "643007572062400001", "time": "2024-02-05 06:30:00", "status": "disconnected",
             "invoices": [{"invoicenumber": "594294", "jobid": 1234}]}, []),
        (4, {"id": "W-2", "usageplacecode": "643007572062400002", "time": "2024-02-05 14:05:10", "status": "connected",
             "invoices": [{"invoicenumber": "594295", "jobid": 1235}]}, []),
        (6, {"id": "W-3", "usageplacecode": "643007572062400003", "time": "2024-02-06 08:00:00", "status": "disconnected",
             "invoices": [{"invoicenumber": "594296", "jobid": 1236}, {"invoicenumber": "594297", "jobid": 1237}]}, []),
    ]


def test_sheet_by_position_and_a_header_on_the_first_row():
    data = workbook(ROWS[:1], title=False, instructions=False)
    [(line, event, errors)] = mapped(data, "{sheet: 1}")
    assert (line, event["id"], errors) == (2, "W-1", [])
    [(line, event, errors)] = mapped(workbook(ROWS[:1], title=False), "{sheet: 2}")
    assert (line, event["id"]) == (2, "W-1")


def test_date_time_cells_are_read_in_the_source_time_zone():
    rows: list[list[Any]] = [["W-1", "643007572062400001", datetime(2024, 3, 31, 3, 30), "K", None, None],
                             ["W-2", "643007572062400002", datetime(2024, 7, 1, 12, 0), "K", None, None]]
    assert [(line, event and event["time"], errors) for line, event, errors in mapped(workbook(rows), zone="UTC")] == [
        (3, "2024-03-31 06:30:00", []), (4, "2024-07-01 15:00:00", [])]
    assert mapped(workbook(rows))[0] == (3, None, [{
        "field": "time", "source": "column 'Aika'", "value": "2024-03-31 03:30:00",
        "message": "2024-03-31 03:30:00 does not exist in Europe/Helsinki: the clocks move forward from 03:00 to "
                   "04:00 on 2024-03-31, skipping that time"}])


def test_cells_as_text():
    from batch.transform.workbook import cell_text

    class Cell:
        def __init__(self, value: Any, number_format: str = "General"):
            self.value, self.number_format = value, number_format

    assert [cell_text(Cell(v)) for v in (None, "x ", True, 7, 594294.0, 12.5, -3.0, 1e20, time(6, 30))] == [
        "", "x ", "TRUE", "7", "594294", "12.5", "-3", "100000000000000000000", "06:30:00"]
    assert cell_text(Cell(datetime(2024, 2, 5), "d.m.yyyy")) == "2024-02-05"
    assert cell_text(Cell(datetime(2024, 2, 5), "yyyy-mm-dd h:mm")) == "2024-02-05 00:00:00"
    assert cell_text(Cell(datetime(2024, 2, 5, 6, 29, 59, 999_999), "d.m.yyyy h:mm")) == "2024-02-05 06:30:00"
    assert cell_text(Cell(date(2024, 2, 5))) == "2024-02-05"
    # Excel keeps 15 significant digits: an 18-digit code typed as a number has lost its last ones
    # already (such codes belong in text cells); it is still written out in digits, never as 6.43e+17
    assert cell_text(Cell(643007572062400001.0)) == "643007572062400000"


def test_dates_and_times_in_two_cells_join_with_a_template():
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Place", "Pvm", "Klo"])
    sheet.append(["643007572062400001", datetime(2024, 2, 5), time(6, 30)])
    sheet["B2"].number_format = "d.m.yyyy"
    sheet["C2"].number_format = "h:mm"
    buffer = io.BytesIO()
    book.save(buffer)
    compiled = CompiledMapping(load_mapping_text("""
format: xlsx
fields:
  usageplacecode: {column: Place}
  time: {template: "{Pvm} {Klo}"}
  status: {const: connected}
"""))
    [[record]] = list(mapped_chunks(compiled, io.BytesIO(buffer.getvalue())))
    assert record.event == {"usageplacecode": "643007572062400001", "time": "2024-02-05 06:30:00", "status": "connected"}


def refused(data: bytes, options: str = "{sheet: Tapahtumat, header_row: 2}") -> str:
    with pytest.raises(FileError) as info:
        mapped(data, options)
    return str(info.value)


def test_file_level_errors_name_the_sheet_and_row():
    data = workbook(ROWS)
    assert refused(data, "{sheet: Data}") == "the workbook has no sheet 'Data': it has 'Ohjeet', 'Tapahtumat'; check xlsx.sheet"
    assert refused(data, "{sheet: 3}") == (
        "the workbook has 2 sheets ('Ohjeet', 'Tapahtumat'), so there is no sheet 3: check xlsx.sheet")
    assert refused(data, "{sheet: 2}") == (
        "missing columns 'Tunnus', 'Käyttöpaikka', 'Aika', 'Tila', 'Lasku' and 1 more: the header row (row 1 of sheet "
        "'Tapahtumat') has 'Katkaisut ja kytkennät, helmikuu 2024'. Check xlsx.sheet and xlsx.header_row in the mapping.")
    assert refused(data, "{sheet: Tapahtumat, header_row: 20}") == (
        "sheet 'Tapahtumat' ends before row 20, where xlsx.header_row says the header is")


def test_not_a_workbook():
    assert refused(b"Tunnus;Paikka\n1;2\n") == (
        "the file is not an xlsx workbook (an .xlsx starts like a zip file): is format: xlsx right for this feed?")
    assert refused(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100) == (
        "the file is an old Excel workbook (.xls): save it as .xlsx (Excel: Save As, Excel Workbook)")
    assert refused(b"PK\x03\x04broken").startswith("the file cannot be read as an xlsx workbook: ")


def test_a_workbook_that_would_inflate_too_far_is_refused_before_parsing():
    data = workbook(ROWS)
    assert len(mapped(data, "{sheet: Tapahtumat, header_row: 2}\ncompression: {max_inflated_mb: 1}")) == 3
    big = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info)
            if info.filename == "xl/worksheets/sheet2.xml":
                body = body.replace(b"</worksheet>", b"<!--" + b" " * (2 << 20) + b"--></worksheet>")
            target.writestr(info, body)
    assert refused(big.getvalue(), "{sheet: Tapahtumat, header_row: 2}\ncompression: {max_inflated_mb: 1}") == (
        f"workbook part 'xl/worksheets/sheet2.xml' would inflate to "
        f"{zipfile.ZipFile(big).getinfo('xl/worksheets/sheet2.xml').file_size:,} bytes, more than "
        "compression.max_inflated_mb (1 MB): refused as a possible zip bomb; if the export is genuine, raise "
        "compression.max_inflated_mb / compression.max_ratio in the mapping")


def test_options_checked_at_load():
    text = MAPPING.format(options="{sheet: 0, header_row: 0}", zone="UTC")
    assert mapping_problems(text) == [
        "m.yaml:3:8: xlsx.sheet: a sheet's position counts from 1 (the first sheet); or give the sheet's name",
        "m.yaml:3:18: xlsx.header_row: Input should be greater than or equal to 1 (got 0)",
    ]
    assert mapping_problems(MAPPING.format(options="{}", zone="UTC") + "compression: {member: a.xml}\n") == [
        "m.yaml:14:15: compression.member: a workbook (.xlsx) is read whole, not by member: remove compression.member"
    ]


def rewritten(data: bytes, part: str, change) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info)
            target.writestr(info, change(body) if info.filename == part else body)
    return out.getvalue()


def test_a_part_with_a_doctype_is_refused():
    entities = '<!ENTITY a0 "lollollollol">' + "".join(
        f'<!ENTITY a{i + 1} "' + f"&a{i};" * 10 + '">' for i in range(9))
    laughs = rewritten(workbook(ROWS), "xl/worksheets/sheet2.xml", lambda body: (
        f"<!DOCTYPE worksheet [{entities}]>".encode() + body.replace(b"<t>W-1</t>", b"<t>&a9;</t>")))
    assert refused(laughs) == (
        "workbook part 'xl/worksheets/sheet2.xml' has a DOCTYPE; workbooks with DTDs or entity declarations are "
        "refused (they can expand to gigabytes). Save the workbook again from Excel.")


def test_a_damaged_sheet_is_a_file_level_error():
    damaged = rewritten(workbook(ROWS), "xl/worksheets/sheet2.xml", lambda body: body.replace(b"</sheetData>", b""))
    assert refused(damaged).startswith("sheet 'Tapahtumat' cannot be read: ParseError: mismatched tag: line 1, column ")


def test_cells_beside_the_table_belong_to_no_column():
    rows = [ROWS[0] + ["huom: soitettu asiakkaalle"], ROWS[1][:4]]
    assert [(line, event and event["id"], errors) for line, event, errors in mapped(workbook(rows))] == [
        (3, "W-1", []), (4, "W-2", [])]


def test_a_table_of_shared_texts_over_its_limit_is_refused():
    # openpyxl writes texts inline; Excel writes them to a shared table, which is read whole
    table = (b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
             + b"<si><t>" + b"x" * (2 << 20) + b"</t></si></sst>")
    data = workbook(ROWS)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("xl/sharedStrings.xml", table)
    assert refused(out.getvalue(), "{sheet: Tapahtumat, header_row: 2, max_shared_strings_mb: 1}") == (
        f"the workbook's table of shared texts (xl/sharedStrings.xml) inflates to {len(table):,} bytes, more than "
        "xlsx.max_shared_strings_mb (1 MB); it is held in memory while the sheet is read: raise the limit in the "
        "mapping if the workbook is genuine, or export the sheet as CSV")


# --- positions: a workbook record is a row of a sheet (issue 11, point 5) --------------------------

ROWS_MAPPING = """
format: xlsx
xlsx: {sheet: 2, header_row: 2}
fields:
  id: {column: Tunnus}
  usageplacecode: {column: Käyttöpaikka}
  time: {column: Aika}
  status: {column: Tila, map: {K: disconnected, KY: connected}}
invoices:
  mode: rows
  invoicenumber: {column: Lasku}
  jobid: {column: Työ}
"""


def test_the_chunks_name_the_sheet_and_messages_count_rows():
    from batch.transform.records import position

    assert position(7) == "line 7"
    assert position(7, "Tapahtumat") == "row 7 of sheet 'Tapahtumat'"
    assert position(7, 2) == "row 7 of sheet 2"
    rows: list[list[Any]] = [
        ["W-1", "643007572062400001", datetime(2024, 2, 5, 6, 30), "K", 594294, 1234],
        ["W-1", "643007572062400001", datetime(2024, 2, 5, 6, 30), "KY", 594295, 1235],  # differs in Tila
        ["W-2", "643007572062400002", datetime(2024, 2, 5, 7, 0), "K", 594296, 1236],
        ["W-2", "643007572062400002", datetime(2024, 2, 5, 7, 0), "K", 594297, 1237],
        ["W-1", "643007572062400001", datetime(2024, 2, 5, 6, 30), "K", 594298, 1238],  # W-1 again, later
    ]
    compiled = CompiledMapping(load_mapping_text(ROWS_MAPPING))
    run = compiled.start()  # the sheet by position: the chunks still name it
    records = [r for chunk in mapped_chunks(compiled, io.BytesIO(workbook(rows)), chunk_size=2, run=run)
               for r in chunk]
    assert run.sheet == "Tapahtumat"
    assert [(r.line, [e.as_dict() for e in r.errors]) for r in records if not r.ok] == [
        (3, [{"field": "status", "source": "column 'Tila'", "value": "connected",
              "message": "row 4 differs from row 3 of the same event id ('disconnected')"}]),
        (7, [{"field": "id", "source": "column 'Tunnus'", "value": "W-1",
              "message": "event id is used again (first on row 3)"}]),
    ]


def test_preview_names_the_sheet_and_counts_rows(tmp_path, capsys):
    from batch.cli import commands as cli

    mapping, book = tmp_path / "m.yaml", tmp_path / "billing.xlsx"
    mapping.write_text(MAPPING.format(options="{sheet: 2, header_row: 2}", zone="Europe/Helsinki"), encoding="utf-8")
    book.write_bytes(workbook([ROWS[0], ["W-9", "643007572062400009", "31.2.2024", "K", None, None]]))
    assert cli.run(["preview", "--json", str(mapping), str(book)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        '{"record": 4, "sheet": "Tapahtumat", "errors": [{"field": "time", "source": "column \'Aika\'", '
        '"value": "31.2.2024", "message": "expected a time as \'%Y-%m-%d %H:%M:%S\'"}]}')
    assert cli.run(["preview", str(mapping), str(book)]) == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].strip() == "sheet 'Tapahtumat'"
    assert table[2].split()[:3] == ["┃", "row", "┃"]


def test_receipts_of_a_workbook_name_the_sheet(tmp_path):
    @dataclass
    class Event:  # what the journal hands a receipt (EventOutcome)
        line: int
        outcome: str
        message: str | None = None
        errors: list = field(default_factory=list)
        event_id: str | None = None
        usageplacecode: str | None = None
        status: str | None = None
        http_status: int | None = None
        title: str | None = None
        detail: str | None = None

    @dataclass
    class File:  # FileInfo
        name: str = "billing.xlsx"
        sha256: str = "0" * 64
        size: int = 1
        feed: str = "billing"
        state: str = "done"
        started_at: datetime = datetime(2024, 4, 2, tzinfo=timezone.utc)
        finished_at: datetime | None = None
        error: str | None = None
        counts: dict = field(default_factory=lambda: {"accepted": 1, "invalid": 1})

    error = {"field": "time", "source": "column 'Aika'", "value": "31.2.2024", "message": "not a real date"}
    events = [Event(3, "accepted", http_status=201),
              Event(7, "invalid", "time (column 'Aika' = '31.2.2024'): not a real date", [error])]
    root = Path(__file__).resolve().parent.parent
    named = receipt_format_for(load_mapping(root / "config/mappings/workbook_billing.yaml"), ReceiptOptions())
    assert named.sheet == "Tapahtumat"
    paths = write_receipt(tmp_path, File(), events, named)
    assert paths.csv.read_text("utf-8").splitlines()[1:] == [
        "3,,,,accepted,201,,,,,,",
        "7,,,,invalid,,row 7 of sheet 'Tapahtumat': time (column 'Aika' = '31.2.2024'): not a real date,"
        "time,column 'Aika',31.2.2024,,",
    ]
    summary = json.loads(paths.json.read_text("utf-8"))
    assert summary["sheet"] == "Tapahtumat"
    assert summary["problems"] == [
        {"line": 7, "position": "row 7 of sheet 'Tapahtumat'", "event_id": None, "outcome": "invalid",
         "errors": [error]}]
    # a sheet given by its position: the receipt says so
    by_position = receipt_format_for(load_mapping_text(MAPPING.format(options="{sheet: 2}", zone="UTC")),
                                     ReceiptOptions())
    paths = write_receipt(tmp_path, File(), events, by_position)
    assert paths.csv.read_text("utf-8").splitlines()[2].startswith("7,,,,invalid,,row 7 of sheet 2: time ")
    # a text feed's receipt is as before: no sheet, no position
    text = receipt_format_for(load_mapping(root / "config/mappings/invoice_pairs.yaml"), ReceiptOptions())
    assert text.sheet is None
