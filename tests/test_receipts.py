"""Receipts: pure rows, real files read back with the stdlib csv reader."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from batch.store.journal import Journal, NewEvent, Result
from batch.store.receipts import (
    RECEIPT_COLUMNS,
    ReceiptFormat,
    ReceiptRow,
    file_level_row,
    neutralise_cell,
    receipt_names,
    write_file_level_receipt,
    write_receipt,
)

STARTED = datetime(2024, 1, 4, 22, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Event:
    line: int
    event_id: str | None
    usageplacecode: str | None
    status: str | None
    outcome: str
    http_status: int | None = None
    message: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    title: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class File:
    name: str = "usageplaces_20240104.csv"
    sha256: str = "c" * 64
    size: int = 1234
    feed: str = "kuopio"
    state: str = "done"
    started_at: datetime = STARTED
    finished_at: datetime | None = STARTED + timedelta(seconds=83, milliseconds=250)
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {
        "accepted": 2, "rejected": 1, "invalid": 1, "failed": 1, "duplicate": 1, "not_sent": 0, "pending": 0})


EVENTS = [
    Event(2, "E1", "643007572062443672", "disconnected", "accepted", 200),
    Event(3, "E2", "643007572062443673", "connected", "rejected", 400,
          "HTTP 400: Bad Request: usageplacecode not found", title="Bad Request",
          detail="usageplacecode not found"),
    Event(4, None, "643007572062443674", None, "invalid",
          message="status: column 'Tila' value 'X' is not in the value map (K, L)",
          errors=[{"field": "status", "source": "column 'Tila'", "value": "X",
                   "message": "value is not in the map (expected one of 'K', 'L')"},
                  {"field": "time", "source": "column 'Pvm'", "value": "=1+1",
                   "message": "not a date/time in any of the formats"}]),
    Event(5, "E4", "643007572062443675", "disconnected", "failed", 503,
          "Service Unavailable after 5 attempts"),
    Event(6, "E1", "643007572062443672", "disconnected", "duplicate",
          message="event id already accepted: file 'a.csv', line 2"),
    Event(7, "E6", "Pääkatu 1; \"B\"\nrivi 2", "connected", "accepted", 200),
]


def read_rows(path: Path, fmt: ReceiptFormat = ReceiptFormat()) -> list[list[str]]:  # noqa: B008 - frozen: sharing it is safe
    with open(path, encoding=fmt.encoding, newline="") as handle:
        return list(csv.reader(handle, delimiter=fmt.delimiter, quotechar=fmt.quotechar))


# --------------------------------------------------------------------------- pure


def test_receipt_names_follow_the_input_name() -> None:
    names = receipt_names("usageplaces_20240104.csv")
    assert (names.csv, names.json) == ("usageplaces_20240104.csv.receipt.csv",
                                       "usageplaces_20240104.csv.receipt.json")
    assert receipt_names("/inbox/processing/a.xml").csv == "a.xml.receipt.csv"
    with pytest.raises(ValueError):
        receipt_names("/inbox/")


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r"])
def test_each_formula_trigger_is_neutralised(trigger: str) -> None:
    cell = trigger + "HYPERLINK(\"http://evil\",\"x\")"
    assert neutralise_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["-5", "-12.50", "-3,75", "643007572062443672", "E-1", "a=b", "",
                                  "'=already quoted"])
def test_harmless_cells_stay_as_they_are(cell: str) -> None:
    assert neutralise_cell(cell) == cell


@pytest.mark.parametrize("cell", ["-5+cmd|' /C calc'!A0", "-1e5", "--5", "- 5", "-"])
def test_a_minus_that_is_not_a_plain_number_is_neutralised(cell: str) -> None:
    assert neutralise_cell(cell) == "'" + cell


def test_row_cells_render_none_as_empty_and_numbers_as_text() -> None:
    row = ReceiptRow(4, None, "=1+1", "disconnected", "rejected", 400, "@SUM(A1)")
    assert row.cells() == ["4", "", "'=1+1", "disconnected", "rejected", "400", "'@SUM(A1)",
                           "", "", "", "", ""]


def test_field_source_and_value_cells_are_neutralised_and_escaped() -> None:
    row = ReceiptRow(4, None, None, None, "invalid", None, "m", "time", "column 'Pvm'", "=cmd|'/C calc'!A0\x1b",
                     "+title", "@detail\x00")
    assert row.cells()[7:] == ["time", "column 'Pvm'", "'=cmd|'/C calc'!A0\\x1b", "'+title", "'@detail\\x00"]


def test_file_level_row_says_what_happened_in_one_line() -> None:
    row = file_level_row(File(state="error", error="Missing required column\n'usageplacecode'"))
    assert (row.outcome, row.message) == ("file_error", "Missing required column 'usageplacecode'")
    assert file_level_row(File(state="skipped", error="Already processed")).outcome == "already_processed"
    with pytest.raises(ValueError):
        file_level_row(File(state="done"))


# --------------------------------------------------------------------------- writers


def test_receipt_has_a_header_and_one_row_per_record(tmp_path: Path) -> None:
    paths = write_receipt(tmp_path, File(), EVENTS)
    assert paths.csv == tmp_path / "usageplaces_20240104.csv.receipt.csv"
    rows = read_rows(paths.csv)
    assert rows[0] == list(RECEIPT_COLUMNS)
    assert rows[1] == ["2", "E1", "643007572062443672", "disconnected", "accepted", "200", "", "", "", "", "", ""]
    assert rows[2] == ["3", "E2", "643007572062443673", "connected", "rejected", "400",
                       "HTTP 400: Bad Request: usageplacecode not found", "", "", "", "Bad Request",
                       "usageplacecode not found"]
    # an invalid record: the field, source and value of its first error
    assert rows[3] == ["4", "", "643007572062443674", "", "invalid", "",
                       "status: column 'Tila' value 'X' is not in the value map (K, L)",
                       "status", "column 'Tila'", "X", "", ""]
    assert rows[6][2] == "Pääkatu 1; \"B\"\nrivi 2"  # delimiter, quote and newline survive
    assert [r[4] for r in rows[1:]] == ["accepted", "rejected", "invalid", "failed", "duplicate",
                                        "accepted"]
    assert sorted(os.listdir(tmp_path)) == [paths.csv.name, paths.json.name]  # no temporaries


def test_summary_has_counts_times_and_file_identity(tmp_path: Path) -> None:
    paths = write_receipt(tmp_path, File(), EVENTS)
    summary = json.loads(paths.json.read_text("utf-8"))
    assert summary == {
        "file": "usageplaces_20240104.csv", "sha256": "c" * 64, "size": 1234, "feed": "kuopio",
        "state": "done", "started": "2024-01-04T22:00:00+00:00",
        "finished": "2024-01-04T22:01:23.250000+00:00", "duration_seconds": 83.25,
        "records": 6, "counts": {**File().counts, "filtered": 0}, "error": None,
        "receipt": "usageplaces_20240104.csv.receipt.csv", "rejected_rows": None,
        # every invalid record with all its errors, every rejected event with its problem
        "problems": [
            {"line": 3, "event_id": "E2", "outcome": "rejected", "http_status": 400, "title": "Bad Request",
             "detail": "usageplacecode not found", "message": "HTTP 400: Bad Request: usageplacecode not found"},
            {"line": 4, "event_id": None, "outcome": "invalid", "errors": EVENTS[2].errors},
        ],
    }


def test_a_summary_without_problems_has_an_empty_list(tmp_path: Path) -> None:
    summary = json.loads(write_receipt(tmp_path, File(), EVENTS[:1]).json.read_text("utf-8"))
    assert summary["problems"] == []


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r"])
def test_injection_is_neutralised_in_the_written_file(tmp_path: Path, trigger: str) -> None:
    evil = Event(1, trigger + "cmd|' /C calc'!A0", "-5", "connected", "rejected", 400,
                 trigger + "HYPERLINK(\"http://x\")")
    rows = read_rows(write_receipt(tmp_path, File(), [evil]).csv)
    assert rows[1][1] == "'" + evil.event_id
    assert rows[1][2] == "-5"
    assert rows[1][6] == "'" + evil.message


@pytest.mark.parametrize("fmt", [
    ReceiptFormat(),
    ReceiptFormat(encoding="utf-8-sig", delimiter=";"),
    ReceiptFormat(encoding="cp1252", delimiter=";", lineterminator="\n"),
    ReceiptFormat(encoding="utf-16", delimiter="\t", quotechar="'"),
    ReceiptFormat(encoding="latin-1", delimiter="|", quotechar="'", lineterminator="\r\n"),
], ids=lambda fmt: f"{fmt.encoding}-{fmt.delimiter!r}")
def test_encodings_and_dialects_round_trip(tmp_path: Path, fmt: ReceiptFormat) -> None:
    paths = write_receipt(tmp_path, File(), EVENTS, fmt)
    rows = read_rows(paths.csv, fmt)
    assert rows[0] == list(RECEIPT_COLUMNS)
    assert [row[2] for row in rows[1:]] == [e.usageplacecode for e in EVENTS]
    assert [row[6] for row in rows[1:]] == [e.message or "" for e in EVENTS]


def test_byte_order_marks_and_line_terminators_are_as_asked(tmp_path: Path) -> None:
    def raw(fmt: ReceiptFormat) -> bytes:
        return write_receipt(tmp_path, File(), EVENTS[:2], fmt).csv.read_bytes()

    assert raw(ReceiptFormat(encoding="utf-8-sig")).startswith(b"\xef\xbb\xbf")
    assert raw(ReceiptFormat(encoding="utf-16")).startswith((b"\xff\xfe", b"\xfe\xff"))
    assert not raw(ReceiptFormat()).startswith(b"\xef\xbb\xbf")
    assert raw(ReceiptFormat(lineterminator="\n")).count(b"\r") == 0
    assert raw(ReceiptFormat()).count(b"\r\n") == 3


def test_characters_the_encoding_cannot_hold_are_replaced(tmp_path: Path) -> None:
    chinese = Event(1, "E1", "643007572062443672", "connected", "rejected", 400,
                    "Asiakas 王小明 / Pääkatu €5")
    fmt = ReceiptFormat(encoding="cp1252", delimiter=";")
    rows = read_rows(write_receipt(tmp_path, File(), [chinese], fmt).csv, fmt)
    assert rows[1][6] == "Asiakas ??? / Pääkatu €5"
    utf8_rows = read_rows(write_receipt(tmp_path, File(), [chinese]).csv)
    assert utf8_rows[1][6] == chinese.message


def test_a_file_level_failure_gives_one_understandable_row(tmp_path: Path) -> None:
    failed = File(state="error", error="Missing required column 'usageplacecode' (columns: A, B)",
                  counts=dict.fromkeys(File().counts, 0))
    paths = write_file_level_receipt(tmp_path, failed, ReceiptFormat(delimiter=";"))
    rows = read_rows(paths.csv, ReceiptFormat(delimiter=";"))
    assert rows == [list(RECEIPT_COLUMNS),
                    ["", "", "", "", "file_error", "", failed.error, "", "", "", "", ""]]
    summary = json.loads(paths.json.read_text("utf-8"))
    assert (summary["state"], summary["error"], summary["records"]) == ("error", failed.error, 0)


def test_a_rewritten_receipt_replaces_the_old_one_whole(tmp_path: Path) -> None:
    write_receipt(tmp_path, File(), EVENTS)
    paths = write_receipt(tmp_path, File(), EVENTS[:1])
    assert len(read_rows(paths.csv)) == 2
    assert sorted(os.listdir(tmp_path)) == [paths.csv.name, paths.json.name]


# --------------------------------------------------------------------------- with the journal


def test_journal_records_make_receipts(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        first = journal.begin_file("monday.csv", "1" * 64, 10, "feed").file.id
        journal.record_events(first, [
            NewEvent.valid(2, {"id": "E1", "usageplacecode": "U1", "status": "connected"}),
            NewEvent.invalid(3, "time (column 'Pvm' = '=1+1'): is not a date", None,
                             [{"field": "time", "source": "column 'Pvm'", "value": "=1+1", "message": "is not a date"}]),
            NewEvent.valid(4, {"id": "E4", "usageplacecode": "U4", "status": "connected"}),
        ])
        journal.record_results([Result(first, 2, "accepted", http_status=200),
                                Result(first, 4, "rejected", 422, "HTTP 422: Unknown place: U4 is not ours",
                                       title="Unknown place", detail="U4 is not ours")])
        done = journal.finish_file(first, "done")
        outbox = tmp_path / "outbox"
        outbox.mkdir()
        paths = write_receipt(outbox, done, journal.file_events(first))
        assert read_rows(paths.csv)[1:] == [
            ["2", "E1", "U1", "connected", "accepted", "200", "", "", "", "", "", ""],
            ["3", "", "", "", "invalid", "", "time (column 'Pvm' = '=1+1'): is not a date",
             "time", "column 'Pvm'", "'=1+1", "", ""],
            ["4", "E4", "U4", "connected", "rejected", "422", "HTTP 422: Unknown place: U4 is not ours",
             "", "", "", "Unknown place", "U4 is not ours"],
        ]
        assert json.loads(paths.json.read_text("utf-8"))["counts"]["invalid"] == 1

        again = journal.begin_file("monday_again.csv", "1" * 64, 10, "feed")
        paths = write_file_level_receipt(outbox, again.file)
        row = read_rows(paths.csv)[1]
        assert row[4] == "already_processed" and "'monday.csv'" in row[6]
        assert paths.csv.name == "monday_again.csv.receipt.csv"


def test_a_large_receipt_is_written_from_a_generator(tmp_path: Path) -> None:
    events = (Event(n, f"E{n}", str(n), "connected", "accepted", 200) for n in range(1, 50_001))
    paths = write_receipt(tmp_path, File(), events)
    with open(paths.csv, encoding="utf-8", newline="") as handle:
        assert sum(1 for _ in csv.reader(handle)) == 50_001
