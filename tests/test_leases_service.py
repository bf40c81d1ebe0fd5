"""Several `run` processes on one inbox (issue 10 points 1, 3, 4): real subprocesses, the real
sandbox (it records every event it received), real SQLite journals, a local folder and a real
sshd. Two journals on one inbox (two hosts with SQLite) never both work a feed; a file another
journal's instance left waits for a handover; on one shared journal the survivor of a SIGKILL
takes the feed over after the lease; feeds spread over instances."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures_http import APICODE_ENV
from tests.fixtures_leases import (
    LEASE_SECONDS,
    MAX_IN_FLIGHT,
    drop,
    feed_of,
    rows,
    run_cli,
    shared_journal,
    status_text,
    stop_all,
    two_journals,
)
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceProcess, export, ids, receipt, write_config

pytestmark = pytest.mark.slow  # several service processes and thousands of events

@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


# --------------------------------------------------------------------------- two journals, one inbox


@pytest.mark.parametrize("where", ["local", "sftp"])
def test_two_journals_on_one_inbox_send_nothing_twice(where: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                      sandbox, apicode_env) -> None:
    """The issue's case: A claims a 4,000-event file, B (its own journal) starts while A sends.
    B leaves the feed alone (one log line, a status note); the sandbox gets every event once."""
    sandbox.set_faults(latency_ms=2)
    feed, inbox = feed_of(where, request, tmp_path)
    config_a, config_b = two_journals(tmp_path, sandbox, feed)
    a = ServiceProcess(config_a, tmp_path / "a.log")
    b: ServiceProcess | None = None
    try:
        a.wait_log("this instance (A) works the feed (lease epoch 1)")
        drop(inbox, "big.csv", export("W", 4000))
        wait_until(lambda: len(sandbox.arrivals) >= 500, 60, what="500 arrivals")
        b = ServiceProcess(config_b, tmp_path / "b.log")
        b.wait_log("feed shared: not worked by this instance: the inbox's lease marker says instance A")
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
        drop(inbox, "next.csv", export("N", 10))  # A goes on working the feed; B still leaves it alone
        wait_until(lambda: (inbox / "archive" / "next.csv").exists(), 60, what="next.csv archived")
        status = status_text(config_b)
        refused = run_cli("handover", "--config", str(config_b), "--feed", "shared")
    finally:
        stop_all(a, *([b] if b else []))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: feed shared: instance A (host "), refused.stderr
    assert "holds the feed until " in refused.stderr and refused.stderr.endswith(
        "; stop it first (its lease then expires), then run handover again\n"), refused.stderr
    assert sandbox.duplicates == {}
    assert len(sandbox.arrivals) == 4010 and set(sandbox.accepted_ids) == ids("W", 4000) | ids("N", 10)
    assert receipt(inbox / "outbox", "big.csv")["counts"]["accepted"] == 4000
    assert rows(tmp_path / "host-b" / "var" / "journal.sqlite3", "SELECT count(*) FROM files") == [(0,)]
    line = next(text for text in b.text().splitlines() if "not worked by this instance" in text)
    assert b.text().count("not worked by this instance") == 1, b.text()
    journal_a = tmp_path / "host-a" / "var" / "journal.sqlite3"
    assert ("the inbox's lease marker says instance A (host " in line
            and f"with another journal ({journal_a} on " in line
            and "this instance leaves it alone: several hosts need one shared PostgreSQL journal "
                "(journal: postgresql://...)" in line), line
    assert ("shared: worked by instance A on" in status and f"with another journal ({journal_a}); instances of "
            "this journal leave it alone: several hosts need one shared PostgreSQL journal" in status), status


def test_a_file_another_journal_left_waits_for_a_handover(request: pytest.FixtureRequest, tmp_path: Path, sandbox,
                                                          apicode_env) -> None:
    """A is killed mid-file; B (its own journal) does not resume the file blindly when A's lease
    has expired: log and status say who left it and how to hand it over; after the marker is
    removed (the documented step) B resumes it."""
    sandbox.set_faults(latency_ms=2)
    feed, inbox = feed_of("local", request, tmp_path)
    config_a, config_b = two_journals(tmp_path, sandbox, feed)
    config_b = write_config(tmp_path / "host-b", sandbox, [feed], instance="B", lease_seconds=LEASE_SECONDS,
                            metrics={"host": "127.0.0.1", "port": 0})
    a = ServiceProcess(config_a, tmp_path / "a.log")
    a.wait_log("this instance (A) works the feed (lease epoch 1)")
    drop(inbox, "big.csv", export("H", 4000))
    wait_until(lambda: len(sandbox.arrivals) >= 500, 60, what="500 arrivals")
    a.kill()
    sent_by_a = len(sandbox.arrivals)
    b = ServiceProcess(config_b, tmp_path / "b.log")
    try:
        b.wait_log("feed shared: not worked by this instance: big.csv in processing/ was left by instance A", 60)
        assert len(sandbox.arrivals) == sent_by_a and (inbox / "processing" / "big.csv").exists()
        status = status_text(config_b)
        assert ("shared: big.csv left in processing/ by instance A on" in status
                and "usageplace-batch handover --config CONFIG --feed shared" in status), status
        line = next(text for text in b.text().splitlines() if "was left by instance A" in text)
        assert ("whose lease expired at " in line and "it is not resumed here without an operator: to hand it "
                f"over: make sure the instance named in {inbox}/.usageplace-batch.lease is not running, then run "
                "`usageplace-batch handover --config CONFIG --feed shared` (or remove that file); this instance "
                "then resumes the file, and events the other instance sent already are sent again (its journal is "
                "not this one)" in line), line
        url = b.text().split("health and metrics at ")[1].split(" and /metrics")[0]
        health = requests.get(url, timeout=10)
        assert health.status_code == 503
        detail = health.json()["feeds"]["shared"]
        assert detail["state"] == "handover" and detail["problem"].startswith(
            "waits for an operator: big.csv in processing/ was left by instance A"), detail
        handed = run_cli("handover", "--config", str(config_b), "--feed", "shared")
        assert handed.returncode == 0, handed.stderr
        assert handed.stdout.startswith("feed shared: removed the lease marker of instance A (host ")
        assert handed.stdout.endswith("; an instance of this journal resumes big.csv from processing/ and sends "
                                      "again what A had sent of it\n"), handed.stdout
        b.wait_log("this instance (B) works the feed (lease epoch 1)", 30)
        assert json.loads((inbox / ".usageplace-batch.lease").read_text())["instance"] == "B"  # B's marker now
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
    finally:
        stop_all(b)
    assert set(sandbox.accepted_ids) == ids("H", 4000)
    # the price of two journals, said in the hint: what A had sent goes out again
    assert 0 < sum(sandbox.duplicates.values()) <= sent_by_a


# --------------------------------------------------------------------------- one shared journal


def test_survivor_takes_a_killed_instances_feed_over(tmp_path: Path, sandbox, apicode_env) -> None:
    """Shared journal: SIGKILL the holder mid-file; the other instance takes the feed (at once:
    the holder was a process of this host that is gone) and finishes the file from the journal
    (accepted events are not sent again)."""
    sandbox.set_faults(latency_ms=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config_a, config_b = shared_journal(tmp_path, sandbox, [{"name": "shared", "inbox": str(inbox)}], ["A", "B"])
    a = ServiceProcess(config_a, tmp_path / "a.log")
    a.wait_log("this instance (A) works the feed (lease epoch 1)")
    b = ServiceProcess(config_b, tmp_path / "b.log")
    try:
        b.wait_log("feed shared: not worked by this instance: instance A holds the feed's lease")
        drop(inbox, "big.csv", export("K", 4000))
        wait_until(lambda: len(sandbox.arrivals) >= 1000, 60, what="1,000 arrivals")
        a.kill()
        killed = time.monotonic()
        before = len(sandbox.arrivals)
        b.wait_log("this instance (B) works the feed (lease epoch 2)", 30)
        b.wait_log(f"feed shared: instance A held the lease, but its process (pid {a.proc.pid}) on this host no "
                   "longer runs: taken over at once")
        wait_until(lambda: len(sandbox.arrivals) > before, 30, what="the first event sent by B")
        takeover = min(arrival.started for arrival in sandbox.arrivals[before:]) - killed
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
    finally:
        stop_all(b)
    print(f"\ntakeover after SIGKILL: {takeover:.2f} s (lease {LEASE_SECONDS:g} s); "
          f"duplicates: {sum(sandbox.duplicates.values())}")
    assert set(sandbox.accepted_ids) == ids("K", 4000)
    assert sum(sandbox.duplicates.values()) <= MAX_IN_FLIGHT
    assert receipt(inbox / "outbox", "big.csv")["counts"]["accepted"] == 4000
    assert sorted(p.name for p in (inbox / "archive").iterdir()) == ["big.csv"]
    journal = tmp_path / "shared" / "journal.sqlite3"
    assert rows(journal, "SELECT name, state FROM files") == [("big.csv", "done")]
    assert rows(journal, "SELECT feed, holder, epoch FROM leases") == [("shared", "B", 2)]


def test_feeds_spread_over_instances(tmp_path: Path, sandbox, apicode_env) -> None:
    """Two feeds, one instance: it holds both; a second instance starts: one feed moves to it."""
    feeds = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        feeds.append({"name": name, "inbox": str(tmp_path / name)})
    config_a, config_b = shared_journal(tmp_path, sandbox, feeds, ["A", "B"])
    journal = tmp_path / "shared" / "journal.sqlite3"

    def holders() -> dict[str, str]:
        now = time.time()
        return {feed: holder for feed, holder, expires in rows(journal, "SELECT feed, holder, expires_at FROM leases")
                if expires > now}

    a = ServiceProcess(config_a, tmp_path / "a.log")
    b: ServiceProcess | None = None
    try:
        a.wait_log("watching 2 feed(s)")
        wait_until(lambda: holders() == {"one": "A", "two": "A"}, 30, what="A holding both feeds")
        b = ServiceProcess(config_b, tmp_path / "b.log")
        wait_until(lambda: sorted(holders().values()) == ["A", "B"], 30, what="one feed each")
        a.wait_log("given up for another instance (this one held more than its share, 1)")
        moved = next(feed for feed, holder in holders().items() if holder == "B")
        drop(tmp_path / moved, "x.csv", export("S", 5))
        wait_until(lambda: (tmp_path / moved / "archive" / "x.csv").exists(), 30, what="x.csv archived by B")
        status = status_text(config_a)
    finally:
        stop_all(a, *([b] if b else []))
    assert set(sandbox.accepted_ids) == ids("S", 5)
    assert f"{moved} " in status and "B, epoch 2, until" in status and "instances (last hour)" in status, status


def test_run_once_leaves_a_feed_another_instance_works(tmp_path: Path, sandbox, apicode_env) -> None:
    """A manual `run --once` while the service works the feed mid-file: with the same journal it
    leaves the feed to the holder and exits 0; with another journal (a second host) it exits 2
    and says why. Nothing is sent twice."""
    sandbox.set_faults(latency_ms=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    feed = {"name": "shared", "inbox": str(inbox)}
    config_a, config_b = shared_journal(tmp_path, sandbox, [feed], ["A", "B"])
    config_c = write_config(tmp_path / "host-c", sandbox, [feed], instance="C", lease_seconds=LEASE_SECONDS)
    a = ServiceProcess(config_a, tmp_path / "a.log")
    try:
        a.wait_log("this instance (A) works the feed (lease epoch 1)")
        drop(inbox, "big.csv", export("O", 3000))
        wait_until(lambda: len(sandbox.arrivals) >= 300, 60, what="300 arrivals")
        same = ServiceProcess(config_b, tmp_path / "b.log", "--once")
        assert same.wait(60) == 0, same.text()
        assert "feed shared: not worked by this instance: instance A holds the feed's lease" in same.text()
        other = ServiceProcess(config_c, tmp_path / "c.log", "--once")
        assert other.wait(60) == 2, other.text()
        assert "feed shared: not worked by this instance: the inbox's lease marker says instance A" in other.text()
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
    finally:
        stop_all(a)
    assert sandbox.duplicates == {} and set(sandbox.accepted_ids) == ids("O", 3000)
