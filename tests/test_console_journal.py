"""The journal's queries for the console (a page of a file's events, their count, the failed
events per feed), the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from batch.store.journal import Journal, JournalStore, NewEvent, Result


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalStore]:
    if request.param == "sqlite":
        with Journal(tmp_path / "journal.sqlite3") as sqlite:
            yield sqlite
        return
    from batch.store.journal_pg import PgJournal

    database = request.getfixturevalue("pg_database")
    with PgJournal(database.uri, password=database.password, timeout_s=5) as pg:
        yield pg


def recorded_file(journal: JournalStore, feed: str = "f", lines: int = 250, name: str = "a.csv") -> int:
    """A file of `lines` records from line 2 (a header line): every tenth invalid, every
    twenty-fifth failed, the rest accepted."""
    file_id = journal.begin_file(name, name * 8, 100, feed).file.id
    events = []
    for line in range(2, 2 + lines):
        payload = {"id": f"E{line}", "usageplacecode": f"P{line % 7}", "status": "connected"}
        if line % 10 == 0:
            events.append(NewEvent.invalid(line, "status: bad", payload,
                                           [{"field": "status", "source": "column 'Tila'", "value": "X",
                                             "message": "bad"}]))
        else:
            events.append(NewEvent.valid(line, payload))
    journal.record_events(file_id, events)
    journal.record_results(Result(file_id, line, "failed" if line % 25 == 1 else "accepted", 200)
                           for line in range(2, 2 + lines) if line % 10)
    journal.finish_file(file_id, "done")
    return file_id


def lines(page: list) -> list[int]:
    return [event.line for event in page]


def test_pages_of_a_file_in_record_order(journal):
    file_id = recorded_file(journal)
    assert lines(journal.events_page(file_id, limit=5)) == [2, 3, 4, 5, 6]
    assert lines(journal.events_page(file_id, offset=100, limit=3)) == [102, 103, 104]
    assert lines(journal.events_page(file_id, offset=248, limit=100)) == [250, 251]
    assert journal.events_page(file_id, offset=250, limit=100) == []
    assert journal.count_events(file_id) == 250


def test_a_page_of_one_outcome(journal):
    file_id = recorded_file(journal)
    invalid = journal.events_page(file_id, states=("invalid",), offset=2, limit=3)
    assert lines(invalid) == [30, 40, 50]
    assert invalid[0].errors == [{"field": "status", "source": "column 'Tila'", "value": "X", "message": "bad"}]
    assert journal.count_events(file_id, states=("invalid",)) == 25
    assert lines(journal.events_page(file_id, states=("failed",), limit=100)) == [26, 51, 76, 101, 126, 151, 176,
                                                                                 201, 226, 251]
    assert lines(journal.events_page(file_id, states=("failed", "invalid"), limit=4)) == [10, 20, 26, 30]


def test_search_by_event_id_or_usage_place_code(journal):
    file_id = recorded_file(journal)
    other = recorded_file(journal, name="b.csv")
    assert lines(journal.events_page(file_id, search="E77")) == [77]
    assert journal.count_events(file_id, search="E77") == 1
    assert lines(journal.events_page(other, search="P3", limit=3)) == [3, 10, 17]
    assert journal.count_events(file_id, search="P3") == 36
    assert lines(journal.events_page(file_id, search="P3", states=("invalid",), limit=2)) == [10, 80]
    assert journal.events_page(file_id, search="nothing") == []


def test_an_unknown_outcome_is_refused(journal):
    with pytest.raises(ValueError, match="not an outcome: sent"):
        journal.events_page(1, states=("sent",))


def test_failed_events_per_feed(journal):
    assert journal.failed_by_feed() == {}
    recorded_file(journal, "north")
    recorded_file(journal, "north", name="c.csv")
    recorded_file(journal, "south", lines=30, name="d.csv")
    assert journal.failed_by_feed() == {"north": 20, "south": 1}


def test_files_since_a_time_newest_first(journal):
    for day, name in ((26, "a.csv"), (27, "b.csv"), (28, "c.csv")):
        journal.clock = lambda day=day: datetime(2026, 11, day, 1, tzinfo=timezone.utc)
        recorded_file(journal, name=name, lines=3)
    journal.clock = lambda: datetime(2026, 11, 29, 2, tzinfo=timezone.utc)
    unfinished = journal.begin_file("d.csv", "d" * 64, 1, "f").file.id
    journal.record_events(unfinished, [NewEvent.valid(2, {"id": "D1"})])
    since = journal.files_since(datetime(2026, 11, 28, 0, 30, tzinfo=timezone.utc))
    assert [(record.name, record.state) for record in since] == [("d.csv", "processing"), ("c.csv", "done")]
    assert since[0].counts["pending"] == 1  # live counts of a file still processing
    assert [record.name for record in journal.files_since(datetime(2026, 11, 1, tzinfo=timezone.utc), limit=2)] == [
        "d.csv", "c.csv"]
