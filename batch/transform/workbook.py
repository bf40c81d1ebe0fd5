"""Workbooks (.xlsx) -> chunks of records: one sheet, a header row, a record a row.

Read with openpyxl in read-only mode, which parses the sheet's XML as it goes: memory stays
nearly flat whatever the number of rows (peak RSS 50 MB at 100,000 rows, 76 MB at 400,000).
python-calamine reads 15 times faster but holds the whole sheet: 100 MB at 100,000 rows, 355 MB
at 400,000 (bench/bench_mapping.py measures both). The one part read whole is the table of
shared texts (Excel writes each distinct text once there): xlsx.max_shared_strings_mb caps it.
Parts with a DOCTYPE are refused, and every part's declared size is checked against the
compression limits before anything is parsed.

Cells become the text the mapping works on, as a person reads them in Excel:
- text as it is; an empty cell ''; TRUE / FALSE;
- numbers: a whole number without a fraction (594294, not '594294.0'), others as Python
  writes them shortest (12.5);
- a date cell 'YYYY-MM-DD', a date-time cell 'YYYY-MM-DD HH:MM:SS', a time cell 'HH:MM:SS'
  (to the nearest second: Excel stores times as fractions of a day). The wall-clock time is
  the feed's: the time field reads it in its source time zone like any other text.

A record's line is its row number in the sheet, as Excel shows it, and each chunk names the
sheet (Chunk.sheet): errors and receipts say "row 7 of sheet 'Tapahtumat'" (records.position).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any, BinaryIO

from batch.config.mapping import CompressionOptions, XlsxOptions
from batch.transform.compressed import check_declared, check_zip_directory
from batch.transform.magic import sniff
from batch.transform.readers import DEFAULT_CHUNK_SIZE, FileError
from batch.transform.records import LISTED_NAMES, Chunk, short_list


def read_xlsx(
    stream: BinaryIO,
    options: XlsxOptions,
    required_columns: list[str],
    limits: CompressionOptions | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[Chunk]:
    """The records of one sheet. `stream` must allow seeking (a workbook is a zip)."""
    workbook = _open(stream, limits or CompressionOptions(), options.max_shared_strings_mb)
    try:
        sheet = _sheet(workbook, options.sheet)
        try:
            yield from _rows(sheet, options, required_columns, chunk_size)
        except FileError:
            raise
        except Exception as exc:  # a damaged sheet: expat's ParseError, openpyxl's ValueError...
            raise FileError(
                f"sheet {sheet.title!r} cannot be read: {type(exc).__name__}: {exc} (is the workbook damaged?)"
            ) from None
    finally:
        workbook.close()


def _open(stream: BinaryIO, limits: CompressionOptions, max_shared_mb: int) -> Any:
    head = stream.read(8)
    stream.seek(-len(head), 1)
    kind = sniff(head)
    if kind == "xls":
        raise FileError("the file is an old Excel workbook (.xls): save it as .xlsx (Excel: Save As, Excel Workbook)")
    if kind != "zip":
        raise FileError(
            "the file is not an xlsx workbook (an .xlsx starts like a zip file): is format: xlsx right for this feed?"
        )
    check_zip_directory(stream)
    try:
        with zipfile.ZipFile(stream) as archive:
            for info in archive.infolist():  # a zip bomb dressed as a workbook: refused before parsing
                check_declared(info, limits, f"workbook part {info.filename!r}")
                _check_shared_strings(info, max_shared_mb)
            for info in archive.infolist():
                _refuse_doctype(archive, info)
        stream.seek(0)
        from openpyxl import load_workbook

        with warnings.catch_warnings():  # "Workbook contains no default style": harmless, and not for the log
            warnings.simplefilter("ignore")
            return load_workbook(stream, read_only=True, data_only=True, keep_links=False)
    except FileError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise FileError(f"the file cannot be read as an xlsx workbook: {exc}") from None
    except Exception as exc:  # openpyxl's InvalidFileException and parse errors of a damaged part
        raise FileError(f"the file cannot be read as an xlsx workbook: {type(exc).__name__}: {exc}") from None


def _check_shared_strings(info: zipfile.ZipInfo, limit_mb: int) -> None:
    """The one part read whole: every distinct text of the workbook, which the sheet's cells
    refer to by number. Its size bounds the reader's memory (about three times the part's)."""
    if info.filename.lower() == "xl/sharedstrings.xml" and info.file_size > limit_mb << 20:
        raise FileError(
            f"the workbook's table of shared texts (xl/sharedStrings.xml) inflates to {info.file_size:,} bytes, more "
            f"than xlsx.max_shared_strings_mb ({limit_mb} MB); it is held in memory while the sheet is read: raise "
            "the limit in the mapping if the workbook is genuine, or export the sheet as CSV"
        )


# The prolog of an XML part (declaration, comments) is short; a DOCTYPE must come before the root.
_PROLOG_BYTES = 4096


def _refuse_doctype(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse a part with a DOCTYPE, as the XML reader does: entity declarations can expand to
    gigabytes (the XML parser openpyxl uses stops them, but late and as a bare parse error)."""
    if info.is_dir() or not info.filename.endswith((".xml", ".rels")):
        return
    with archive.open(info) as part:
        head = part.read(_PROLOG_BYTES)
    if b"<!DOCTYPE" in head.upper() or b"<\x00!\x00D\x00O\x00C" in head:
        raise FileError(
            f"workbook part {info.filename!r} has a DOCTYPE; workbooks with DTDs or entity declarations are refused "
            "(they can expand to gigabytes). Save the workbook again from Excel."
        )


def _sheet(workbook: Any, wanted: str | int) -> Any:
    names = list(workbook.sheetnames)
    if isinstance(wanted, int):
        if wanted > len(names):
            raise FileError(
                f"the workbook has {len(names)} sheet{'s' if len(names) != 1 else ''} ({short_list(names)}), "
                f"so there is no sheet {wanted}: check xlsx.sheet"
            )
        return workbook[names[wanted - 1]]
    if wanted not in names:
        raise FileError(f"the workbook has no sheet {wanted!r}: it has {short_list(names)}; check xlsx.sheet")
    return workbook[wanted]


def _rows(sheet: Any, options: XlsxOptions, required: list[str], chunk_size: int) -> Iterator[Chunk]:
    where = f"sheet {sheet.title!r}"
    rows = enumerate(sheet.iter_rows(), start=1)
    header: list[str] | None = None
    for number, cells in rows:
        if number == options.header_row:
            header = [cell_text(cell).strip() for cell in cells]
            break
    if header is None:
        raise FileError(f"{where} ends before row {options.header_row}, where xlsx.header_row says the header is")
    while header and not header[-1]:
        header.pop()
    _check_header(header, required, where, options.header_row)
    width = len(header)
    title = str(sheet.title)
    chunk = Chunk(header, sheet=title)
    for number, cells in rows:
        values = [cell_text(cell) for cell in cells]
        if options.skip_blank_rows and not any(value.strip() for value in values):
            continue
        if len(values) < width:
            values += [""] * (width - len(values))
        else:
            # cells right of the header's last name belong to no column (a note typed beside
            # the table): no field can name them. Unlike a CSV line, a row is never mis-split.
            del values[width:]
        chunk.lines.append(number)
        chunk.rows.append(values)
        if len(chunk.lines) >= chunk_size:
            yield chunk
            chunk = Chunk(header, sheet=title)
    if chunk.lines:
        yield chunk


def _check_header(header: list[str], required: list[str], where: str, row: int) -> None:
    present = set(header)
    missing = [name for name in dict.fromkeys(required) if name not in present]
    if missing:
        found = short_list([name for name in header if name], 2 * LISTED_NAMES) or "nothing"
        raise FileError(
            f"missing column{'s' if len(missing) > 1 else ''} {short_list(missing)}: the header row "
            f"(row {row} of {where}) has {found}. Check xlsx.sheet and xlsx.header_row in the mapping."
        )
    counts = Counter(header)
    doubled = sorted({name for name in required if counts[name] > 1})
    if doubled:
        raise FileError(f"column {short_list(doubled)} appears more than once in the header row (row {row} of {where})")


def cell_text(cell: Any) -> str:
    """A cell as the text the mapping works on (see the module's docstring)."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:  # beyond, digits would be made up
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        moment = _to_second(value)
        if moment.time() == time(0) and not _shows_time(cell):
            return moment.date().isoformat()
        return moment.isoformat(" ", "seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        whole = _to_second(datetime.combine(date(2000, 1, 1), value))
        return whole.time().isoformat("seconds")
    if isinstance(value, timedelta):
        seconds = round(value.total_seconds())
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return str(value)


def _to_second(moment: datetime) -> datetime:
    """Round to the nearest second: 06:30 may be stored as 0.27083333 of a day, read as 06:29:59.999999."""
    if moment.microsecond >= 500_000:
        return moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment.replace(microsecond=0)


def _shows_time(cell: Any) -> bool:
    """Does the cell's number format show a time of day (h, or s; 'm' alone is a month)?"""
    fmt = str(getattr(cell, "number_format", "") or "").lower()
    # text in quotes, escaped characters and [$-40B] locale tags are not codes
    codes = re.sub(r'"[^"]*"|\\.|\[\$[^\]]*\]', "", fmt)
    return "h" in codes or "s" in codes
