"""Journals as earlier programs left them, for the tests of what a newer one makes of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from batch.store.journal import MIGRATIONS


def old_journal(path: Path, version: int) -> None:
    """A SQLite journal made by an earlier program: the schema up to `version`, nothing later."""
    with sqlite3.connect(path) as conn:
        for steps in MIGRATIONS[:version]:
            for statement in steps:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={version}")
    conn.close()


def old_pg_journal(conn: Any, version: int) -> None:
    """The same in a PostgreSQL database, on the psycopg connection `conn` (its transaction)."""
    from batch.store.journal_pg import PG_MIGRATIONS

    for steps in PG_MIGRATIONS[:version]:
        for statement in steps:
            conn.execute(statement)
    conn.execute("CREATE TABLE journal_schema (version integer NOT NULL)")
    conn.execute("INSERT INTO journal_schema (version) VALUES (%s)", (version,))
