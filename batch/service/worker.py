"""One feed's worker thread: claim, process, write receipts, finish; resume and back off.

See batch.service.supervisor for the threads and a file's way through a worker."""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from batch.backoff import Backoff, doubling
from batch.config.service import (
    FeedNotFound,
    FeedSettings,
)
from batch.delivery.ropo import RopoClient
from batch.errors import ExitStatus
from batch.fsutil import display_name
from batch.inbox import Claimed, HostKeyError, Inbox, InboxError, InboxUnavailable, open_inbox
from batch.pipeline import (
    FeedRuntime,
    FileOutcome,
    FileStatus,
    Processor,
    Progress,
    ReceiptNotWritten,
    StorageFault,
)
from batch.service.context import WorkerContext
from batch.service.failed import FailedEvents
from batch.service.leasing import LeaseStop, Refusal
from batch.service.metrics import Metrics
from batch.service.reload import inbox_part, now_iso
from batch.service.retrying import FeedWork, run_requests
from batch.service.states import WorkerState
from batch.store.journal import (
    FileInProgress,
    FileState,
    JournalError,
    JournalUnavailable,
    RetryState,
)
from batch.store.leases import Lease, LeaseLost

log = logging.getLogger(__name__)

FILE_ATTEMPTS = 3          # unexpected errors on one file before it goes to error/
FILE_RETRY_FIRST_SECONDS, FILE_RETRY_LONGEST_SECONDS = 2.0, 30.0  # the wait before a failed file's next try
ONCE_INBOX_ATTEMPTS = 3    # --once: connection attempts per feed before giving up
AUTH_BACKOFF_SECONDS = 60.0
OTHER_OWNER_SECONDS = 30.0  # a file another live instance is processing: look again after this
REQUEST_POLL_SECONDS = 1.0  # an idle worker looks for retry requests of its feed this often




class _MeteredClient:
    """Times every POST of an event for the latency histogram; otherwise the client itself."""

    def __init__(self, client: RopoClient, metrics: Metrics, feed: str) -> None:
        self._client = client
        self._latency = metrics.latency.labels(feed)

    def send_event(self, event: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._client.send_event(event)
        finally:
            self._latency.observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# --------------------------------------------------------------------------- feed worker


@dataclass
class _Finishing:
    """A processed file whose receipt upload / archive move is still to be done."""

    claimed: Claimed
    ok: bool
    receipts: list[Path] = field(default_factory=list)  # the receipt's files, to publish (Inbox.publish_receipt)
    staged: Path | None = None                          # the local copy open_local gave (Inbox.release_local)
    file_id: int | None = None                          # its journal record, to note a problem
    receipt_missing: bool = False                       # the receipt is still to be written
    noted: bool = False                                 # the journal has a finish_problem to clear
    failures: int = 0                                   # failed upload / move attempts
    next_try: float = 0.0                               # time.monotonic() of the next attempt


@dataclass(frozen=True)
class _FeedConfig:
    """What the configuration in force gives the feed's worker; rebuilt between files when a
    reload brings a new generation (`FeedWorker._refresh`)."""

    generation: int           # the generation's number
    settings: FeedSettings
    runtime: FeedRuntime      # the compiled mapping and the receipt format
    processor: Processor      # the metered client, the delivery limits, fenced by the feed's lease
    staging: Path             # the feed's staging folder (downloads; receipts before their upload)


@dataclass
class _InboxState:
    """The feed's inbox connection, and whether processing/ must be looked at before new files."""

    inbox: Inbox | None = None  # opened on first use; closed (and reopened later) after a refusal
    need_resume: bool = True    # processing/ may hold an unfinished file: it goes before anything newer
    others: dict[str, float] = field(default_factory=dict)  # files another live instance processes -> seen at


@dataclass
class _Files:
    """What the worker remembers of single files between attempts."""

    finishing: dict[str, _Finishing] = field(default_factory=dict)  # processed; receipt / move still to do
    attempts: dict[str, int] = field(default_factory=dict)  # failures, when the journal cannot count them


@dataclass
class _Waits:
    """The feed's backoffs for faults that keep the file where it is (batch.backoff)."""

    pause: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))  # the journal or a disk refused a write
    auth: Backoff = field(default_factory=lambda: Backoff(AUTH_BACKOFF_SECONDS / 8, AUTH_BACKOFF_SECONDS))


#: errno values that mean a disk of ours (staging, outbox, journal) cannot take a write now:
#: the file is not at fault; the feed pauses and tries again.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def _storage_fault(exc: BaseException) -> bool:
    return isinstance(exc, StorageFault) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


def _describe(exc: BaseException) -> str:
    """One line for a log or /healthz: what failed and where (paths in OSError included)."""
    if isinstance(exc, (StorageFault, JournalUnavailable, InboxError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


class FeedWorker(threading.Thread):
    """One feed: files strictly oldest first; never dies on an error (see the module docstring).

    The state machine: while processing/ holds a file this worker has not finished (it
    failed, it was interrupted, the credentials were refused, the journal or a disk refused a
    write) the worker works on that file and nothing newer -- `_inbox_state.need_resume` stays set until
    `_resume` got every file in processing/ out or handed it to a later step that does not
    hold the feed (a delivered file whose receipt upload / archive move failed)."""

    def __init__(self, context: WorkerContext, name: str) -> None:
        super().__init__(name=f"feed:{name}", daemon=True)
        self.context = context
        self.feed = name
        self.state: WorkerState = WorkerState.STARTING
        self.last_scan: str | None = None
        self.last_file: str | None = None
        self.last_status: FileStatus | None = None
        self.last_error: str | None = None
        self.exit_code: ExitStatus = ExitStatus.OK
        self.retired = False
        self._give_up = False  # --once: this feed cannot go on (credentials refused, a file failed)
        self._config: _FeedConfig | None = None      # what the configuration in force gives the feed
        self._runtimes: dict[str, FeedRuntime] = {}  # mapping versions loaded while running, by version
        self._inbox_state = _InboxState()            # the connection; whether processing/ goes first
        self._files = _Files()                       # files past processing (receipt / move left); attempts
        self._waits = _Waits()                       # backoffs after journal / disk faults, refused credentials
        self._lease: Lease | None = None      # this feed's lease while this instance holds it
        self._refusal: tuple[str, str | None] | None = None  # the last refusal logged: (state, holder)
        self.lease_note: str | None = None    # why this instance does not work the feed now (health, status)
        self._failed = FailedEvents(name)     # its failed events, sent again when idle (retry_failed_after)
        self._next_request_look = 0.0         # time.monotonic() of the next look for retry requests (idle)

    # -- health

    def health(self) -> dict[str, Any]:
        lease = self._lease
        return {"alive": self.is_alive(), "state": self.state, "last_scan": self.last_scan,
                "last_file": self.last_file, "last_status": self.last_status, "last_error": self.last_error,
                "lease": None if lease is None else {"epoch": lease.epoch, "holder": lease.holder},
                "lease_note": self.lease_note}

    # -- configuration

    @property
    def config(self) -> _FeedConfig:
        assert self._config is not None  # set by the loop's first _refresh
        return self._config

    @property
    def settings(self) -> FeedSettings:
        return self.config.settings

    @property
    def processor(self) -> Processor | None:
        """The feed's Processor (its delivery's circuit breaker: /healthz), once configured."""
        return self._config.processor if self._config is not None else None

    @property
    def _generation(self) -> int:
        return self._config.generation if self._config is not None else 0

    def _refresh(self) -> bool:
        """Pick up a new configuration between files; False if this feed was removed."""
        generation = self.context.generation()
        if generation.number == self._generation:
            return True
        try:
            settings = generation.config.feed(self.feed)
        except FeedNotFound:
            self.retired = True
            return False
        if self._config is not None and inbox_part(settings) != inbox_part(self._config.settings):
            log.info("feed %s: inbox settings changed; reopening the inbox", self.feed, extra={"feed": self.feed})
            self._close_inbox()
            self._inbox_state.need_resume = True
        if self._generation:
            log.info("feed %s: using configuration #%d from the next file", self.feed, generation.number,
                     extra={"feed": self.feed})
        runtime = generation.feeds[self.feed]
        self._runtimes[runtime.mapping_version] = runtime
        # a RopoClient in all but name: it times send_event and hands every other call on
        client = cast(RopoClient, _MeteredClient(generation.client, self.context.metrics, self.feed))
        processor = Processor(
            self.context.journal, client,
            generation.config.delivery, stop=LeaseStop(self.context.stop, self._lease_valid), fence=self._check_lease,
        )
        processor.breaker.give_up_at_probe_max = self.context.once  # cron must get its exit
        self._config = _FeedConfig(generation.number, settings, runtime, processor,
                                   generation.config.staging_dir / self.feed)
        return True

    def _open(self) -> Inbox:
        if self._inbox_state.inbox is None:
            self._inbox_state.inbox = open_inbox(self.settings)
        return self._inbox_state.inbox

    def _close_inbox(self) -> None:
        inbox, self._inbox_state.inbox = self._inbox_state.inbox, None
        if inbox is not None:
            try:
                inbox.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _receipt_dir(self, inbox: Inbox) -> Path:
        """Where receipts are written: the inbox says (local: the outbox; SFTP: staging, then uploaded)."""
        return inbox.receipt_dir(self.config.staging)

    # -- the loop

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a worker must say why it ended
            self.state = WorkerState.CRASHED
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.exit_code = ExitStatus.UNUSABLE
            log.exception("feed %s: the worker stopped on an unexpected error", self.feed, extra={"feed": self.feed})
        finally:
            self._close_inbox()
            if self._lease is not None:
                self._lease = None
                try:
                    self.context.leases.release(self.feed)
                except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                    log.warning("feed %s: releasing the lease: %s", self.feed, exc, extra={"feed": self.feed})
            if self.state != WorkerState.CRASHED:
                self.state = WorkerState.STOPPED

    # -- the feed's lease (batch.service.leasing)

    def _hold_lease(self) -> bool:
        """True while this instance holds the feed's lease (taking it when it is free, expired
        and within this instance's share); otherwise the state and the log say who has it."""
        if self._lease is not None:
            try:
                self.context.leases.check(self._lease)
                return True
            except LeaseLost as exc:
                self._lease_lost(exc)
        result = self.context.leases.acquire(self.feed, self.settings)
        if isinstance(result, Refusal):
            self._refused(result)
            return False
        self._lease = result
        # every journal write of this thread checks the lease in its own transaction
        self.context.journal.set_fence(self.context.leases.store.fence(result))
        self._inbox_state.need_resume = True
        self._refusal = None
        self.lease_note = None
        if self.state in (WorkerState.STANDBY, WorkerState.FOREIGN, WorkerState.HANDOVER):
            self.state = WorkerState.IDLE
        log.info("feed %s: this instance (%s) works the feed (lease epoch %d)", self.feed, result.holder,
                 result.epoch, extra={"feed": self.feed})
        return True

    def holds_lease(self) -> bool:
        """Does this instance work the feed now (its lease held and renewed in time)? No I/O."""
        return self._lease_valid()

    def _lease_valid(self) -> bool:
        lease = self._lease
        return lease is not None and self.context.leases.valid(lease)

    def _check_lease(self) -> None:
        """Check, then act: before a receipt, an upload or a move (LeaseLost when lost)."""
        if self._lease is None:
            raise LeaseLost(self.feed, "this instance does not hold the feed's lease")
        self.context.leases.check(self._lease)

    def _lease_lost(self, exc: LeaseLost) -> None:
        """Stop working the feed: what is in processing/ stays for the lease's holder."""
        lease, self._lease = self._lease, None
        self._files.finishing.clear()  # a finishing step left is the new holder's now
        self._inbox_state.need_resume = True
        self.state = WorkerState.STANDBY
        self.last_error = str(exc)
        self.lease_note = str(exc)
        self.context.leases.release(self.feed, lost=True)  # forget it here (the store keeps the new holder's)
        log.warning("%s; this instance stopped working the feed before recording or moving anything more%s",
                    exc, f" (it held epoch {lease.epoch})" if lease is not None else "", extra={"feed": self.feed})

    def _refused(self, refusal: Refusal) -> None:
        self.state = {"foreign": WorkerState.FOREIGN, "handover": WorkerState.HANDOVER}.get(
            refusal.state, WorkerState.STANDBY)
        self.lease_note = refusal.message
        said = (refusal.state, refusal.holder)
        if said == self._refusal:
            return
        self._refusal = said
        level = {"foreign": logging.WARNING, "handover": logging.ERROR}.get(refusal.state, logging.INFO)
        log.log(level, "feed %s: not worked by this instance: %s", self.feed, refusal.message,
                extra={"feed": self.feed})

    def _loop(self) -> None:
        context = self.context
        stop = context.stop
        once = context.once
        self._inbox_state.need_resume = True
        primed = False
        inbox_failures = 0
        backoff = Backoff(1.0, 60.0)
        while not stop.is_set() and not self._give_up:
            step = "reading the configuration"
            try:
                if not self._refresh():
                    log.info("feed %s: removed from the configuration; worker ends", self.feed,
                             extra={"feed": self.feed})
                    return
                settings = self.settings
                backoff.first, backoff.longest = settings.reconnect_initial_seconds, settings.reconnect_max_seconds
                step = "opening the inbox"
                inbox = self._open()
                step = "taking the feed's lease"
                if not self._hold_lease():
                    if once:
                        if self.state != WorkerState.STANDBY:
                            self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
                        return
                    stop.wait(min(1.0, context.leases.interval))
                    continue
                if self._finishing_due():
                    self._inbox_state.need_resume = True
                if self._inbox_state.need_resume:
                    step = "resuming the files in processing/"
                    # False: a file in processing/ is still unfinished (failed, interrupted,
                    # paused); it goes before anything newer, so resume again (after its wait)
                    if self._resume(inbox):
                        self._inbox_state.need_resume = False
                    continue
                step = "carrying out retry requests"
                self._run_requests(inbox)
                step = "scanning the inbox"
                candidates = inbox.scan()
                if inbox.waiting_in_processing:  # copied into processing/ by hand: look again next round
                    self._inbox_state.need_resume = True
                self.last_scan = now_iso()
                context.metrics.queue.labels(self.feed).set(len(candidates))
                context.metrics.last_scan.labels(self.feed).set(time.time())
                backoff.reset()
                inbox_failures = 0
                if self.state in (WorkerState.UNAVAILABLE, WorkerState.STARTING, WorkerState.ERROR):
                    self.state = WorkerState.IDLE
                if not candidates:
                    if once:
                        if not primed and not settings.marker_suffixes and settings.min_age_seconds > 0:
                            primed = True  # files seen for the first time become ready after min_age
                            stop.wait(settings.min_age_seconds + 0.05)
                            continue
                        return
                    self.state = WorkerState.IDLE
                    if not self._files.finishing and context.leases.surplus(self.feed):
                        self._lease = None  # given up for an idle instance (more than this one's share)
                        continue
                    step = "sending failed events again"
                    self._retry_failed(inbox)
                    self._idle(inbox)
                    continue
                if stop.is_set():
                    return
                step = "claiming a file"
                claimed = inbox.claim(candidates[0])
                if claimed is not None and not self._handle(inbox, claimed, resumed=False):
                    self._inbox_state.need_resume = True  # it stays in processing/ and goes first
            except (InboxError, OSError) as exc:
                # InboxUnavailable: the connection dropped; HostKeyError / InboxError: refused,
                # misconfigured (the key file, the folder) -- all may be fixed while we wait.
                self._inbox_state.need_resume = True
                inbox_failures += 1
                self.state = WorkerState.UNAVAILABLE
                self.last_error = _describe(exc)
                context.metrics.inbox_errors.labels(self.feed).inc()
                level = logging.WARNING if isinstance(exc, InboxUnavailable) else logging.ERROR
                if not isinstance(exc, (InboxUnavailable, HostKeyError)):
                    self._close_inbox()  # e.g. a local folder that does not exist yet: reopen later
                delay = backoff.next()
                log.log(level, "feed %s: inbox problem: %s; retrying in %.1f s", self.feed, self.last_error, delay,
                        extra={"feed": self.feed})
                if once and (not isinstance(exc, InboxUnavailable) or inbox_failures >= ONCE_INBOX_ATTEMPTS):
                    self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
                    return
                stop.wait(delay)
            except LeaseLost as exc:  # another instance works the feed now
                self._lease_lost(exc)
            except JournalUnavailable as exc:  # e.g. while resuming, before any file was taken
                self._inbox_state.need_resume = True
                if not self._paused("the journal cannot be used", exc, None):
                    return
            except Exception as exc:  # noqa: BLE001 - a bug or a library's surprise never ends the feed
                self._inbox_state.need_resume = True
                self._close_inbox()
                self.state = WorkerState.ERROR
                self.last_error = f"{step}: {type(exc).__name__}: {exc}"
                context.metrics.faults.labels(self.feed, "worker").inc()
                delay = backoff.next()
                log.error("feed %s: unexpected error while %s: %s: %s; retrying in %.1f s", self.feed, step,
                          type(exc).__name__, exc, delay, exc_info=exc, extra={"feed": self.feed})
                if once:
                    self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
                    return
                stop.wait(delay)

    def _feed_work(self, inbox: Inbox) -> FeedWork:
        """This worker's parts for sending failed events again (batch.service.retrying)."""
        config = self.config
        return FeedWork(self.context.journal, config.processor, config.runtime, config.settings, inbox,
                        config.staging, self._check_lease)

    def _retry_failed(self, inbox: Inbox) -> None:
        """Send this feed's failed events again when they are due (batch.service.failed)."""
        self._failed.retry(self._feed_work(inbox), after=self.context.generation().config.delivery.retry_failed_after,
                           stop=self.context.stop)

    def _run_requests(self, inbox: Inbox) -> None:
        """Carry out the retry requests waiting for this feed (batch.service.retrying): this
        instance holds the feed's lease, so it does the sending, whoever asked."""
        self._next_request_look = time.monotonic() + REQUEST_POLL_SECONDS
        run_requests(self._feed_work(inbox), self.context.leases.name, stop=self.context.stop)

    def _request_waits(self) -> bool:
        """Look (at most every REQUEST_POLL_SECONDS) whether a retry request waits for this feed."""
        if time.monotonic() < self._next_request_look:
            return False
        self._next_request_look = time.monotonic() + REQUEST_POLL_SECONDS
        return bool(self.context.journal.retry_requests(feed=self.feed, states=(RetryState.WAITING,), limit=1))

    def _idle(self, inbox: Inbox) -> None:
        """Wait for the next scan; wake at once on a stop request."""
        deadline = time.monotonic() + self.settings.poll_interval_seconds
        while not self.context.stop.is_set() and self.context.generation().number == self._generation:
            left = deadline - time.monotonic()
            if left <= 0 or self._finishing_due():
                return
            if inbox.wait(min(left, 0.5)):
                return  # a file was closed or moved in (a local folder's events)
            if self._request_waits():
                return  # a retry request to carry out

    def _finishing_due(self) -> bool:
        now = time.monotonic()
        return any(finishing.next_try <= now for finishing in self._files.finishing.values())

    def _resume(self, inbox: Inbox) -> bool:
        """Work on what is in processing/, oldest first; True when nothing there holds the feed.

        Stops at the first file that is still unfinished: newer files wait behind it."""
        now = time.monotonic()
        self._inbox_state.others = {n: t for n, t in self._inbox_state.others.items() if now - t < OTHER_OWNER_SECONDS}
        for claimed in inbox.resume(began=self._began):
            if self.context.stop.is_set() or self._give_up:
                return False
            if claimed.name in self._inbox_state.others:
                continue
            finishing = self._files.finishing.get(claimed.name)
            if finishing is not None and finishing.next_try > now:
                continue  # delivered; only its receipt upload / archive move waits for its retry
            if finishing is None:
                log.info("feed %s: resuming %s from processing/", self.feed, claimed.name,
                         extra={"feed": self.feed, "file": claimed.name})
            if not self._handle(inbox, claimed, resumed=True):
                return False
        return True

    def _began(self, claimed: Claimed) -> bool:
        """Did this tool begin the file in processing/? (Else it is taken only once ready.)"""
        return self.context.journal.unfinished_named(self.feed, claimed.source_name) is not None

    # -- one file

    def _handle(self, inbox: Inbox, claimed: Claimed, *, resumed: bool) -> bool:
        """Process one file; True when it no longer holds the feed (finished, or only its
        receipt upload / archive move is left to retry), False when it stays in processing/
        to be tried again first (the wait before that try has been done)."""
        pending = self._files.finishing.get(claimed.name)
        if pending is not None:  # processed already; the receipt / archive step failed before
            self._complete(inbox, pending)
            return True
        context, feed = self.context, self.feed
        self.state = WorkerState.PROCESSING
        self.last_file = claimed.source_name
        extra = {"feed": feed, "file": claimed.name}
        staged: Path | None = None
        config = self.config
        try:
            staged = self._download(inbox, claimed)
            receipt_dir = self._receipt_dir(inbox)
            try:
                receipt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageFault("creating the receipt folder", receipt_dir, exc) from exc
            retries = context.metrics.retries.labels(feed)
            progress = Progress(on_result=lambda o: retries.inc(o.attempts - 1) if o.attempts > 1 else None)
            outcome = config.processor.process(staged, config.runtime, receipt_dir, name=claimed.source_name,
                                              progress=progress, resumed=resumed, earlier=self._runtimes)
        except (InboxError, LeaseLost):
            self._release(inbox, staged)
            raise  # the inbox: the loop backs off, reconnects and resumes the file; a lost lease: stop
        except FileInProgress as exc:
            self._inbox_state.others[claimed.name] = time.monotonic()
            log.info("feed %s: %s", feed, exc, extra=extra)
            self._release(inbox, staged)
            return True
        except JournalUnavailable as exc:
            self._release(inbox, staged)
            self._paused("the journal cannot be used", exc, claimed)
            return False
        except ReceiptNotWritten as exc:
            self._release(inbox, staged)
            if exc.file is None or not exc.file.finished:
                self._paused("a disk refused a write", exc, claimed)
                return False
            # delivered and finished in the journal: only the receipt is missing; it is written
            # again later while the feed goes on (the journal keeps the result)
            finishing = _Finishing(claimed, exc.file.state != FileState.ERROR, [], None, exc.file.id,
                                   receipt_missing=True)
            self._files.finishing[claimed.name] = finishing
            self._forget_attempts(claimed)
            self._finish_failed(finishing, "writing its receipt", exc)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the service
            self._release(inbox, staged)
            if _storage_fault(exc):
                self._paused("a disk refused a write", exc, claimed)
                return False
            return self._file_failed(inbox, claimed, exc)
        self._waits.pause.reset()
        self._forget_attempts(claimed)
        return self._outcome(inbox, claimed, outcome, staged)

    def _download(self, inbox: Inbox, claimed: Claimed) -> Path:
        """The file as a local path (SFTP: downloaded into staging; the inbox removes a partial
        copy); a disk of ours that refuses the copy is a StorageFault (the feed pauses)."""
        staging = self.config.staging
        try:
            return inbox.open_local(claimed, staging)
        except InboxError:
            raise
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise StorageFault(f"taking {claimed.name} into the staging folder", staging, exc) from exc
            raise

    def _outcome(self, inbox: Inbox, claimed: Claimed, outcome: FileOutcome, staged: Path | None) -> bool:
        context, feed = self.context, self.feed
        status = outcome.status
        self.last_status = status
        extra = {"feed": feed, "file": claimed.source_name, "status": status}
        context.metrics.files.labels(feed, status).inc()
        counts = outcome.counts
        if status == FileStatus.DONE:
            for name in ("accepted", "rejected", "invalid", "failed", "duplicate"):
                if counts.get(name):
                    context.metrics.events.labels(feed, name).inc(counts[name])
        shown = ", ".join(f"{counts[k]} {k}" for k in ("accepted", "rejected", "invalid", "failed", "duplicate",
                                                        "not_sent", "pending") if counts.get(k))
        if outcome.final:
            code = outcome.exit_status
            self.exit_code = max(self.exit_code, code)
            self._waits.auth.reset()
            level = logging.INFO if code == ExitStatus.OK else logging.WARNING
            message = outcome.message if status != FileStatus.DONE else (shown or "no records")
            log.log(level, "feed %s: %s: %s: %s", feed, claimed.source_name, status, message, extra=extra)
            receipts = list(outcome.receipt.files) if outcome.receipt else []
            record = outcome.file
            finishing = _Finishing(claimed, status != FileStatus.ERROR, receipts, staged,
                                   record.id if record is not None and record.id else None,
                                   noted=record is not None and record.finish_problem is not None)
            self._files.finishing[claimed.name] = finishing
            self._complete(inbox, finishing)
            if context.notifier is not None and status == FileStatus.DONE and record is not None:
                # failed, rejected or invalid records: the webhook is told once (batch.service.notifying)
                context.notifier.file_finished(feed, context.generation().config.notify_of(self.settings), record)
            if self.state == WorkerState.PROCESSING:
                self.state = WorkerState.IDLE
            return True
        self._release(inbox, staged)
        if status == FileStatus.INTERRUPTED:
            log.info("feed %s: %s: interrupted (%s); left in processing/ to resume", feed, claimed.source_name,
                     shown or "nothing sent", extra=extra)
            return False
        # auth_failed: Ropo One refused the credentials, or its TLS certificate was not trusted;
        # nothing more can go out until that is fixed.
        self.exit_code = ExitStatus.UNUSABLE
        self.last_error = outcome.message
        self.state = WorkerState.AUTH_FAILED
        delay = self._waits.auth.next()
        log.error("feed %s: %s: cannot deliver to Ropo One: %s; the file stays in processing/ and is "
                  "resumed in %.0f s", feed, claimed.source_name, outcome.message, delay, extra=extra)
        if context.once:
            self._give_up = True
        else:
            context.stop.wait(delay)
        return False

    def _complete(self, inbox: Inbox, finishing: _Finishing) -> None:
        """Upload the receipt (SFTP) and move the original; may raise InboxUnavailable (redone
        after the reconnect). Any other failure (a folder without write permission, a full
        disk) is noted in the journal and retried later with backoff: a delivered file does
        not hold back the feed's next files."""
        claimed = finishing.claimed
        folder = "archive/" if finishing.ok else "error/"
        self._release(inbox, finishing.staged)  # the download is not needed for either step
        finishing.staged = None
        step = ""
        try:
            if finishing.receipt_missing:
                step = "writing its receipt"
                self._write_missing_receipt(inbox, finishing)

            def before(path: Path) -> None:  # check, then act: each upload under the lease
                nonlocal step
                step = f"uploading the receipt {path.name} to the outbox"
                self._check_lease()

            inbox.publish_receipt(finishing.receipts, before)
            step = f"moving {claimed.name} from processing/ to {folder}"
            self._check_lease()
            try:
                target = inbox.finish(claimed, finishing.ok)
            except FileNotFoundError:  # removed from processing/ by hand (or by another instance)
                log.warning("feed %s: %s is no longer in processing/; nothing to move", self.feed, claimed.name,
                            extra={"feed": self.feed})
                target = "(gone)"
        except InboxUnavailable:
            raise
        except (InboxError, OSError, StorageFault, JournalError) as exc:
            self._finish_failed(finishing, step, exc)
            return
        self._files.finishing.pop(claimed.name, None)
        if (finishing.failures or finishing.noted) and finishing.file_id is not None:
            self._journal_quietly(lambda: self.context.journal.set_finish_problem(finishing.file_id, None))
            log.info("feed %s: %s moved to %s%s; the earlier problem is solved", self.feed, claimed.name, folder,
                     target, extra={"feed": self.feed})
        else:
            log.debug("feed %s: %s moved to %s%s", self.feed, claimed.name, folder, target, extra={"feed": self.feed})

    def _write_missing_receipt(self, inbox: Inbox, finishing: _Finishing) -> None:
        assert finishing.file_id is not None
        config = self.config
        file = self.context.journal.get_file(finishing.file_id)
        receipt_dir = self._receipt_dir(inbox)
        try:
            receipt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageFault("creating the receipt folder", receipt_dir, exc) from exc
        receipt = config.processor.write_receipt_of(file, config.runtime, receipt_dir)
        finishing.receipts = list(receipt.files)
        finishing.receipt_missing = False

    def _finish_failed(self, finishing: _Finishing, step: str, exc: BaseException) -> None:
        finishing.failures += 1
        settings = self.settings
        delay = doubling(finishing.failures, settings.reconnect_initial_seconds, settings.reconnect_max_seconds)
        finishing.next_try = time.monotonic() + delay
        name = finishing.claimed.name
        problem = f"{step} failed: {_describe(exc)}"
        self.last_error = f"{name}: {problem}"
        self.context.metrics.faults.labels(self.feed, "finish").inc()
        if finishing.file_id is not None:
            self._journal_quietly(lambda: self.context.journal.set_finish_problem(finishing.file_id, problem))
        log.error("feed %s: %s: processed, but %s (attempt %d); it stays in processing/, the feed goes on with its "
                  "next files and tries again in %.1f s", self.feed, name, problem, finishing.failures, delay,
                  extra={"feed": self.feed, "file": name})
        if self.context.once:
            self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)

    def _journal_quietly(self, write: Any) -> None:
        """A journal note that may fail without consequence (the log has said it)."""
        try:
            write()
        except JournalError as exc:
            log.warning("feed %s: %s", self.feed, exc, extra={"feed": self.feed})

    def _paused(self, what: str, exc: BaseException, claimed: Claimed | None) -> bool:
        """A journal or disk fault: the file stays in processing/, the feed waits (backoff) and
        then tries the same file again; never error/. False when the feed ends (--once)."""
        self.state = WorkerState.PAUSED
        self.last_error = _describe(exc)
        kind = "journal" if isinstance(exc, JournalUnavailable) else "storage"
        self.context.metrics.faults.labels(self.feed, kind).inc()
        delay = self._waits.pause.next()
        held = f"{claimed.name} stays in processing/; " if claimed is not None else ""
        log.error("feed %s: %s: %s; %sthe feed pauses and tries again in %.0f s (attempt %d)", self.feed, what,
                  self.last_error, held, delay, self._waits.pause.failures,
                  extra={"feed": self.feed, **({"file": claimed.name} if claimed else {})})
        if self.context.once:
            self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
            self._give_up = True
            return False
        self.context.stop.wait(delay)
        if kind == "journal" and not self.context.stop.is_set():
            try:  # a repaired or remounted disk is seen only through a new connection
                self.context.journal.reopen()
            except JournalUnavailable as again:
                log.warning("feed %s: %s", self.feed, again, extra={"feed": self.feed})
        return True

    def _count_attempt(self, claimed: Claimed, error: str) -> int:
        """Count a failed attempt in the journal (across restarts); in memory if it cannot."""
        memory = self._files.attempts[claimed.name] = self._files.attempts.get(claimed.name, 0) + 1
        try:
            return max(memory, self.context.journal.count_file_attempt(self.feed, display_name(claimed.name), error))
        except JournalError:
            return memory

    def _forget_attempts(self, claimed: Claimed) -> None:
        self._files.attempts.pop(claimed.name, None)
        self._journal_quietly(lambda: self.context.journal.clear_file_attempts(self.feed, display_name(claimed.name)))

    def _file_failed(self, inbox: Inbox, claimed: Claimed, exc: BaseException) -> bool:
        extra = {"feed": self.feed, "file": claimed.name}
        described = _describe(exc)
        attempts = self._count_attempt(claimed, described)
        self.last_error = f"{claimed.name}: {described}"
        self.state = WorkerState.RETRYING
        self.context.metrics.faults.labels(self.feed, "file").inc()
        if self.context.once and attempts < FILE_ATTEMPTS:  # --once (cron): the next run tries again
            log.error("feed %s: %s failed (attempt %d of %d): %s; it stays in processing/ for the next run",
                      self.feed, claimed.name, attempts, FILE_ATTEMPTS, described, exc_info=exc, extra=extra)
            self.exit_code = ExitStatus.UNUSABLE
            self._give_up = True
            return False
        if attempts < FILE_ATTEMPTS:
            delay = doubling(attempts, FILE_RETRY_FIRST_SECONDS, FILE_RETRY_LONGEST_SECONDS)
            log.error("feed %s: %s failed (attempt %d of %d): %s; trying again in %.0f s", self.feed, claimed.name,
                      attempts, FILE_ATTEMPTS, described, delay, exc_info=exc, extra=extra)
            self.context.stop.wait(delay)
            return False
        log.error("feed %s: %s failed %d time(s): %s; moved to error/", self.feed, claimed.name, attempts,
                  described, exc_info=exc, extra=extra)
        self.exit_code = ExitStatus.UNUSABLE
        self.last_status = FileStatus.ERROR
        self.context.metrics.files.labels(self.feed, FileStatus.ERROR).inc()
        try:
            finishing = self._give_up_file(inbox, claimed, f"failed {attempts} times: {described}")
        except (JournalError, StorageFault, OSError) as fault:  # journal or disk: keep it, try again
            self._paused("cannot move a failed file to error/", fault, claimed)
            return False
        self._forget_attempts(claimed)
        self._files.finishing[claimed.name] = finishing
        self._complete(inbox, finishing)
        self.state = WorkerState.IDLE
        return True

    def _give_up_file(self, inbox: Inbox, claimed: Claimed, error: str) -> _Finishing:
        """Close the file in the journal as error (its pending events become not_sent) and write
        its file-level receipt; returns what moves it to error/."""
        config = self.config  # the processor's fence is this worker's lease check
        outcome = config.processor.give_up(config.runtime, claimed.source_name, claimed.size, error,
                                           self._receipt_dir(inbox))
        assert outcome.file is not None and outcome.receipt is not None
        return _Finishing(claimed, False, list(outcome.receipt.files), None, outcome.file.id or None)

    @staticmethod
    def _release(inbox: Inbox, staged: Path | None) -> None:
        """The local copy of a file is done with (SFTP: the download is removed; local: nothing)."""
        if staged is not None:
            inbox.release_local(staged)


# --------------------------------------------------------------------------- the service



def breaker_open(worker: FeedWorker) -> bool:
    processor = worker.processor
    return processor is not None and processor.breaker.is_open


def feed_trouble(worker: FeedWorker) -> tuple[WorkerState, str] | None:
    """What holds a feed up, for /healthz: (state, why); None when nothing does."""
    processor = worker.processor
    breaker = processor.breaker if processor is not None else None
    if breaker is not None and breaker.open_since is not None:
        since = datetime.fromtimestamp(breaker.open_since, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return WorkerState.HOLDING, f"api unreachable since {since} ({breaker.reason})"
    why = {
        WorkerState.UNAVAILABLE: f"inbox unreachable ({worker.last_error}); last successful scan "
                                 f"{worker.last_scan or 'never'}",
        WorkerState.AUTH_FAILED: f"cannot deliver to Ropo One ({worker.last_error})",
        WorkerState.PAUSED: f"the journal or a disk refused a write ({worker.last_error})",
        WorkerState.RETRYING: f"a file failed and holds the feed ({worker.last_error})",
        WorkerState.ERROR: f"unexpected error, retrying ({worker.last_error})",
        WorkerState.HANDOVER: f"waits for an operator: {worker.lease_note}",
    }.get(worker.state)
    return (worker.state, why) if why is not None else None
