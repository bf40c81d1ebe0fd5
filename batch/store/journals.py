"""Open the journal a configuration names: the one way the service, the commands and the demo do.

``journal:`` is a path (SQLite, batch.store.journal) or a ``postgresql://`` URI (PostgreSQL,
batch.store.journal_pg; psycopg is imported only then). Either way the caller gets a
``JournalStore`` and never needs to know which.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from batch.config.journal import PostgresJournal
from batch.config.service import ServiceConfig
from batch.store.journal import Journal, JournalStore, utc_now


def open_journal(config: ServiceConfig, *, create: bool = True, read_only: bool = False,
                 clock: Callable[[], datetime] = utc_now) -> JournalStore | None:
    """The configuration's journal, its schema created or migrated. ``create=False``: None when
    a SQLite journal's file does not exist yet. ``read_only`` (commands that only read it,
    `status`; implies ``create=False``): a SQLite journal is opened read-only -- on a
    read-only disk, a read-only copy -- never switched to WAL, created or migrated. Raises
    JournalUnavailable (cannot be reached now), JournalUnusable, or SecretResolutionError (the
    PostgreSQL password's variable or file)."""
    # PostgreSQL: a connection for each feed's thread (it records its file's results) and two
    # for the rest (retention, status, a page of events read while results are recorded)
    return open_journal_at(config.journal, config.journal_password_file, create=create and not read_only,
                           read_only=read_only, clock=clock, connections=len(config.feeds) + 2)


def open_journal_at(location: Path | PostgresJournal, password_file: Path | None = None, *, create: bool = True,
                    read_only: bool = False, clock: Callable[[], datetime] = utc_now,
                    connections: int = 4) -> JournalStore | None:
    """The journal at ``location`` (a SQLite path, or a PostgreSQL URI as configured; at most
    ``connections`` to its server)."""
    if isinstance(location, PostgresJournal):
        from batch.store.journal_pg import PgJournal

        uri, password = location.resolve(password_file)
        return PgJournal(uri, password=None if password is None else password.get_secret_value(),
                         max_connections=connections, clock=clock)
    if not create and not location.exists():
        return None
    if read_only:
        return Journal(location, clock=clock, read_only=True)
    location.parent.mkdir(parents=True, exist_ok=True)
    return Journal(location, clock=clock)


def journal_display(location: Path | PostgresJournal) -> str:
    """Where the journal is, for messages: its path, or its URI without the password."""
    return location.display if isinstance(location, PostgresJournal) else str(location)
