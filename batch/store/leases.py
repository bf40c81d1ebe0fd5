"""Feed leases: which instance works a feed now, and the fencing token that proves it.

A feed is worked by one instance at a time. The instance holds the feed's *lease* for a
short time (``lease_seconds``, default 30 s), renews it by heartbeat and releases it when it
stops. A lease that is not renewed in time expires, and another instance may take it. Every
acquisition of a free or expired lease raises the feed's *epoch* by one: the pair (holder,
epoch) is the fencing token. Whatever the holder records, writes or moves for the feed is done
only while its token is still the feed's current one:

- journal writes check it inside their own transaction (``LeaseStore.fence``, handed to
  ``Journal.set_fence``): a holder paused (SIGSTOP, a VM freeze) past its lease, whose feed
  another instance took meanwhile, finds its next write refused with ``LeaseLost`` and
  commits nothing;
- receipts, uploads and moves are preceded by ``LeaseStore.check`` (check, then act).

The interface (``LeaseStore``) is small on purpose; a backend keeps two tables:

    leases     feed (key), holder, epoch, expires_at, acquired_at
    instances  name (key), host, pid, started_at, seen_at, stopped_at

Times are unix seconds by the *store's* clock (SQLite: the host's, the only one that can
share the file; a shared server should use its own ``now()``), so callers pass durations,
never instants. ``SqliteLeaseStore`` keeps both tables in the journal's own SQLite file, so the
processes of one host that share a journal share its leases; ``SqlLeaseStore`` holds what it and
the PostgreSQL store (batch.store.leases_pg) do alike.

``journal_id`` names the journal a store belongs to: the lease marker an instance keeps in
the inbox (batch.inbox.base.LeaseMarker) carries it, so that an instance with *another*
journal (a second host with its own SQLite file) sees that the feed is not its own to work.
"""

from __future__ import annotations

import abc
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from batch.config.journal import PostgresJournal
from batch.errors import TransientError
from batch.store.journal import JournalUnavailable, SqlConnection, immediate_transaction

DEFAULT_LEASE_SECONDS = 30.0


class LeaseLost(TransientError):
    """This instance no longer holds the feed's lease under this epoch (it expired and another
    instance took it, or it was released): stop before recording, writing or moving anything."""

    def __init__(self, feed: str, message: str) -> None:
        super().__init__(f"feed {feed}: lease lost: {message}")
        self.feed = feed


@dataclass(frozen=True)
class Lease:
    """A feed's lease as the store has it; (holder, epoch) is the fencing token."""

    feed: str
    holder: str
    epoch: int
    expires_at: float  # unix seconds, by the store's clock
    acquired_at: float = 0.0

    def live(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)


@dataclass(frozen=True)
class InstanceInfo:
    """An instance as the store has seen it (heartbeats)."""

    name: str
    host: str
    pid: int
    started_at: float
    seen_at: float
    stopped_at: float | None = None

    def live(self, within: float, now: float | None = None) -> bool:
        """Seen within `within` seconds and not stopped."""
        return self.stopped_at is None and self.seen_at > (time.time() if now is None else now) - within


def default_instance_name() -> str:
    """host name + pid + a random suffix: unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def fair_share(feeds: int, live_instances: int) -> int:
    """How many feeds one instance may hold: ceil(feeds / live instances), at least 1."""
    return max(1, math.ceil(feeds / max(1, live_instances)))


class LeaseStore(abc.ABC):
    """Leases and instances of one journal. Thread-safe.

    Every method may raise the journal's ``JournalUnavailable`` (the store cannot be reached);
    a lease operation that finds the token no longer current raises ``LeaseLost``."""

    journal_id: str  # the identity of the journal this store lives in (random, made once)

    @abc.abstractmethod
    def heartbeat(self, instance: InstanceInfo) -> None:
        """Say `instance` is alive now (insert or update its row; seen_at = now)."""

    @abc.abstractmethod
    def instance_stopped(self, name: str) -> None:
        """Mark the instance stopped (it is no longer counted as live)."""

    @abc.abstractmethod
    def instances(self, within: float) -> list[InstanceInfo]:
        """Instances seen within the last `within` seconds (stopped ones included), by name."""

    @abc.abstractmethod
    def acquire(self, feed: str, holder: str, seconds: float, *, take_from: str | None = None) -> Lease | None:
        """Take the feed's lease for `seconds`: a new tenure, the epoch one higher (1 for a
        feed never leased). Taken if the lease is free or expired, or held (even live) by
        `holder` itself (a previous run under the same name) or by `take_from` (an instance the
        caller knows is dead: a process of this host that no longer runs); None otherwise.
        Callers renew a lease they hold with `renew`, never with `acquire`."""

    @abc.abstractmethod
    def renew(self, lease: Lease, seconds: float) -> Lease:
        """Extend the lease to now + `seconds`; LeaseLost unless (holder, epoch) is current."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Give the lease up (it expires now; the epoch stays); nothing if it is not current."""

    @abc.abstractmethod
    def check(self, lease: Lease) -> None:
        """LeaseLost unless (holder, epoch) is the feed's current token (check, then act)."""

    @abc.abstractmethod
    def fence(self, lease: Lease) -> Callable[[Any], None]:
        """A check to run inside a journal write transaction, on the journal's connection
        (``Journal.set_fence``): it raises LeaseLost when the token is not current, so the
        write is rolled back. The connection is the backend's own type."""

    @abc.abstractmethod
    def leases(self) -> list[Lease]:
        """Every feed's lease row (live or not), by feed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""


# --------------------------------------------------------------------------- SQL (both backends)

#: Is (holder, epoch) the feed's current token?
SQL_CURRENT = "SELECT 1 FROM leases WHERE feed = ? AND holder = ? AND epoch = ?"
INSTANCES_KEPT_SECONDS = 7 * 86400.0  # rows of instances not seen for this long are removed


class SqlLeaseStore(LeaseStore):
    """What both SQL lease stores do alike: every method's steps and statements, written once
    with SQLite's parameter marks (batch.store.journal.SqlJournal's, which the PostgreSQL store's
    connection translates). A backend supplies the connection (``_write``, ``_reading``,
    ``_statements``), its clock (``_now``) and its dialect (the attributes below)."""

    #: Run by ``fence`` inside a journal write: ``SQL_CURRENT``, or a form of it that keeps a
    #: takeover from committing before the write does.
    SQL_FENCE: str
    #: What ``acquire``'s SELECT of the feed's row ends with (a lock on the row, where needed).
    SQL_LOCK_ROW: str

    @abc.abstractmethod
    def _write(self, operation: str) -> AbstractContextManager[SqlConnection]:
        """One write transaction (JournalUnavailable naming ``operation`` on a fault)."""

    @abc.abstractmethod
    def _reading(self, operation: str) -> AbstractContextManager[SqlConnection]:
        """A connection to read with (JournalUnavailable naming ``operation`` on a fault)."""

    @abc.abstractmethod
    def _statements(self, journal_connection: Any) -> SqlConnection:
        """The journal's own connection (a fence's argument), running this module's statements."""

    @abc.abstractmethod
    def _now(self, conn: SqlConnection) -> float:
        """Now, in unix seconds, by the store's clock."""

    @staticmethod
    def _create_tables(conn: SqlConnection, schema: Sequence[str]) -> str:
        """Create the tables (if not there) and the journal's id (once); returns that id."""
        for statement in schema:
            conn.execute(statement)
        row = conn.execute("SELECT id FROM lease_journal").fetchone()
        if row is None:
            row = (secrets.token_hex(8),)
            conn.execute("INSERT INTO lease_journal (id) VALUES (?)", row)
        return str(row[0])

    # -- instances

    def heartbeat(self, instance: InstanceInfo) -> None:
        with self._write("note the instance's heartbeat") as conn:
            now = self._now(conn)
            conn.execute(
                "INSERT INTO instances (name, host, pid, started_at, seen_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " seen_at = excluded.seen_at, stopped_at = NULL",
                (instance.name, instance.host, instance.pid, instance.started_at, now))
            conn.execute("DELETE FROM instances WHERE seen_at < ?", (now - INSTANCES_KEPT_SECONDS,))

    def instance_stopped(self, name: str) -> None:
        with self._write("note the instance stopped") as conn:
            conn.execute("UPDATE instances SET stopped_at = ? WHERE name = ?", (self._now(conn), name))

    def instances(self, within: float) -> list[InstanceInfo]:
        with self._reading("read the instances") as conn:
            rows = conn.execute("SELECT name, host, pid, started_at, seen_at, stopped_at FROM instances"
                                " WHERE seen_at > ? ORDER BY name", (self._now(conn) - within,)).fetchall()
        return [InstanceInfo(*row) for row in rows]

    # -- leases

    def acquire(self, feed: str, holder: str, seconds: float, *, take_from: str | None = None) -> Lease | None:
        with self._write("take the feed's lease") as conn:
            # a feed's row is made on first use (epoch 0, expired), so that there is a row to lock
            conn.execute("INSERT INTO leases (feed, holder, epoch, expires_at, acquired_at)"
                         " VALUES (?, '', 0, 0, 0) ON CONFLICT (feed) DO NOTHING", (feed,))
            row = conn.execute(f"SELECT holder, epoch, expires_at FROM leases WHERE feed = ?{self.SQL_LOCK_ROW}",
                               (feed,)).fetchone()
            assert row is not None
            current, epoch, expires_at = row
            now = self._now(conn)  # after the row lock: a taker that waited sees the time it acts
            if expires_at > now and current not in (holder, take_from):
                return None
            epoch += 1
            conn.execute("UPDATE leases SET holder = ?, epoch = ?, expires_at = ?, acquired_at = ?"
                         " WHERE feed = ?", (holder, epoch, now + seconds, now, feed))
        return Lease(feed, holder, epoch, now + seconds, now)

    def renew(self, lease: Lease, seconds: float) -> Lease:
        with self._write("renew the feed's lease") as conn:
            now = self._now(conn)
            changed = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE feed = ? AND holder = ? AND epoch = ?",
                (now + seconds, lease.feed, lease.holder, lease.epoch)).rowcount
            if not changed:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease))
        return Lease(lease.feed, lease.holder, lease.epoch, now + seconds, lease.acquired_at)

    def release(self, lease: Lease) -> None:
        with self._write("release the feed's lease") as conn:
            conn.execute("UPDATE leases SET expires_at = ? WHERE feed = ? AND holder = ? AND epoch = ?",
                         (self._now(conn), lease.feed, lease.holder, lease.epoch))

    def check(self, lease: Lease) -> None:
        with self._reading("check the feed's lease") as conn:
            if conn.execute(SQL_CURRENT, (lease.feed, lease.holder, lease.epoch)).fetchone() is None:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease))

    def fence(self, lease: Lease) -> Callable[[Any], None]:
        def check_in_transaction(journal_connection: Any) -> None:
            conn = self._statements(journal_connection)
            if conn.execute(self.SQL_FENCE, (lease.feed, lease.holder, lease.epoch)).fetchone() is None:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease) + "; the journal write was refused")
        return check_in_transaction

    @staticmethod
    def _why_lost(conn: SqlConnection, lease: Lease) -> str:
        row = conn.execute("SELECT holder, epoch FROM leases WHERE feed = ?", (lease.feed,)).fetchone()
        if row is None or row[1] == 0:
            return f"no lease row (held as epoch {lease.epoch})"
        return f"held as epoch {lease.epoch} by {lease.holder}; now epoch {row[1]} of {row[0]}"

    def leases(self) -> list[Lease]:
        with self._reading("read the leases") as conn:
            rows = conn.execute("SELECT feed, holder, epoch, expires_at, acquired_at FROM leases"
                                " WHERE epoch > 0 ORDER BY feed").fetchall()
        return [Lease(*row) for row in rows]


# --------------------------------------------------------------------------- SQLite

# Created with CREATE TABLE IF NOT EXISTS rather than in the journal's versioned migrations:
# the tables belong to the lease store, are only ever added to, and another process may create
# them at the same moment (IF NOT EXISTS inside BEGIN IMMEDIATE is safe for that).
_SQLITE_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS leases (
        feed         TEXT    PRIMARY KEY,
        holder       TEXT    NOT NULL,
        epoch        INTEGER NOT NULL,
        expires_at   REAL    NOT NULL,
        acquired_at  REAL    NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS instances (
        name        TEXT    PRIMARY KEY,
        host        TEXT    NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  REAL    NOT NULL,
        seen_at     REAL    NOT NULL,
        stopped_at  REAL
    )
    """,
    "CREATE TABLE IF NOT EXISTS lease_journal (id TEXT NOT NULL)",
)


class SqliteLeaseStore(SqlLeaseStore):
    """Leases in the journal's SQLite file (its own connection; WAL, as the journal sets it).

    After a fault of the file (I/O error, read-only disk) the connection is closed at once, so
    that the disk can be unmounted and repaired, and opened again on the next call."""

    # A write transaction (BEGIN IMMEDIATE) is the file's one writer: a journal write's fence
    # and a takeover cannot interleave, and two takers take turns; nothing to lock.
    SQL_FENCE = SQL_CURRENT
    SQL_LOCK_ROW = ""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._connect(self.path)
        try:
            with self._write("create the lease tables") as conn:
                self.journal_id = self._create_tables(conn, _SQLITE_SCHEMA)
        except BaseException:
            self.close()
            raise

    def _connect(self, target: str | Path, uri: bool = False) -> sqlite3.Connection:
        try:
            self._conn = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None,
                                         check_same_thread=False, uri=uri)
        except sqlite3.Error as error:
            raise JournalUnavailable(self.path, "open it for leases", error) from error
        return self._conn

    @property
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # mode=rw: a missing file (its disk not mounted yet) is an error, not a new journal
        return self._connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True)

    @contextmanager
    def _write(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._unavailable_as(operation), immediate_transaction(self._connection) as conn:
            yield conn

    @contextmanager
    def _reading(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._unavailable_as(operation):
            yield self._connection

    @staticmethod
    def _statements(journal_connection: Any) -> sqlite3.Connection:
        return cast(sqlite3.Connection, journal_connection)  # the journal's: it runs them as they are

    @contextmanager
    def _unavailable_as(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            self.close()  # let go of the file: the next call opens it again
            raise JournalUnavailable(self.path, operation, error) from error

    def _now(self, conn: SqlConnection) -> float:
        return self.clock()  # the host's: only its processes share the file

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass


def open_lease_store(journal: str | os.PathLike[str] | PostgresJournal,
                     password_file: Path | None = None) -> LeaseStore:
    """The lease store of the journal the configuration names (`journal:`): SQLite in the
    journal's own file, or the PostgreSQL journal's database."""
    if isinstance(journal, PostgresJournal):
        from batch.store.leases_pg import PgLeaseStore

        uri, password = journal.resolve(password_file)
        return PgLeaseStore(uri, password=None if password is None else password.get_secret_value())
    return SqliteLeaseStore(journal)
