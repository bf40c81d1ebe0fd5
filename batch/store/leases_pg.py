"""Feed leases in the shared PostgreSQL journal's database (see batch.store.leases for the model).

Several hosts share one PostgreSQL journal, so they share its leases here. What differs from
SQLite, and why:

- **Whose clock.** Expiry is decided by the database server's clock (``clock_timestamp()``),
  the one clock every instance shares; hosts need not agree with each other to the second.
  (A test passes its own clock instead.)
- **Taking a lease** locks the feed's row (``SELECT ... FOR UPDATE``), so two instances that
  see an expired lease at the same moment take it one after the other: the second finds the
  first's fresh tenure and gets None. A feed's row is created (epoch 0, expired) on first use.
- **Fencing.** The fence runs on the *journal's* connection, inside its write transaction, and
  reads the lease row ``FOR SHARE``: a takeover's ``UPDATE`` of that row waits until the write
  commits, so a journal write is either committed under the current epoch or refused.
- **Schema.** The tables belong to the lease store, as in SQLite, and are created with ``IF NOT
  EXISTS`` under a transaction-scoped advisory lock (two instances starting at once take
  turns; no session lock that a pooled connection could leak).
- **Faults.** A lost server raises the journal's ``JournalUnavailable``, like every journal
  call: the heartbeat cannot renew, and the leases lapse as they should.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from batch.redact import redact_text
from batch.store.journal import JournalUnavailable
from batch.store.journal_pg import LOCK_CLASS, UNAVAILABLE, Connection, one_line
from batch.store.leases import INSTANCES_KEPT_SECONDS, InstanceInfo, Lease, LeaseLost, LeaseStore

LOCK_LEASE_SCHEMA = 1  # pg_advisory_xact_lock(LOCK_CLASS, this): creating the lease tables

_PG_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS leases (
        feed         text             PRIMARY KEY,
        holder       text             NOT NULL,
        epoch        bigint           NOT NULL,
        expires_at   double precision NOT NULL,
        acquired_at  double precision NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS instances (
        name        text             PRIMARY KEY,
        host        text             NOT NULL,
        pid         integer          NOT NULL,
        started_at  double precision NOT NULL,
        seen_at     double precision NOT NULL,
        stopped_at  double precision
    )
    """,
    "CREATE TABLE IF NOT EXISTS lease_journal (id text NOT NULL)",
)

SQL_CURRENT = "SELECT 1 FROM leases WHERE feed = %s AND holder = %s AND epoch = %s"
SQL_FENCE = SQL_CURRENT + " FOR SHARE"  # inside a journal write: a takeover waits for its commit
SQL_NOW = "SELECT extract(epoch FROM clock_timestamp())::double precision"


class PgLeaseStore(LeaseStore):
    """Leases in a PostgreSQL database (a small pool of its own, autocommit connections)."""

    def __init__(self, conninfo: str, *, password: str | None = None, timeout_s: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.clock = clock  # None: the server's clock
        self._location = conninfo  # holds no password
        self._password = password
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "usageplace-batch leases"}
        if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(conninfo):
            kwargs["connect_timeout"] = max(2, round(timeout_s))
        if password is not None:
            kwargs["password"] = password
        # a connection of its own first: a refusal gives libpq's reason, not the pool's timeout
        with self._unavailable_as("open it for leases"), psycopg.connect(conninfo, **kwargs) as conn:
            self.journal_id = self._create(conn)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo, kwargs=kwargs, min_size=1, max_size=2, open=False,
            check=ConnectionPool.check_connection, timeout=timeout_s, name="leases")
        self._pool.open(wait=False)

    @staticmethod
    def _create(conn: Connection) -> str:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_LEASE_SCHEMA))
            for statement in _PG_SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT id FROM lease_journal").fetchone()
            if row is None:
                row = (secrets.token_hex(8),)
                conn.execute("INSERT INTO lease_journal (id) VALUES (%s)", row)
        return str(row[0])

    @contextmanager
    def _unavailable_as(self, operation: str) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE as error:
            hidden = [self._password] if self._password else []
            raise JournalUnavailable(self._location, operation, redact_text(one_line(error), hidden)) from error

    @contextmanager
    def _write(self, operation: str) -> Iterator[Connection]:
        with self._unavailable_as(operation), self._pool.connection() as conn, conn.transaction():
            yield conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._unavailable_as("read the leases"), self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _now(self, conn: Connection) -> float:
        if self.clock is not None:
            return self.clock()
        row = conn.execute(SQL_NOW).fetchone()
        assert row is not None
        return float(row[0])

    # -- instances

    def heartbeat(self, instance: InstanceInfo) -> None:
        with self._write("note the instance's heartbeat") as conn:
            now = self._now(conn)
            conn.execute(
                "INSERT INTO instances (name, host, pid, started_at, seen_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " seen_at = excluded.seen_at, stopped_at = NULL",
                (instance.name, instance.host, instance.pid, instance.started_at, now))
            conn.execute("DELETE FROM instances WHERE seen_at < %s", (now - INSTANCES_KEPT_SECONDS,))

    def instance_stopped(self, name: str) -> None:
        with self._write("note the instance stopped") as conn:
            conn.execute("UPDATE instances SET stopped_at = %s WHERE name = %s", (self._now(conn), name))

    def instances(self, within: float) -> list[InstanceInfo]:
        with self._unavailable_as("read the instances"), self._pool.connection() as conn:
            since = self._now(conn) - within
            rows = conn.execute("SELECT name, host, pid, started_at, seen_at, stopped_at FROM instances"
                                " WHERE seen_at > %s ORDER BY name", (since,)).fetchall()
        return [InstanceInfo(*row) for row in rows]

    # -- leases

    def acquire(self, feed: str, holder: str, seconds: float, *, take_from: str | None = None) -> Lease | None:
        with self._write("take the feed's lease") as conn:
            conn.execute("INSERT INTO leases (feed, holder, epoch, expires_at, acquired_at)"
                         " VALUES (%s, '', 0, 0, 0) ON CONFLICT (feed) DO NOTHING", (feed,))
            row = conn.execute("SELECT holder, epoch, expires_at FROM leases WHERE feed = %s FOR UPDATE",
                               (feed,)).fetchone()
            assert row is not None
            current, epoch, expires_at = row
            now = self._now(conn)  # after the row lock: a taker that waited sees the time it acts
            if expires_at > now and current not in (holder, take_from):
                return None
            epoch += 1
            conn.execute("UPDATE leases SET holder = %s, epoch = %s, expires_at = %s, acquired_at = %s"
                         " WHERE feed = %s", (holder, epoch, now + seconds, now, feed))
        return Lease(feed, holder, epoch, now + seconds, now)

    def renew(self, lease: Lease, seconds: float) -> Lease:
        with self._write("renew the feed's lease") as conn:
            now = self._now(conn)
            changed = conn.execute(
                "UPDATE leases SET expires_at = %s WHERE feed = %s AND holder = %s AND epoch = %s",
                (now + seconds, lease.feed, lease.holder, lease.epoch)).rowcount
            if not changed:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease))
        return Lease(lease.feed, lease.holder, lease.epoch, now + seconds, lease.acquired_at)

    def release(self, lease: Lease) -> None:
        with self._write("release the feed's lease") as conn:
            conn.execute("UPDATE leases SET expires_at = %s WHERE feed = %s AND holder = %s AND epoch = %s",
                         (self._now(conn), lease.feed, lease.holder, lease.epoch))

    def check(self, lease: Lease) -> None:
        with self._unavailable_as("check the feed's lease"), self._pool.connection() as conn:
            if conn.execute(SQL_CURRENT, (lease.feed, lease.holder, lease.epoch)).fetchone() is None:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease))

    def fence(self, lease: Lease) -> Callable[[Any], None]:
        def check_in_transaction(conn: Connection) -> None:
            if conn.execute(SQL_FENCE, (lease.feed, lease.holder, lease.epoch)).fetchone() is None:
                raise LeaseLost(lease.feed, self._why_lost(conn, lease) + "; the journal write was refused")
        return check_in_transaction

    @staticmethod
    def _why_lost(conn: Connection, lease: Lease) -> str:
        row = conn.execute("SELECT holder, epoch FROM leases WHERE feed = %s", (lease.feed,)).fetchone()
        if row is None or row[1] == 0:
            return f"no lease row (held as epoch {lease.epoch})"
        return f"held as epoch {lease.epoch} by {lease.holder}; now epoch {row[1]} of {row[0]}"

    def leases(self) -> list[Lease]:
        rows = self._read("SELECT feed, holder, epoch, expires_at, acquired_at FROM leases"
                          " WHERE epoch > 0 ORDER BY feed")
        return [Lease(*row) for row in rows]

    def close(self) -> None:
        self._pool.close()
