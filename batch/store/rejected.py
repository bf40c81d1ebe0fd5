"""The rejected-rows file: the original records of every invalid and rejected record of a file.

Written next to the receipt as ``NAME.rejected.<ext>`` so that the legacy team fixes those
records and drops the file again; the feed's mapping reads it like the original:

- CSV and fixed-width lines: the original lines (a record over several lines whole), in the
  file's encoding (a byte order mark kept), with the lines above the first record (banner,
  header) and the footer lines (``skip_footer``) as they were;
- fixed-length records (``record_length``): the original bytes of the header records, the
  chosen records and the trailer records;
- XML: the original record elements, inside the original root element and the record's
  ancestors (their namespaces and attributes), in a valid UTF-8 document;
- a workbook (.xlsx): a CSV (UTF-8, comma) with the header row and the cell values as the
  mapping saw them (a workbook is not rewritten);
- a gzip or zip file: what is inside, uncompressed.

Memory stays bounded: the records are chosen by their line (the journal's, in line order)
while the input is read again as a stream; nothing holds the whole file.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import glob
import hashlib
import io
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from lxml import etree

from batch.config.inbox import InboxSettings, LocalLocation
from batch.config.mapping import CsvOptions, FixedOptions, Mapping, XlsxOptions, XmlOptions
from batch.errors import InputFileError
from batch.fsutil import NAME_MAX, atomic_writer, fit_name, real_name
from batch.syntax.xmlpaths import clark_steps
from batch.transform.compressed import opened_export
from batch.transform.fixed import is_ebcdic, read_exactly, read_fixed
from batch.transform.readers import PARSER_OPTIONS, detect_encoding, path_matcher, read_csv
from batch.transform.records import Chunk

REJECTED_INFIX = ".rejected."
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zip")
_DEFAULT_EXTENSIONS = {"csv": "csv", "fixed": "txt", "xml": "xml", "xlsx": "csv"}
_LINES = re.compile(r"\r\n|\r|\n")
_EBCDIC_LINES = re.compile(r"\r\n|\r|\n|\x85")  # the fixed-width reader's separators (cp037 NL)
_BLOCK = 1 << 16


def rejected_name(input_name: str, fmt: str) -> str:
    """``export.csv`` -> ``export.csv.rejected.csv``; a workbook's is a CSV
    (``billing.xlsx.rejected.csv``); a compressed file's has the extension of what is inside
    (``export.csv.gz.rejected.csv``; a zip: the format's, ``export.zip.rejected.xml``)."""
    name = real_name(os.path.basename(input_name))
    ext = _DEFAULT_EXTENSIONS[fmt]
    if fmt != "xlsx":
        inner = name
        for compressed in _COMPRESSED_SUFFIXES:
            if inner.lower().endswith(compressed):
                inner = inner[: -len(compressed)]
                break
        stem, dot, found = inner.rpartition(".")
        if dot and stem and 0 < len(found) <= 8 and found.isalnum():
            ext = found
    suffix = REJECTED_INFIX + ext
    return fit_name(name, NAME_MAX - len(suffix.encode("utf-8"))) + suffix


def write_rejected(directory: Path, input_name: str, source: Path, mapping: Mapping,
                   lines: Iterable[int]) -> Path | None:
    """Write ``NAME.rejected.<ext>`` into `directory` with the records of `source` (the file as
    processed) that start on `lines` (ascending). None, and an earlier such file of the same
    name removed, when `lines` is empty. Raises OSError (the receipt's folder) like a receipt."""
    path = directory / rejected_name(input_name, mapping.format)
    chosen = iter(lines)
    first = next(chosen, None)
    if first is None:
        path.unlink(missing_ok=True)  # an earlier drop of this name had some; this one has none
        return None
    wanted = _chain(first, chosen)
    with atomic_writer(path, what="write the rejected rows") as out:
        if mapping.format == "xlsx":
            _workbook(source, mapping, wanted, out)
        else:
            with open(source, "rb") as raw, opened_export(raw, mapping.compression) as stream:
                if mapping.format == "xml":
                    assert mapping.xml is not None
                    _xml(stream, mapping.xml, wanted, out)
                elif mapping.format == "fixed" and mapping.fixed is not None and mapping.fixed.record_length:
                    _fixed_records(stream, mapping.fixed, wanted, out)
                else:
                    _lines(source, mapping, stream, wanted, out)
    return path


class ArchivedEntry(Protocol):
    """One file of an archive listing (batch.inbox.base.FileStat)."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...


class Archive(Protocol):
    """What `original_from_archive` needs of a feed's inbox: batch.inbox.base.Inbox's read-only
    archive access (named by its shape here: the store does not import the inbox layer)."""

    def list_archive(self) -> Sequence[ArchivedEntry]: ...

    def fetch_archived(self, name: str, staging_dir: Path, max_bytes: int,
                       on_data: Callable[[bytes], None] | None = None) -> Path: ...


def original_names(name: str, archived: Iterable[str]) -> list[str]:
    """The names in archive/ (of `archived`) that may hold the processed file `name`: its own
    name first, then the names stamped when archive/ held one already (``export.<stamp>.csv``,
    batch.inbox.base.stamped_name), the newest stamp first."""
    real = real_name(os.path.basename(name))
    stem, dot, ext = real.rpartition(".")
    pattern = f"{glob.escape(stem)}.*.{glob.escape(ext)}" if dot and stem else f"{glob.escape(real)}.*"
    names = set(archived)
    stamped = sorted((one for one in names if one != real and fnmatch.fnmatchcase(one, pattern)), reverse=True)
    return ([real] if real in names else []) + stamped


@contextmanager
def original_from_archive(archive: Archive, staging_dir: Path, name: str, size: int,
                          sha256: str) -> Iterator[Path | None]:
    """The processed file `name` as its feed's archive/ holds it (`original_names`), recognised
    by its size and sha256, to write its rejected-rows file again (`retry`): a copy fetched into
    `staging_dir` through the feed's inbox, local or SFTP -- only candidates of the right size
    are fetched, each hashed while it is copied, and no more than that size is read -- removed
    when the block ends. None when it is not there. The inbox's own errors (the server cannot be
    reached, the staging disk is full) are raised: the caller says why it was not rewritten."""
    sized = [entry.name for entry in archive.list_archive() if entry.size == size]
    found: Path | None = None
    try:
        for candidate in original_names(name, sized):
            digest = hashlib.sha256()
            try:
                copy = archive.fetch_archived(candidate, staging_dir, size, digest.update)
            except (FileNotFoundError, InputFileError):
                continue  # gone since the listing, or not the file listed any more (grown, replaced)
            if digest.hexdigest() == sha256:
                found = copy
                break
            copy.unlink(missing_ok=True)
        yield found
    finally:
        if found is not None:
            found.unlink(missing_ok=True)


def archived_original(settings: InboxSettings, name: str, size: int, sha256: str) -> Path | None:
    """A processed file in place in its local feed's archive/ (`original_names`), recognised by
    its size and sha256, for the console's file page to serve from there; None when it is not
    there, and for an SFTP feed. (`retry` fetches the original through the inbox instead, for
    any feed: `original_from_archive`.)"""
    location = settings.location
    if not isinstance(location, LocalLocation):
        return None
    archive = Path(settings.archive_dir)
    archive = archive if archive.is_absolute() else location.path / archive
    try:
        for candidate in (archive / one for one in original_names(name, os.listdir(archive))):
            if (candidate.is_file() and not candidate.is_symlink() and candidate.stat().st_size == size
                    and _sha256(candidate) == sha256):
                return candidate
    except OSError:
        return None
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _chain(first: int, rest: Iterator[int]) -> Iterator[int]:
    yield first
    yield from rest


# --------------------------------------------------------------------------- lines


def _lines(source: Path, mapping: Mapping, stream: BinaryIO, wanted: Iterator[int], out: BinaryIO) -> None:
    """CSV and fixed width, one record a line: the head lines, the chosen records' lines, the footer."""
    options: CsvOptions | FixedOptions
    if mapping.format == "csv":
        assert mapping.csv is not None
        options = mapping.csv
        head = (options.header_line or 0) or options.skip_lines
    else:
        assert mapping.fixed is not None
        options = mapping.fixed
        head = options.skip_lines
    spans = _record_spans(source, mapping, wanted)
    buffered = cast(io.BufferedReader, stream)  # opened_export hands a buffered stream
    encoding = detect_encoding(buffered.peek(4)[:4], options.encoding)
    text = io.TextIOWrapper(buffered, encoding=encoding, newline="", errors="strict")
    writer = codecs.getincrementalencoder(_writing_encoding(buffered.peek(4)[:4], encoding))()
    separators = _EBCDIC_LINES if is_ebcdic(encoding) else _LINES
    footer: deque[tuple[str, bool]] = deque(maxlen=options.skip_footer)  # last non-blank lines, written?
    span = next(spans, None)
    for number, line in enumerate(_physical_lines(text, separators), start=1):
        chosen = number <= head
        while span is not None and span[1] < number:
            span = next(spans, None)
        if span is not None and span[0] <= number <= span[1]:
            chosen = True
        if chosen:
            out.write(writer.encode(line))
        if options.skip_footer and number > head and line.strip(" \t\r\n\x85\x00"):
            footer.append((line, chosen))
    for line, written in footer:
        if not written:
            out.write(writer.encode(line))
    out.write(writer.encode("", final=True))
    text.detach()


def _writing_encoding(head: bytes, reading: str) -> str:
    """The encoding that writes what was read: a byte order mark only when the input had one."""
    has_bom = head.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if not has_bom and codecs.lookup(reading).name == "utf-8-sig":
        return "utf-8"
    return reading


def _physical_lines(text: io.TextIOWrapper, separators: re.Pattern[str]) -> Iterator[str]:
    """The lines of `text` with their separators, split where the readers split them."""
    pending = ""
    while block := text.read(_BLOCK):
        pending += block
        position = 0
        for match in separators.finditer(pending):
            if match.end() == len(pending) and match.group() == "\r":
                break  # a CR at a block's end may be the first half of CRLF
            yield pending[position : match.end()]
            position = match.end()
        pending = pending[position:]
    if pending:
        yield from (piece for piece in _split_last(pending, separators) if piece)


def _split_last(pending: str, separators: re.Pattern[str]) -> Iterator[str]:
    position = 0
    for match in separators.finditer(pending):
        yield pending[position : match.end()]
        position = match.end()
    yield pending[position:]


def _record_spans(source: Path, mapping: Mapping, wanted: Iterator[int]) -> Iterator[tuple[int, int]]:
    """(first, last) physical line of each chosen record, from a second pass of the feed's own
    reader: a CSV record with a quoted line break runs over several lines (the reader's spans),
    and in `rows` mode an event's later rows (the same id, next to each other) go with it."""
    id_column = _rows_mode_id_column(mapping)
    with open(source, "rb") as raw, opened_export(raw, mapping.compression) as stream:
        if mapping.format == "csv":
            assert mapping.csv is not None
            chunks = read_csv(stream, mapping.csv, [])
        else:
            assert mapping.fixed is not None
            chunks = read_fixed(stream, mapping.fixed, [])
        yield from _grouped(chunks, wanted, id_column)


def _rows_mode_id_column(mapping: Mapping) -> str | None:
    """The id column that merges rows into one event (`invoices.mode: rows`), else None."""
    if mapping.invoices is None or mapping.invoices.mode != "rows" or mapping.fields.id is None:
        return None
    return mapping.fields.id.column


def _grouped(chunks: Iterable[Chunk], wanted: Iterator[int], id_column: str | None) -> Iterator[tuple[int, int]]:
    target = next(wanted, None)
    group: list[Any] | None = None  # [first, last, id] of the chosen event being extended
    for chunk in chunks:
        index = chunk.columns.index(id_column) if id_column in chunk.columns else None
        for position, line in enumerate(chunk.lines):
            last = chunk.spans.get(line, line)
            value = None if index is None or index >= len(chunk.rows[position]) else str(
                chunk.rows[position][index]).strip()
            if group is not None:
                if value is not None and value == group[2]:
                    group[1] = last
                    continue
                yield group[0], group[1]
                group = None
            while target is not None and target < line:
                yield target, target  # not a record start the reader sees: the line alone
                target = next(wanted, None)
            if target == line:
                target = next(wanted, None)
                if index is None:
                    yield line, last
                else:
                    group = [line, last, value]
        if target is None and group is None:
            return
    if group is not None:
        yield group[0], group[1]
    while target is not None:
        yield target, target
        target = next(wanted, None)


# --------------------------------------------------------------------------- fixed-length records


def _fixed_records(stream: BinaryIO, options: FixedOptions, wanted: Iterator[int], out: BinaryIO) -> None:
    size = options.record_length
    assert size is not None
    footer: deque[tuple[bytes, bool]] = deque(maxlen=options.skip_footer)
    target = next(wanted, None)
    number = 0
    while data := read_exactly(stream, size):
        number += 1
        while target is not None and target < number:
            target = next(wanted, None)
        chosen = number <= options.skip_lines or number == target
        if chosen:
            out.write(data)
        if options.skip_footer and number > options.skip_lines:
            footer.append((data, chosen))
    for data, written in footer:
        if not written:
            out.write(data)


# --------------------------------------------------------------------------- XML


def _xml(stream: BinaryIO, options: XmlOptions, wanted: Iterator[int], out: BinaryIO) -> None:
    """The chosen record elements (by the line of their start tag) inside the original root
    element and each record's ancestors, re-opened where the ancestors change."""
    namespaces = dict(options.namespaces)
    steps = clark_steps(options.record_path, namespaces)
    record_tag = steps[-1][1]
    matches = path_matcher(steps)
    target = next(wanted, None)
    pending: Any = None
    opened: list[tuple[Any, ExitStack]] = []  # the ancestors open in the output, outermost first
    with etree.xmlfile(out, encoding="utf-8") as document:
        document.write_declaration()
        for event, element in etree.iterparse(stream, events=("start", "end"), **PARSER_OPTIONS):
            if event == "start":
                if pending is None and element.tag == record_tag and matches(element):
                    pending = element
                continue
            if element is not pending:
                if pending is None:
                    _release(element)
                continue
            pending = None
            line = element.sourceline or 0
            while target is not None and target < line:
                target = next(wanted, None)
            if target == line:
                _open_ancestors(document, element, opened)
                element.tail = None
                document.write("\n", element)
            _release(element)
        for _, stack in reversed(opened):
            document.write("\n")
            stack.close()
    out.write(b"\n")


def _open_ancestors(document: Any, element: Any, opened: list[tuple[Any, ExitStack]]) -> None:
    chain = list(element.iterancestors())[::-1]
    keep = 0
    while keep < len(opened) and keep < len(chain) and opened[keep][0] is chain[keep]:
        keep += 1
    for _, stack in reversed(opened[keep:]):
        document.write("\n")
        stack.close()
    del opened[keep:]
    for ancestor in chain[keep:]:
        parent = ancestor.getparent()
        inherited = {} if parent is None else parent.nsmap
        declared = {prefix: uri for prefix, uri in ancestor.nsmap.items() if inherited.get(prefix) != uri}
        stack = ExitStack()
        stack.enter_context(document.element(ancestor.tag, dict(ancestor.attrib), nsmap=declared))
        opened.append((ancestor, stack))


def _release(element: Any) -> None:
    """Free what has been read: the element's content and the siblings before it (an open
    ancestor in the output stays: only its earlier children go)."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


# --------------------------------------------------------------------------- workbooks


def _with_header(chunks: Iterator[Chunk], writer: Any) -> Iterator[Chunk]:
    """The chunks, the header row written before the first."""
    first = True
    for chunk in chunks:
        if first:
            writer.writerow(chunk.columns)
            first = False
        yield chunk


def _workbook(source: Path, mapping: Mapping, wanted: Iterator[int], out: BinaryIO) -> None:
    """A CSV (UTF-8, comma) with the sheet's header row and the chosen rows' cell values."""
    from batch.transform.workbook import read_xlsx  # only workbook feeds pay for importing openpyxl

    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\r\n")
    with open(source, "rb") as stream:
        chunks = _with_header(read_xlsx(stream, mapping.xlsx or XlsxOptions(), [], mapping.compression), writer)
        # the rows of the chunk being read and of the one before, by row number: a span is
        # known while its chunk is read, or (an event's rows in rows mode) when the next begins
        rows: dict[int, list[str]] = {}
        before: list[int] = []

        def remembered(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
            for chunk in chunks:
                for number in before:
                    rows.pop(number, None)
                before[:] = [number for number in rows]
                rows.update(zip(chunk.lines, chunk.rows))
                yield chunk

        written = 0
        for first, last in _grouped(remembered(chunks), wanted, _rows_mode_id_column(mapping)):
            for number in range(max(first, written + 1), last + 1):
                if number in rows:
                    writer.writerow(rows[number])
            written = last
    text.flush()
    text.detach()
