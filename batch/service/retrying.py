"""Retry requests: failed events are sent again by the feed's lease holder, whoever asked.

A retry of failed events is a *request* recorded in the journal (who asked, when, which file or
which feed: batch.store.journal.RetryRequest) and carried out by the one instance that holds the
feed's lease: the running service (its feed worker takes the waiting requests of its feed between
files and while idle, within about a second of their recording), or, when no live instance holds
the feed, the requester itself under the feed's lease (batch.service.holding: a holder named
``retry:HOST:PID``, a new epoch, the journal fenced, the lease released at the end). A retry
therefore never sends beside the service, and a request never runs at the same time as the
service's own retry of failed events (batch.service.failed, ``delivery.retry_failed_after``): both
run in the lease holder's one feed thread. The CLI's `retry`, the service and the console share
this one implementation (`retry_file`).

A request's life: ``waiting`` (recorded) -> ``running`` (taken by the holder, ``taken_by``) ->
``done`` (carried out; ``counts`` per outcome over its files, ``files`` one result per file) or
``failed`` (``message`` says why: credentials refused, the file is unknown, ...). A holder that
stops in the middle (a stop request, a kill, a lost lease) leaves it to the next holder, which
puts it back to ``waiting`` and carries it out again; what was accepted meanwhile is not sent again.

API (the console's contract)

``request_retry(journal, config, *, requested_by, file_id=None, feed=None) -> list[int]``
    Record requests and return their ids at once (nothing is sent here). ``file_id``: that file;
    ``feed``: one request for every file of the feed that has failed events (its ``file_id`` is
    None); neither: one request per file with failed events, of every feed. ``requested_by`` says
    who (``"cli:ops@host-1"``, ``"console:admin"``; `user_at_host` makes the first). An empty list:
    nothing to retry. FeedNotFound when the feed is not (any more) in the configuration.

``await_requests(runtime, ids, *, timeout, poll=0.2, progress=None, on_finished=None, on_wait=None,
kind="retry") -> Awaited``
    See the requests through: while a live instance holds a request's feed, wait for it to carry
    the request out; whenever none does, take the feed's lease and carry out the feed's waiting
    requests here (``progress()``: a context manager giving the pipeline's Progress for each
    file). ``on_finished(request)`` is called once per request of ``ids`` as it finishes,
    ``on_wait(feed, holder)`` once per feed whose holder is waited for. Returns what finished and
    what still waits after ``timeout`` seconds (it stays queued: the holder carries it out later).
    Blocking: the console calls it in a thread of its own (it opens the leases itself; ``kind``
    ``"console"`` names the holder ``console:HOST:PID``, with ``:N`` for a further holder of the
    same process, so that two threads never share a name).

``run_requests(work, taken_by, *, stop, progress=None, on_finished=None) -> list[RetryRequest]``
    The lease holder's part: carry out every waiting request of the feed of ``work`` (FeedWork:
    the holder's journal, fenced processor, feed runtime and settings, inbox, staging folder and
    lease check). Called by the service's feed worker and by `await_requests`.

``retry_file(work, file_id, progress=None) -> FileResult``
    Send one file's failed events again, rewrite its receipt (and its rejected-rows file from the
    original, fetched from the feed's archive/ through its inbox, local or SFTP) and publish it
    through the inbox (the lease checked before each receipt file). The one implementation behind
    requests and the periodic retry.

Reading requests back (state, who, when, result): ``journal.get_retry_request(id)`` and
``journal.retry_requests(feed=..., file_id=..., states=..., limit=...)`` (newest first);
``FileResult.from_json`` reads one entry of a request's ``files``.
"""

from __future__ import annotations

import getpass
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batch.config.service import FeedSettings, ServiceConfig
from batch.errors import ExitStatus
from batch.inbox import Inbox, InboxError, open_inbox
from batch.pipeline import FeedRuntime, FileStatus, Processor, Progress, failed_file_ids
from batch.service.holding import CommandLeases, FeedBusy, HeldFeed
from batch.service.runtime import Runtime
from batch.store.journal import (
    OUTCOMES,
    FileRecord,
    JournalStore,
    JournalUnavailable,
    RetryRequest,
    RetryState,
)
from batch.store.leases import LeaseLost
from batch.store.rejected import original_from_archive

log = logging.getLogger(__name__)

#: ``FileResult.status`` of a file that had no failed events left when its request ran.
NOTHING_LEFT = "nothing_left"
NOTHING_LEFT_MESSAGE = "no failed events any more (they were sent again meanwhile)"

#: Where, under a feed's staging folder, `retry_file` fetches a file's original from its archive/.
ORIGINALS_DIR = "originals"

ProgressFactory = Callable[[], AbstractContextManager[Progress]]


@dataclass(frozen=True)
class FeedWork:
    """What sending a feed's failed events again takes: the parts of the feed's lease holder
    (the service's feed worker, or a command under the lease)."""

    journal: JournalStore
    processor: Processor       # fenced by the feed's lease; its deliveries stop when the lease lapses
    runtime: FeedRuntime
    settings: FeedSettings
    inbox: Inbox
    staging: Path              # the feed's staging folder (an SFTP feed's receipts before their upload)
    check: Callable[[], None]  # the lease, checked before each receipt file is published

    @property
    def feed(self) -> str:
        return self.settings.name


@dataclass(frozen=True)
class FileResult:
    """What one file's retry came to, as a request keeps it (JSON) and the CLI prints it."""

    file_id: int
    name: str
    status: str                    # a FileStatus word, or NOTHING_LEFT
    counts: dict[str, int]         # per outcome after the retry, and "filtered"
    exit_status: int               # what it calls for (FileOutcome.exit_status; 2 if the receipt stayed here)
    message: str | None = None     # why, when the status is not "done"
    receipt: str | None = None     # where its receipt (CSV) is now: the outbox
    rejected_rows: str | None = None  # where its rejected-rows file is now, if it has one
    notes: list[str] = field(default_factory=list)  # what else a person should know (receipt not uploaded, ...)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileResult:
        return cls(**data)


@dataclass
class Awaited:
    """What `await_requests` saw through: the requests finished, and those still waiting."""

    finished: list[RetryRequest] = field(default_factory=list)
    waiting: list[RetryRequest] = field(default_factory=list)  # at the timeout, or left to another journal
    holders: dict[str, str] = field(default_factory=dict)      # feed -> the live instance waited for
    refused: dict[str, str] = field(default_factory=dict)      # feed -> why it cannot be carried out now


def user_at_host() -> str:
    """``USER@HOST`` of this process, for ``requested_by`` (``"cli:" + user_at_host()``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        import os

        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


# --------------------------------------------------------------------------- asking


def request_retry(journal: JournalStore, config: ServiceConfig, *, requested_by: str, file_id: int | None = None,
                  feed: str | None = None) -> list[int]:
    """Record retry requests; returns their ids at once (see the module's docstring)."""
    if file_id is not None and feed is not None:
        raise ValueError("a retry request names a file or a feed, not both")
    if file_id is not None:
        if not failed_file_ids(journal, file_id):
            return []
        record = journal.get_file(file_id)
        config.feed(record.feed)  # FeedNotFound: a feed no longer configured is worked by nobody
        return [journal.add_retry_request(record.feed, file_id, requested_by).id]
    files = [journal.get_file(one) for one in failed_file_ids(journal, None)]
    if feed is not None:
        config.feed(feed)
        if not any(record.feed == feed for record in files):
            return []
        return [journal.add_retry_request(feed, None, requested_by).id]
    for name in sorted({record.feed for record in files}):
        config.feed(name)  # before anything is recorded
    return [journal.add_retry_request(record.feed, record.id, requested_by).id for record in files]


# --------------------------------------------------------------------------- carrying out (the lease holder)


def retry_file(work: FeedWork, file_id: int, progress: Progress | None = None) -> FileResult:
    """Send one file's failed (and any pending) events again, rewrite its receipt and publish it."""
    journal = work.journal
    record = journal.get_file(file_id)
    receipt_dir = work.inbox.receipt_dir(work.staging)
    receipt_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with ExitStack() as originals:
        # the rejected-rows file is rewritten from the original, fetched from the feed's archive/ through
        # its inbox (local or SFTP) into the staging folder, and removed once the receipt is written
        missing = "the original is not in the feed's archive/"
        try:
            source = originals.enter_context(original_from_archive(
                work.inbox, work.staging / ORIGINALS_DIR, record.name, record.size, record.sha256))
        except (InboxError, OSError) as exc:
            source, missing = None, f"the feed's archive/ could not be read ({exc})"
        outcome = work.processor.retry(file_id, work.runtime, receipt_dir, progress, source)
    exit_status = outcome.exit_status
    if source is None and (outcome.counts.get("invalid") or outcome.counts.get("rejected")):
        notes.append(f"{record.name}: its rejected-rows file was not rewritten: {missing}")
    receipt = outcome.receipt
    where: dict[Path, str] = {}
    if receipt is not None:
        try:  # check, then act: each receipt file under the lease (LeaseLost: the holder stops)
            where = dict(zip(receipt.files, work.inbox.publish_receipt(receipt.files, lambda path: work.check())))
        except InboxError as exc:
            notes.append(f"the receipt could not be uploaded ({exc}); it is kept in {receipt_dir}")
            exit_status = max(exit_status, ExitStatus.UNUSABLE)
    file = outcome.file or record
    return FileResult(
        file_id, record.name, str(outcome.status), {**outcome.counts, "filtered": file.filtered}, int(exit_status),
        outcome.message,
        None if receipt is None else where.get(receipt.csv, str(receipt.csv)),
        None if receipt is None or receipt.rejected is None else where.get(receipt.rejected, str(receipt.rejected)),
        notes)


def _nothing_left(record: FileRecord) -> FileResult:
    return FileResult(record.id, record.name, NOTHING_LEFT, {**record.counts, "filtered": record.filtered},
                      int(ExitStatus.OK), NOTHING_LEFT_MESSAGE)


def run_requests(work: FeedWork, taken_by: str, *, stop: threading.Event, progress: ProgressFactory | None = None,
                 on_finished: Callable[[RetryRequest], None] | None = None) -> list[RetryRequest]:
    """Carry out the waiting requests of the feed, oldest first, until none waits or `stop` is
    set; returns those finished. Only the feed's lease holder calls this (its journal writes are
    fenced), one call at a time: a request found ``running`` was left by a holder that stopped.
    LeaseLost and JournalUnavailable end it (the request in hand is left to be taken again)."""
    journal, feed = work.journal, work.feed
    if not journal.retry_requests(feed=feed, states=(RetryState.WAITING, RetryState.RUNNING), limit=1):
        return []  # the common case: one read
    left = journal.requeue_retry_requests(feed, "taken again: the instance that was carrying it out stopped")
    if left:
        log.warning("feed %s: %d retry request(s) left running by an instance that stopped; carrying them out "
                    "again", feed, left, extra={"feed": feed})
    finished: list[RetryRequest] = []
    while not stop.is_set():
        request = journal.take_retry_request(feed, taken_by)
        if request is None:
            break
        which = f"file #{request.file_id}" if request.file_id is not None else "every file with failed events"
        log.info("feed %s: retry request #%d (%s, by %s): sending failed events again", feed, request.id, which,
                 request.requested_by, extra={"feed": feed})
        done = _carry_out(work, request, stop, progress)
        if done is None:  # stopped in the middle: back to waiting
            break
        log.log(logging.INFO if done.state == RetryState.DONE else logging.WARNING,
                "feed %s: retry request #%d: %s%s", feed, done.id, done.state,
                f": {done.message}" if done.message else f" ({_shown(done.counts) or 'nothing sent'})",
                extra={"feed": feed})
        finished.append(done)
        if on_finished is not None:
            on_finished(done)
    return finished


def _carry_out(work: FeedWork, request: RetryRequest, stop: threading.Event,
               progress: ProgressFactory | None) -> RetryRequest | None:
    journal, feed = work.journal, work.feed
    results: list[FileResult] = []
    try:
        if request.file_id is not None:
            file_ids = [request.file_id]
        else:
            file_ids = [one for one in failed_file_ids(journal, None) if journal.get_file(one).feed == feed]
        for file_id in file_ids:
            if stop.is_set():
                journal.requeue_retry_requests(feed, "interrupted (a stop request); it is carried out again")
                return None
            if not journal.failed_events(file_id):  # sent meanwhile (another request, the periodic retry)
                results.append(_nothing_left(journal.get_file(file_id)))
                continue
            with progress() if progress is not None else nullcontext(Progress()) as bar:
                result = retry_file(work, file_id, bar)
            results.append(result)
            if result.status == FileStatus.INTERRUPTED:
                journal.requeue_retry_requests(feed, f"interrupted at {result.name} before every event was sent; "
                                                     "it is carried out again")
                return None
    except (LeaseLost, JournalUnavailable):
        raise  # the request stays running: the next holder (or this one, once back) takes it again
    except Exception as exc:  # noqa: BLE001 - one request that cannot be carried out never blocks the feed
        log.error("feed %s: retry request #%d failed: %s: %s", feed, request.id, type(exc).__name__, exc,
                  exc_info=exc, extra={"feed": feed})
        return journal.finish_retry_request(request.id, RetryState.FAILED, _total(results),
                                            [one.as_json() for one in results], f"{type(exc).__name__}: {exc}")
    unfinished = next((one for one in results if one.status not in (FileStatus.DONE, NOTHING_LEFT)), None)
    if unfinished is not None:
        return journal.finish_retry_request(request.id, RetryState.FAILED, _total(results),
                                            [one.as_json() for one in results],
                                            f"{unfinished.name}: {unfinished.status}: {unfinished.message}")
    message = NOTHING_LEFT_MESSAGE if results and all(one.status == NOTHING_LEFT for one in results) else None
    if not results:
        message = "no file of the feed has failed events"
    return journal.finish_retry_request(request.id, RetryState.DONE, _total(results),
                                        [one.as_json() for one in results], message)


def _total(results: Iterable[FileResult]) -> dict[str, int]:
    """Counts per outcome over the files retried (not those with nothing left)."""
    total = dict.fromkeys(OUTCOMES, 0)
    for result in results:
        if result.status != NOTHING_LEFT:
            for outcome in OUTCOMES:
                total[outcome] += result.counts.get(outcome, 0)
    return total


def _shown(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {outcome}" for outcome, number in counts.items() if number)


# --------------------------------------------------------------------------- the requester's side


def await_requests(runtime: Runtime, ids: Sequence[int], *, timeout: float, poll: float = 0.2,
                   progress: ProgressFactory | None = None,
                   on_finished: Callable[[RetryRequest], None] | None = None,
                   on_wait: Callable[[str, str], None] | None = None, kind: str = "retry") -> Awaited:
    """See the requests `ids` through (see the module's docstring); `kind` names the lease holder
    when it carries them out itself (``KIND:HOST:PID``)."""
    journal = runtime.journal
    awaited = Awaited()
    pending = list(ids)
    deadline = time.monotonic() + timeout
    leases = CommandLeases(runtime, kind)

    def finished(request: RetryRequest) -> None:
        if request.id in pending:
            pending.remove(request.id)
            awaited.finished.append(request)
            if on_finished is not None:
                on_finished(request)

    try:
        while True:
            requests = [journal.get_retry_request(one) for one in pending]
            for request in requests:
                if request.finished:
                    finished(request)
            feeds = sorted({request.feed for request in requests if not request.finished} - set(awaited.refused))
            if not feeds:
                break
            for feed in feeds:
                # a read first: while a live instance holds the feed, this command only waits (a
                # holder that died without releasing is waited for until its lease expires)
                current = leases.live_holder(feed)
                holder = current.holder if current is not None else None
                try:
                    if holder is None:
                        with leases.hold(feed) as held:
                            awaited.holders.pop(feed, None)
                            _run_held(runtime, held, leases.name, progress, finished)
                except InboxError as exc:  # the lease marker cannot be read or written: not now
                    awaited.refused[feed] = f"feed {feed}: its lease cannot be taken: {exc}"
                except FeedBusy as busy:
                    if busy.holder is None:
                        awaited.refused[feed] = str(busy)
                    holder = busy.holder
                if holder is not None and awaited.holders.get(feed) != holder:
                    awaited.holders[feed] = holder
                    if on_wait is not None:
                        on_wait(feed, holder)
            if time.monotonic() >= deadline or runtime.stop.is_set():
                break
            runtime.stop.wait(poll)
        awaited.waiting = [journal.get_retry_request(one) for one in pending]
    finally:
        leases.close()
    return awaited


def _run_held(runtime: Runtime, held: HeldFeed, taken_by: str, progress: ProgressFactory | None,
              on_finished: Callable[[RetryRequest], None]) -> None:
    """Carry out the feed's waiting requests here, under the lease `held`."""
    settings = held.settings
    inbox = open_inbox(settings.model_copy(update={"mode": "polling"}))  # no file system watcher for a command
    try:
        work = FeedWork(runtime.journal, held.processor, runtime.feeds[settings.name], settings, inbox,
                        runtime.config.staging_dir / settings.name, held.check)
        run_requests(work, taken_by, stop=runtime.stop, progress=progress, on_finished=on_finished)
    finally:
        inbox.close()
