"""This instance's feed leases: taking them, the heartbeat that renews them, the inbox's marker.

One `LeaseKeeper` per service. A feed worker asks it for its feed's lease before it claims or
resumes anything (`acquire`), checks it before every receipt, upload and move (`check`; the
journal's writes are fenced in their own transaction, see batch.store.leases) and gives it up
when it stops (`release`). The keeper's heartbeat thread renews every held lease and the
instance's row every third of ``lease_seconds``, so a long file never starves the renewal.

Fair share: an instance takes a free or expired lease only while it holds fewer than
ceil(feeds / live instances); an instance over its share gives an idle feed up (`surplus`),
so N feeds spread over M instances.

The inbox's lease marker (batch.inbox.base.LeaseMarker) names the holder, its journal and the
expiry; it is written when the lease is taken and renewed with the heartbeat. An instance whose
journal is another one (a second host with its own SQLite file) never works a feed whose marker
is live; when such a marker has expired and processing/ still holds a file, that file is not
resumed blindly: it waits for an operator (`handover_hint`).

Validity is also kept locally, on the monotonic clock: a lease (and its marker) is trusted only
until the moment its last renewal began + ``lease_seconds``. An instance frozen past that (SIGSTOP,
a VM pause) refuses to act until a renewal succeeds again, which fails if another took over; its
deliveries send no further event meanwhile (`valid`, asked before every send through the feed
worker's stop event), so a woken instance does not send beside the new holder.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batch.config.service import FeedSettings
from batch.errors import ConfigurationError
from batch.inbox import Inbox, InboxError, open_inbox
from batch.inbox.base import LeaseMarker
from batch.service.states import WorkerState
from batch.store.journal import JournalError
from batch.store.leases import InstanceInfo, Lease, LeaseLost, LeaseStore, fair_share

log = logging.getLogger(__name__)

INSTANCES_LOOKBACK_SECONDS = 86400.0  # how far back a lease's holder is looked up among the instances
SHARED_JOURNAL_HINT = "several hosts need one shared PostgreSQL journal (journal: postgresql://...)"


def handover_hint(settings: FeedSettings) -> str:
    """How an operator hands over a file another journal's instance left in processing/."""
    return (f"to hand it over: make sure the instance named in {marker_where(settings)} is not running, then run "
            f"`usageplace-batch handover --config CONFIG --feed {settings.name}` (or remove that file); this "
            "instance then resumes the file, and events the other instance sent already are sent again (its "
            "journal is not this one)")


class HandoverRefused(ConfigurationError):
    """`handover` cannot hand the feed over now (the marker is live, or there is nothing to do):
    the operator must act first (stop the other instance), then run it again."""


def hand_over(settings: FeedSettings, journal_id: str, now: float | None = None) -> str:
    """Remove the inbox's lease marker of an instance with another journal whose lease has
    expired, so that this journal's instances take the feed (and resume what is in processing/).
    Returns what was done; HandoverRefused while the marker is live or not another journal's."""
    quick = settings.model_copy(update={"mode": "polling"})
    with open_inbox(quick) as inbox:
        marker = inbox.read_lease_marker()
        if marker is None:
            raise HandoverRefused(f"feed {settings.name}: {marker_where(settings)} does not exist: nothing to hand "
                                  "over (an instance of this journal takes the feed by itself)")
        who = f"instance {marker.instance} (host {marker.host}, pid {marker.pid}, journal {marker.journal_path})"
        if marker.journal == journal_id:
            raise HandoverRefused(f"feed {settings.name}: the lease marker names {who} of this journal: nothing to "
                                  "hand over (this journal's leases decide who works the feed)")
        if marker.live(now):
            raise HandoverRefused(f"feed {settings.name}: {who} holds the feed until {marker.expires}; stop it "
                                  "first (its lease then expires), then run handover again")
        left = [claimed.source_name for claimed in inbox.resume()]
        inbox.remove_lease_marker()
    resumed = (f"; an instance of this journal resumes {', '.join(left)} from processing/ and sends again what "
               f"{marker.instance} had sent of it" if left else "")
    return f"feed {settings.name}: removed the lease marker of {who}, expired {marker.expires}{resumed}"


def marker_where(settings: FeedSettings) -> str:
    root = settings.inbox.rstrip("/")
    return f"{root}/.usageplace-batch.lease"


class LeaseStop(threading.Event):
    """The stop event a feed's deliveries see: set when the service (or command) stops, and also
    while this instance's lease of the feed is not known to be valid (`lease_valid`, checked on the
    local monotonic clock, without I/O: LeaseKeeper.valid). Delivery looks at it before every event
    it sends: a process frozen (SIGSTOP, a VM pause) past its lease sends nothing more when it
    wakes, though its senders had free slots and its heartbeat has not yet told it that another
    instance took the feed. The events left go out from the journal, by whoever holds the feed then."""

    def __init__(self, stop: threading.Event, lease_valid: Callable[[], bool]) -> None:
        super().__init__()
        self._stop = stop
        self._lease_valid = lease_valid

    def is_set(self) -> bool:
        return self._stop.is_set() or not self._lease_valid()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout) or self.is_set()


@dataclass
class Refusal:
    """Why this instance does not work a feed now: `state` is the worker state to show."""

    state: WorkerState  # STANDBY (another instance of this journal), FOREIGN, HANDOVER
    message: str
    holder: str | None = None


@dataclass
class _Held:
    lease: Lease
    settings: FeedSettings
    store_until: float   # monotonic: the store's lease is trusted until then
    marker_until: float  # monotonic: the inbox's marker is trusted until then


@dataclass
class _MarkerInbox:
    settings: FeedSettings
    inbox: Inbox
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeaseKeeper:
    """The leases this instance holds; thread-safe (workers and the heartbeat thread)."""

    def __init__(self, store: LeaseStore, *, name: str, journal_path: str, lease_seconds: float,
                 feed_count: Callable[[], int]) -> None:
        self.store = store
        self.name = name
        self.journal_path = journal_path
        self.lease_seconds = lease_seconds
        self._feed_count = feed_count
        self._info = InstanceInfo(name, socket.gethostname(), os.getpid(), time.time(), time.time())
        self._lock = threading.RLock()  # _held and _lost: short sections only (the heartbeat takes it)
        self._acquiring = threading.Lock()  # one acquisition or give-up at a time (the share), with I/O
        self._held: dict[str, _Held] = {}
        self._lost: dict[str, str] = {}  # feed -> why, until its worker has seen it
        self._inboxes: dict[str, _MarkerInbox] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life

    def start(self) -> None:
        twin = next((row for row in self.store.instances(self.lease_seconds)
                     if row.name == self.name and row.live(self.lease_seconds)
                     and (row.host, row.pid) != (self._info.host, self._info.pid)), None)
        if twin is not None:
            log.warning("instance %s: an instance of that name (host %s, pid %d) was seen %.0f s ago; instance "
                        "names must be unique per running process (config `instance:`), or the two take each "
                        "other's feeds", self.name, twin.host, twin.pid, time.time() - twin.seen_at)
        self.store.heartbeat(self._info)
        self._thread = threading.Thread(target=self._heartbeat_loop, name="lease-heartbeat", daemon=True)
        self._thread.start()
        log.info("instance %s: leases of %g s in journal %s", self.name, self.lease_seconds, self.journal_path)

    def close(self) -> None:
        """Stop the heartbeat, release what is still held, mark the instance stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for feed in list(self._held):
            self.release(feed)
        for feed in list(self._inboxes):
            self._close_inbox(feed)
        try:
            self.store.instance_stopped(self.name)
        except JournalError as exc:
            log.warning("instance %s: could not note the stop in the journal: %s", self.name, exc)

    @property
    def interval(self) -> float:
        return max(0.1, self.lease_seconds / 3)

    # -- taking and giving up

    def live_instances(self) -> int:
        return sum(1 for info in self.store.instances(self.lease_seconds) if info.live(self.lease_seconds))

    def acquire(self, feed: str, settings: FeedSettings) -> Lease | Refusal:
        """The feed's lease for this instance (taken now, or still held), or why not."""
        with self._acquiring:
            with self._lock:
                held = self._held.get(feed)
                if held is not None and self._valid(held):
                    return held.lease
                if held is not None:  # held, but not renewed in time (a freeze): a new tenure or nothing
                    self._drop(feed, "not renewed in time")
                count = len(self._held)
            share = fair_share(self._feed_count(), self.live_instances())
            if count >= share:
                return Refusal(WorkerState.STANDBY, f"this instance holds its share of the feeds ({share})")
            # a read first: a standby instance polls without writing to the journal or the inbox
            current = next((row for row in self.store.leases() if row.feed == feed), None)
            dead: tuple[str, int] | None = None
            if current is not None and current.live() and current.holder != self.name:
                pid = self._dead_here(current.holder)
                if pid is None:
                    return Refusal(WorkerState.STANDBY, f"instance {current.holder} holds the feed's lease",
                                   current.holder)
                dead = (current.holder, pid)
            marker_inbox = self._marker_inbox(feed, settings)
            with marker_inbox.lock:
                return self._acquire(feed, settings, marker_inbox.inbox, dead)

    def _acquire(self, feed: str, settings: FeedSettings, inbox: Inbox,
                 dead: tuple[str, int] | None) -> Lease | Refusal:
        marker = inbox.read_lease_marker()
        foreign = marker is not None and marker.journal != self.store.journal_id
        if marker is not None and foreign:
            who = (f"instance {marker.instance} (host {marker.host}, pid {marker.pid}) with another journal "
                   f"({marker.journal_path} on {marker.host})")
            if marker.live():
                return Refusal(WorkerState.FOREIGN, f"the inbox's lease marker says {who} works this feed until "
                                          f"{marker.expires}; this instance leaves it alone: "
                                          f"{SHARED_JOURNAL_HINT}", marker.instance)
            left = inbox.resume()
            if left:
                names = ", ".join(claimed.source_name for claimed in left)
                return Refusal(WorkerState.HANDOVER,
                               f"{names} in processing/ was left by {who}, whose lease expired at {marker.expires}; "
                               f"it is not resumed here without an operator: {handover_hint(settings)}",
                               marker.instance)
        started = time.monotonic()
        lease = self.store.acquire(feed, self.name, self.lease_seconds, take_from=dead[0] if dead else None)
        if lease is None:  # another instance was quicker
            current = next((row for row in self.store.leases() if row.feed == feed), None)
            holder = current.holder if current is not None else "?"
            return Refusal(WorkerState.STANDBY, f"instance {holder} holds the feed's lease", holder)
        if dead is not None:
            log.info("feed %s: instance %s held the lease, but its process (pid %d) on this host no longer "
                     "runs: taken over at once", feed, dead[0], dead[1], extra={"feed": feed})
        try:
            written = self._write_marker(inbox, lease, replace=marker is not None and not foreign,
                                         remove_first=foreign)
        except BaseException:
            self.store.release(lease)
            raise
        if not written:
            self.store.release(lease)
            return Refusal(WorkerState.FOREIGN, "another instance wrote the inbox's lease marker first; "
                                      f"{SHARED_JOURNAL_HINT}")
        with self._lock:
            self._held[feed] = _Held(lease, settings, started + self.lease_seconds, started + self.lease_seconds)
            self._lost.pop(feed, None)
        return lease

    def _dead_here(self, holder: str) -> int | None:
        """The pid of `holder` if it was a process of this host that no longer runs (its lease
        needs no waiting); None otherwise. Processes sharing a journal must see each other's
        pids (one pid namespace): a holder whose pid cannot be seen counts as dead."""
        info = next((row for row in self.store.instances(INSTANCES_LOOKBACK_SECONDS) if row.name == holder), None)
        if info is None or info.host != self._info.host or info.pid == os.getpid():
            return None
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return info.pid
        except PermissionError:
            return None  # runs, as another user
        return None

    def _write_marker(self, inbox: Inbox, lease: Lease, *, replace: bool, remove_first: bool = False,
                      expired: bool = False) -> bool:
        now = time.time()
        marker = LeaseMarker(self.name, self._info.host, self._info.pid, self.store.journal_id,
                             str(self.journal_path), lease.feed, lease.epoch,
                             now if expired else now + self.lease_seconds, now)
        if remove_first:
            inbox.remove_lease_marker()
        return inbox.write_lease_marker(marker, replace=replace)

    def release(self, feed: str, *, lost: bool = False) -> None:
        """Give the feed up: the lease expires now, and the marker says so (it stays, naming this
        instance, so that a file left in processing/ is not resumed blindly by another journal).
        `lost`: the lease was lost already (only forget it here; the store keeps the new holder's)."""
        with self._lock:
            held = self._held.pop(feed, None)
            self._lost.pop(feed, None)
        if held is None:
            return
        try:
            self.store.release(held.lease)
        except JournalError as exc:
            log.warning("feed %s: could not release the lease: %s (it expires by itself)", feed, exc,
                        extra={"feed": feed})
        marker_inbox = self._inboxes.get(feed)
        if marker_inbox is not None:
            with marker_inbox.lock:
                try:
                    marker = marker_inbox.inbox.read_lease_marker()
                    if marker is not None and marker.instance == self.name:
                        self._write_marker(marker_inbox.inbox, held.lease, replace=True, expired=True)
                except (InboxError, OSError) as exc:
                    log.warning("feed %s: could not update the inbox's lease marker: %s (it expires by itself)",
                                feed, exc, extra={"feed": feed})
        if not lost:
            log.info("feed %s: lease released (epoch %d)", feed, held.lease.epoch, extra={"feed": feed})

    def surplus(self, feed: str) -> bool:
        """True (and the lease is given up) when this instance holds more than its share."""
        with self._acquiring:
            with self._lock:
                count = len(self._held) if feed in self._held else 0
            if not count:
                return False
            try:
                share = fair_share(self._feed_count(), self.live_instances())
            except JournalError:
                return False
            if count <= share:
                return False
            self.release(feed)
        log.info("feed %s: given up for another instance (this one held more than its share, %d)", feed, share,
                 extra={"feed": feed})
        return True

    # -- fencing

    def _valid(self, held: _Held) -> bool:
        return time.monotonic() < min(held.store_until, held.marker_until)

    def valid(self, lease: Lease) -> bool:
        """Without I/O: `lease` is still held by this instance and was renewed in time (on the
        monotonic clock, so False at once in a process that wakes from a freeze past its lease)."""
        with self._lock:
            held = self._held.get(lease.feed)
        return held is not None and held.lease.epoch == lease.epoch and self._valid(held)

    def check(self, lease: Lease) -> None:
        """LeaseLost unless `lease` is still this instance's, renewed in time, and current in
        the store (check, then act: before a receipt, an upload or a move)."""
        with self._lock:
            held = self._held.get(lease.feed)
            lost = self._lost.get(lease.feed)
        if held is None or held.lease.epoch != lease.epoch:
            raise LeaseLost(lease.feed, lost or "no longer held by this instance")
        if not self._valid(held):
            raise LeaseLost(lease.feed, f"not renewed within {self.lease_seconds:g} s (was the process paused?)")
        self.store.check(lease)

    def _drop(self, feed: str, why: str) -> None:
        with self._lock:
            held = self._held.pop(feed, None)
            if held is not None:
                self._lost[feed] = why

    # -- heartbeat

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - the heartbeat never ends on an error
                log.warning("instance %s: heartbeat failed: %s: %s", self.name, type(exc).__name__, exc)

    def heartbeat(self) -> None:
        """Renew the instance's row, every held lease and its marker (one round)."""
        try:
            self.store.heartbeat(self._info)
        except JournalError as exc:
            log.warning("instance %s: heartbeat not recorded: %s", self.name, exc)
        with self._lock:
            held = dict(self._held)
        # the journal's leases first, the inboxes' markers after: a slow SFTP server delays no
        # other feed's lease
        renewed = [(feed, entry, lease) for feed, entry in held.items()
                   if (lease := self._renew(feed, entry)) is not None]
        for feed, entry, lease in renewed:
            self._renew_marker(feed, entry, lease)

    def _renew(self, feed: str, entry: _Held) -> Lease | None:
        started = time.monotonic()
        try:
            lease = self.store.renew(entry.lease, self.lease_seconds)
        except LeaseLost as exc:
            log.warning("%s; the feed's work stops before anything more is recorded or moved", exc,
                        extra={"feed": feed})
            self._drop(feed, str(exc))
            return None
        except JournalError as exc:
            log.warning("feed %s: the lease could not be renewed: %s", feed, exc, extra={"feed": feed})
            return None
        with self._lock:
            if self._held.get(feed) is entry:
                entry.lease, entry.store_until = lease, started + self.lease_seconds
        return lease

    def _renew_marker(self, feed: str, entry: _Held, lease: Lease) -> None:
        started = time.monotonic()
        marker_inbox = self._inboxes.get(feed)
        if marker_inbox is None:
            return
        with marker_inbox.lock:
            try:
                marker = marker_inbox.inbox.read_lease_marker()
                if marker is not None and marker.instance != self.name and marker.journal != self.store.journal_id:
                    why = (f"the inbox's lease marker now names instance {marker.instance} (host {marker.host}) with "
                           f"another journal ({marker.journal_path})")
                    log.error("feed %s: %s: this instance stops working the feed; %s", feed, why,
                              SHARED_JOURNAL_HINT, extra={"feed": feed})
                    self._drop(feed, why)
                    self.store.release(lease)
                    return
                self._write_marker(marker_inbox.inbox, lease, replace=True)
            except (InboxError, OSError) as exc:
                log.warning("feed %s: the inbox's lease marker could not be renewed: %s", feed, exc,
                            extra={"feed": feed})
                return
        with self._lock:
            if self._held.get(feed) is entry:
                entry.marker_until = started + self.lease_seconds

    # -- the marker's own inbox connection (inboxes are not thread-safe: the worker keeps its own)

    def _marker_inbox(self, feed: str, settings: FeedSettings) -> _MarkerInbox:
        current = self._inboxes.get(feed)
        if current is not None and current.settings == settings:
            return current
        if current is not None:
            self._close_inbox(feed)
        quiet = settings.model_copy(update={"mode": "polling"})  # no file system watcher for this one
        opened = _MarkerInbox(settings, open_inbox(quiet))
        self._inboxes[feed] = opened
        return opened

    def _close_inbox(self, feed: str) -> None:
        current = self._inboxes.pop(feed, None)
        if current is not None:
            try:
                current.inbox.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
