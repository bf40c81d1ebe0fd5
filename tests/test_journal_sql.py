"""The translation of the journal's shared statements (SQLite's parameter marks) into psycopg's.

Both backends run the same statements (batch.store.journal.SqlJournal); the PostgreSQL one
translates each once (journal_pg.pg_sql). The journal's own suite (tests/test_journal.py, over
both backends) runs every statement; this holds the translation's rules on their own.
"""

from __future__ import annotations

import pytest

from batch.store.journal_pg import PgSql, pg_sql


def test_positional_marks_become_percent_s() -> None:
    assert pg_sql("SELECT id FROM files WHERE feed = ? AND name = ? LIMIT ?") == (
        "SELECT id FROM files WHERE feed = %s AND name = %s LIMIT %s")


def test_named_marks_become_percent_name_s() -> None:
    assert pg_sql("UPDATE events SET updated_at = :now WHERE file_id = :file_id AND line <= :last") == (
        "UPDATE events SET updated_at = %(now)s WHERE file_id = %(file_id)s AND line <= %(last)s")


def test_a_literal_percent_is_doubled() -> None:
    assert pg_sql("SELECT 100 % 7, ?") == "SELECT 100 %% 7, %s"


def test_quoted_strings_and_names_are_left_as_they_are() -> None:
    sql = """SELECT 'what? :not a mark, 100%', "col?:x", 'it''s ?' FROM t WHERE a = ? AND b = 'x'"""
    assert pg_sql(sql) == """SELECT 'what? :not a mark, 100%', "col?:x", 'it''s ?' FROM t WHERE a = %s AND b = 'x'"""


def test_casts_are_not_named_marks() -> None:
    assert pg_sql("SELECT :lines::bigint[], a.payload::jsonb = :payload::jsonb") == (
        "SELECT %(lines)s::bigint[], a.payload::jsonb = %(payload)s::jsonb")
    assert pg_sql("SELECT x::text WHERE y = ?") == "SELECT x::text WHERE y = %s"


def test_both_kinds_of_marks_in_one_statement_are_refused() -> None:
    with pytest.raises(ValueError) as caught:
        pg_sql(" SELECT 1 WHERE a = ? AND b = :b ")
    assert str(caught.value) == "both ? and :name parameters in one statement: SELECT 1 WHERE a = ? AND b = :b"


def test_a_translated_statement_is_not_translated_again() -> None:
    once = pg_sql("SELECT ? WHERE a LIKE 'x%'")
    assert isinstance(once, PgSql) and once == "SELECT %s WHERE a LIKE 'x%'"
    assert pg_sql(once) is once
    assert pg_sql("SELECT ? WHERE a LIKE 'x%'") is once  # once per statement
