"""The long-running service: one worker thread per feed, hot reload, signals, health and metrics.

Threads
- one **feed worker** per feed: it owns the feed's Inbox (inboxes are not thread-safe) and its
  own Processor (sharing the service's Journal and RopoClient, which are thread-safe). It
  processes the feed's files oldest first, one at a time, so events keep their order across
  files; feeds run side by side.
- the **main thread** (`Service.run`) polls the configuration files for changes, starts and
  retires workers, and on a stop request waits for the workers.
- optionally a small **HTTP thread** for /healthz and /metrics (batch.metrics).

A file's way through a worker

    claim -> open_local (SFTP: download to staging) -> Processor.process -> receipts (SFTP:
    written to staging, then uploaded CSV first, JSON last; local: straight into the outbox)
    -> finish: done/skipped -> archive/, error (file-level) -> error/

An ``interrupted`` file (stop requested) or an ``auth_failed`` one stays in processing/; the
worker resumes what is in processing/ at start-up, after every reconnect and after every file
that did not finish, oldest first, and takes nothing newer while one of them is unfinished; the
journal resumes it by its sha256 without sending an accepted event again. A lost SFTP connection
(InboxUnavailable) is logged and retried with backoff, never fatal; a receipt upload or an
archive move that met a dead connection is redone after the reconnect without processing the
file again; one that failed otherwise (permissions, a full disk) is noted in the journal and
retried with backoff while the feed goes on. A journal or local disk that refuses a write pauses
the feed (backoff) with the file kept in processing/. An unexpected error on one file is retried
FILE_ATTEMPTS times (counted in the journal, across restarts), then the file goes to error/ with a
file-level receipt; nothing ends a worker short of a stop request.

Faults: a feed whose delivery holds for an API outage (the delivery's circuit breaker) or
whose inbox cannot be reached is reported by /healthz (503, with the reason in the feed's
``state``) and the ``usageplace_batch_api_holding`` / ``usageplace_batch_inbox_unreachable``
gauges. Failed events are sent again by the service itself once they have been failed for
``delivery.retry_failed_after`` seconds (`Service.retry_failed`, called by an idle worker;
the same Processor.retry as the `retry` command).

Reload: the service file and every mapping it names are hashed every few seconds; a change
that has stayed the same for a settle time (2 x the reload interval, at least 1 s) is loaded
and checked in full (the same checks as `validate-config`, plus the credentials)
before anything uses it. A valid change applies from the next file each worker starts; an
invalid one is refused, every problem logged, and the previous configuration stays in force.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

from batch.config.api import SecretResolutionError
from batch.config.service import (
    FeedNotFound,
    FeedSettings,
    LoadedService,
    ServiceConfig,
    load_service_config,
    secret_file_warnings,
)
from batch.config.yamlload import ConfigError
from batch.errors import ExitStatus
from batch.fsutil import display_name, read_regular_file
from batch.inbox import Claimed, HostKeyError, Inbox, InboxError, InboxSettings, InboxUnavailable, open_inbox
from batch.inbox.base import LocalLocation
from batch.journal import (
    OUTCOMES,
    FileInProgress,
    FileRecord,
    FileState,
    Journal,
    JournalError,
    JournalUnavailable,
    StrEnum,
    this_process,
)
from batch.logs import RedactingFilter, apply_level, redact_config_secrets
from batch.metrics import Metrics, MetricsServer
from batch.pipeline import (
    FeedRuntime,
    FileOutcome,
    FileStatus,
    Processor,
    Progress,
    ReceiptNotWritten,
    StorageFault,
    failed_file_ids,
    write_receipt_or_fault,
)
from batch.receipts import ReceiptPaths, write_file_level_receipt
from batch.ropo import RopoClient
from batch.runtime import Runtime

log = logging.getLogger("batch.service")

DEFAULT_RELOAD_INTERVAL = 2.0
FILE_ATTEMPTS = 3          # unexpected errors on one file before it goes to error/
ONCE_INBOX_ATTEMPTS = 3    # --once: connection attempts per feed before giving up
AUTH_BACKOFF_SECONDS = 60.0
OTHER_OWNER_SECONDS = 30.0  # a file another live instance is processing: look again after this
PRUNE_EVERY_SECONDS = 6 * 3600.0  # journal retention is applied at start and then this often
RETRY_FAILED_CHECK_SECONDS = 60.0  # how often an idle feed looks for failed events to send again


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- configuration


def _inbox_part(feed: FeedSettings) -> dict[str, Any]:
    return feed.model_dump(include=set(InboxSettings.model_fields))


def check_feed_secrets(loaded: LoadedService) -> None:
    """Resolve every feed's SFTP secrets once; SecretResolutionError names the feed and the key."""
    for feed in loaded.config.feeds:
        try:
            feed.resolved_key_passphrase()
            feed.resolved_password()
        except SecretResolutionError as exc:
            raise SecretResolutionError(f"feeds[{feed.name}]: {exc}") from None


class ConfigWatcher:
    """Notices changes to the service file and its mappings, and hands on a change only once
    it has settled.

    Every poll takes each file's content hash and mtime. A change is loaded only after the
    files have stayed exactly so for `settle_seconds` (an editor that saves in two steps, or
    a `cp` over the old file, shows a valid but incomplete prefix for a moment: that must
    never go live). `version` is a short hash of the contents in force, for the log."""

    def __init__(self, loaded: LoadedService, *, settle_seconds: float = 2 * DEFAULT_RELOAD_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = loaded.path
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._files = self._watched(loaded)
        self._seen = self._fingerprint(self._files)
        self._candidate: dict[Path, tuple[str, float] | None] | None = None
        self._candidate_since = 0.0
        self.version = self._version(self._seen)

    @staticmethod
    def _watched(loaded: LoadedService) -> list[Path]:
        return [loaded.path, *(feed.mapping for feed in loaded.config.feeds)]

    @staticmethod
    def _fingerprint(paths: list[Path]) -> dict[Path, tuple[str, float] | None]:
        prints: dict[Path, tuple[str, float] | None] = {}
        for path in paths:
            try:
                mtime = path.stat().st_mtime
                prints[path] = (hashlib.sha256(read_regular_file(path)).hexdigest(), mtime)
            except OSError:
                prints[path] = None
        return prints

    @staticmethod
    def _version(prints: dict[Path, tuple[str, float] | None]) -> str:
        digest = hashlib.sha256()
        for path in sorted(prints):
            found = prints[path]
            digest.update(f"{path}\0{found[0] if found else '-'}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:12]

    def poll(self) -> LoadedService | ConfigError | None:
        """None: nothing changed, or a change is still settling; a LoadedService: a checked
        new version; a ConfigError: refused."""
        now = self._fingerprint(self._files)
        if now == self._seen:
            self._candidate = None  # back as it was (or never changed)
            return None
        if now != self._candidate:
            if self._candidate is None:
                log.info("configuration: a change in %s; applied once it has not changed for %.1f s",
                         ", ".join(str(p) for p in self._files if now.get(p) != self._seen.get(p)),
                         self.settle_seconds)
            self._candidate, self._candidate_since = now, self._clock()
            return None
        if self._clock() - self._candidate_since < self.settle_seconds:
            return None
        self._seen, self._candidate = now, None  # an invalid version is reported once, not on every poll
        try:
            loaded = load_service_config(self.path)
        except ConfigError as exc:
            return exc
        files = self._watched(loaded)
        if files != self._files:  # mappings added or renamed: what is in force is what was just read
            self._files = files
            self._seen = self._fingerprint(files)
        self.version = self._version(self._seen)
        return loaded


@dataclass
class Generation:
    """One valid configuration with what was built from it."""

    number: int
    loaded: LoadedService
    client: RopoClient
    feeds: dict[str, FeedRuntime]

    @property
    def config(self) -> ServiceConfig:
        return self.loaded.config


def build_client(loaded: LoadedService) -> RopoClient:
    config = loaded.config
    # every feed may have max_in_flight requests open at once
    return RopoClient(config.api, pool_size=config.delivery.max_in_flight * len(config.feeds),
                      transient_statuses=config.delivery.retry_statuses)


def build_feeds(loaded: LoadedService) -> dict[str, FeedRuntime]:
    return {feed.name: FeedRuntime.build(feed.name, loaded.mappings[feed.name], feed.receipt)
            for feed in loaded.config.feeds}


# --------------------------------------------------------------------------- metered client


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
    receipts: list[Path] = field(default_factory=list)  # local receipt files to upload (SFTP)
    staged: Path | None = None                          # the downloaded copy (SFTP)
    file_id: int | None = None                          # its journal record, to note a problem
    receipt_missing: bool = False                       # the receipt is still to be written
    noted: bool = False                                 # the journal has a finish_problem to clear
    failures: int = 0                                   # failed upload / move attempts
    next_try: float = 0.0                               # time.monotonic() of the next attempt


class _Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.failures = initial, maximum, 0

    def next(self) -> float:
        self.failures += 1
        return min(self.maximum, self.initial * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


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


class WorkerState(StrEnum):
    """What a feed worker is doing (/healthz ``state``); the words are the API of /healthz."""

    STARTING = "starting"        # not yet through its first scan
    IDLE = "idle"                # waiting for files
    PROCESSING = "processing"    # a file is being processed
    UNAVAILABLE = "unavailable"  # the inbox cannot be reached: reconnecting with backoff
    AUTH_FAILED = "auth_failed"  # Ropo One refused the credentials (or TLS): retried with backoff
    PAUSED = "paused"            # the journal or a disk refused a write: the file waits
    RETRYING = "retrying"        # a file failed unexpectedly and holds the feed
    ERROR = "error"              # an unexpected error outside a file: retrying
    CRASHED = "crashed"          # the thread ended by a bug
    STOPPED = "stopped"          # ended on a stop request (or the feed was removed)
    HOLDING = "holding"          # (/healthz only) delivery holds for an API outage (circuit breaker)


class FeedWorker(threading.Thread):
    """One feed: files strictly oldest first; never dies on an error (see the module docstring).

    The state machine: while processing/ holds a file this worker has not finished (it
    failed, it was interrupted, the credentials were refused, the journal or a disk refused a
    write) the worker works on that file and nothing newer -- `_need_resume` stays set until
    `_resume` got every file in processing/ out or handed it to a later step that does not
    hold the feed (a delivered file whose receipt upload / archive move failed)."""

    def __init__(self, service: Service, name: str) -> None:
        super().__init__(name=f"feed:{name}", daemon=True)
        self.service = service
        self.feed = name
        self.state: WorkerState = WorkerState.STARTING
        self.last_scan: str | None = None
        self.last_file: str | None = None
        self.last_status: FileStatus | None = None
        self.last_error: str | None = None
        self.exit_code: ExitStatus = ExitStatus.OK
        self.retired = False
        self._give_up = False  # --once: this feed cannot go on (credentials refused, a file failed)
        self._need_resume = True
        self._generation = 0
        self._settings: FeedSettings | None = None
        self._runtime: FeedRuntime | None = None
        self._runtimes: dict[str, FeedRuntime] = {}  # mapping versions loaded while running, by version
        self._processor: Processor | None = None
        self._staging: Path | None = None
        self._inbox: Inbox | None = None
        self._unfinished: dict[str, _Finishing] = {}
        self._attempts: dict[str, int] = {}  # failed attempts per file when the journal cannot count them
        self._pause = _Backoff(1.0, 60.0)   # journal / disk faults: the feed waits, the file stays
        self._auth = _Backoff(AUTH_BACKOFF_SECONDS / 8, AUTH_BACKOFF_SECONDS)
        self._others: dict[str, float] = {}  # files another live instance is processing -> when seen

    # -- health

    def health(self) -> dict[str, Any]:
        return {"alive": self.is_alive(), "state": self.state, "last_scan": self.last_scan,
                "last_file": self.last_file, "last_status": self.last_status, "last_error": self.last_error}

    # -- configuration

    @property
    def settings(self) -> FeedSettings:
        assert self._settings is not None
        return self._settings

    def _refresh(self) -> bool:
        """Pick up a new configuration between files; False if this feed was removed."""
        generation = self.service.generation
        if generation.number == self._generation:
            return True
        try:
            settings = generation.config.feed(self.feed)
        except FeedNotFound:
            self.retired = True
            return False
        if self._settings is not None and _inbox_part(settings) != _inbox_part(self._settings):
            log.info("feed %s: inbox settings changed; reopening the inbox", self.feed, extra={"feed": self.feed})
            self._close_inbox()
            self._need_resume = True
        if self._generation:
            log.info("feed %s: using configuration #%d from the next file", self.feed, generation.number,
                     extra={"feed": self.feed})
        self._settings = settings
        self._runtime = generation.feeds[self.feed]
        self._runtimes[self._runtime.mapping_version] = self._runtime
        # a RopoClient in all but name: it times send_event and hands every other call on
        client = cast(RopoClient, _MeteredClient(generation.client, self.service.metrics, self.feed))
        self._processor = Processor(
            self.service.journal, client,
            generation.config.delivery, stop=self.service.stop,
        )
        self._processor.breaker.give_up_at_probe_max = self.service.once  # cron must get its exit
        self._staging = generation.config.staging_dir / self.feed
        self._generation = generation.number
        return True

    def _open(self) -> Inbox:
        if self._inbox is None:
            self._inbox = open_inbox(self.settings)
        return self._inbox

    def _close_inbox(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            try:
                inbox.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    @property
    def _remote(self) -> bool:
        return not isinstance(self.settings.location, LocalLocation)

    def _receipt_dir(self) -> Path:
        """Where receipts are written: the local outbox, or (SFTP) staging before the upload."""
        assert self._staging is not None
        if self._remote:
            return self._staging / "receipts"
        outbox = Runtime.outbox(self.settings)
        assert outbox is not None
        return outbox

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
            if self.state != WorkerState.CRASHED:
                self.state = WorkerState.STOPPED

    def _loop(self) -> None:
        service = self.service
        stop = service.stop
        once = service.once
        self._need_resume = True
        primed = False
        inbox_failures = 0
        backoff = _Backoff(1.0, 60.0)
        while not stop.is_set() and not self._give_up:
            step = "reading the configuration"
            try:
                if not self._refresh():
                    log.info("feed %s: removed from the configuration; worker ends", self.feed,
                             extra={"feed": self.feed})
                    return
                settings = self.settings
                backoff.initial, backoff.maximum = settings.reconnect_initial_seconds, settings.reconnect_max_seconds
                step = "opening the inbox"
                inbox = self._open()
                if self._finishing_due():
                    self._need_resume = True
                if self._need_resume:
                    step = "resuming the files in processing/"
                    # False: a file in processing/ is still unfinished (failed, interrupted,
                    # paused); it goes before anything newer, so resume again (after its wait)
                    if self._resume(inbox):
                        self._need_resume = False
                    continue
                step = "scanning the inbox"
                candidates = inbox.scan()
                self.last_scan = _now_iso()
                service.metrics.queue.labels(self.feed).set(len(candidates))
                service.metrics.last_scan.labels(self.feed).set(time.time())
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
                    step = "sending failed events again"
                    service.retry_failed(self, inbox)
                    self._idle(inbox)
                    continue
                if stop.is_set():
                    return
                step = "claiming a file"
                claimed = inbox.claim(candidates[0])
                if claimed is not None and not self._handle(inbox, claimed, resumed=False):
                    self._need_resume = True  # it stays in processing/ and goes first
            except (InboxError, OSError) as exc:
                # InboxUnavailable: the connection dropped; HostKeyError / InboxError: refused,
                # misconfigured (the key file, the folder) -- all may be fixed while we wait.
                self._need_resume = True
                inbox_failures += 1
                self.state = WorkerState.UNAVAILABLE
                self.last_error = _describe(exc)
                service.metrics.inbox_errors.labels(self.feed).inc()
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
            except JournalUnavailable as exc:  # e.g. while resuming, before any file was taken
                self._need_resume = True
                if not self._paused("the journal cannot be used", exc, None):
                    return
            except Exception as exc:  # noqa: BLE001 - a bug or a library's surprise never ends the feed
                self._need_resume = True
                self._close_inbox()
                self.state = WorkerState.ERROR
                self.last_error = f"{step}: {type(exc).__name__}: {exc}"
                service.metrics.faults.labels(self.feed, "worker").inc()
                delay = backoff.next()
                log.error("feed %s: unexpected error while %s: %s: %s; retrying in %.1f s", self.feed, step,
                          type(exc).__name__, exc, delay, exc_info=exc, extra={"feed": self.feed})
                if once:
                    self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
                    return
                stop.wait(delay)

    def _idle(self, inbox: Inbox) -> None:
        """Wait for the next scan; wake at once on a stop request."""
        deadline = time.monotonic() + self.settings.poll_interval_seconds
        while not self.service.stop.is_set() and self.service.generation.number == self._generation:
            left = deadline - time.monotonic()
            if left <= 0 or self._finishing_due():
                return
            if self._remote:
                self.service.stop.wait(min(left, 0.5))
            elif inbox.wait(min(left, 0.5)):
                return  # a file was closed or moved in

    def _finishing_due(self) -> bool:
        now = time.monotonic()
        return any(finishing.next_try <= now for finishing in self._unfinished.values())

    def _resume(self, inbox: Inbox) -> bool:
        """Work on what is in processing/, oldest first; True when nothing there holds the feed.

        Stops at the first file that is still unfinished: newer files wait behind it."""
        now = time.monotonic()
        self._others = {n: t for n, t in self._others.items() if now - t < OTHER_OWNER_SECONDS}
        for claimed in inbox.resume():
            if self.service.stop.is_set() or self._give_up:
                return False
            if claimed.name in self._others:
                continue
            finishing = self._unfinished.get(claimed.name)
            if finishing is not None and finishing.next_try > now:
                continue  # delivered; only its receipt upload / archive move waits for its retry
            if finishing is None:
                log.info("feed %s: resuming %s from processing/", self.feed, claimed.name,
                         extra={"feed": self.feed, "file": claimed.name})
            if not self._handle(inbox, claimed, resumed=True):
                return False
        return True

    # -- one file

    def _handle(self, inbox: Inbox, claimed: Claimed, *, resumed: bool) -> bool:
        """Process one file; True when it no longer holds the feed (finished, or only its
        receipt upload / archive move is left to retry), False when it stays in processing/
        to be tried again first (the wait before that try has been done)."""
        pending = self._unfinished.get(claimed.name)
        if pending is not None:  # processed already; the receipt / archive step failed before
            self._complete(inbox, pending)
            return True
        service, feed = self.service, self.feed
        self.state = WorkerState.PROCESSING
        self.last_file = claimed.source_name
        extra = {"feed": feed, "file": claimed.name}
        staged: Path | None = None
        assert self._staging is not None and self._processor is not None and self._runtime is not None
        try:
            local = self._download(inbox, claimed)
            staged = local if self._remote else None
            receipt_dir = self._receipt_dir()
            try:
                receipt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageFault("creating the receipt folder", receipt_dir, exc) from exc
            retries = service.metrics.retries.labels(feed)
            progress = Progress(on_result=lambda o: retries.inc(o.attempts - 1) if o.attempts > 1 else None)
            outcome = self._processor.process(local, self._runtime, receipt_dir, name=claimed.source_name,
                                              progress=progress, resumed=resumed, earlier=self._runtimes)
        except InboxError:
            self._drop_staged(staged)
            raise  # the inbox: the loop backs off, reconnects and resumes the file
        except FileInProgress as exc:
            self._others[claimed.name] = time.monotonic()
            log.info("feed %s: %s", feed, exc, extra=extra)
            self._drop_staged(staged)
            return True
        except JournalUnavailable as exc:
            self._drop_staged(staged)
            self._paused("the journal cannot be used", exc, claimed)
            return False
        except ReceiptNotWritten as exc:
            self._drop_staged(staged)
            if exc.file is None or not exc.file.finished:
                self._paused("a disk refused a write", exc, claimed)
                return False
            # delivered and finished in the journal: only the receipt is missing; it is written
            # again later while the feed goes on (the journal keeps the result)
            finishing = _Finishing(claimed, exc.file.state != FileState.ERROR, [], None, exc.file.id,
                                   receipt_missing=True)
            self._unfinished[claimed.name] = finishing
            self._forget_attempts(claimed)
            self._finish_failed(finishing, "writing its receipt", exc)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the service
            self._drop_staged(staged)
            if _storage_fault(exc):
                self._paused("a disk refused a write", exc, claimed)
                return False
            return self._file_failed(inbox, claimed, exc)
        self._pause.reset()
        self._forget_attempts(claimed)
        return self._outcome(inbox, claimed, outcome, staged)

    def _download(self, inbox: Inbox, claimed: Claimed) -> Path:
        """The file as a local path (SFTP: downloaded into staging; the inbox removes a partial copy)."""
        assert self._staging is not None
        try:
            if self._remote:
                self._staging.mkdir(parents=True, exist_ok=True)
            return inbox.open_local(claimed, self._staging)
        except InboxError:
            raise
        except OSError as exc:
            if self._remote and exc.errno in STORAGE_ERRNOS:
                raise StorageFault(f"downloading {claimed.name} into the staging folder", self._staging, exc) from exc
            raise

    def _outcome(self, inbox: Inbox, claimed: Claimed, outcome: FileOutcome, staged: Path | None) -> bool:
        service, feed = self.service, self.feed
        status = outcome.status
        self.last_status = status
        extra = {"feed": feed, "file": claimed.source_name, "status": status}
        service.metrics.files.labels(feed, status).inc()
        counts = outcome.counts
        if status == FileStatus.DONE:
            for name in ("accepted", "rejected", "invalid", "failed", "duplicate"):
                if counts.get(name):
                    service.metrics.events.labels(feed, name).inc(counts[name])
        shown = ", ".join(f"{counts[k]} {k}" for k in ("accepted", "rejected", "invalid", "failed", "duplicate",
                                                        "not_sent", "pending") if counts.get(k))
        if outcome.final:
            code = outcome.exit_status
            self.exit_code = max(self.exit_code, code)
            self._auth.reset()
            level = logging.INFO if code == ExitStatus.OK else logging.WARNING
            message = outcome.message if status != FileStatus.DONE else (shown or "no records")
            log.log(level, "feed %s: %s: %s: %s", feed, claimed.source_name, status, message, extra=extra)
            receipts = [outcome.receipt.csv, outcome.receipt.json] if (outcome.receipt and self._remote) else []
            record = outcome.file
            finishing = _Finishing(claimed, status != FileStatus.ERROR, receipts, staged,
                                   record.id if record is not None and record.id else None,
                                   noted=record is not None and record.finish_problem is not None)
            self._unfinished[claimed.name] = finishing
            self._complete(inbox, finishing)
            if self.state == WorkerState.PROCESSING:
                self.state = WorkerState.IDLE
            return True
        self._drop_staged(staged)
        if status == FileStatus.INTERRUPTED:
            log.info("feed %s: %s: interrupted (%s); left in processing/ to resume", feed, claimed.source_name,
                     shown or "nothing sent", extra=extra)
            return False
        # auth_failed: Ropo One refused the credentials, or its TLS certificate was not trusted;
        # nothing more can go out until that is fixed.
        self.exit_code = ExitStatus.UNUSABLE
        self.last_error = outcome.message
        self.state = WorkerState.AUTH_FAILED
        delay = self._auth.next()
        log.error("feed %s: %s: cannot deliver to Ropo One: %s; the file stays in processing/ and is "
                  "resumed in %.0f s", feed, claimed.source_name, outcome.message, delay, extra=extra)
        if service.once:
            self._give_up = True
        else:
            service.stop.wait(delay)
        return False

    def _complete(self, inbox: Inbox, finishing: _Finishing) -> None:
        """Upload the receipt (SFTP) and move the original; may raise InboxUnavailable (redone
        after the reconnect). Any other failure (a folder without write permission, a full
        disk) is noted in the journal and retried later with backoff: a delivered file does
        not hold back the feed's next files."""
        claimed = finishing.claimed
        folder = "archive/" if finishing.ok else "error/"
        self._drop_staged(finishing.staged)  # the download is not needed for either step
        finishing.staged = None
        step = ""
        try:
            if finishing.receipt_missing:
                step = "writing its receipt"
                self._write_missing_receipt(finishing)
            for path in finishing.receipts:
                if path.exists():
                    step = f"uploading the receipt {path.name} to the outbox"
                    inbox.put_receipt(path, path.name)
            step = f"moving {claimed.name} from processing/ to {folder}"
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
        for path in finishing.receipts:
            path.unlink(missing_ok=True)
        self._unfinished.pop(claimed.name, None)
        if (finishing.failures or finishing.noted) and finishing.file_id is not None:
            self._journal_quietly(lambda: self.service.journal.set_finish_problem(finishing.file_id, None))
            log.info("feed %s: %s moved to %s%s; the earlier problem is solved", self.feed, claimed.name, folder,
                     target, extra={"feed": self.feed})
        else:
            log.debug("feed %s: %s moved to %s%s", self.feed, claimed.name, folder, target, extra={"feed": self.feed})

    def _write_missing_receipt(self, finishing: _Finishing) -> None:
        assert finishing.file_id is not None and self._processor is not None and self._runtime is not None
        file = self.service.journal.get_file(finishing.file_id)
        receipt_dir = self._receipt_dir()
        try:
            receipt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageFault("creating the receipt folder", receipt_dir, exc) from exc
        receipt = self._processor.write_receipt_of(file, self._runtime, receipt_dir)
        if self._remote:
            finishing.receipts = [receipt.csv, receipt.json]
        finishing.receipt_missing = False

    def _finish_failed(self, finishing: _Finishing, step: str, exc: BaseException) -> None:
        finishing.failures += 1
        settings = self.settings
        delay = min(settings.reconnect_max_seconds, settings.reconnect_initial_seconds * 2 ** (finishing.failures - 1))
        finishing.next_try = time.monotonic() + delay
        name = finishing.claimed.name
        problem = f"{step} failed: {_describe(exc)}"
        self.last_error = f"{name}: {problem}"
        self.service.metrics.faults.labels(self.feed, "finish").inc()
        if finishing.file_id is not None:
            self._journal_quietly(lambda: self.service.journal.set_finish_problem(finishing.file_id, problem))
        log.error("feed %s: %s: processed, but %s (attempt %d); it stays in processing/, the feed goes on with its "
                  "next files and tries again in %.1f s", self.feed, name, problem, finishing.failures, delay,
                  extra={"feed": self.feed, "file": name})
        if self.service.once:
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
        self.service.metrics.faults.labels(self.feed, kind).inc()
        delay = self._pause.next()
        held = f"{claimed.name} stays in processing/; " if claimed is not None else ""
        log.error("feed %s: %s: %s; %sthe feed pauses and tries again in %.0f s (attempt %d)", self.feed, what,
                  self.last_error, held, delay, self._pause.failures,
                  extra={"feed": self.feed, **({"file": claimed.name} if claimed else {})})
        if self.service.once:
            self.exit_code = max(self.exit_code, ExitStatus.UNUSABLE)
            self._give_up = True
            return False
        self.service.stop.wait(delay)
        if kind == "journal" and not self.service.stop.is_set():
            try:  # a repaired or remounted disk is seen only through a new connection
                self.service.journal.reopen()
            except JournalUnavailable as again:
                log.warning("feed %s: %s", self.feed, again, extra={"feed": self.feed})
        return True

    def _count_attempt(self, claimed: Claimed, error: str) -> int:
        """Count a failed attempt in the journal (across restarts); in memory if it cannot."""
        memory = self._attempts[claimed.name] = self._attempts.get(claimed.name, 0) + 1
        try:
            return max(memory, self.service.journal.count_file_attempt(self.feed, display_name(claimed.name), error))
        except JournalError:
            return memory

    def _forget_attempts(self, claimed: Claimed) -> None:
        self._attempts.pop(claimed.name, None)
        self._journal_quietly(lambda: self.service.journal.clear_file_attempts(self.feed, display_name(claimed.name)))

    def _file_failed(self, inbox: Inbox, claimed: Claimed, exc: BaseException) -> bool:
        extra = {"feed": self.feed, "file": claimed.name}
        described = _describe(exc)
        attempts = self._count_attempt(claimed, described)
        self.last_error = f"{claimed.name}: {described}"
        self.state = WorkerState.RETRYING
        self.service.metrics.faults.labels(self.feed, "file").inc()
        if self.service.once and attempts < FILE_ATTEMPTS:  # --once (cron): the next run tries again
            log.error("feed %s: %s failed (attempt %d of %d): %s; it stays in processing/ for the next run",
                      self.feed, claimed.name, attempts, FILE_ATTEMPTS, described, exc_info=exc, extra=extra)
            self.exit_code = ExitStatus.UNUSABLE
            self._give_up = True
            return False
        if attempts < FILE_ATTEMPTS:
            delay = min(30.0, 2.0 ** attempts)
            log.error("feed %s: %s failed (attempt %d of %d): %s; trying again in %.0f s", self.feed, claimed.name,
                      attempts, FILE_ATTEMPTS, described, delay, exc_info=exc, extra=extra)
            self.service.stop.wait(delay)
            return False
        log.error("feed %s: %s failed %d time(s): %s; moved to error/", self.feed, claimed.name, attempts,
                  described, exc_info=exc, extra=extra)
        self.exit_code = ExitStatus.UNUSABLE
        self.last_status = FileStatus.ERROR
        self.service.metrics.files.labels(self.feed, FileStatus.ERROR).inc()
        try:
            finishing = self._give_up_file(claimed, f"failed {attempts} times: {described}")
        except (JournalError, StorageFault, OSError) as fault:  # journal or disk: keep it, try again
            self._paused("cannot move a failed file to error/", fault, claimed)
            return False
        self._forget_attempts(claimed)
        self._unfinished[claimed.name] = finishing
        self._complete(inbox, finishing)
        self.state = WorkerState.IDLE
        return True

    def _give_up_file(self, claimed: Claimed, error: str) -> _Finishing:
        """Close the file in the journal as error (its pending events become not_sent) and write
        its file-level receipt; returns what moves it to error/."""
        journal = self.service.journal
        record = journal.unfinished_named(self.feed, claimed.source_name)
        if record is not None:
            record = journal.finish_file(record.id, FileState.ERROR, error=error)
        else:  # it failed before the journal knew it (e.g. it could not be read at all)
            now = journal.clock()
            record = FileRecord(0, claimed.source_name, "", claimed.size, self.feed, FileState.ERROR, now, now, error,
                                dict.fromkeys(OUTCOMES, 0), False, None, this_process())
        receipt_dir, runtime = self._receipt_dir(), self._runtime
        assert runtime is not None

        def write() -> ReceiptPaths:
            receipt_dir.mkdir(parents=True, exist_ok=True)
            return write_file_level_receipt(receipt_dir, record, runtime.receipt_format)

        receipt = write_receipt_or_fault(write, receipt_dir)
        receipts = [receipt.csv, receipt.json] if self._remote else []
        return _Finishing(claimed, False, receipts, None, record.id or None)

    @staticmethod
    def _drop_staged(staged: Path | None) -> None:
        if staged is not None:
            staged.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the service


class Service:
    """Watches every feed of a configuration until `stop` is set (or, `once`, until all is done)."""

    def __init__(self, loaded: LoadedService, *, once: bool = False,
                 reload_interval: float = DEFAULT_RELOAD_INTERVAL,
                 redactor: RedactingFilter | None = None) -> None:
        self.once = once
        self.reload_interval = reload_interval
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.redactor = redactor
        self._lock = threading.Lock()
        self._signalled = False
        self._said_again = False
        config = loaded.config
        config.journal.parent.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(config.journal)
        try:
            check_feed_secrets(loaded)  # a secret that cannot be resolved stops the start, as the API code does
            client = build_client(loaded)
            self._generation = Generation(1, loaded, client, build_feeds(loaded))
        except BaseException:
            self.journal.close()
            raise
        for warning in secret_file_warnings(loaded):
            log.warning("%s", warning)
        self._clients = [client]
        self._register_secrets(self._generation)
        self.watcher = ConfigWatcher(loaded, settle_seconds=max(1.0, 2 * reload_interval))
        self.workers: dict[str, FeedWorker] = {}
        self.metrics_server: MetricsServer | None = None
        self._next_prune = 0.0  # time.monotonic() when the journal's retention is applied next
        self._next_retry: dict[str, float] = {}  # feed -> time.monotonic() of its next failed-events check
        self.metrics.watch_feeds(self._feed_flags)

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: Any) -> Service:
        return cls(load_service_config(path), **kwargs)

    @property
    def generation(self) -> Generation:
        with self._lock:
            return self._generation

    @property
    def config(self) -> ServiceConfig:
        return self.generation.config

    def _register_secrets(self, generation: Generation) -> None:
        if self.redactor is None:
            return
        self.redactor.add_redactor(generation.client.redact)
        redact_config_secrets(generation.config, self.redactor)

    # -- signals

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: stop claiming, let the in-flight file finish or journal it, exit 0."""

        def handler(signum: int, frame: Any) -> None:
            self.request_stop(signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            # said once: a storm of signals would otherwise re-enter logging from the handler
            # (it runs between any two bytecodes of the main thread) until the recursion limit
            if not self._said_again:
                self._said_again = True
                log.warning("%s again: still finishing the files in flight", name)
            return
        self._signalled = True
        log.info("%s: stopping; files in flight finish or stay in processing/ to resume", name)
        self.stop.set()

    # -- health

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: every feed thread runs and no feed is held up (API outage, inbox unreachable,
        credentials refused); otherwise the problems, one line per feed, and 503."""
        workers = dict(self.workers)
        feeds: dict[str, Any] = {}
        problems: list[str] = []
        for name, worker in workers.items():
            detail = worker.health()
            trouble = feed_trouble(worker)
            if trouble is not None:
                detail["state"], detail["problem"] = trouble
                problems.append(f"{name}: {trouble[0]}: {trouble[1]}")
            elif not worker.is_alive():
                problems.append(f"{name}: the feed's thread is not running ({worker.state})")
            feeds[name] = detail
        healthy = bool(workers) and not problems and not self.stop.is_set()
        body: dict[str, Any] = {"configuration": self.generation.number, "feeds": feeds}
        if problems:
            body["problems"] = problems
        return healthy, body

    def _feed_flags(self) -> dict[str, dict[str, bool]]:
        """Per feed, for the gauges: holding for the API, inbox unreachable."""
        return {name: {"api_holding": _breaker_open(worker),
                       "inbox_unreachable": worker.state == WorkerState.UNAVAILABLE}
                for name, worker in dict(self.workers).items()}

    # -- failed events

    def retry_failed(self, worker: FeedWorker, inbox: Inbox) -> None:
        """Send the feed's failed events again once they have been failed for
        ``delivery.retry_failed_after`` seconds, as the `retry` command does (Processor.retry,
        then the rewritten receipt into the outbox). Called by the feed's worker when idle."""
        after = self.config.delivery.retry_failed_after
        processor, runtime = worker._processor, worker._runtime
        now = time.monotonic()
        if after is None or processor is None or runtime is None or now < self._next_retry.get(worker.feed, 0.0):
            return
        self._next_retry[worker.feed] = now + min(after, RETRY_FAILED_CHECK_SECONDS)
        failed_before = self.journal.clock() - timedelta(seconds=after)
        for file_id in failed_file_ids(self.journal, None):
            record = self.journal.get_file(file_id)
            if record.feed != worker.feed or not record.finished or self.stop.is_set():
                continue  # another feed's, or a file still being worked (here or by another instance)
            if any(event.updated_at > failed_before for event in self.journal.failed_events(file_id)):
                continue  # failed too recently: next time
            extra = {"feed": worker.feed, "file": record.name}
            log.info("feed %s: %s: sending its failed events again (delivery.retry_failed_after)",
                     worker.feed, record.name, extra=extra)
            receipt_dir = (Runtime.outbox(worker.settings) if not worker._remote
                           else self.config.staging_dir / worker.feed / "receipts")
            assert receipt_dir is not None
            receipt_dir.mkdir(parents=True, exist_ok=True)
            outcome = processor.retry(file_id, runtime, receipt_dir)
            if outcome.receipt is not None and worker._remote:
                for path in (outcome.receipt.csv, outcome.receipt.json):
                    inbox.put_receipt(path, path.name)
                    path.unlink(missing_ok=True)
            counts = ", ".join(f"{n} {k}" for k, n in outcome.counts.items() if n and k != "invalid")
            log.info("feed %s: %s: retried: %s: %s", worker.feed, record.name, outcome.status,
                     outcome.message or counts, extra=extra)
            if outcome.status != FileStatus.DONE:  # stopped, or credentials refused: try again later
                return

    # -- running

    def _start_worker(self, name: str) -> None:
        worker = FeedWorker(self, name)
        self.workers[name] = worker
        worker.start()

    def run(self) -> ExitStatus:
        config = self.config
        if config.metrics is not None:
            self.metrics_server = MetricsServer(config.metrics.host, config.metrics.port, self.metrics, self.health)
            self.metrics_server.start()
            host, port = self.metrics_server.address
            log.info("health and metrics at http://%s:%d/healthz and /metrics", host, port)
        log.info("watching %d feed(s): %s%s", len(config.feeds),
                 ", ".join(f"{feed.name} ({feed.inbox})" for feed in config.feeds),
                 " (once)" if self.once else "")
        try:
            self._prune_journal()
            for feed in config.feeds:
                self._start_worker(feed.name)
            while True:
                if self.once:
                    if not any(worker.is_alive() for worker in self.workers.values()):
                        break
                    if self.stop.wait(0.1):
                        break
                    continue
                if self.stop.wait(self.reload_interval):
                    break
                self._reload()
                self._check_workers()
                self._prune_journal()
        finally:
            self.stop.set()
            for worker in list(self.workers.values()):
                worker.join()
            self.close()
        codes = [worker.exit_code for worker in self.workers.values()]
        if not self.once:
            crashed = any(worker.state == WorkerState.CRASHED for worker in self.workers.values())
            return ExitStatus.UNUSABLE if crashed and not self._signalled else ExitStatus.OK
        return max(codes, default=ExitStatus.OK)

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        for client in self._clients:
            client.close()
        self._clients = []
        self.journal.close()
        log.info("stopped")

    def _prune_journal(self) -> None:
        """Apply journal_retention_days when it is due (see Journal.prune)."""
        days = self.config.journal_retention_days
        if days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        try:
            files, events = prune_journal(self.journal, days)
        except (sqlite3.Error, JournalError) as exc:  # e.g. locked too long: the files stay; next time
            log.warning("journal: applying journal_retention_days failed: %s; trying again later", exc)
            return
        if files:
            log.info("journal: forgot %d file(s) and %d event(s) finished more than %g days ago",
                     files, events, days)

    def _check_workers(self) -> None:
        for name, worker in list(self.workers.items()):
            if worker.retired and not worker.is_alive():
                del self.workers[name]

    # -- reload

    def _reload(self) -> None:
        try:
            result = self.watcher.poll()
        except Exception as exc:  # noqa: BLE001 - whatever a changed file holds, the service keeps running
            self.metrics.reloads.labels("refused").inc()
            log.error("configuration change refused; the previous configuration stays in force: "
                      "the files could not be checked: %s: %s", type(exc).__name__, exc)
            return
        if result is None:
            return
        if isinstance(result, ConfigError):
            self.metrics.reloads.labels("refused").inc()
            log.error("configuration change refused; the previous configuration stays in force. Problems:\n%s",
                      "\n".join(f"  {problem}" for problem in result.problems))
            return
        try:
            generation = self._build_generation(result)
        except Exception as exc:  # noqa: BLE001 - a changed configuration never stops the service
            self.metrics.reloads.labels("refused").inc()
            reason = exc if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            log.error("configuration change refused; the previous configuration stays in force: %s", reason)
            return
        for warning in secret_file_warnings(result):
            log.warning("%s", warning)
        old = self.generation
        notes = []
        if generation.config.journal != old.config.journal:
            notes.append("journal")
        if generation.config.metrics != old.config.metrics:
            notes.append("metrics")
        if generation.config.logging.format != old.config.logging.format:
            notes.append("logging.format")
        if generation.config.staging_dir != old.config.staging_dir:
            notes.append("staging_dir")
        if notes:
            log.warning("configuration: a change of %s takes effect after a restart", ", ".join(notes))
        apply_level(generation.config.logging.level)
        with self._lock:
            self._generation = generation
        self._register_secrets(generation)
        self.metrics.reloads.labels("applied").inc()
        names = {feed.name for feed in generation.config.feeds}
        for name in names - set(self.workers):
            self._start_worker(name)
        removed = set(self.workers) - names
        log.info("configuration #%d applied (version %s): it is used from the next file%s", generation.number,
                 self.watcher.version,
                 f"; feeds removed after their current file: {', '.join(sorted(removed))}" if removed else "")

    def _build_generation(self, loaded: LoadedService) -> Generation:
        old = self.generation
        if loaded.config.journal != old.config.journal:
            loaded = LoadedService(loaded.path, loaded.config.model_copy(update={"journal": old.config.journal}),
                                   loaded.mappings)
        check_feed_secrets(loaded)
        feeds = build_feeds(loaded)
        if loaded.config.api == old.config.api and loaded.config.delivery == old.config.delivery \
                and len(loaded.config.feeds) <= len(old.config.feeds):
            client = old.client
        else:
            client = build_client(loaded)  # resolves the credentials: refused if they are missing
            self._clients.append(client)
        return Generation(old.number + 1, loaded, client, feeds)


def _breaker_open(worker: FeedWorker) -> bool:
    processor = worker._processor
    return processor is not None and processor.breaker.is_open


def feed_trouble(worker: FeedWorker) -> tuple[WorkerState, str] | None:
    """What holds a feed up, for /healthz: (state, why); None when nothing does."""
    processor = worker._processor
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
    }.get(worker.state)
    return (worker.state, why) if why is not None else None


def prune_journal(journal: Journal, retention_days: float) -> tuple[int, int]:
    """Forget what finished more than `retention_days` ago: (files, events) forgotten."""
    return journal.prune(journal.clock() - timedelta(days=retention_days))


# --------------------------------------------------------------------------- status


def feed_overview(loaded: LoadedService, journal: Journal | None) -> list[dict[str, Any]]:
    """Per feed: its inbox, the files waiting in processing/, the last file in the journal."""
    rows = []
    for feed in loaded.config.feeds:
        row: dict[str, Any] = {"feed": feed.name, "inbox": feed.inbox, "in_processing": None, "last_file": None}
        try:
            quick = feed.model_copy(update={"connect_timeout_seconds": 5.0, "io_timeout_seconds": 10.0,
                                            "mode": "polling"})
            with open_inbox(quick) as inbox:
                row["in_processing"] = [claimed.source_name for claimed in inbox.resume()]  # D6: shown escaped
        except (InboxError, OSError) as exc:
            row["error"] = str(exc)
        if journal is not None:
            recent = journal.recent_files(1, feed.name)
            if recent:
                last = recent[0]
                row["last_file"] = {"name": last.name, "state": last.state,
                                    "started": last.started_at.isoformat(), "counts": dict(last.counts)}
        rows.append(row)
    return rows


def check_service_config(path: Path) -> tuple[LoadedService | None, list[str], list[str]]:
    """What `validate-config` reports: (the config, problems, warnings).

    Problems: the config and every mapping (file, line, key), secrets that cannot be resolved.
    Warnings: what may only exist on the production host (local inbox folders, known_hosts)."""
    try:
        loaded = load_service_config(path)
    except ConfigError as exc:
        listed = [str(problem) for problem in exc.problems]
        # the loader lists a mapping's problems itself when the rest of the file is good
        return None, listed + [found for found in _mapping_problems(Path(path)) if found not in listed], []
    problems: list[str] = []
    warnings: list[str] = secret_file_warnings(loaded)
    try:
        loaded.config.api.credentials()
    except SecretResolutionError as exc:
        problems.append(f"{loaded.path}: api: {exc}")
    for feed in loaded.config.feeds:
        where = f"{loaded.path}: feeds[{feed.name}]"
        try:
            feed.resolved_password()
        except SecretResolutionError as exc:
            problems.append(f"{where}: {exc}")
        problems += [f"{where}: {problem}" for problem in _key_problems(feed)]
        location = feed.location
        if isinstance(location, LocalLocation):
            if not location.path.is_dir():
                warnings.append(f"{where}: inbox: the folder {location.path} does not exist (yet)")
        elif feed.known_hosts is not None and not feed.known_hosts.is_file() and not feed.accept_new_host_key:
            warnings.append(f"{where}: known_hosts: {feed.known_hosts} does not exist: get the key with "
                            f"ssh-keyscan -p {location.port} {location.host} and compare its fingerprint "
                            "with the server's own (ssh-keygen -lf) before trusting it")
    return loaded, problems, warnings


def _key_problems(feed: FeedSettings) -> list[str]:
    """The passphrase resolves and opens the private key (else the feed's worker would find out)."""
    try:
        passphrase = feed.resolved_key_passphrase()
    except SecretResolutionError as exc:
        return [str(exc)]
    if feed.private_key_file is None or not feed.private_key_file.is_file():
        return []  # a missing key file is a problem of the configuration itself
    from batch.inbox.sftp import load_private_key

    try:
        load_private_key(feed.private_key_file, passphrase)
    except InboxError as exc:
        return [f"private_key_file: {exc}"]
    return []


def _mapping_problems(path: Path) -> list[str]:
    """The mappings' own problems when the service file has some too (which stops the full check early)."""
    from batch.config.mapping import load_mapping
    from batch.config.yamlload import load_yaml_file

    try:
        data = load_yaml_file(path).data
    except ConfigError:
        return []
    feeds = data.get("feeds") if isinstance(data, dict) else None
    found: list[str] = []
    seen: set[Path] = set()
    for feed in feeds if isinstance(feeds, list) else []:
        mapping = feed.get("mapping") if isinstance(feed, dict) else None
        if not isinstance(mapping, str):
            continue
        mapping_path = (path.resolve().parent / mapping)
        if mapping_path in seen:
            continue
        seen.add(mapping_path)
        try:
            load_mapping(mapping_path)
        except ConfigError as exc:
            found.extend(str(problem) for problem in exc.problems)
    return found
