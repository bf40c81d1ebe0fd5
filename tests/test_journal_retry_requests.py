"""Retry requests in the journal (batch.service.retrying), on a real SQLite file and a real
PostgreSQL database: one suite over both backends, as tests/test_journal.py. Recorded, taken
atomically (threads and processes racing for one never take it twice), put back, finished with
their results, read back by id, file and feed, newest first; pruned with old files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from batch.store.journal import Journal, JournalMisuse, JournalStore, RetryRequest, RetryState, utc_now
from tests.fixtures_pg import PgDatabase

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def open_store(kind: str, where: Path | PgDatabase, clock: Callable[[], datetime] = utc_now) -> JournalStore:
    if kind == "sqlite":
        assert isinstance(where, Path)
        return Journal(where, clock=clock)
    from batch.store.journal_pg import PgJournal

    assert isinstance(where, PgDatabase)
    return PgJournal(where.uri, password=where.password, timeout_s=5, clock=clock)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path | PgDatabase]:
    if request.param == "sqlite":
        return "sqlite", tmp_path / "journal.sqlite"
    return "postgresql", request.getfixturevalue("pg_database")


def test_a_request_is_recorded_taken_finished_and_read_back(backend: tuple[str, Path | PgDatabase]) -> None:
    clock = Clock()
    with open_store(*backend, clock=clock) as journal:
        added = journal.add_retry_request("local", 7, "cli:ops@host-1")
        assert added == RetryRequest(added.id, "local", 7, "cli:ops@host-1", T0, RetryState.WAITING)
        assert not added.finished
        clock.now = T0 + timedelta(seconds=2)
        taken = journal.take_retry_request("local", "host-1:99:abc")
        assert taken is not None and taken.id == added.id
        assert (taken.state, taken.taken_by, taken.started_at) == (RetryState.RUNNING, "host-1:99:abc", clock.now)
        assert journal.take_retry_request("local", "host-1:99:abc") is None  # nothing else waits
        clock.now = T0 + timedelta(seconds=5)
        files = [{"file_id": 7, "name": "n.csv", "status": "done", "counts": {"accepted": 3, "failed": 1},
                  "message": None, "receipt": "/out/n.csv.receipt.csv", "rejected_rows": None, "notes": [],
                  "exit_status": 1}]
        finished = journal.finish_retry_request(added.id, RetryState.DONE, {"accepted": 3, "failed": 1}, files,
                                                "1 file")
        assert finished == RetryRequest(added.id, "local", 7, "cli:ops@host-1", T0, RetryState.DONE,
                                        "host-1:99:abc", T0 + timedelta(seconds=2), T0 + timedelta(seconds=5),
                                        {"accepted": 3, "failed": 1}, files, "1 file")
        assert finished.finished and journal.get_retry_request(added.id) == finished
        with pytest.raises(JournalMisuse) as caught:
            journal.finish_retry_request(added.id, RetryState.FAILED, message="again")
        assert str(caught.value) == f"retry request #{added.id} is not running"
        with pytest.raises(JournalMisuse) as unknown:
            journal.get_retry_request(added.id + 100)
        assert str(unknown.value) == f"no retry request #{added.id + 100}"
        with pytest.raises(ValueError) as wrong:
            journal.finish_retry_request(added.id, RetryState.WAITING)  # type: ignore[arg-type]
        assert str(wrong.value) == "a retry request finishes as done or failed, not 'waiting'"


def test_requests_are_taken_oldest_first_per_feed_and_read_newest_first(
        backend: tuple[str, Path | PgDatabase]) -> None:
    with open_store(*backend) as journal:
        a1 = journal.add_retry_request("a", 1, "console:admin")
        b = journal.add_retry_request("b", None, "console:admin")
        a2 = journal.add_retry_request("a", 2, "cli:ops@h")
        a_all = journal.add_retry_request("a", None, "cli:ops@h")
        assert [r.id for r in journal.retry_requests()] == [a_all.id, a2.id, b.id, a1.id]
        assert [r.id for r in journal.retry_requests(feed="a", limit=2)] == [a_all.id, a2.id]
        assert [r.id for r in journal.retry_requests(file_id=2)] == [a2.id]
        assert [r.file_id for r in journal.retry_requests(feed="b")] == [None]
        first = journal.take_retry_request("a", "X")
        assert first is not None and first.id == a1.id
        assert [r.id for r in journal.retry_requests(feed="a", states=[RetryState.WAITING])] == [a_all.id, a2.id]
        assert [r.id for r in journal.retry_requests(states=["running"])] == [a1.id]
        assert journal.retry_requests(states=[]) == []
        with pytest.raises(ValueError):
            journal.retry_requests(states=["runing"])
        second = journal.take_retry_request("a", "X")
        assert second is not None and second.id == a2.id
        other = journal.take_retry_request("b", "Y")
        assert other is not None and (other.id, other.file_id) == (b.id, None)


def test_running_requests_are_put_back_with_why(backend: tuple[str, Path | PgDatabase]) -> None:
    with open_store(*backend) as journal:
        one = journal.add_retry_request("a", 1, "console:admin")
        two = journal.add_retry_request("a", 2, "console:admin")
        elsewhere = journal.add_retry_request("b", 3, "console:admin")
        assert journal.take_retry_request("a", "gone") is not None
        assert journal.take_retry_request("b", "alive") is not None
        assert journal.requeue_retry_requests("a", "left running by gone, which stopped; taken again") == 1
        again = journal.get_retry_request(one.id)
        assert (again.state, again.taken_by, again.started_at, again.message) == (
            RetryState.WAITING, None, None, "left running by gone, which stopped; taken again")
        assert journal.get_retry_request(elsewhere.id).state == RetryState.RUNNING  # another feed's
        retaken = journal.take_retry_request("a", "new")
        assert retaken is not None and (retaken.id, retaken.taken_by, retaken.message) == (one.id, "new", None)
        assert journal.get_retry_request(two.id).state == RetryState.WAITING


def test_threads_racing_for_the_requests_never_take_one_twice(backend: tuple[str, Path | PgDatabase]) -> None:
    with open_store(*backend) as setup:
        wanted = {setup.add_retry_request("a", n, "cli:ops@h").id for n in range(40)}
    taken: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def taker(name: str) -> None:
        with open_store(*backend) as journal:  # a connection of its own, as another instance has
            start.wait()
            mine = taken.setdefault(name, [])
            while (request := journal.take_retry_request("a", name)) is not None:
                mine.append(request.id)

    threads = [threading.Thread(target=taker, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [one for ids in taken.values() for one in ids]
    assert sorted(every) == sorted(wanted)  # each exactly once
    with open_store(*backend) as journal:
        rows = journal.retry_requests(feed="a", limit=100)
        assert {r.state for r in rows} == {RetryState.RUNNING}
        assert {r.id: r.taken_by for r in rows} == {one: name for name, ids in taken.items() for one in ids}


def test_processes_racing_for_one_request_take_it_once(backend: tuple[str, Path | PgDatabase],
                                                       pg_password_env: dict[str, str]) -> None:
    kind, where = backend
    with open_store(kind, where) as setup:
        only = setup.add_retry_request("a", 1, "cli:ops@h")
    if kind == "sqlite":
        opener = f"from batch.store.journal import Journal\nj = Journal({str(where)!r})\n"
    else:
        assert isinstance(where, PgDatabase)
        opener = f"from batch.store.journal_pg import PgJournal\nj = PgJournal({where.uri!r})\n"
    code = opener + textwrap.dedent("""
        import sys
        request = j.take_retry_request("a", sys.argv[1])
        print(request.id if request is not None else "none")
        j.close()
        """)
    children = [subprocess.Popen([sys.executable, "-c", code, f"p{n}"], stdout=subprocess.PIPE, text=True,
                                 env=pg_password_env) for n in range(4)]
    answers = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert answers == [str(only.id), "none", "none", "none"]


@pytest.fixture
def pg_password_env(backend: tuple[str, Path | PgDatabase]) -> dict[str, str]:
    import os

    kind, where = backend
    if kind == "sqlite":
        return dict(os.environ)
    assert isinstance(where, PgDatabase)
    return {**os.environ, "PGPASSWORD": where.password}


def test_prune_forgets_retry_requests_finished_before_the_cutoff(backend: tuple[str, Path | PgDatabase]) -> None:
    clock = Clock()
    with open_store(*backend, clock=clock) as journal:
        old = journal.add_retry_request("a", 1, "cli:ops@h")
        journal.take_retry_request("a", "X")
        journal.finish_retry_request(old.id, RetryState.DONE, {"accepted": 1}, [])
        waiting = journal.add_retry_request("a", 2, "cli:ops@h")  # finished after the cutoff: kept
        clock.now = T0 + timedelta(days=100)
        recent = journal.add_retry_request("a", 3, "cli:ops@h")
        journal.take_retry_request("a", "X")
        journal.finish_retry_request(waiting.id, RetryState.FAILED, message="the feed was removed")
        assert journal.prune(T0 + timedelta(days=10)) == (0, 0)
        assert [r.id for r in journal.retry_requests(limit=10)] == [recent.id, waiting.id]
