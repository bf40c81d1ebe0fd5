"""Feed leases in the shared PostgreSQL journal's database (see batch.store.leases for the model).

Several hosts share one PostgreSQL journal, so they share its leases here. The steps and
statements are SQLite's (batch.store.leases.SqlLeaseStore, translated by journal_pg.pg_sql);
what differs from SQLite, and why:

- **Whose clock.** Expiry is decided by the database server's clock (``clock_timestamp()``),
  the one clock every instance shares; hosts need not agree with each other to the second.
  (A test passes its own clock instead.)
- **Taking a lease** locks the feed's row (``SELECT ... FOR UPDATE``; the row is made on first
  use, epoch 0 and expired), so two instances that see an expired lease at the same moment take
  it one after the other: the second finds the first's fresh tenure and gets None.
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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from batch.store.journal import SqlConnection
from batch.store.journal_pg import LOCK_CLASS, Connection, PgConnections, PgStatements, pg_sql
from batch.store.leases import SQL_CURRENT, SqlLeaseStore

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

SQL_NOW = "SELECT extract(epoch FROM clock_timestamp())::double precision"


class PgLeaseStore(SqlLeaseStore):
    """Leases in a PostgreSQL database (a small pool of its own, autocommit connections)."""

    SQL_FENCE = pg_sql(SQL_CURRENT + " FOR SHARE")  # inside a journal write: a takeover waits for its commit
    SQL_LOCK_ROW = " FOR UPDATE"  # two takers of an expired lease take it one after the other

    def __init__(self, conninfo: str, *, password: str | None = None, timeout_s: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.clock = clock  # None: the server's clock
        self._db = PgConnections(conninfo, password=password, timeout_s=timeout_s, max_connections=2,
                              application_name="usageplace-batch leases", pool_name="leases",
                              setup=self._create, operation="open it for leases")

    def _create(self, conn: Connection) -> None:
        """Create the tables (PgConnections's setup: in one transaction, at open)."""
        # two instances starting at once take turns
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_LEASE_SCHEMA))
        self.journal_id = self._create_tables(PgStatements(conn), _PG_SCHEMA)

    @contextmanager
    def _write(self, operation: str) -> Iterator[PgStatements]:
        with self._db.transaction(operation) as conn:
            yield PgStatements(conn)

    @contextmanager
    def _reading(self, operation: str) -> Iterator[PgStatements]:
        with self._db.connection(operation) as conn:
            yield PgStatements(conn)

    @staticmethod
    def _statements(journal_connection: Any) -> PgStatements:
        return PgStatements(journal_connection)  # the journal's psycopg connection

    def _now(self, conn: SqlConnection) -> float:
        if self.clock is not None:
            return self.clock()
        row = conn.execute(SQL_NOW).fetchone()
        assert row is not None
        return float(row[0])

    def close(self) -> None:
        self._db.close()
