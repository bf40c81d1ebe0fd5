"""The journal on real SQLite files and a real PostgreSQL cluster, with real threads, processes
and SIGKILLs: one suite, parametrised over both backends (``store``), plus what only one of
them has (SQLite's file and pragmas; PostgreSQL's schema table, server restarts, passwords)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from batch.errors import ExitStatus
from batch.store import journal as journal_module
from batch.store.journal import (
    SCHEMA_VERSION,
    EventRecord,
    FileInProgress,
    Journal,
    JournalError,
    JournalStore,
    JournalUnavailable,
    JournalUnusable,
    NewEvent,
    Result,
    ResultOutcome,
    utc_now,
)
from tests.fixtures_journal import old_journal, old_pg_journal
from tests.fixtures_pg import PgDatabase

SHA_A = "a" * 64
SHA_B = "b" * 64


def event(line: int, event_id: str, code: str = "643007572062443672", **extra: object) -> NewEvent:
    payload = {"id": event_id, "usageplacecode": code, "status": "disconnected", **extra}
    return NewEvent.valid(line, payload)


def states(journal: JournalStore, file_id: int) -> dict[int, str]:
    return {e.line: e.state for e in journal.file_events(file_id)}


class Store:
    """Where a test's journal lives; ``open`` gives a new journal (a new connection) on it."""

    name: str

    def open(self, clock: Callable[[], datetime] = utc_now) -> JournalStore:
        raise NotImplementedError

    def child_code(self) -> str:
        """Python source that opens the same journal as ``j`` in a child process."""
        raise NotImplementedError

    def child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def count(self, sql: str) -> int:
        """One number from the store's own tables, read outside the journal."""
        raise NotImplementedError


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, clock: Callable[[], datetime] = utc_now) -> JournalStore:
        return Journal(self.path, clock=clock)

    def child_code(self) -> str:
        return f"from batch.store.journal import Journal\nj = Journal({str(self.path)!r})\n"

    def count(self, sql: str) -> int:
        raw = sqlite3.connect(self.path)
        try:
            return int(raw.execute(sql).fetchone()[0])
        finally:
            raw.close()


class PgStore(Store):
    name = "postgresql"

    def __init__(self, database: PgDatabase) -> None:
        self.database = database

    def open(self, clock: Callable[[], datetime] = utc_now) -> JournalStore:
        from batch.store.journal_pg import PgJournal

        return PgJournal(self.database.uri, password=self.database.password, timeout_s=5, clock=clock)

    def child_code(self) -> str:  # the password through libpq's PGPASSWORD (child_env)
        return f"from batch.store.journal_pg import PgJournal\nj = PgJournal({self.database.uri!r})\n"

    def child_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.database.password}

    def count(self, sql: str) -> int:
        with self.database.connect() as conn:  # type: ignore[attr-defined]
            return int(conn.execute(sql).fetchone()[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each test that takes it runs on both backends."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "journal.sqlite")
    return PgStore(request.getfixturevalue("pg_database"))


@pytest.fixture
def journal(store: Store) -> Iterator[JournalStore]:
    with store.open() as j:
        yield j


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite journal's path (the tests of what only SQLite has)."""
    return tmp_path / "journal.sqlite"


@pytest.fixture
def sqlite_journal(db: Path) -> Iterator[Journal]:
    with Journal(db) as j:
        yield j


def record_result(journal: JournalStore, file_id: int, line: int, outcome: ResultOutcome, *,
                  http_status: int | None = None, message: str | None = None, attempts: int = 1) -> bool:
    """One delivery result through ``record_results`` (as delivery records them); applied?"""
    return journal.record_results([Result(file_id, line, outcome, http_status, message, attempts)]) == 1


def event_at(journal: JournalStore, file_id: int, line: int) -> EventRecord:
    [found] = [e for e in journal.file_events(file_id) if e.line == line]
    return found


def new_file(journal: JournalStore, name: str = "a.csv", sha: str = SHA_A, feed: str = "feed") -> int:
    begun = journal.begin_file(name, sha, 100, feed)
    assert begun.outcome == "new"
    return begun.file.id


def run_child(store: Store, body: str) -> subprocess.Popen[str]:
    """Start a Python child with ``j`` = the store's journal open, running ``body``."""
    code = "import sys, time\nfrom batch.store.journal import *\n" + store.child_code() + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=store.child_env())


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------- schema


def test_schema_is_created_on_first_use_in_wal_mode(sqlite_journal: Journal, db: Path) -> None:
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"files", "events", "meta"} <= tables


def test_reopening_keeps_the_data(store: Store) -> None:
    with store.open() as first:
        file_id = new_file(first)
        first.record_events(file_id, [event(1, "E1")])
    with store.open() as second:
        assert [e.event_id for e in second.file_events(file_id)] == ["E1"]


def test_a_newer_schema_is_refused(db: Path) -> None:
    Journal(db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(db)


def test_a_file_that_is_no_database_is_an_unusable_journal_that_says_what_to_do(db: Path) -> None:
    db.write_bytes(b"this is a spreadsheet, not a journal\n" * 1000)
    with pytest.raises(JournalUnusable) as info:
        Journal(db)
    assert str(info.value) == (
        f"{db}: the journal cannot be read: file is not a database (a damaged file, or another file at its path): "
        "restore it from a backup, or move it away to start a new journal")
    assert info.value.exit_status == ExitStatus.UNUSABLE  # a configuration problem: not an internal error


def test_synchronous_mode_is_normal_by_default_and_restored_after_flush(sqlite_journal: Journal) -> None:
    journal = sqlite_journal
    normal = 1
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == normal
    journal.flush()
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == normal


# --------------------------------------------------------------------------- begin_file


def test_an_unfinished_file_with_the_same_content_is_resumed(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1"), event(2, "E2")])
    again = journal.begin_file("a.csv", SHA_A, 100, "feed")
    assert again.outcome == "resumed"
    assert again.file.id == file_id
    assert again.file.counts["pending"] == 2


def test_a_completed_file_with_the_same_content_is_already_processed(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.finish_file(file_id, "done")
    again = journal.begin_file("renamed.csv", SHA_A, 100, "feed")
    assert again.outcome == "already_processed"
    assert again.original is not None and again.original.id == file_id
    assert again.file.id != file_id
    assert again.file.state == "skipped"
    assert again.file.original_id == file_id
    assert again.file.error.startswith("Already processed")
    assert "'a.csv'" in again.file.error
    assert journal.recent_files(1)[0].id == again.file.id  # the admin sees the second drop


def test_force_processes_a_completed_content_again(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.finish_file(file_id, "done")
    forced = journal.begin_file("a.csv", SHA_A, 100, "feed", force=True)
    assert forced.outcome == "new" and forced.file.id != file_id


def test_content_is_recognised_per_feed_and_errors_do_not_count(journal: JournalStore) -> None:
    first = new_file(journal, feed="one")
    journal.finish_file(first, "done")
    assert journal.begin_file("a.csv", SHA_A, 100, "two").outcome == "new"
    failed = new_file(journal, sha=SHA_B)
    journal.finish_file(failed, "error", "missing required column 'usageplacecode'")
    assert journal.begin_file("a.csv", SHA_B, 100, "feed").outcome == "new"


def test_a_file_owned_by_another_live_process_is_not_resumed(store: Store) -> None:
    child = run_child(store, f"""
        j.begin_file("a.csv", {SHA_A!r}, 100, "feed")
        print("begun", flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout.readline().strip() == "begun", child.stderr.read()
        with store.open() as journal:
            with pytest.raises(FileInProgress):
                journal.begin_file("a.csv", SHA_A, 100, "feed")
            kill(child)
            assert journal.begin_file("a.csv", SHA_A, 100, "feed").outcome == "resumed"
    finally:
        if child.poll() is None:
            kill(child)


# --------------------------------------------------------------------------- events


def test_recording_events_is_idempotent_per_line(journal: JournalStore) -> None:
    file_id = new_file(journal)
    batch = [event(1, "E1"), event(2, "E2"), NewEvent.invalid(3, "time: column 'Pvm' value 'x'")]
    assert journal.record_events(file_id, batch) == 3
    assert journal.record_events(file_id, batch) == 0
    assert journal.record_events(file_id, [event(4, "E4"), *batch]) == 1
    assert states(journal, file_id) == {1: "pending", 2: "pending", 3: "invalid", 4: "pending"}


def test_invalid_events_keep_their_message_and_are_never_to_send(journal: JournalStore) -> None:
    file_id = new_file(journal)
    message = "time: column 'Pvm' value '32.13.2024' is not a date (formats: %d.%m.%Y)"
    journal.record_events(file_id, [NewEvent.invalid(7, message, {"id": "E7"}), event(8, "E8")])
    invalid = event_at(journal, file_id, 7)
    assert (invalid.state, invalid.message, invalid.event_id) == ("invalid", message, "E7")
    assert [e.line for e in journal.to_send(file_id)] == [8]


def test_a_valid_event_needs_a_payload(journal: JournalStore) -> None:
    file_id = new_file(journal)
    with pytest.raises(ValueError):
        journal.record_events(file_id, [NewEvent(1, "E1", None, None, None)])


def test_payload_is_stored_as_json_in_the_order_given(journal: JournalStore) -> None:
    file_id = new_file(journal)
    payload = {"id": "E1", "usageplacecode": "U1", "invoices": [{"jobid": 12, "invoicenumber": "Ä1"}]}
    journal.record_events(file_id, [NewEvent.valid(1, payload)])
    [first] = journal.file_events(file_id)
    assert first.payload == payload
    assert first.payload_json == '{"id":"E1","usageplacecode":"U1","invoices":[{"jobid":12,"invoicenumber":"Ä1"}]}'
    assert first.usageplacecode == "U1"


def test_same_content_ignores_the_order_of_keys_and_nothing_else() -> None:
    same_content = journal_module.same_content
    payload = {"id": "E1", "usageplacecode": "U1", "invoices": [{"jobid": 12, "invoicenumber": "Ä1"}]}
    reordered = {"invoices": [{"invoicenumber": "Ä1", "jobid": 12}], "usageplacecode": "U1", "id": "E1"}
    text = journal_module.canonical_json
    assert same_content(text(payload), text(reordered))
    assert not same_content(text(payload), text({**payload, "usageplacecode": "U2"}))
    assert not same_content(text(payload), text({**payload, "invoices": [{"jobid": "12", "invoicenumber": "Ä1"}]}))
    assert not same_content(text(payload), text({**payload, "invoices": list(reversed(
        payload["invoices"] + [{"jobid": 13, "invoicenumber": "B"}]))}))  # a list's order is content
    assert same_content(None, None) and not same_content(text(payload), None)
    assert not same_content("not json", text(payload)) and same_content("not json", "not json")


def test_to_send_returns_pending_in_record_order_and_failed_only_for_retry(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(line, f"E{line}") for line in (5, 1, 3, 2, 4)])
    assert [e.line for e in journal.to_send(file_id)] == [1, 2, 3, 4, 5]
    record_result(journal, file_id, 2, "failed", http_status=503, message="Service Unavailable")
    record_result(journal, file_id, 3, "accepted", http_status=200)
    record_result(journal, file_id, 4, "rejected", http_status=400, message="Bad Request")
    assert [e.line for e in journal.to_send(file_id)] == [1, 5]
    assert [e.line for e in journal.to_send(file_id, include_failed=True)] == [1, 2, 5]


def test_iteration_is_paged_and_tolerates_results_recorded_meanwhile(
        journal: JournalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "PAGE_SIZE", 3)
    file_id = new_file(journal)
    journal.record_events(file_id, [event(line, f"E{line}") for line in range(1, 11)])
    seen = []
    for pending in journal.to_send(file_id):
        seen.append(pending.line)
        record_result(journal, file_id, pending.line, "accepted", http_status=200)
    assert seen == list(range(1, 11))
    assert [e.line for e in journal.file_events(file_id)] == list(range(1, 11))
    assert list(journal.to_send(file_id)) == []


# --------------------------------------------------------------------------- duplicates


def test_an_event_id_accepted_in_an_earlier_file_is_a_duplicate(journal: JournalStore) -> None:
    first = new_file(journal, "monday.csv", SHA_A)
    journal.record_events(first, [event(1, "E1"), event(2, "E2")])
    record_result(journal, first, 1, "accepted", http_status=200)
    record_result(journal, first, 2, "rejected", http_status=400, message="Bad Request")

    second = new_file(journal, "tuesday.csv", SHA_B)
    journal.record_events(second, [event(10, "E1"), event(11, "E2"), event(12, "E1", description="x")])
    dup = event_at(journal, second, 10)
    assert dup.state == "duplicate"
    assert dup.message == "event id already accepted: file 'monday.csv', line 1"
    assert event_at(journal, second, 11).state == "pending"  # only accepted ids count
    assert event_at(journal, second, 12).message.endswith("with different content")
    assert [e.line for e in journal.to_send(second)] == [11]


def test_a_repeated_event_id_within_a_file_is_sent_once(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [NewEvent.invalid(1, "bad", {"id": "E1"}), event(2, "E1")])
    journal.record_events(file_id, [event(3, "E1")])  # a later chunk
    assert states(journal, file_id) == {1: "invalid", 2: "pending", 3: "duplicate"}
    assert event_at(journal, file_id, 3).message == "same event id as line 2"


def test_retry_never_resends_an_id_accepted_meanwhile_by_another_file(journal: JournalStore) -> None:
    first = new_file(journal, "monday.csv", SHA_A)
    journal.record_events(first, [event(1, "E1")])
    record_result(journal, first, 1, "failed", http_status=503, message="down", attempts=5)
    journal.finish_file(first, "done")

    second = new_file(journal, "tuesday.csv", SHA_B)
    journal.record_events(second, [event(1, "E1")])
    record_result(journal, second, 1, "accepted", http_status=200)

    assert list(journal.to_send(first, include_failed=True)) == []
    assert event_at(journal, first, 1).state == "duplicate"
    assert journal.refresh_counts(first).counts["duplicate"] == 1


def test_the_duplicate_lookup_uses_the_event_id_index(sqlite_journal: Journal) -> None:
    journal = sqlite_journal
    for sql in (journal_module.SQL_MARK_ALREADY_ACCEPTED, journal_module.SQL_MARK_REPEATED_IN_FILE):
        plan = " ".join(row[3] for row in journal._conn.execute(
            "EXPLAIN QUERY PLAN " + sql, {"file_id": 1, "first": 1, "last": 2, "now": "t"}))
        assert "USING INDEX events_by_event_id (event_id=?)" in plan
        assert "SCAN" not in plan


# --------------------------------------------------------------------------- results


def test_results_record_status_message_and_attempts(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1"), event(2, "E2")])
    assert record_result(journal, file_id, 1, "failed", http_status=503, message="down", attempts=3)
    assert record_result(journal, file_id, 1, "accepted", http_status=200, attempts=2)
    assert record_result(journal, file_id, 2, "rejected", http_status=422,
                                 message="Unprocessable: usageplacecode unknown")
    accepted, rejected = journal.file_events(file_id)
    assert (accepted.state, accepted.http_status, accepted.attempts) == ("accepted", 200, 5)
    assert (rejected.state, rejected.http_status, rejected.message) == (
        "rejected", 422, "Unprocessable: usageplacecode unknown")


def test_a_late_result_never_overwrites_a_final_state(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1"), NewEvent.invalid(2, "bad")])
    assert record_result(journal, file_id, 1, "accepted", http_status=200)
    assert not record_result(journal, file_id, 1, "failed", http_status=503)
    assert not record_result(journal, file_id, 2, "accepted", http_status=200)
    assert not record_result(journal, file_id, 99, "accepted", http_status=200)
    assert states(journal, file_id) == {1: "accepted", 2: "invalid"}


def test_a_nul_from_a_server_or_a_record_is_stored_and_shown_escaped(journal: JournalStore) -> None:
    """A hostile answer or record may hold a NUL (PostgreSQL's text cannot: it stores the four
    characters \\x00). What a receipt or a terminal shows is the same on both backends."""
    from batch.redact import escape_unprintable

    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1"), NewEvent.invalid(2, "bad \x00 value", {"id": "E\x002"})])
    assert record_result(journal, file_id, 1, "rejected", http_status=400, message="no\x00pe")
    shown = [(escape_unprintable(e.message or ""), escape_unprintable(e.event_id or ""))
             for e in journal.file_events(file_id)]
    assert shown == [("no\\x00pe", "E1"), ("bad \\x00 value", "E\\x002")]
    journal.add_note(file_id, "note\x00")
    journal.set_finish_problem(file_id, "move\x00failed")
    assert journal.count_file_attempt("feed", "a.csv", "boom\x00") == 1
    finished = journal.finish_file(file_id, "error", "err\x00or")
    assert [escape_unprintable(v or "") for v in (finished.error, finished.note, finished.finish_problem)] == [
        "err\\x00or", "note\\x00", "move\\x00failed"]


def test_only_delivery_outcomes_are_results(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1")])
    with pytest.raises(ValueError):
        record_result(journal, file_id, 1, "duplicate")  # type: ignore[arg-type]


def test_record_results_applies_a_batch_in_one_call(journal: JournalStore) -> None:
    file_id = new_file(journal)
    journal.record_events(file_id, [event(line, f"E{line}") for line in range(1, 5)])
    applied = journal.record_results([Result(file_id, 1, "accepted", 200),
                                      Result(file_id, 2, "rejected", 400, "Bad Request"),
                                      Result(file_id, 2, "accepted", 200),  # too late: rejected
                                      Result(file_id, 3, "failed", None, "timeout")])
    assert applied == 3
    assert states(journal, file_id) == {1: "accepted", 2: "rejected", 3: "failed", 4: "pending"}


def test_eight_threads_record_results_concurrently(journal: JournalStore) -> None:
    file_id = new_file(journal)
    lines = range(1, 4001)
    journal.record_events(file_id, [event(line, f"E{line}") for line in lines])
    errors: list[BaseException] = []

    def deliver(part: list[int]) -> None:
        try:
            for line in part:
                outcome: Literal["accepted", "rejected"] = "accepted" if line % 4 else "rejected"
                assert record_result(journal, file_id, line, outcome, http_status=200)
                journal.file_counts(file_id)  # readers interleave with writers
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=(list(lines)[k::8],)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    finished = journal.finish_file(file_id, "done")
    assert finished.counts == {"accepted": 3000, "rejected": 1000, "invalid": 0, "failed": 0,
                               "duplicate": 0, "not_sent": 0, "pending": 0}


def test_two_processes_create_and_write_the_same_journal(store: Store) -> None:
    body = """
        name = "{name}"
        file_id = j.begin_file(name, name.ljust(64, "0"), 1, "feed").file.id
        j.record_events(file_id, [NewEvent.valid(n, {{"id": name + str(n)}}) for n in range(1, 1501)])
        for n in range(1, 1501):
            assert j.record_results([Result(file_id, n, "accepted", http_status=200)]) == 1
        j.finish_file(file_id, "done")
        print("ok", flush=True)
    """
    children = [run_child(store, body.format(name=name)) for name in ("p1", "p2")]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and out.strip() == "ok", err
    with store.open() as journal:
        files = journal.recent_files(10)
        assert sorted(f.name for f in files) == ["p1", "p2"]
        assert all(f.state == "done" and f.counts["accepted"] == 1500 for f in files)


# --------------------------------------------------------------------------- crash recovery


def test_recorded_results_survive_a_sigkill_exactly(store: Store) -> None:
    with store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(line, f"E{line}") for line in range(1, 101)])
    child = run_child(store, f"""
        for line in range(1, 41):
            j.record_results([Result({file_id}, line, "accepted", http_status=200)])
        j.record_results([Result({file_id}, 41, "failed", http_status=503, message="down", attempts=4)])
        print("recorded", flush=True)
        time.sleep(60)
    """)
    assert child.stdout.readline().strip() == "recorded", child.stderr.read()
    kill(child)

    with store.open() as journal:
        resumed = journal.begin_file("a.csv", SHA_A, 100, "feed")
        assert resumed.outcome == "resumed" and resumed.file.id == file_id
        assert resumed.file.counts == {"accepted": 40, "rejected": 0, "invalid": 0, "failed": 1,
                                       "duplicate": 0, "not_sent": 0, "pending": 59}
        failed = event_at(journal, file_id, 41)
        assert (failed.attempts, failed.http_status, failed.message) == (4, 503, "down")
        assert [e.line for e in journal.to_send(file_id)] == list(range(42, 101))


def test_a_kill_in_the_middle_of_recording_loses_nothing_reported(store: Store) -> None:
    """The child reports each line after record_result returned; it is killed mid-stream.

    Every reported line must be accepted, and nothing beyond the one result that may have
    been committed between the last report and the kill.
    """
    with store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(line, f"E{line}") for line in range(1, 50_001)])
    child = run_child(store, f"""
        for line in range(1, 50_001):
            j.record_results([Result({file_id}, line, "accepted", http_status=200)])
            print(line, flush=True)
    """)
    reported = [int(child.stdout.readline()) for _ in range(3000)]
    kill(child)
    reported += [int(line) for line in child.stdout.read().split()]

    with store.open() as journal:
        accepted = [e.line for e in journal.file_events(file_id) if e.state == "accepted"]
    assert reported == list(range(1, len(reported) + 1))
    assert accepted[: len(reported)] == reported
    assert len(accepted) - len(reported) in (0, 1)
    assert len(accepted) < 50_000, "the kill came too late to test anything"


def test_a_kill_during_bulk_recording_leaves_whole_batches(store: Store) -> None:
    with store.open() as journal:
        file_id = new_file(journal)
    child = run_child(store, f"""
        for chunk in range(200):
            j.record_events({file_id}, [NewEvent.valid(chunk * 1000 + n, {{"id": f"E{{chunk}}-{{n}}"}})
                                        for n in range(1000)])
            print(chunk, flush=True)
    """)
    reported = [int(child.stdout.readline()) for _ in range(5)]
    kill(child)
    reported += [int(line) for line in child.stdout.read().split()]

    with store.open() as journal:
        rows = journal.file_counts(file_id)["pending"]
    assert rows % 1000 == 0
    assert rows // 1000 - len(reported) in (0, 1)
    assert rows < 200_000, "the kill came too late to test anything"


# --------------------------------------------------------------------------- finishing, listing


def test_finish_file_counts_outcomes_from_the_events(journal: JournalStore) -> None:
    seed = new_file(journal, "old.csv", SHA_B)
    journal.record_events(seed, [event(1, "OLD")])
    record_result(journal, seed, 1, "accepted", http_status=200)
    file_id = new_file(journal)
    journal.record_events(file_id, [event(1, "E1"), event(2, "E2"), event(3, "E3"),
                                    NewEvent.invalid(4, "bad"), event(5, "OLD")])
    journal.mark_recorded(file_id)
    record_result(journal, file_id, 1, "accepted", http_status=200)
    record_result(journal, file_id, 2, "rejected", http_status=400, message="Bad")
    with pytest.raises(JournalError, match="pending"):
        journal.finish_file(file_id, "done")
    record_result(journal, file_id, 3, "failed", message="timeout")
    finished = journal.finish_file(file_id, "done")
    assert finished.state == "done" and finished.finished and finished.recorded
    assert finished.finished_at >= finished.started_at
    assert finished.counts == {"accepted": 1, "rejected": 1, "invalid": 1, "failed": 1,
                               "duplicate": 1, "not_sent": 0, "pending": 0}


def test_finish_as_error_keeps_the_error_text(journal: JournalStore) -> None:
    file_id = new_file(journal)
    finished = journal.finish_file(file_id, "error", "missing required column 'usageplacecode'")
    assert (finished.state, finished.error) == ("error", "missing required column 'usageplacecode'")
    with pytest.raises(ValueError):
        journal.finish_file(file_id, "processing")  # type: ignore[arg-type]  # the refusal is under test


def test_recent_files_newest_first_with_live_counts_and_feed_filter(journal: JournalStore) -> None:
    ids = [new_file(journal, f"f{n}.csv", str(n) * 64, feed="x" if n % 2 else "y") for n in range(5)]
    journal.record_events(ids[4], [event(1, "E1"), event(2, "E2")])
    record_result(journal, ids[4], 1, "accepted", http_status=200)
    recent = journal.recent_files(3)
    assert [f.id for f in recent] == ids[:1:-1]
    assert recent[0].counts["accepted"] == 1 and recent[0].counts["pending"] == 1
    assert [f.name for f in journal.recent_files(10, feed="x")] == ["f3.csv", "f1.csv"]


def test_failed_events_across_files_and_per_file(journal: JournalStore) -> None:
    first, second = new_file(journal, "a.csv", SHA_A), new_file(journal, "b.csv", SHA_B)
    for file_id in (first, second):
        journal.record_events(file_id, [event(1, f"{file_id}-1"), event(2, f"{file_id}-2")])
        record_result(journal, file_id, 2, "failed", http_status=500, message="oops")
    assert [(e.file_id, e.line) for e in journal.failed_events()] == [(first, 2), (second, 2)]
    assert [(e.file_id, e.line) for e in journal.failed_events(second)] == [(second, 2)]
    assert journal.failed_events(second)[0].payload["id"] == f"{second}-2"  # enough to retry


# --------------------------------------------------------------------------- retention


class Clock:
    def __init__(self) -> None:
        from datetime import datetime, timezone

        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self):  # noqa: ANN204
        return self.now

    def advance(self, days: float) -> None:
        from datetime import timedelta

        self.now += timedelta(days=days)


def test_prune_forgets_only_old_files_with_nothing_left_to_send(store: Store) -> None:
    from datetime import timedelta

    clock = Clock()
    with store.open(clock=clock) as journal:
        old_done = new_file(journal, "old.csv", SHA_A)
        journal.record_events(old_done, [event(n, f"O{n}") for n in range(1, 6)])
        journal.record_results([Result(old_done, n, "accepted", http_status=200) for n in range(1, 6)])
        journal.finish_file(old_done, "done")
        old_skipped = journal.begin_file("again.csv", SHA_A, 100, "feed").file.id  # refers to old_done
        old_failed = new_file(journal, "failed.csv", "c" * 64)
        journal.record_events(old_failed, [event(1, "F1")])
        record_result(journal, old_failed, 1, "failed", message="503")
        journal.finish_file(old_failed, "done")
        old_error = new_file(journal, "broken.csv", "d" * 64)
        journal.finish_file(old_error, "error", error="not UTF-8")
        unfinished = new_file(journal, "unfinished.csv", "e" * 64)
        journal.record_events(unfinished, [event(1, "U1")])
        clock.advance(30)
        recent = new_file(journal, "recent.csv", SHA_B)
        journal.record_events(recent, [event(1, "O1")])  # a duplicate of old.csv's O1
        journal.finish_file(recent, "done")

        assert journal.prune(clock.now - timedelta(days=10), batch_rows=2) == (3, 5)
        left = {f.name for f in journal.recent_files(100)}
        assert left == {"failed.csv", "unfinished.csv", "recent.csv"}
        assert [e.state for e in journal.file_events(old_failed)] == ["failed"]  # can still be retried
        assert event_at(journal, recent, 1).message == "event id already accepted: file 'old.csv', line 1"
        later = new_file(journal, "later.csv", "f" * 64)
        journal.record_events(later, [event(1, "O1")])
        assert states(journal, later) == {1: "pending"}  # old.csv forgotten: no longer a duplicate
        assert journal.begin_file("old.csv", SHA_A, 100, "feed").outcome == "new"  # processed anew
        with pytest.raises(JournalError):
            journal.get_file(old_skipped)
        assert journal.prune(clock.now - timedelta(days=10)) == (0, 0)
    assert store.count(f"SELECT count(*) FROM events WHERE file_id IN ({old_done}, {old_error})") == 0
    if store.name == "sqlite":  # PostgreSQL checks every foreign key on every write
        raw = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_prune_after_a_retry_emptied_the_failed_events(store: Store) -> None:
    from datetime import timedelta

    clock = Clock()
    with store.open(clock=clock) as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(1, "E1")])
        record_result(journal, file_id, 1, "failed", message="503")
        journal.finish_file(file_id, "done")
        clock.advance(100)
        assert journal.prune(clock.now - timedelta(days=90)) == (0, 0)
        record_result(journal, file_id, 1, "accepted", http_status=200)
        journal.refresh_counts(file_id)
        assert journal.prune(clock.now - timedelta(days=90)) == (1, 1)


# --------------------------------------------------------------------------- D14, F2, schema v2


def test_D14_file_in_error_gives_its_pending_events_not_sent_and_can_be_pruned(store: Store) -> None:
    from datetime import timedelta

    clock = Clock()
    with store.open(clock=clock) as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(n, f"E{n}") for n in range(1, 6)])
        record_result(journal, file_id, 1, "accepted", http_status=201)
        finished = journal.finish_file(file_id, "error", error="failed 3 times: TypeError: boom")
        assert finished.counts["pending"] == 0 and finished.counts["not_sent"] == 4
        assert finished.counts["accepted"] == 1
        assert {(e.state, e.message) for e in journal.file_events(file_id) if e.line > 1} == {
            ("not_sent", "file error: failed 3 times: TypeError: boom")}
        clock.advance(2)
        assert journal.prune(clock() - timedelta(days=1)) == (1, 5)


def test_journal_schema_1_is_migrated_keeping_every_row(db: Path) -> None:
    old_journal(db, 1)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO files (id, name, sha256, size, feed, state, started_at, owner)"
                 " VALUES (1, 'old.csv', 'aa', 1, 'feed', 'processing', '2026-01-01T00:00:00+00:00', 'h:1')")
    conn.execute("INSERT INTO events (file_id, line, event_id, state, attempts, updated_at)"
                 " VALUES (1, 2, 'E2', 'accepted', 1, '2026-01-01T00:00:00+00:00')")
    conn.execute("INSERT INTO events (file_id, line, event_id, payload, state, updated_at)"
                 " VALUES (1, 3, 'E3', '{}', 'pending', '2026-01-01T00:00:00+00:00')")
    conn.close()
    with Journal(db) as journal:
        record = journal.get_file(1)
        assert record.mapping_version is None and record.counts["accepted"] == 1
        assert record.counts["pending"] == 1
        assert journal.count_file_attempt("feed", "old.csv", "x") == 1
        assert journal.finish_file(1, "error", error="boom").counts["not_sent"] == 1
    assert journal_version(db) == SCHEMA_VERSION


def journal_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_F2_journal_fault_names_the_path_and_operation(db: Path) -> None:
    from batch.store.journal import JournalUnavailable

    with Journal(db, busy_timeout_s=0.2) as journal:
        file_id = new_file(journal)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the busy timeout
        try:
            with pytest.raises(JournalUnavailable) as caught:
                journal.record_events(file_id, [event(1, "E1")])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert str(caught.value) == f"journal {db}: cannot record events: database is locked"
        journal.record_events(file_id, [event(1, "E1")])  # and it works again once released


def test_F2_reopen_never_creates_a_new_journal_and_recovers_when_the_file_is_back(db: Path) -> None:
    from batch.store.journal import JournalUnavailable

    with Journal(db) as journal:
        file_id = new_file(journal)
        away = db.with_name("moved-away.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.rename(f"{db}{suffix}", f"{away}{suffix}")
        with pytest.raises(JournalUnavailable) as caught:
            journal.reopen()  # e.g. its disk is not mounted again yet
        assert str(caught.value) == f"journal {db}: cannot open it again: unable to open database file"
        assert not db.exists()
        with pytest.raises(JournalUnavailable):
            journal.get_file(file_id)  # every call tries to open it again, and says so
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{away}{suffix}").exists():
                os.rename(f"{away}{suffix}", f"{db}{suffix}")
        assert journal.get_file(file_id).name == "a.csv"


# --------------------------------------------------------------------------- both: concurrency


def begin_at_once(journals: list[JournalStore], sha: str) -> list[tuple[str, int]]:
    """Each journal calls begin_file on the same content at the same moment, from its thread."""
    barrier = threading.Barrier(len(journals))
    outcomes: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def begin(journal: JournalStore) -> None:
        try:
            barrier.wait(timeout=30)
            begun = journal.begin_file("a.csv", sha, 100, "feed")
            outcomes.append((begun.outcome, begun.file.id))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=begin, args=(journal,)) for journal in journals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return outcomes


def test_two_connections_beginning_the_same_content_at_once_get_one_file(store: Store) -> None:
    """Two journals (two connections, as two instances have) register the same content at the
    same moment, 20 times over: one gets it new, the other resumes that very file; never two
    unfinished rows of one content."""
    journals = [store.open(), store.open()]
    try:
        for round_ in range(20):
            outcomes = begin_at_once(journals, f"{round_:064d}")
            assert sorted(outcome for outcome, _ in outcomes) == ["new", "resumed"]
            assert len({file_id for _, file_id in outcomes}) == 1
        assert store.count("SELECT count(*) FROM files WHERE state = 'processing'") == 20
    finally:
        for journal in journals:
            journal.close()


# --------------------------------------------------------------------------- PostgreSQL only


@pytest.fixture
def pg_store(pg_database: PgDatabase) -> PgStore:
    return PgStore(pg_database)


def test_pg_schema_is_versioned_and_a_newer_one_is_refused(pg_store: PgStore) -> None:
    from batch.store.journal_pg import PG_SCHEMA_VERSION

    pg_store.open().close()
    assert pg_store.count("SELECT version FROM journal_schema") == PG_SCHEMA_VERSION
    assert pg_store.count("SELECT count(*) FROM journal_schema") == 1
    pg_store.open().close()  # opening again migrates nothing
    with pg_store.database.connect() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE journal_schema SET version = version + 1")
    with pytest.raises(JournalError) as caught:
        pg_store.open()
    assert str(caught.value) == (f"{pg_store.database.uri}: journal schema version {PG_SCHEMA_VERSION + 1} is newer "
                                 f"than this program supports ({PG_SCHEMA_VERSION})")


def test_pg_instances_starting_at_once_create_the_schema_once(pg_store: PgStore) -> None:
    """Four processes open a fresh database at the same moment: each waits for the one that
    migrates (a transaction-scoped advisory lock), none fails, the schema is made once."""
    body = """
        f = j.begin_file("x", sys.argv[1].ljust(64, "0"), 1, "feed")
        print(f.outcome, flush=True)
    """
    time_mark = time.time() + 1.5  # every child opens the journal at this moment
    code = ("import sys, time\nfrom batch.store.journal import *\n"
            f"time.sleep(max(0, {time_mark} - time.time()))\n" + pg_store.child_code() + textwrap.dedent(body))
    children = [subprocess.Popen([sys.executable, "-c", code, str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=pg_store.child_env()) for n in range(4)]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert (child.returncode, out.strip()) == (0, "new"), err
    assert pg_store.count("SELECT count(*) FROM journal_schema") == 1
    assert pg_store.count("SELECT count(*) FROM files") == 4


def test_pg_duplicate_lookups_use_the_event_id_indexes(pg_store: PgStore) -> None:
    """Per event of a batch, one index lookup, even before the server has statistics (a scan
    per event made recording a 50,000-line file quadratic)."""
    from batch.store import journal_pg

    with pg_store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(line, f"E{line}") for line in range(1, 2001)])
    with pg_store.database.connect() as conn:  # type: ignore[attr-defined]
        for sql, index in ((journal_pg.SQL_MARK_ALREADY_ACCEPTED, "events_accepted_by_event_id"),
                           (journal_pg.SQL_MARK_REPEATED_IN_FILE, "events_by_event_id")):
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN " + sql, {"file_id": file_id, "first": 1, "last": 2000, "now": utc_now()}))
            assert f"Index Scan using {index} on events" in plan
            assert "Seq Scan" not in plan


def test_pg_a_lost_server_is_journal_unavailable_and_nothing_is_lost(pg_store: PgStore) -> None:
    """The server stops (every connection cut) and starts again: each call meanwhile raises
    JournalUnavailable naming the URI and the operation; reopen() says so until the server is
    back; then everything recorded before is there and recording goes on."""
    cluster = pg_store.database.cluster
    with pg_store.open() as journal:
        file_id = new_file(journal)
        journal.record_events(file_id, [event(1, "E1"), event(2, "E2")])
        assert record_result(journal, file_id, 1, "accepted", http_status=200)
        cluster.stop()
        try:
            with pytest.raises(JournalUnavailable) as caught:
                record_result(journal, file_id, 2, "accepted", http_status=200)
            assert str(caught.value).startswith(f"journal {pg_store.database.uri}: cannot record delivery results: ")
            assert "Connection refused" in str(caught.value) and "\n" not in str(caught.value)
            with pytest.raises(JournalUnavailable) as again:
                journal.reopen()
            assert str(again.value).startswith(f"journal {pg_store.database.uri}: cannot connect again: ")
            with pytest.raises(JournalUnavailable):
                journal.get_file(file_id)
        finally:
            cluster.start()
        journal.reopen()
        assert states(journal, file_id) == {1: "accepted", 2: "pending"}
        assert record_result(journal, file_id, 2, "accepted", http_status=200)
        assert journal.finish_file(file_id, "done").counts["accepted"] == 2


@pytest.mark.slow
def test_pg_reopen_connects_as_soon_as_the_server_is_back_after_a_long_outage(pg_store: PgStore) -> None:
    """Down for 16 s, the pool's own refills back off (1, 2, 4, 8, 16 s): reopen() must not wait for
    the next one (it did, past its 5 s timeout, when it asked the old pool for a connection)."""
    cluster = pg_store.database.cluster
    with pg_store.open() as journal:
        file_id = new_file(journal)
        cluster.stop()
        try:
            with pytest.raises(JournalUnavailable):
                journal.get_file(file_id)  # the pool finds its connection broken and starts refilling
            time.sleep(16)
        finally:
            cluster.start()
        journal.reopen()  # within its 5 s: the old pool's next refill was some 14 s away
        assert journal.get_file(file_id).id == file_id


def test_pg_a_server_that_is_down_at_start_is_journal_unavailable(pg_store: PgStore) -> None:
    cluster = pg_store.database.cluster
    cluster.stop()
    try:
        with pytest.raises(JournalUnavailable) as caught:
            pg_store.open()
    finally:
        cluster.start()
    assert str(caught.value).startswith(f"journal {pg_store.database.uri}: cannot open it: connection failed: ")
    assert "Connection refused" in str(caught.value) and "\n" not in str(caught.value)


def test_pg_a_wrong_password_is_refused_without_showing_it(pg_store: PgStore) -> None:
    from batch.store.journal_pg import PgJournal

    with pytest.raises(JournalUnavailable) as caught:
        PgJournal(pg_store.database.uri, password="not-the-Secret-42")
    assert str(caught.value) == (f"journal {pg_store.database.uri}: cannot open it: connection failed: "
                                 f"connection to server at \"127.0.0.1\", port {pg_store.database.cluster.port} "
                                 f"failed: FATAL:  password authentication failed for user \"upb\"")
    assert "not-the-Secret-42" not in str(caught.value)


class Refused(Exception):
    """What a test's fence raises (a lease store's raises LeaseLost)."""


def test_pg_a_fence_runs_inside_every_write_of_its_thread_and_refuses_it(pg_store: PgStore) -> None:
    """The hook feed leases use (JournalStore.set_fence): the fence runs inside the write's
    transaction on the journal's own connection; when it raises, nothing of the write is
    committed; other threads' writes are not fenced; None removes it."""
    with pg_store.open() as journal:
        file_id = new_file(journal)
        seen: list[object] = []
        allowed = {"yes": True}

        def fence(conn: Any) -> None:
            import psycopg

            written = conn.execute("SELECT txid_current_if_assigned() IS NOT NULL").fetchone()[0]
            seen.append((conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, written))
            if not allowed["yes"]:
                raise Refused("lease lost")

        journal.set_fence(fence)
        journal.record_events(file_id, [event(1, "E1"), event(2, "E2")])
        assert seen == [(True, False)]  # in the write's transaction, before anything is written
        allowed["yes"] = False
        with pytest.raises(Refused):
            journal.record_results([Result(file_id, 1, "accepted", 200)])
        with pytest.raises(Refused):
            journal.finish_file(file_id, "error", "x")
        assert states(journal, file_id) == {1: "pending", 2: "pending"}  # reads are not fenced

        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(journal.record_results([Result(file_id, 2, "accepted",
                                                                                             200)])))
        thread.start()
        thread.join()
        assert other == [1]  # another thread: no fence
        journal.set_fence(None)
        assert journal.record_results([Result(file_id, 1, "accepted", 200)]) == 1


def test_pg_with_a_fence_the_lease_not_the_owner_decides_who_resumes(pg_store: PgStore) -> None:
    child = run_child(pg_store, f"""
        j.begin_file("a.csv", {SHA_A!r}, 100, "feed")
        print("begun", flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout.readline().strip() == "begun", child.stderr.read()
        with pg_store.open() as journal:
            with pytest.raises(FileInProgress):
                journal.begin_file("a.csv", SHA_A, 100, "feed")
            journal.set_fence(lambda conn: None)  # this thread holds the feed's lease
            assert journal.begin_file("a.csv", SHA_A, 100, "feed").outcome == "resumed"
    finally:
        kill(child)


# --------------------------------------------------------------------------- errors as data (issue 11, point 8)
# an invalid record's errors as a list, a rejection's problem title and detail, the filtered
# count, and the migration of rows journaled before (one string becomes one error with only its message)

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


def test_sqlite_schema_2_is_migrated_an_old_error_becomes_one_error_with_its_message(db: Path) -> None:
    old_journal(db, 2)
    conn = sqlite3.connect(db, isolation_level=None)
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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()


def test_pg_schema_1_is_migrated_an_old_error_becomes_one_error_with_its_message(pg_database: PgDatabase) -> None:
    from batch.store.journal_pg import PG_SCHEMA_VERSION

    with pg_database.connect() as conn:  # type: ignore[attr-defined]
        old_pg_journal(conn, 1)
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
    assert store_.count("SELECT version FROM journal_schema") == PG_SCHEMA_VERSION == 5


# A payload as versions before SQLite schema 6 / PostgreSQL 5 wrote it, with the digest of its
# content they kept for every event (sha256 of its JSON with sorted keys).
OLD_PAYLOAD = {"id": "E1", "usageplacecode": "643007572000000001", "time": "2024-01-02 03:04:05",
               "status": "disconnected", "description": "Äänekoski 😀",
               "invoices": [{"invoicenumber": "1001", "jobid": 7}]}
OLD_PAYLOAD_JSON = json.dumps(OLD_PAYLOAD, ensure_ascii=False, separators=(",", ":"))
OLD_DIGEST = hashlib.sha256(json.dumps(OLD_PAYLOAD, ensure_ascii=False, separators=(",", ":"),
                                       sort_keys=True).encode()).hexdigest()


def test_sqlite_schema_5_loses_the_payload_digests_and_still_tells_a_repeat_by_its_content(db: Path) -> None:
    old_journal(db, 5)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO files (id, name, sha256, size, feed, state, started_at, owner)"
                 " VALUES (1, 'monday.csv', 'aa', 1, 'feed', 'done', '2026-01-01T00:00:00+00:00', 'h:1')")
    conn.execute("INSERT INTO events (file_id, line, event_id, payload, payload_sha256, state, updated_at)"
                 " VALUES (1, 1, 'E1', ?, ?, 'accepted', '2026-01-01T00:00:00+00:00')", (OLD_PAYLOAD_JSON, OLD_DIGEST))
    conn.close()
    with Journal(db) as journal:
        _told_by_content(journal)
    conn = sqlite3.connect(db)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    conn.close()
    # dropped where SQLite can drop a column (3.35); before, it stays and nothing reads it
    assert ("payload_sha256" in columns) == (sqlite3.sqlite_version_info < (3, 35))


def test_pg_schema_4_loses_the_payload_digests_and_still_tells_a_repeat_by_its_content(
        pg_database: PgDatabase) -> None:
    with pg_database.connect() as conn:  # type: ignore[attr-defined]
        old_pg_journal(conn, 4)
        [first] = conn.execute("INSERT INTO files (name, sha256, size, feed, state, started_at, owner)"
                               " VALUES ('monday.csv', 'aa', 1, 'feed', 'done', now(), 'h:1') RETURNING id").fetchone()
        conn.execute("INSERT INTO events (file_id, line, event_id, payload, payload_sha256, state, updated_at)"
                     " VALUES (%s, 1, 'E1', %s, %s, 'accepted', now())", (first, OLD_PAYLOAD_JSON, OLD_DIGEST))
    store_ = PgStore(pg_database)
    with store_.open() as journal:
        _told_by_content(journal)
    assert store_.count("SELECT count(*) FROM information_schema.columns"
                        " WHERE table_name = 'events' AND column_name = 'payload_sha256'") == 0


def _told_by_content(journal: JournalStore) -> None:
    """The old file's event comes again: in another key order it is the same content, with one
    value changed it is not."""
    second = journal.begin_file("tuesday.csv", "b" * 64, 1, "feed").file.id
    reordered = dict(reversed(list(OLD_PAYLOAD.items())))
    changed = {**OLD_PAYLOAD, "description": "other"}
    journal.record_events(second, [NewEvent.valid(1, reordered), NewEvent.valid(2, changed)])
    same, different = journal.file_events(second)
    assert (same.state, same.message) == ("duplicate", "event id already accepted: file 'monday.csv', line 1")
    assert (different.state, different.message) == (
        "duplicate", "event id already accepted: file 'monday.csv', line 1, with different content")


# --- a chunk of valid events journaled as columns ------------------------------------------------


def test_valid_events_give_the_rows_that_new_events_give():
    """journal.ValidEvents (the chunk path: all of a chunk's records valid) makes exactly the
    rows NewEvent.valid makes one by one: same JSON text, digest, ids and types; also for a job
    id beyond 64 bits (orjson refuses it, the standard library writes it) and a non-text id."""
    from batch.config.mapping import load_mapping
    from batch.transform.extract import mapped_file
    from batch.transform.mapping import CompiledMapping, ValidChunk

    root = Path(__file__).resolve().parent.parent
    compiled = CompiledMapping(load_mapping(root / "config" / "mappings" / "finnish_cp1252.yaml"))
    chunks = list(mapped_file(compiled, root / "samples" / "finnish_cp1252.csv"))
    valid = [chunk for chunk in chunks if isinstance(chunk, ValidChunk)]
    assert valid, "the sample's records should take the chunk path"
    odd: list[dict[str, Any]] = [{"id": 7, "usageplacecode": "643007572000000001", "status": "connected",
            "invoices": [{"invoicenumber": "ä\"\\\u2028", "jobid": 2**70}]},
           {"id": "B", "time": "2024-02-05 06:30:00", "description": "x\ny"}]
    cases: list[tuple[list[int], list[dict[str, Any]]]] = [(list(chunk.lines), list(chunk.events)) for chunk in valid]
    cases.append(([5, 6], odd))
    for lines, payloads in cases:
        by_columns = journal_module.events_insert_params(3, [journal_module.ValidEvents(lines, payloads)], "now")
        one_by_one = [journal_module.event_insert_params(3, journal_module.NewEvent.valid(line, payload), "now")
                      for line, payload in zip(lines, payloads)]
        assert by_columns == one_by_one
        assert [list(map(type, row)) for row in by_columns] == [list(map(type, row)) for row in one_by_one]
