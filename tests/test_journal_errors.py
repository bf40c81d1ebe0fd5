"""Errors as data in the journal (issue 11, point 8), on both backends: an invalid record's
errors as a list, a rejection's problem title and detail, the filtered count, and the migration
of rows journaled before (one string becomes one error with only its message)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batch.store.journal import MIGRATIONS, SCHEMA_VERSION, Journal, NewEvent, Result
from tests.fixtures_pg import PgDatabase
from tests.test_journal import PgStore, Store, event, new_file, store  # noqa: F401 - the fixture

ERRORS = [
    {"field": "status", "source": "column 'Tila'", "value": "X", "message": "value is not in the map"},
    {"field": "time", "source": "template '{Pvm} {Klo}'", "value": "31.2.2024 7:10:00\x00",
     "message": "not a real date/time (day is out of range for month)"},
]
JOINED = "status (column 'Tila' = 'X'): value is not in the map; time (...): not a real date/time"


def test_an_invalid_records_errors_are_stored_as_a_list(store: Store) -> None:
    with store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [
            event(1, "E1"),
            NewEvent.invalid(2, JOINED, {"id": "E2"}, ERRORS),
            NewEvent.invalid(3, "a message without details"),
        ])
        by_line = {one.line: one for one in journal.file_events(file_id)}
        assert by_line[1].errors == [] and by_line[1].errors_json is None
        assert (by_line[2].state, by_line[2].message, by_line[2].event_id) == ("invalid", JOINED, "E2")
        assert by_line[2].errors == ERRORS  # a NUL in a value too: JSON escapes it
        assert by_line[3].errors == [{"field": None, "source": None, "value": None,
                                      "message": "a message without details"}]


def test_a_rejections_title_and_detail_are_kept_and_a_later_acceptance_clears_them(store: Store) -> None:
    with store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(1, "E1"), event(2, "E2")])
        journal.record_results([
            Result(file_id, 1, "rejected", 422, "HTTP 422: Unknown place: 643007572062443672 is not ours",
                   title="Unknown place", detail="643007572062443672 is not ours"),
            Result(file_id, 2, "failed", 503, "gave up after 5 attempts: HTTP 503 Service Unavailable"),
        ])
        by_line = {one.line: one for one in journal.file_events(file_id)}
        assert (by_line[1].title, by_line[1].detail) == ("Unknown place", "643007572062443672 is not ours")
        assert (by_line[2].title, by_line[2].detail) == (None, None)
        journal.record_results([Result(file_id, 2, "accepted", 201)])
        accepted = next(one for one in journal.file_events(file_id) if one.line == 2)
        assert (accepted.state, accepted.message, accepted.title) == ("accepted", None, None)


def test_the_filtered_count_is_a_number_of_the_file(store: Store) -> None:
    with store.open() as journal:
        file_id = new_file(journal)
        assert journal.get_file(file_id).filtered == 0
        journal.set_filtered(file_id, 5)
        journal.set_filtered(file_id, 5)  # recorded again after a kill: set, not added
        journal.record_events(file_id, [event(1, "E1")])
        journal.record_results([Result(file_id, 1, "accepted", 201)])
        finished = journal.finish_file(file_id, "done")
        assert (finished.filtered, finished.counts["accepted"]) == (5, 1)
        assert "filtered" not in finished.counts
        assert journal.recent_files(1)[0].filtered == 5


def test_sqlite_schema_2_is_migrated_an_old_error_becomes_one_error_with_its_message(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    for steps in MIGRATIONS[:2]:
        for statement in steps:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO files (id, name, sha256, size, feed, state, started_at, owner, note)"
                 " VALUES (1, 'old.csv', 'aa', 1, 'feed', 'done', '2026-01-01T00:00:00+00:00', 'h:1',"
                 " '5 records were filtered out by the mapping''s keep rule.')")
    conn.execute("INSERT INTO events (file_id, line, state, message, updated_at) VALUES"
                 " (1, 2, 'invalid', 'status (column ''Tila'' = ''X''): value is not in the map',"
                 " '2026-01-01T00:00:00+00:00')")
    conn.execute("INSERT INTO events (file_id, line, event_id, state, http_status, message, updated_at) VALUES"
                 " (1, 3, 'E3', 'rejected', 400, 'HTTP 400: Bad Request: no', '2026-01-01T00:00:00+00:00')")
    conn.close()
    with Journal(db) as journal:
        old_invalid, old_rejected = list(journal.file_events(1))
        assert old_invalid.errors == [{"field": None, "source": None, "value": None,
                                       "message": "status (column 'Tila' = 'X'): value is not in the map"}]
        assert old_invalid.message == "status (column 'Tila' = 'X'): value is not in the map"  # still readable
        assert (old_rejected.message, old_rejected.title, old_rejected.errors) == ("HTTP 400: Bad Request: no",
                                                                                    None, [])
        old_file = journal.get_file(1)
        assert (old_file.filtered, old_file.note) == (0, "5 records were filtered out by the mapping's keep rule.")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()


def test_pg_schema_1_is_migrated_an_old_error_becomes_one_error_with_its_message(pg_database: PgDatabase) -> None:
    from batch.store.journal_pg import PG_MIGRATIONS, PG_SCHEMA_VERSION

    with pg_database.connect() as conn:  # type: ignore[attr-defined]
        for statement in PG_MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE journal_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO journal_schema (version) VALUES (1)")
        conn.execute("INSERT INTO files (id, name, sha256, size, feed, state, started_at, owner)"
                     " VALUES (1, 'old.csv', 'aa', 1, 'feed', 'done', now(), 'h:1')")
        conn.execute("INSERT INTO events (file_id, line, state, message, updated_at) VALUES"
                     " (1, 2, 'invalid', 'status (column ''Tila'' = ''X''): value is not in the map', now())")
        conn.execute("INSERT INTO events (file_id, line, event_id, state, updated_at) VALUES"
                     " (1, 3, 'E3', 'accepted', now())")
    store_ = PgStore(pg_database)
    with store_.open() as journal:
        old_invalid, old_accepted = list(journal.file_events(1))
        assert old_invalid.errors == [{"field": None, "source": None, "value": None,
                                       "message": "status (column 'Tila' = 'X'): value is not in the map"}]
        assert old_invalid.message == "status (column 'Tila' = 'X'): value is not in the map"
        assert old_accepted.errors == [] and journal.get_file(1).filtered == 0
    assert store_.count("SELECT version FROM journal_schema") == PG_SCHEMA_VERSION == 2
