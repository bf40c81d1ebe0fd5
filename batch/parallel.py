"""Large CSV exports mapped on every core, with exactly the results of the sequential mapper.

A Python process maps ~130,000 records a second; a nightly export of a million records is
worth the second core. The file is cut at record boundaries into segments of a few MiB; a
pool of worker processes reads and maps the segments, and the results come back in file
order through a bounded window, so memory stays flat whatever the file's size.

Where a cut can go: after a line feed with an even number of quote characters before it
since the first record — a quoted field never ends there. That holds for the usual
doubled-quote escaping; files whose dialect breaks it (an escape character), whose encoding
can hide a line feed inside a character (UTF-16) or that use lone CRs as line ends, are
mapped sequentially. So is `invoices: {mode: rows}`, whose events span records.

What a segment cannot know — an event id used in an earlier segment — the merge checks,
with the same rule and message as the sequential mapper.
"""

from __future__ import annotations

import codecs
import io
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from batch.config.mapping import Mapping
from batch.mapping import NO_PARTIAL, CompiledMapping, MappedRecord, RecordError, duplicate_id_message
from batch.gctune import fewer_collections
from batch.jsonenc import dumps_event, loads
from batch.readers import DEFAULT_CHUNK_SIZE, FileError, read_csv, read_csv_segment

MIN_PARALLEL_BYTES = 16 << 20  # below this, starting worker processes costs more than it saves
SEGMENT_BYTES = 4 << 20
_SCAN_BLOCK = 8 << 20


@dataclass(frozen=True)
class Segment:
    start: int  # byte offset of the first record (0: the first segment, with banner and header)
    end: int  # byte offset where the next segment starts (the file size for the last)
    first_line: int  # line of the first record (1 for the first segment: it reads its own header)
    footer: int  # trailing records to drop (the mapping's skip_footer, on the last segment only)


def workers_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def why_sequential(mapping: Mapping) -> str | None:
    """Why this mapping's files cannot be cut into segments (None: they can)."""
    if mapping.format != "csv" or mapping.csv is None:
        return "only CSV files are cut into segments"
    if mapping.invoices is not None and mapping.invoices.mode == "rows":
        return "invoices in rows mode merge records across lines"
    options = mapping.csv
    if options.escapechar is not None:
        return "an escape character breaks the quote parity a cut relies on"
    name = codecs.lookup(options.encoding).name
    if name not in ("utf-8", "utf-8-sig") and not _single_byte(name):
        return f"the encoding {options.encoding} is neither UTF-8 nor single-byte"
    return None


def _single_byte(encoding: str) -> bool:
    try:
        return len(bytes(range(256)).decode(encoding, errors="replace")) == 256
    except LookupError:
        return False


def plan_segments(
    path: Path,
    mapping: Mapping,
    workers: int,
    segment_bytes: int = SEGMENT_BYTES,
    min_bytes: int = MIN_PARALLEL_BYTES,
) -> list[Segment] | None:
    """Cut points for `path`, or None when the file is better read in one piece."""
    size = path.stat().st_size
    if workers < 2 or size < min_bytes or why_sequential(mapping) is not None:
        return None
    options = mapping.csv
    assert options is not None
    quote = (options.quotechar or "").encode(options.encoding) if options.quotechar else b""
    targets = list(range(segment_bytes, size, segment_bytes))
    with open(path, "rb") as stream:
        cuts = _cut_points(stream, targets, quote, _skip_lines(options), size)
    if cuts is None or not cuts:
        return None
    segments = []
    starts = [(0, 1)] + cuts
    for index, (start, first_line) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else size
        last = index == len(starts) - 1
        segments.append(Segment(start, end, first_line, options.skip_footer if last else 0))
    return segments


def _skip_lines(options: Any) -> int:
    """Physical lines before the first record that quote parity must not count (banner + header)."""
    return (options.header_line if options.header_line else options.skip_lines) or 0


def _cut_points(
    stream: BinaryIO, targets: list[int], quote: bytes, head_lines: int, size: int
) -> list[tuple[int, int]] | None:
    """[(offset, line)] of the first record boundary at or after each target, in one pass over
    the file; None when the file has lone CR line ends (line numbers would not add up)."""
    cuts: list[tuple[int, int]] = []
    pending = deque(targets)
    offset = lines = quotes = 0  # block start; line feeds and quotes (after the head) before it
    head_left = head_lines  # line feeds still to pass before the first record
    previous_cr = False
    while pending:
        block = stream.read(_SCAN_BLOCK)
        if not block:
            break
        if _lone_cr(block, previous_cr):
            return None
        previous_cr = block.endswith(b"\r")
        scan = 0  # quotes before `scan` in this block are counted
        while head_left and scan < len(block):
            newline = block.find(b"\n", scan)
            if newline < 0:
                scan = len(block)
                break
            scan, head_left = newline + 1, head_left - 1
        while pending and not head_left and pending[0] < offset + len(block):
            newline = block.find(b"\n", max(pending[0] - offset, scan))
            if newline < 0:
                break  # the boundary is in the next block
            position = newline + 1
            if quote:
                quotes += block.count(quote, scan, position)
            scan = position
            if quotes % 2:
                pending[0] = offset + position  # inside a quoted field: try the next line end
                continue
            cut = offset + position
            while pending and pending[0] <= cut:
                pending.popleft()
            if cut < size and (not cuts or cuts[-1][0] < cut):
                cuts.append((cut, lines + block.count(b"\n", 0, position) + 1))
        if quote and not head_left:
            quotes += block.count(quote, scan)
        lines += block.count(b"\n")
        offset += len(block)
    return cuts


def _lone_cr(block: bytes, previous_cr: bool) -> bool:
    lone = block.count(b"\r") - block.count(b"\r\n") - (1 if block.endswith(b"\r") else 0)
    return lone > 0 or (previous_cr and not block.startswith(b"\n"))


# --- workers -------------------------------------------------------------------------------------

_worker_compiled: CompiledMapping | None = None


def _init_worker(mapping: Mapping) -> None:
    global _worker_compiled
    _worker_compiled = CompiledMapping(mapping)


def _map_segment(path: str, segment: Segment, required: list[str], header: list[str] | None, chunk_size: int) -> Any:
    """In a worker: the records of one segment as (line, event) tuples (valid) or MappedRecords."""
    assert _worker_compiled is not None
    compiled = _worker_compiled
    options = compiled.mapping.csv
    run = compiled.start()
    out: list[Any] = []
    try:
        with open(path, "rb") as raw, fewer_collections():
            window = _Window(raw, segment.start, segment.end)
            if segment.start == 0:
                chunks = read_csv(window, options, required, chunk_size, footer=segment.footer)
            else:
                assert header is not None
                chunks = read_csv_segment(window, options, header, segment.first_line, segment.footer, chunk_size)
            columns = None
            for chunk in chunks:
                columns = chunk.columns
                out.append(_compact(run.map_chunk(chunk)))
            out.append(_compact(run.finish()))
    except FileError as exc:
        return ("error", exc.message, exc.line)
    return ("ok", columns, out)


def _compact(records: list[MappedRecord]) -> tuple[list[Any], bytes]:
    """A chunk for the trip to the merge: the line of each valid record (its event in `blob`,
    one JSON document a line — JSON never holds a raw line feed) or the invalid MappedRecord.

    Pickling event dicts cost 9 us a record there and back; JSON text costs 1.5. The events
    are joined per chunk because each bytes object from orjson keeps its 4 KiB working buffer
    (glibc does not hand the shrunk tail back), which grew a worker by 4 KiB a record held."""
    items: list[Any] = []
    payloads: list[bytes] = []
    for record in records:
        if record.event is not None:
            items.append(record.line)
            payloads.append(dumps_event(record.event))
        else:
            items.append(record)
    return items, b"\n".join(payloads)


class _Window(io.RawIOBase):
    """The bytes [start, end) of a file as a seekable stream of their own."""

    def __init__(self, raw: BinaryIO, start: int, end: int):
        self._raw, self._start, self._end = raw, start, end
        self._position = 0
        raw.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._position
        elif whence == 2:
            offset += self._end - self._start
        self._position = max(0, min(offset, self._end - self._start))
        self._raw.seek(self._start + self._position)
        return self._position

    def readinto(self, buffer: Any) -> int:
        left = self._end - self._start - self._position
        if left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), left)]
        count = self._raw.readinto(view)
        self._position += count or 0
        return count or 0


# --- the merge -----------------------------------------------------------------------------------


def parallel_mapped_chunks(
    compiled: CompiledMapping,
    path: Path,
    segments: list[Segment],
    workers: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[list[MappedRecord]]:
    """Like extract.mapped_chunks, on `workers` processes; the same records in the same order."""
    required = compiled.required_columns()
    context = multiprocessing.get_context("spawn")  # safe in a threaded service; fork is not
    merge = _Merge(compiled)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(compiled.mapping,)) as pool:
        first: Future = pool.submit(_map_segment, str(path), segments[0], required, None, chunk_size)
        # the other segments need the header, which the first segment reads and checks
        header = _header_of(path, compiled)
        window: deque[Future] = deque([first])
        upcoming = iter(segments[1:])
        for segment in upcoming:
            window.append(pool.submit(_map_segment, str(path), segment, required, header, chunk_size))
            if len(window) > workers + 1:
                yield from merge.take(window.popleft().result())
        while window:
            yield from merge.take(window.popleft().result())


def _header_of(path: Path, compiled: CompiledMapping) -> list[str]:
    with open(path, "rb") as stream:
        for chunk in read_csv(stream, compiled.mapping.csv, compiled.required_columns(), chunk_size=1):
            return chunk.columns
    raise FileError("the file has no records after its header")


class _Merge:
    """Segment results -> MappedRecords, with the one check a segment cannot make alone."""

    def __init__(self, compiled: CompiledMapping):
        self.compiled = compiled
        self.seen: dict[str, int] = {}
        self.id_source = compiled.id_source_label()

    def take(self, result: Any) -> Iterator[list[MappedRecord]]:
        if result[0] == "error":
            raise FileError(result[1], result[2])
        seen = self.seen
        for items, blob in result[2]:
            events = iter(blob.split(b"\n")) if blob else iter(())
            records: list[MappedRecord] = []
            for item in items:
                if type(item) is int:
                    line, event = item, loads(next(events))
                    event_id = event.get("id")
                    if event_id:
                        first = seen.setdefault(event_id, line)
                        if first != line:
                            records.append(self._repeated(line, event, first))
                            continue
                    records.append(MappedRecord(line, event, (), NO_PARTIAL))
                else:
                    self._check_invalid(item)
                    records.append(item)
            if records:
                yield records

    def _repeated(self, line: int, event: dict, first: int) -> MappedRecord:
        partial = {key: event[key] for key in ("id", "usageplacecode", "status") if key in event}
        error = RecordError(line, "id", self.id_source, event["id"], duplicate_id_message(first))
        return MappedRecord(line, None, [error], partial)

    def _check_invalid(self, record: MappedRecord) -> None:
        """The merge sees the whole file: its first line for an id replaces a segment's."""
        event_id = record.partial.get("id") if record.partial else None
        if not event_id:
            return
        first = self.seen.setdefault(event_id, record.line)
        if first == record.line:
            return
        error = RecordError(record.line, "id", self.id_source, event_id, duplicate_id_message(first))
        for index, existing in enumerate(record.errors):
            if existing.field == "id" and existing.message.startswith(duplicate_id_message(0)[:24]):
                record.errors[index] = error
                return
        record.errors.append(error)

