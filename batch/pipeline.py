"""One file, end to end: register, read + map into the journal, deliver, receipt.

The journal is what makes this safe to kill at any moment: every record is journaled before
anything is sent, every result as soon as it is known, and a rerun on the same content
resumes the unfinished file instead of starting over. Nothing here knows where the file came
from: the service (or the `process` command) hands over a local path and a receipt folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from batch.config.api import DeliverySettings
from batch.config.mapping import Mapping, XlsxOptions
from batch.config.service import ReceiptOptions
from batch.delivery.ropo import RopoClient
from batch.delivery.scheduler import CircuitBreaker, DeliveryReport, Outcome, Outgoing, State, deliver
from batch.errors import ExitStatus, TransientError
from batch.fsutil import display_name
from batch.store.journal import (
    OUTCOMES,
    FileRecord,
    FileState,
    JournalMisuse,
    JournalStore,
    NewEvent,
    Result,
    ValidEvents,
    this_process,
)
from batch.store.receipts import ReceiptFormat, ReceiptPaths, write_file_level_receipt, write_receipt
from batch.store.rejected import write_rejected
from batch.strenum import StrEnum
from batch.transform.extract import mapped_file
from batch.transform.fixed import is_ebcdic
from batch.transform.mapping import CompiledMapping, MappedRecord, ValidChunk
from batch.transform.readers import FileError

log = logging.getLogger(__name__)

class FileStatus(StrEnum):
    """How processing one file ended (FileOutcome.status)."""

    DONE = "done"                # every event has its final state; the receipt is written
    SKIPPED = "skipped"          # the same content was processed before: nothing sent
    ERROR = "error"              # the file as a whole cannot be used (file-level receipt)
    INTERRUPTED = "interrupted"  # a stop request came first: resume it
    AUTH_FAILED = "auth_failed"  # the API refused the credentials: resume it once fixed


#: The file outcomes that mean "could not run" for an exit status.
_UNUSABLE_STATUSES = frozenset({FileStatus.ERROR, FileStatus.AUTH_FAILED, FileStatus.INTERRUPTED})
HASH_BLOCK = 1 << 20
JOURNAL_BATCH = 5000  # mapped records written to the journal in one transaction


@dataclass(frozen=True)
class FeedRuntime:
    """What processing needs of a feed: its name, its compiled mapping, its receipt format,
    and the mapping's version (a hash of the loaded mapping, recorded with each file)."""

    name: str
    compiled: CompiledMapping
    receipt_format: ReceiptFormat
    mapping_version: str = "unknown"

    @classmethod
    def build(cls, name: str, mapping: Mapping, options: ReceiptOptions | None = None) -> FeedRuntime:
        return cls(name, CompiledMapping(mapping), receipt_format_for(mapping, options or ReceiptOptions()),
                   mapping_version(mapping))


def mapping_version(mapping: Mapping) -> str:
    """A short hash of the mapping as loaded (comments and formatting do not change it)."""
    return hashlib.sha256(mapping.model_dump_json().encode("utf-8")).hexdigest()[:12]


class StorageFault(TransientError):
    """A local folder of ours refused a step (disk full, read-only, I/O error, permission):
    not the input file's fault. Names the operation and the path; the file stays to resume."""

    def __init__(self, operation: str, path: Path, cause: OSError) -> None:
        if hasattr(cause, "operation"):  # already names its operation and path (fsutil.named_error)
            message = str(cause)
        else:
            where = display_name(os.fspath(cause.filename if cause.filename else path))
            message = f"{operation}: {where}: {cause.strerror or cause}"
        super().__init__(message)
        self.operation, self.path, self.cause = operation, path, cause


class ReceiptNotWritten(StorageFault):
    """The journal has finished the file (`file`), but its receipt could not be written."""

    def __init__(self, path: Path, cause: OSError, file: FileRecord | None) -> None:
        super().__init__("writing the receipt", path, cause)
        self.file = file


def write_receipt_or_fault(write: Callable[[], ReceiptPaths], receipt_dir: Path,
                           file: FileRecord | None = None) -> ReceiptPaths:
    """Write a receipt; an OSError becomes ReceiptNotWritten naming the receipt folder."""
    try:
        return write()
    except OSError as exc:
        raise ReceiptNotWritten(receipt_dir, exc, file) from exc


def receipt_format_for(mapping: Mapping, options: ReceiptOptions) -> ReceiptFormat:
    """The receipt speaks the input's dialect unless the feed says otherwise; but an EBCDIC
    feed's receipt is UTF-8: people and the legacy team read receipts on ordinary systems (its
    rejected-rows file keeps the feed's encoding, to be dropped again)."""
    encoding, delimiter = "utf-8", ","
    if mapping.format == "csv" and mapping.csv is not None:
        encoding, delimiter = mapping.csv.encoding, mapping.csv.delimiter
    elif mapping.format == "fixed" and mapping.fixed is not None:
        encoding = mapping.fixed.encoding
    if is_ebcdic(encoding):
        encoding = "utf-8"
    return ReceiptFormat(
        delimiter=options.delimiter or delimiter,
        quotechar=options.quotechar,
        lineterminator="\r\n" if options.line_ending == "crlf" else "\n",
        encoding=options.encoding or encoding,
        # a workbook's lines are rows of this sheet: its receipts say which (receipts.ReceiptFormat)
        sheet=(mapping.xlsx or XlsxOptions()).sheet if mapping.format == "xlsx" else None,
    )


@dataclass
class FileOutcome:
    """How processing one file ended, for the caller to report, archive and set exit codes."""

    status: FileStatus
    file: FileRecord | None
    receipt: ReceiptPaths | None = None
    message: str | None = None
    delivery: DeliveryReport | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.file.counts) if self.file else {}

    @property
    def all_accepted(self) -> bool:
        """Every record ended accepted (or was a duplicate of an accepted one)."""
        if self.status != FileStatus.DONE:
            return False
        counts = self.counts
        return not any(counts.get(outcome, 0) for outcome in ("rejected", "invalid", "failed", "not_sent", "pending"))

    @property
    def final(self) -> bool:
        """The input can be archived (done/skipped) or put in error/; otherwise leave it to resume."""
        return self.status in (FileStatus.DONE, FileStatus.ERROR, FileStatus.SKIPPED)

    @property
    def exit_status(self) -> ExitStatus:
        """The exit status this outcome calls for (`process`, `retry`, `run --once`): the one place
        that decides it."""
        if self.status in _UNUSABLE_STATUSES:
            return ExitStatus.UNUSABLE
        return ExitStatus.OK if self.all_accepted else ExitStatus.PROBLEMS


@dataclass
class Progress:
    """Callbacks for a progress display; every one optional."""

    on_recorded: Callable[[int], None] | None = None  # records journaled so far
    on_delivery_start: Callable[[int], None] | None = None  # events to send
    on_result: Callable[[Outcome], None] | None = None


def file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


#: The outcomes whose records go into the rejected-rows file, to be fixed and dropped again.
REJECTED_OUTCOMES = frozenset({"invalid", "rejected"})


def new_event(record: MappedRecord) -> NewEvent:
    if record.event is not None:
        return NewEvent.valid(record.line, record.event)
    return NewEvent.invalid(record.line, "; ".join(error.describe() for error in record.errors), record.partial or None,
                            [error.as_dict() for error in record.errors])


@dataclass
class Processor:
    """Processes files with one journal, one API client and one set of delivery limits."""

    journal: JournalStore
    client: RopoClient
    delivery: DeliverySettings
    stop: threading.Event = field(default_factory=threading.Event)
    journal_batch: int = JOURNAL_BATCH
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)  # held across files (F6)
    # fencing (batch.store.leases): called before every receipt is written; raises to refuse
    fence: Callable[[], None] | None = None

    def process(
        self,
        path: Path,
        feed: FeedRuntime,
        receipt_dir: Path,
        *,
        name: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
        resumed: bool = False,
        earlier: dict[str, FeedRuntime] | None = None,
    ) -> FileOutcome:
        """Process the file at `path` (its name as dropped: `name`, default the path's).

        `resumed`: the file was taken back from processing/ (a kill or a failure stopped it);
        if the journal finished it already, only its receipt is written again. `earlier`:
        mappings of this feed still loaded, by version, for a file recorded with one of them.
        A receipt that cannot be written raises StorageFault (the journal keeps the result)."""
        name = display_name(name or path.name)  # D6: a name that is not UTF-8 is stored escaped
        progress = progress or Progress()
        sha256, size = file_digest(path)
        if resumed:
            finished = self.journal.finished_as(feed.name, sha256, name)
            if finished is not None:
                # finished by the journal, then stopped before its archive move (a kill, a
                # receipt that could not be written): its receipt is the real one, written
                # again; no "already processed" receipt, no skipped row
                log.info("%s: finished before as file #%d (%s); writing its receipt again", name,
                         finished.id, finished.state)
                return self._finished_again(finished, feed, receipt_dir, path)
        begun = self.journal.begin_file(name, sha256, size, feed.name, force=force)
        file = begun.file
        if begun.outcome == "already_processed":
            log.info("%s: already processed as %s; nothing sent", name, begun.original.name if begun.original else "?")
            receipt = self._receipt(
                lambda: write_file_level_receipt(receipt_dir, file, feed.receipt_format), receipt_dir, file)
            return FileOutcome(FileStatus.SKIPPED, file, receipt, file.error)
        if begun.outcome == "resumed":
            log.info("%s: resuming file #%d after an interruption", name, file.id)
        record_with = self._mapping_for(file, feed, earlier or {})
        if record_with is None:  # recording started over with the current mapping
            record_with, file = feed, self.journal.get_file(file.id)

        if not file.recorded:
            try:
                self._record(path, file.id, record_with, progress)
            except FileError as exc:
                message = f"{name}: {exc}"
                log.error("%s", message)
                file = self.journal.finish_file(file.id, "error", error=str(exc))
                receipt = self._receipt(
                    lambda: write_file_level_receipt(receipt_dir, file, feed.receipt_format), receipt_dir, file)
                return FileOutcome(FileStatus.ERROR, file, receipt, str(exc))
            self.journal.mark_recorded(file.id)
        return self._deliver_and_finish(file.id, feed, receipt_dir, progress, include_failed=False, source=path)

    def _finished_again(self, file: FileRecord, feed: FeedRuntime, receipt_dir: Path, source: Path) -> FileOutcome:
        receipt = self.write_receipt_of(file, feed, receipt_dir, source)
        status = FileStatus(file.state) if file.state in (FileStatus.DONE, FileStatus.SKIPPED) else FileStatus.ERROR
        return FileOutcome(status, file, receipt, None if status == FileStatus.DONE else file.error)

    def write_receipt_of(self, file: FileRecord, feed: FeedRuntime, receipt_dir: Path,
                         source: Path | None = None) -> ReceiptPaths:
        """(Re)write the receipt of a finished file from the journal: one row per event for a
        done file (and its rejected-rows file, read from `source`, the file as processed, when
        given), the file-level one otherwise. Raises ReceiptNotWritten."""
        if file.state == "done":
            return self._done_receipt(file, feed, receipt_dir, source)
        return self._receipt(
            lambda: write_file_level_receipt(receipt_dir, file, feed.receipt_format), receipt_dir, file)

    def _receipt(self, write: Callable[[], ReceiptPaths], receipt_dir: Path, file: FileRecord) -> ReceiptPaths:
        """Write a receipt (and what goes with it) under the feed's lease: the fence first."""
        if self.fence is not None:
            self.fence()
        return write_receipt_or_fault(write, receipt_dir, file)

    def _done_receipt(self, file: FileRecord, feed: FeedRuntime, receipt_dir: Path,
                      source: Path | None) -> ReceiptPaths:
        """The rejected-rows file (when `source` is there to read the records from), then the
        receipt that names it; an OSError of either raises ReceiptNotWritten."""
        journal = self.journal

        def write() -> ReceiptPaths:
            rejected = None
            if source is not None:
                rejected = self._write_rejected(file, feed, receipt_dir, source)
            return write_receipt(receipt_dir, file, journal.file_events(file.id), feed.receipt_format, rejected)

        return self._receipt(write, receipt_dir, file)

    def _write_rejected(self, file: FileRecord, feed: FeedRuntime, receipt_dir: Path, source: Path) -> Path | None:
        lines = (event.line for event in self.journal.file_events(file.id) if event.outcome in REJECTED_OUTCOMES)
        try:
            return write_rejected(receipt_dir, file.name, source, feed.compiled.mapping, lines)
        except (FileError, ValueError, SyntaxError) as exc:  # read once already; changed since?
            log.error("%s: the rejected-rows file could not be written: %s", file.name, exc)
            return None

    def _mapping_for(self, file: FileRecord, feed: FeedRuntime,
                     earlier: dict[str, FeedRuntime]) -> FeedRuntime | None:
        """The mapping to (go on) record the file with: one file is mapped with one version.

        A new file (or one from a journal before versions) gets the current one. A resumed
        file recorded with another version uses that version if it is still loaded
        (`earlier`); otherwise, if nothing was sent, its recording starts over with the
        current one (returns None); if events were sent, they were all recorded already and
        go out as recorded. Each choice is logged and noted for the receipt summary."""
        journal, recorded_with = self.journal, file.mapping_version
        if recorded_with is None or recorded_with == feed.mapping_version:
            if recorded_with is None:
                journal.set_mapping_version(file.id, feed.mapping_version)
            return feed
        if recorded_with in earlier:
            log.info("%s: resuming with mapping version %s it was recorded with (now %s)", file.name,
                     recorded_with, feed.mapping_version)
            return earlier[recorded_with]
        if not journal.sent_any(file.id):
            note = (f"The mapping changed (version {recorded_with} -> {feed.mapping_version}) before any event "
                    f"was sent; the file was recorded over with version {feed.mapping_version}.")
            log.warning("%s: recorded with mapping version %s, now %s, and nothing was sent yet: "
                        "recording the file over with %s", file.name, recorded_with, feed.mapping_version,
                        feed.mapping_version)
            journal.restart_recording(file.id, feed.mapping_version)
            journal.add_note(file.id, note)
            return None
        if not file.recorded:  # cannot happen: every record is journaled before any is sent
            raise JournalMisuse(f"{file.name}: file #{file.id} sent events before it was fully recorded")
        note = (f"The mapping changed (version {recorded_with} -> {feed.mapping_version}) after events were "
                f"sent; every event went out as recorded with version {recorded_with}.")
        log.warning("%s: recorded with mapping version %s, now %s, and events were sent already: "
                    "delivering the rest as recorded with %s", file.name, recorded_with, feed.mapping_version,
                    recorded_with)
        journal.add_note(file.id, note)
        return feed

    def give_up(self, feed: FeedRuntime, name: str, size: int, error: str, receipt_dir: Path) -> FileOutcome:
        """Close a file that cannot be processed (it failed too often) as error: its pending
        events become not_sent; a file the journal never knew (it could not be read at all) gets
        a record for its receipt only. Then its file-level receipt, under the fence. Raises
        ReceiptNotWritten (a disk), JournalError."""
        journal = self.journal
        record = journal.unfinished_named(feed.name, name)
        if record is not None:
            record = journal.finish_file(record.id, FileState.ERROR, error=error)
        else:
            now = journal.clock()
            record = FileRecord(0, name, "", size, feed.name, FileState.ERROR, now, now, error,
                                dict.fromkeys(OUTCOMES, 0), False, None, this_process())
        file = record

        def write() -> ReceiptPaths:
            receipt_dir.mkdir(parents=True, exist_ok=True)
            return write_file_level_receipt(receipt_dir, file, feed.receipt_format)

        return FileOutcome(FileStatus.ERROR, file, self._receipt(write, receipt_dir, file), error)

    def retry(
        self, file_id: int, feed: FeedRuntime, receipt_dir: Path, progress: Progress | None = None,
        source: Path | None = None,
    ) -> FileOutcome:
        """Send a file's failed (and any pending) events again, then rewrite its receipt (and its
        rejected-rows file, from `source`: the original as archived, when it can be found)."""
        return self._deliver_and_finish(file_id, feed, receipt_dir, progress or Progress(), include_failed=True,
                                        source=source)

    # -- steps ------------------------------------------------------------------------------------

    def _record(self, path: Path, file_id: int, feed: FeedRuntime, progress: Progress) -> None:
        """Read and map the whole file into the journal before anything is sent.

        A file-level fault (bad encoding, broken XML) half-way through raises FileError; the
        events recorded so far were never sent, and the file ends in error."""
        recorded = batched = 0
        batch: list[NewEvent | ValidEvents] = []
        run = feed.compiled.start()
        for records in mapped_file(feed.compiled, path, run=run):
            # each chunk's events serialised while they are still in the CPU cache (see NewEvent)
            if isinstance(records, ValidChunk):
                batch.append(ValidEvents(records.lines, records.events))
            else:
                batch += map(new_event, records)
            batched += len(records)
            if batched >= self.journal_batch:
                recorded = self._journal(file_id, batch, batched, progress, recorded)
                batch, batched = [], 0
        if batch:
            self._journal(file_id, batch, batched, progress, recorded)
        # not events, so not in the counts per outcome: a count of its own (set, not added: a
        # file recorded again after a kill counts them again)
        self.journal.set_filtered(file_id, run.filtered)

    def _journal(self, file_id: int, batch: list[NewEvent | ValidEvents], records: int, progress: Progress,
                 before: int) -> int:
        """Record a batch (of `records` records) in one transaction; returns how many records are
        recorded so far."""
        self.journal.record_events(file_id, batch)
        recorded = before + records
        if progress.on_recorded:
            progress.on_recorded(recorded)
        return recorded

    def _deliver_and_finish(
        self, file_id: int, feed: FeedRuntime, receipt_dir: Path, progress: Progress, include_failed: bool,
        source: Path | None = None,
    ) -> FileOutcome:
        journal = self.journal
        if progress.on_delivery_start:
            counts = journal.file_counts(file_id)
            progress.on_delivery_start(counts["pending"] + (counts["failed"] if include_failed else 0))
        items = (
            Outgoing(event.line, event.usageplacecode, event.payload_json.encode("utf-8"))
            for event in journal.to_send(file_id, include_failed=include_failed)
            if event.payload_json is not None
        )

        results: list[Result] = []

        def on_result(item: Outgoing, outcome: Outcome) -> None:
            if outcome.state is not State.PENDING:  # pending: stopped before it was sent
                rejected = outcome.state is State.REJECTED
                results.append(Result(
                    file_id, item.key, outcome.state.value,
                    http_status=outcome.status, message=outcome.message or None, attempts=outcome.attempts,
                    title=outcome.title if rejected else None, detail=outcome.detail if rejected else None,
                ))
            if progress.on_result:
                progress.on_result(outcome)

        def on_batch_done() -> None:
            # one transaction per batch of results; delivery counts these events as in flight
            # until this returns, so a kill can make a rerun re-send at most max_in_flight
            if results:
                journal.record_results(results)
                results.clear()

        report = deliver(items, self.client, self.delivery, on_result, stop=self.stop, on_batch_done=on_batch_done,
                         breaker=self.breaker)
        if report.auth_error:
            journal.flush()
            file = journal.get_file(file_id)
            return FileOutcome(FileStatus.AUTH_FAILED, file, None, report.auth_error, report)
        # pending events left: stopped (also by a stop that is no longer set: a lease not known to
        # be valid for a moment, LeaseStop, halts the delivery and is clear again once renewed)
        if journal.file_counts(file_id)["pending"]:
            journal.flush()
            return FileOutcome(FileStatus.INTERRUPTED, journal.get_file(file_id), None,
                               "stopped before every event was sent", report)
        file = journal.get_file(file_id)
        if file.finished:
            file = journal.refresh_counts(file_id)
            journal.flush()
        else:
            file = journal.finish_file(file_id, "done")
        receipt = self._done_receipt(file, feed, receipt_dir, source)
        return FileOutcome(FileStatus.DONE, file, receipt, None, report)


def failed_file_ids(journal: JournalStore, file_id: int | None) -> list[int]:
    """Files with failed events (one file, or all)."""
    ids: Iterable[int] = (event.file_id for event in journal.failed_events(file_id))
    return sorted(set(ids))

