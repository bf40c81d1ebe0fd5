"""Receipts: what happened to each record of an input file, for the legacy system.

One receipt per input file, two files written atomically next to each other:

- ``<input name>.receipt.csv``: a header and one row per record (line, event id, usage
  place code, status, outcome, HTTP status, message; for an invalid record the field, source
  and value of its first error; for a rejected event the problem title and detail Ropo One
  sent), in the dialect and encoding the caller gives (the feed defaults them to the
  input's); for a file-level failure or an already processed file, one row that says so in a
  sentence;
- ``<input name>.receipt.json``: the summary (counts per outcome and filtered, file, times,
  error) and ``problems``: every invalid record with all its errors and every rejected event
  with its problem, one entry each, in line order.

The CSV is written first and the JSON last, so a present JSON means a complete receipt.
Row building is pure; the writers only stream rows into ``fsutil.atomic_writer``.

Receipt names fit wherever the input's name fitted (255 bytes): a longer one keeps its
start, the input's extension and the receipt suffix, with a hash of the full name between
(``fsutil.fit_name``). An input name that is not UTF-8 is stored and shown escaped
(``latin\\xe4.csv``, ``fsutil.display_name``); its receipt carries the real bytes in its name,
as the legacy system that wrote it expects.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from batch.fsutil import NAME_MAX, atomic_writer, display_name, fit_name, real_name
from batch.transform.records import position

RECEIPT_COLUMNS: tuple[str, ...] = (
    "line", "event_id", "usageplacecode", "status", "outcome", "http_status", "message",
    "field", "source", "value", "title", "detail",
)
OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "invalid", "failed", "duplicate", "not_sent", "pending")

#: Bytes of the JSON receipt's problem list held in memory while the CSV is written; more spill
#: to a temporary file (a file of a million invalid records must not be held whole).
PROBLEMS_IN_MEMORY = 1 << 20

#: The outcome word of the single row of a file-level receipt, by file state.
FILE_LEVEL_OUTCOMES: Mapping[str, str] = {"error": "file_error", "skipped": "already_processed"}

# OWASP CSV injection: a cell starting with one of these may be run as a formula.
FORMULA_TRIGGERS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
# A plain negative number cannot run anything, and event ids / codes must reach the legacy
# system unchanged when they can, so "-5" or "-12.50" stays as it is.
_PLAIN_NEGATIVE_NUMBER = re.compile(r"-\d+(?:[.,]\d+)?")


# --------------------------------------------------------------------------- inputs


class EventOutcome(Protocol):
    """What a receipt row needs of an event (``journal.EventRecord`` has it)."""

    @property
    def line(self) -> int: ...
    @property
    def event_id(self) -> str | None: ...
    @property
    def usageplacecode(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def http_status(self) -> int | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def errors(self) -> list[dict[str, Any]]: ...
    @property
    def title(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...


class FileInfo(Protocol):
    """What a summary needs of a file (``journal.FileRecord`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def feed(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def counts(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class ReceiptFormat:
    """The receipt's CSV dialect and encoding."""

    delimiter: str = ","
    quotechar: str = '"'
    lineterminator: str = "\r\n"
    encoding: str = "utf-8"
    # a workbook feed's sheet (its name, or its position as the mapping gives it): `line` is then
    # a row of that sheet, and the message of an invalid or rejected row starts with
    # "row 7 of sheet 'Tapahtumat': " (records.position); the JSON names it too
    sheet: str | int | None = None


@dataclass(frozen=True, slots=True)
class ReceiptNames:
    csv: str
    json: str


@dataclass(frozen=True, slots=True)
class ReceiptPaths:
    csv: Path
    json: Path
    rejected: Path | None = None  # NAME.rejected.<ext>: the original records of the invalid and rejected

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the receipt in the order to publish them: the JSON (complete) last."""
        return (self.csv, self.json) if self.rejected is None else (self.csv, self.rejected, self.json)


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    line: int | None
    event_id: str | None
    usageplacecode: str | None
    status: str | None
    outcome: str
    http_status: int | None
    message: str | None
    field: str | None = None  # an invalid record's first error: the field, where its value came from, the value
    source: str | None = None
    value: str | None = None
    title: str | None = None  # a rejected event's problem (Ropo One's HttpApiProblem)
    detail: str | None = None

    def cells(self) -> list[str]:
        """The row as CSV cells: empty for None, formula triggers neutralised."""
        values = (self.line, self.event_id, self.usageplacecode, self.status, self.outcome,
                  self.http_status, self.message, self.field, self.source, self.value, self.title, self.detail)
        return [neutralise_cell(escape_controls("" if value is None else str(value))) for value in values]


# --------------------------------------------------------------------------- pure


CSV_SUFFIX, JSON_SUFFIX = ".receipt.csv", ".receipt.json"


def receipt_names(input_name: str) -> ReceiptNames:
    """The receipt file names for an input file name (the one place that decides them).

    `input_name` may be the name as stored (``display_name``); the receipt names are file
    system names, within NAME_MAX bytes, the CSV's and the JSON's with the same start."""
    name = real_name(os.path.basename(input_name))
    if not name:
        raise ValueError(f"not a file name: {input_name!r}")
    stem = fit_name(name, NAME_MAX - max(len(CSV_SUFFIX), len(JSON_SUFFIX)))
    return ReceiptNames(csv=stem + CSV_SUFFIX, json=stem + JSON_SUFFIX)


# NUL, ESC and the other controls (but tab and line breaks, which CSV quoting carries) are
# written as \xNN: a receipt holds text a legacy importer and a person can read (D23).
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with every control character but tab, CR and LF written as \\xNN."""
    return _CONTROLS.sub(lambda found: f"\\x{ord(found.group()):02x}", text) if not text.isprintable() else text


def neutralise_cell(text: str) -> str:
    """Prefix a single quote to a cell a spreadsheet would run as a formula."""
    if text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NEGATIVE_NUMBER.fullmatch(text):
        return "'" + text
    return text


def receipt_row(event: EventOutcome, sheet: str | int | None = None) -> ReceiptRow:
    """A record's row. `sheet`: a workbook's, named at the start of a message (what a clerk
    reads to find the row; `line` stays the row number, for sorting)."""
    errors = event.errors if event.outcome == "invalid" else []
    first = errors[0] if errors else {}
    message = event.message
    if sheet is not None and message:
        message = f"{position(event.line, sheet)}: {message}"
    return ReceiptRow(event.line, event.event_id, event.usageplacecode, event.status,
                      event.outcome, event.http_status, message,
                      first.get("field"), first.get("source"), first.get("value"), event.title, event.detail)


def problem_entry(event: EventOutcome, sheet: str | int | None = None) -> dict[str, Any] | None:
    """The JSON receipt's entry for an invalid record (all its errors) or a rejected event (its
    problem); None for any other outcome. A workbook's entry has its `position` too."""
    where = {} if sheet is None else {"position": position(event.line, sheet)}
    if event.outcome == "invalid":
        return {"line": event.line, **where, "event_id": event.event_id, "outcome": "invalid", "errors": event.errors}
    if event.outcome == "rejected":
        return {"line": event.line, **where, "event_id": event.event_id, "outcome": "rejected",
                "http_status": event.http_status, "title": event.title, "detail": event.detail,
                "message": event.message}
    return None


def file_level_row(file: FileInfo) -> ReceiptRow:
    """The single row of a receipt for a file that was not processed record by record."""
    outcome = FILE_LEVEL_OUTCOMES.get(file.state)
    if outcome is None:
        raise ValueError(f"{file.name}: a file in state {file.state!r} has no file-level receipt")
    return ReceiptRow(None, None, None, None, outcome, None, one_line(file.error or outcome))


def one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so a message reads as one line."""
    return " ".join(text.split())


def summary(file: FileInfo, names: ReceiptNames, rejected: Path | None = None,
            sheet: str | int | None = None) -> dict[str, Any]:
    """The JSON summary of a receipt. ``counts.filtered``: records the mapping's `keep` rule left
    out (not events: not in ``records``). ``sheet``: a workbook's, whose rows the lines are."""
    counts = {outcome: int(file.counts.get(outcome, 0)) for outcome in OUTCOMES}
    records = sum(counts.values())
    counts["filtered"] = int(getattr(file, "filtered", 0) or 0)
    finished = file.finished_at
    duration = None if finished is None else round((finished - file.started_at).total_seconds(), 3)
    return {
        "file": file.name,
        "sha256": file.sha256,
        "size": file.size,
        "feed": file.feed,
        "state": file.state,
        "started": file.started_at.isoformat(),
        "finished": None if finished is None else finished.isoformat(),
        "duration_seconds": duration,
        **({} if sheet is None else {"sheet": sheet}),
        "records": records,
        "counts": counts,
        "error": file.error,
        "receipt": display_name(names.csv),
        "rejected_rows": None if rejected is None else display_name(rejected.name),
        # the mapping the events were recorded with, and what a reader should know (e.g.
        # that the mapping changed while the file was unfinished): only when the journal has them
        **{key: getattr(file, key) for key in ("mapping_version", "note") if getattr(file, key, None)},
    }


# --------------------------------------------------------------------------- writers


def write_csv_rows(handle: BinaryIO, rows: Iterable[ReceiptRow], fmt: ReceiptFormat) -> None:
    """Stream the header and rows into a binary file in ``fmt``'s dialect and encoding.

    Characters the encoding cannot hold become its replacement character ('?').
    """
    text = io.TextIOWrapper(handle, encoding=fmt.encoding, errors="replace", newline="")
    try:
        writer = csv.writer(text, delimiter=fmt.delimiter, quotechar=fmt.quotechar,
                            lineterminator=fmt.lineterminator, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(RECEIPT_COLUMNS)
        writer.writerows(row.cells() for row in rows)
        text.flush()
    finally:
        text.detach()  # the caller owns (and closes) the binary file


def summary_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_receipt(directory: str | os.PathLike[str], file: FileInfo,
                  events: Iterable[EventOutcome],
                  fmt: ReceiptFormat = ReceiptFormat(), rejected: Path | None = None) -> ReceiptPaths:
    """Write the receipt of a processed file: one row per event (in the order given), and in the
    JSON every invalid and rejected one with its errors or problem. `rejected`: the rejected-rows
    file written beside it (named in the summary)."""
    with tempfile.SpooledTemporaryFile(max_size=PROBLEMS_IN_MEMORY) as problems:
        def rows() -> Iterator[ReceiptRow]:
            first = True
            for event in events:
                entry = problem_entry(event, fmt.sheet)
                if entry is not None:
                    problems.write((("\n    " if first else ",\n    ") + json.dumps(entry, ensure_ascii=False))
                                   .encode("utf-8"))
                    first = False
                yield receipt_row(event, fmt.sheet)

        return _write(_as_path(directory), file, rows(), fmt, problems, rejected)


def write_file_level_receipt(directory: str | os.PathLike[str], file: FileInfo,
                             fmt: ReceiptFormat = ReceiptFormat()) -> ReceiptPaths:
    """Write the receipt of a file-level failure (state ``error``) or an already processed
    file (state ``skipped``): one row whose message is ``file.error``, and the summary."""
    return _write(_as_path(directory), file, iter([file_level_row(file)]), fmt)


def _as_path(directory: str | os.PathLike[str]) -> Path:
    return directory if isinstance(directory, Path) else Path(directory)  # keeps an OwnFolderPath


def _write(directory: Path, file: FileInfo, rows: Iterator[ReceiptRow], fmt: ReceiptFormat,
           problems: IO[bytes] | None = None, rejected: Path | None = None) -> ReceiptPaths:
    names = receipt_names(file.name)
    paths = ReceiptPaths(directory / names.csv, directory / names.json, rejected)
    with atomic_writer(paths.csv, what="write receipt") as handle:
        write_csv_rows(handle, rows, fmt)
    with atomic_writer(paths.json, what="write receipt") as handle:
        head = summary_bytes(summary(file, names, rejected, fmt.sheet))
        if problems is None:
            handle.write(head)
        else:  # the summary, then its "problems" list streamed from the spool
            handle.write(head.rstrip()[:-1].rstrip() + b',\n  "problems": [')
            problems.seek(0)
            shutil.copyfileobj(problems, handle)
            handle.write(b"\n  ]\n}\n" if problems.tell() else b"]\n}\n")
    return paths
