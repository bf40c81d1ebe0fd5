"""The long-running service: one worker thread per feed, hot reload, signals, health and metrics.

Threads
- one **feed worker** per feed: it owns the feed's Inbox (inboxes are not thread-safe) and its
  own Processor (sharing the service's Journal and RopoClient, which are thread-safe). It
  processes the feed's files oldest first, one at a time, so events keep their order across
  files; feeds run side by side.
- the **main thread** (`Service.run`) polls the configuration files for changes, starts and
  retires workers, and on a stop request waits for the workers.
- optionally a small **HTTP thread** for /healthz and /metrics (batch.service.metrics).

A file's way through a worker

    claim -> open_local (SFTP: download to staging) -> Processor.process -> receipts, where the
    inbox says (Inbox.receipt_dir; SFTP: written to staging, then Inbox.publish_receipt uploads
    CSV first, JSON last; local: straight into the outbox) -> finish: done/skipped -> archive/,
    error (file-level) -> error/

The worker sees of the service only its WorkerContext (batch.service.context).

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

Several instances (batch.service.leasing): a worker works its feed only while this instance
holds the feed's lease (``LeaseKeeper``, whose heartbeat thread renews it); it claims and resumes
nothing otherwise (state ``standby``, ``foreign`` or ``handover``). Every journal write of the
worker's thread is fenced by the lease's epoch, and receipts, uploads and moves are preceded by
a check; a lost lease stops the file where it is (LeaseLost) and leaves it to the new holder.
The leases live in the journal's file (batch.store.leases); the inbox carries a lease marker for
instances with another journal.

Faults: a feed whose delivery holds for an API outage (the delivery's circuit breaker) or
whose inbox cannot be reached is reported by /healthz (503, with the reason in the feed's
``state``) and the ``usageplace_batch_api_holding`` / ``usageplace_batch_inbox_unreachable``
gauges. Failed events are sent again by the service itself once they have been failed for
``delivery.retry_failed_after`` seconds (batch.service.failed, called by an idle worker;
the same Processor.retry as the `retry` command).

Reload: the service file and every mapping it names are hashed every few seconds; a change
that has stayed the same for a settle time (2 x the reload interval, at least 1 s) is loaded
and checked in full (the same checks as `validate-config`, plus the credentials)
before anything uses it. A valid change applies from the next file each worker starts; an
invalid one is refused, every problem logged, and the previous configuration stays in force.
"""


from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from batch.config.api import SecretResolutionError
from batch.config.inbox import LocalLocation
from batch.config.service import (
    FeedSettings,
    LoadedService,
    ServiceConfig,
    load_service_config,
    secret_file_warnings,
)
from batch.config.yamlload import ConfigError
from batch.errors import ExitStatus
from batch.inbox import InboxError, open_inbox
from batch.inbox.base import LeaseMarker
from batch.service.context import WorkerContext
from batch.service.lateness import Lateness, description, lateness
from batch.service.leasing import SHARED_JOURNAL_HINT, LeaseKeeper, handover_hint
from batch.service.logs import RedactingFilter, apply_level, redact_config_secrets
from batch.service.metrics import Metrics, MetricsServer
from batch.service.notifying import Notifier
from batch.service.reload import (
    DEFAULT_RELOAD_INTERVAL,
    ConfigWatcher,
    Generation,
    check_feed_secrets,
)
from batch.service.runtime import build_client, build_feeds
from batch.service.worker import FeedWorker, WorkerState, breaker_open, feed_trouble
from batch.store.journal import JournalError, JournalStore
from batch.store.journals import journal_display, open_journal
from batch.store.leases import Lease, LeaseStore, default_instance_name, open_lease_store

log = logging.getLogger("batch.service.supervisor")

PRUNE_EVERY_SECONDS = 6 * 3600.0  # journal retention is applied at start and then this often
SIGNAL_POLL_SECONDS = 0.1  # how soon the main thread acts on a signal's note
LATE_CHECK_SECONDS = 5.0  # how often the feeds' schedules are checked (at most; the reload interval if longer)


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
        self._signals: list[int] = []  # appended by the signal handler, read by the main thread
        self._signals_at_stop = 0
        config = loaded.config
        journal = open_journal(config)
        assert journal is not None  # create=True: always a journal
        self.journal = journal
        self.instance = config.instance or default_instance_name()
        try:
            # leases live beside the journal: the processes that share a journal share its leases
            self.lease_store = open_lease_store(config.journal, config.journal_password_file)
        except BaseException:
            self.journal.close()
            raise
        self.leases = LeaseKeeper(self.lease_store, name=self.instance, journal_path=journal_display(config.journal),
                                  lease_seconds=config.lease_seconds, feed_count=lambda: len(self.config.feeds))
        try:
            check_feed_secrets(loaded)  # a secret that cannot be resolved stops the start, as the API code does
            client = build_client(loaded.config, len(loaded.config.feeds))  # every feed sends at once
            self._generation = Generation(1, loaded, client, build_feeds(loaded))
        except BaseException:
            self.lease_store.close()
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
        self._next_late_check = 0.0  # time.monotonic() when the feeds' schedules are checked next
        self.lateness: dict[str, Lateness] = {}  # per feed with `expected:`, at the last check
        self.notifier = Notifier(self.journal, self.instance, self.stop)
        # what each feed worker sees of the service (instead of the service itself)
        self.context = WorkerContext(self.journal, self.leases, self.metrics, self.stop, lambda: self.generation,
                                     once, self.notifier)
        self.metrics.watch_feeds(self._feed_flags)
        self.metrics.watch_lateness(lambda: dict(self.lateness))

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
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a note, acted on by the main thread within SIGNAL_POLL_SECONDS. A handler runs
        # between any two bytecodes of the main thread: inside a log line it is writing (a storm
        # of SIGTERMs re-entered logging until the recursion limit, exit 3) or inside a lock it
        # holds (Event.set from here could wait for the main thread's own lock for ever).
        self._signals.append(signum)

    def request_stop(self, signum: int) -> None:
        """Stop as a signal would (a signal that came before the handlers were installed)."""
        self._signals.append(signum)

    def _act_on_signals(self) -> bool:
        """Main thread: stop when a signal asked for it (said once, and once 'again'); True when
        the service is stopping."""
        if self._signals and not self.stop.is_set():
            self._signalled = True
            self._signals_at_stop = len(self._signals)
            self.stop.set()
            log.info("%s: stopping; files in flight finish or stay in processing/ to resume",
                     signal.Signals(self._signals[0]).name)
        elif len(self._signals) > self._signals_at_stop > 0 and not self._said_again:
            self._said_again = True
            log.warning("%s again: still finishing the files in flight", signal.Signals(self._signals[-1]).name)
        return self.stop.is_set()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking for a stop (set by a thread, or asked by a signal)."""
        deadline = time.monotonic() + seconds
        while not self._act_on_signals():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop.wait(min(left, SIGNAL_POLL_SECONDS))
        return True

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
        return {name: {"api_holding": breaker_open(worker),
                       "inbox_unreachable": worker.state == WorkerState.UNAVAILABLE}
                for name, worker in dict(self.workers).items()}

    # -- running

    def _start_worker(self, name: str) -> None:
        worker = FeedWorker(self.context, name)
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
            self.leases.start()
            self.notifier.start()
            self._prune_journal()
            for feed in config.feeds:
                self._start_worker(feed.name)
            while True:
                if self.once:
                    if not any(worker.is_alive() for worker in self.workers.values()):
                        break
                    if self._wait(0.1):
                        break
                    continue
                if self._wait(self.reload_interval):
                    break
                self._reload()
                self._check_workers()
                self._prune_journal()
                self._check_lateness()
        finally:
            self.stop.set()
            for worker in list(self.workers.values()):
                while worker.is_alive():
                    worker.join(SIGNAL_POLL_SECONDS)
                    self._act_on_signals()  # a SIGTERM while the files in flight finish: said once
            self.notifier.close()
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
        try:
            self.leases.close()
        finally:
            self.lease_store.close()
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

    def _check_lateness(self) -> None:
        """Every feed with `expected:`: is its file late? (batch.service.lateness). For the feeds
        this instance works: the WARNING and the webhook once per missed due time, a line when
        the late file arrives, and notifications a dead sender left unsent."""
        if time.monotonic() < self._next_late_check:
            return
        self._next_late_check = time.monotonic() + max(self.reload_interval, min(LATE_CHECK_SECONDS,
                                                                                 5 * self.reload_interval))
        config = self.config
        now = self.journal.clock()
        for feed in config.feeds:
            if feed.expected is None:
                self.lateness.pop(feed.name, None)
                continue
            try:
                self._check_feed(config, feed, now)
            except (sqlite3.Error, JournalError) as exc:
                log.warning("feed %s: cannot check whether its file is late: %s", feed.name, exc,
                            extra={"feed": feed.name})
            except Exception as exc:  # noqa: BLE001 - a schedule check never stops the service
                log.error("feed %s: checking whether its file is late failed: %s: %s", feed.name,
                          type(exc).__name__, exc, exc_info=exc, extra={"feed": feed.name})

    def _check_feed(self, config: ServiceConfig, feed: FeedSettings, now: datetime) -> None:
        assert feed.expected is not None
        state = feed_lateness(feed, self.journal, now)
        before = self.lateness.get(feed.name)
        self.lateness[feed.name] = state
        worker = self.workers.get(feed.name)
        if worker is None or not worker.holds_lease():
            return  # another instance works the feed: it says what is to be said
        notify = config.notify_of(feed)
        if state.late:
            self.notifier.late(feed, notify, state, description(feed.expected.schedule, feed.expected.grace_period))
        elif before is not None and before.late and state.last_arrival is not None:
            log.info("feed %s: its file arrived at %s, after the deadline %s; the feed is no longer late",
                     feed.name, _utc(state.last_arrival.timestamp()), _utc(before.deadline.timestamp()),
                     extra={"feed": feed.name})
        self.notifier.resend_stale(feed.name, notify, now)

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
        if generation.config.instance != old.config.instance:
            notes.append("instance")
        if generation.config.lease_seconds != old.config.lease_seconds:
            notes.append("lease_seconds")
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
            # resolves the credentials: refused if they are missing
            client = build_client(loaded.config, len(loaded.config.feeds))
            self._clients.append(client)
        return Generation(old.number + 1, loaded, client, feeds)



def prune_journal(journal: JournalStore, retention_days: float) -> tuple[int, int]:
    """Forget what finished more than `retention_days` ago: (files, events) forgotten."""
    return journal.prune(journal.clock() - timedelta(days=retention_days))


# --------------------------------------------------------------------------- status


def feed_overview(loaded: LoadedService, journal: JournalStore | None,
                  leases: LeaseStore | None = None) -> list[dict[str, Any]]:
    """Per feed: its inbox, the files waiting in processing/, the last file in the journal, and
    (with `leases`) the feed's lease (holder, epoch, expiry) and the inbox's lease marker; a
    marker of another journal says why this journal's instances leave the feed alone."""
    rows = []
    now = time.time()
    by_feed = {lease.feed: lease for lease in leases.leases()} if leases is not None else {}
    feeds = loaded.config.feeds
    # the inboxes are looked at side by side: twelve SFTP feeds whose server is down cost one
    # connect timeout (5 s), not twelve, for `status` and for the console's feeds page
    with ThreadPoolExecutor(max_workers=max(1, min(INBOX_PROBES, len(feeds))),
                            thread_name_prefix="inbox-probe") as pool:
        probes = list(pool.map(lambda feed: _probe_inbox(feed, leases is not None), feeds))
    for feed, (in_processing, marker, error) in zip(feeds, probes):
        row: dict[str, Any] = {"feed": feed.name, "inbox": feed.inbox, "in_processing": in_processing,
                               "last_file": None,
                               "expected": expected_summary(feed, journal, journal.clock() if journal is not None
                                                            else datetime.now(timezone.utc))}
        if error is not None:
            row["error"] = error
        if journal is not None:
            recent = journal.recent_files(1, feed.name)
            if recent:
                last = recent[0]
                row["last_file"] = {"name": last.name, "state": last.state,
                                    "started": last.started_at.isoformat(), "counts": dict(last.counts)}
        if leases is not None:
            row["lease"] = lease_summary(by_feed.get(feed.name), now)
            row["marker"] = marker_summary(marker, leases.journal_id, feed, row.get("in_processing") or [], now)
        rows.append(row)
    return rows


INBOX_PROBES = 8  # inboxes looked at at once by feed_overview


def _probe_inbox(feed: FeedSettings, with_marker: bool) -> tuple[list[str] | None, LeaseMarker | None, str | None]:
    """(the files waiting in the feed's processing/, its lease marker, or why the inbox could not
    be looked at), with short timeouts: an overview must not hang on one unreachable server."""
    try:
        quick = feed.model_copy(update={"connect_timeout_seconds": 5.0, "io_timeout_seconds": 10.0,
                                        "mode": "polling"})
        with open_inbox(quick) as inbox:
            waiting = [claimed.source_name for claimed in inbox.resume()]  # D6: shown escaped
            return waiting, inbox.read_lease_marker() if with_marker else None, None
    except (InboxError, OSError) as exc:
        return None, None, str(exc)


def feed_lateness(feed: FeedSettings, journal: JournalStore, now: datetime) -> Lateness:
    """The lateness of a feed with `expected:` at `now`: its last file's arrival is when the
    journal recorded the feed's newest file."""
    assert feed.expected is not None
    recent = journal.recent_files(1, feed.name)
    arrival = recent[0].started_at if recent else None
    return lateness(feed.expected.schedule, feed.expected.grace_period, arrival, now)


def expected_summary(feed: FeedSettings, journal: JournalStore | None, now: datetime) -> dict[str, Any] | None:
    """The ``expected`` of a feed row (CONSOLE_CONTRACTS.md): None without a schedule."""
    if feed.expected is None:
        return None
    described = description(feed.expected.schedule, feed.expected.grace_period)
    if journal is None:  # no journal yet: nothing has arrived
        state = lateness(feed.expected.schedule, feed.expected.grace_period, None, now)
    else:
        state = feed_lateness(feed, journal, now)
    return state.as_json(described)


def lease_summary(lease: Lease | None, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"holder": lease.holder, "epoch": lease.epoch, "expires": _utc(lease.expires_at),
            "live": lease.live(now)}


def marker_summary(marker: LeaseMarker | None, journal_id: str, feed: FeedSettings, left: list[str],
                   now: float) -> dict[str, Any] | None:
    """The inbox's lease marker for `status`; for another journal's, why the feed is left alone."""
    if marker is None:
        return None
    summary: dict[str, Any] = {"instance": marker.instance, "host": marker.host, "journal": marker.journal_path,
                               "epoch": marker.epoch, "expires": marker.expires, "live": marker.live(now),
                               "foreign": marker.journal != journal_id}
    if summary["foreign"]:
        if marker.live(now):
            summary["note"] = (f"worked by instance {marker.instance} on {marker.host} with another journal "
                               f"({marker.journal_path}); instances of this journal leave it alone: "
                               f"{SHARED_JOURNAL_HINT}")
        elif left:
            summary["note"] = (f"{', '.join(left)} left in processing/ by instance {marker.instance} on "
                               f"{marker.host} (another journal, {marker.journal_path}), whose lease expired "
                               f"{marker.expires}: {handover_hint(feed)}")
    return summary


def instances_overview(leases: LeaseStore, lease_seconds: float, within: float = 3600.0) -> list[dict[str, Any]]:
    """The instances seen within `within` seconds (live: seen within a lease and not stopped)."""
    now = time.time()
    return [{"instance": info.name, "host": info.host, "pid": info.pid, "started": _utc(info.started_at),
             "seen": _utc(info.seen_at), "stopped": _utc(info.stopped_at) if info.stopped_at else None,
             "live": info.live(lease_seconds, now)}
            for info in leases.instances(within)]


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    try:
        loaded.config.resolved_journal_password()  # a PostgreSQL journal's ${ENV} or journal_password_file
    except SecretResolutionError as exc:
        problems.append(f"{loaded.path}: {exc}")
    if loaded.config.notify is not None:
        try:
            loaded.config.notify.resolved_url()
        except SecretResolutionError as exc:
            problems.append(f"{loaded.path}: {exc}")
    for feed in loaded.config.feeds:
        where = f"{loaded.path}: feeds[{feed.name}]"
        try:
            feed.resolved_password()
            if feed.notify is not None:
                feed.notify.resolved_url()
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
