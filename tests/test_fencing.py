"""Fencing (issue 10 point 2): an instance frozen past its lease (SIGSTOP) wakes up (SIGCONT)
after another instance took its feed over, finds it lost the lease, and stops before it records
or moves anything. Real `run` subprocesses on one shared SQLite journal, the real sandbox."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.fixtures_http import APICODE_ENV
from tests.fixtures_leases import LEASE_SECONDS, MAX_IN_FLIGHT, drop, shared_journal, stop_all
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceProcess, export, ids, receipt

pytestmark = pytest.mark.slow


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def test_an_instance_woken_after_losing_its_lease_records_and_moves_nothing(tmp_path: Path, sandbox,
                                                                           apicode_env) -> None:
    sandbox.set_faults(latency_ms=3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config_a, config_b = shared_journal(tmp_path, sandbox, [{"name": "shared", "inbox": str(inbox)}], ["A", "B"])
    journal = tmp_path / "shared" / "journal.sqlite3"
    a = ServiceProcess(config_a, tmp_path / "a.log")
    a.wait_log("this instance (A) works the feed (lease epoch 1)")
    b = ServiceProcess(config_b, tmp_path / "b.log")
    try:
        b.wait_log("instance A holds the feed's lease")
        drop(inbox, "big.csv", export("F", 4000))
        wait_until(lambda: len(sandbox.arrivals) >= 1000, 60, what="1,000 arrivals")
        a.signal(signal.SIGSTOP)  # frozen mid-delivery, its lease runs out
        stopped = time.monotonic()
        b.wait_log("this instance (B) works the feed (lease epoch 2)", 30)
        takeover = time.monotonic() - stopped
        resumed_at = len(sandbox.arrivals)
        wait_until(lambda: len(sandbox.arrivals) >= resumed_at + 500, 60, what="B sending")
        a.signal(signal.SIGCONT)
        a.wait_log("feed shared: lease lost: held as epoch 1 by A; now epoch 2 of B", 30)
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
        # A stays out of the feed while B holds it: a next file is B's too
        drop(inbox, "next.csv", export("G", 10))
        wait_until(lambda: (inbox / "archive" / "next.csv").exists(), 60, what="next.csv archived")
    finally:
        stop_all(a, b)
    print(f"\ntakeover of a frozen holder: {takeover:.2f} s (lease {LEASE_SECONDS:g} s); "
          f"duplicates: {sum(sandbox.duplicates.values())}")
    log_a = a.text()
    assert "this instance stopped working the feed before recording or moving anything more" in log_a, log_a
    assert "Traceback" not in log_a and "moved to error/" not in log_a and "failed (attempt" not in log_a, log_a
    # every event once, but for the requests A had on their way when it froze (accepted by Ropo
    # One, never recorded by A): B sends those again
    assert set(sandbox.accepted_ids) == ids("F", 4000) | ids("G", 10)
    assert sum(sandbox.duplicates.values()) <= MAX_IN_FLIGHT, sandbox.duplicates
    assert receipt(inbox / "outbox", "big.csv")["counts"]["accepted"] == 4000
    assert sorted(p.name for p in (inbox / "archive").iterdir()) == ["big.csv", "next.csv"]
    assert not list((inbox / "processing").iterdir())
    conn = sqlite3.connect(journal)
    try:
        assert conn.execute("SELECT name, state, owner FROM files ORDER BY id").fetchall() == [
            ("big.csv", "done", conn.execute("SELECT owner FROM files WHERE name = 'next.csv'").fetchone()[0]),
            ("next.csv", "done", conn.execute("SELECT owner FROM files WHERE name = 'next.csv'").fetchone()[0])]
        assert conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall() == [("accepted", 4010)]
        assert conn.execute("SELECT holder, epoch FROM leases").fetchall()[0][1] >= 2
    finally:
        conn.close()
    assert LEASE_SECONDS < 30  # the test's lease, short on purpose
