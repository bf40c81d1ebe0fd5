"""`retry` and `process` under the feed's lease (issue 10): real `run` services and real CLI
processes on one SQLite journal, the real sandbox counting what Ropo One received.

A retry is a request in the journal carried out by the feed's lease holder: the running service
(the CLI waits and prints the result), or the CLI itself under the lease when no instance holds
the feed. `process` takes the feed's lease, and is refused while a live service holds it."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch.sandbox.server import RawRequest, Sandbox
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_leases import LEASE_SECONDS, drop, rows, run_cli, stop_all
from tests.fixtures_pg import PgDatabase
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceProcess, export, ids, receipt, write_config

HOST = socket.gethostname()
REQUESTER = f"cli:{getpass.getuser()}@{HOST}"
DELIVERY = {"max_in_flight": 4, "max_attempts": 2, "backoff_base": 0.05, "backoff_cap": 0.2, "backoff_jitter": 0.0}
ALL_ACCEPTED = {"accepted": 5, "rejected": 0, "invalid": 0, "failed": 0, "duplicate": 0, "not_sent": 0, "pending": 0}
REQUEST_COLUMNS = "id, feed, file_id, requested_by, state, taken_by, counts, message"


@pytest.fixture
def apicode_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def configure(tmp_path: Path, sandbox: Sandbox, inbox: Path, **top: Any) -> tuple[Path, Path]:
    """The service file of instance A (one local feed) and its journal."""
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}], instance="A",
                          lease_seconds=LEASE_SECONDS, delivery={**DELIVERY, **top.pop("delivery", {})}, **top)
    return config, tmp_path / "var" / "journal.sqlite3"


def arrivals_per_id(sandbox: Sandbox) -> Counter[str | None]:
    return Counter(arrival.id for arrival in sandbox.arrivals)


def failed_file(sandbox: Sandbox, inbox: Path, config: Path) -> None:
    """r.csv (R-1..R-5) processed by `process` with R-2 failing twice: 4 accepted, 1 failed."""
    sandbox.set_faults(error_ids=["R-2"])
    path = inbox.parent / "r.csv"
    path.write_bytes(export("R", 5))
    done = run_cli("process", str(path), "--config", str(config), "--feed", "local")
    assert done.returncode == 1, done.stderr
    assert done.stdout == f"r.csv: 4 accepted, 1 failed\n  receipt: {inbox / 'outbox' / 'r.csv.receipt.csv'}\n"
    sandbox.set_faults()


def requests(journal: Path) -> list[tuple[Any, ...]]:
    return [(*row[:6], json.loads(row[6]) if row[6] else None, row[7])
            for row in rows(journal, f"SELECT {REQUEST_COLUMNS} FROM retry_requests ORDER BY id")]


# --------------------------------------------------------------------------- a running service does the sending


def test_retry_while_the_service_runs_is_carried_out_by_the_service_once(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    service = ServiceProcess(config, tmp_path / "a.log")
    try:
        service.wait_log("this instance (A) works the feed (lease epoch 1)")
        sandbox.set_faults(error_ids=["R-2"])
        drop(inbox, "r.csv", export("R", 5))
        wait_until(lambda: (inbox / "archive" / "r.csv").exists(), 30, what="r.csv archived")
        assert receipt(inbox / "outbox", "r.csv")["counts"]["failed"] == 1
        sandbox.set_faults()
        done = run_cli("retry", "--config", str(config))
        log = service.text()
    finally:
        stop_all(service)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"r.csv: 5 accepted\n  receipt: {inbox / 'outbox' / 'r.csv.receipt.csv'}\n"
    assert done.stderr == ("feed local: instance A holds the feed's lease and sends its failed events again; "
                           "waiting for it\n")
    assert arrivals_per_id(sandbox) == {"R-1": 1, "R-2": 3, "R-3": 1, "R-4": 1, "R-5": 1}  # 2 failed tries, 1 retry
    assert sandbox.duplicates == {} and set(sandbox.accepted_ids) == ids("R", 5)
    assert receipt(inbox / "outbox", "r.csv")["counts"] == {**ALL_ACCEPTED, "filtered": 0}
    assert requests(journal) == [(1, "local", 1, REQUESTER, "done", "A", ALL_ACCEPTED, None)]
    requested, started, finished = rows(journal, "SELECT requested_at, started_at, finished_at FROM retry_requests")[0]
    assert requested <= started <= finished
    assert f"feed local: retry request #1 (file #1, by {REQUESTER}): sending failed events again" in log
    assert "feed local: retry request #1: done (5 accepted)" in log


def test_a_request_and_the_services_own_retry_never_send_an_event_twice(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    """retry_failed_after 1 s: the service's periodic retry and the CLI's request race for one
    file; both run in the holder's feed thread, one after the other."""
    config, journal = configure(tmp_path, sandbox, inbox, delivery={"retry_failed_after": 1.0})
    service = ServiceProcess(config, tmp_path / "a.log")
    try:
        service.wait_log("this instance (A) works the feed (lease epoch 1)")
        sandbox.set_faults(error_ids=["R-2"])
        drop(inbox, "r.csv", export("R", 5))
        wait_until(lambda: (inbox / "archive" / "r.csv").exists(), 30, what="r.csv archived")
        sandbox.set_faults()
        done = run_cli("retry", "--config", str(config))
    finally:
        stop_all(service)
    assert done.returncode == 0, done.stderr
    outbox = inbox / "outbox"
    assert done.stdout in (f"r.csv: 5 accepted\n  receipt: {outbox / 'r.csv.receipt.csv'}\n",
                           "r.csv: not sent: no failed events any more (they were sent again meanwhile)\n")
    assert arrivals_per_id(sandbox) == {"R-1": 1, "R-2": 3, "R-3": 1, "R-4": 1, "R-5": 1}
    assert sandbox.duplicates == {}
    assert [row[4:6] for row in requests(journal)] == [("done", "A")]


def test_retry_that_the_service_does_not_get_to_in_time_stays_queued_and_runs_later(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    failed_file(sandbox, inbox, config)
    service = ServiceProcess(config, tmp_path / "a.log")
    try:
        service.wait_log("this instance (A) works the feed (lease epoch 2)")
        done = run_cli("retry", "--config", str(config), "--timeout", "0")
        wait_until(lambda: requests(journal)[0][4] == "done", 30, what="the request carried out by A")
    finally:
        stop_all(service)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "feed local: instance A holds the feed's lease and sends its failed events again; waiting for it\n"
        "retry request #1 (file #1 of feed local) is still waiting: A has not carried it out within 0 s; it stays "
        "queued and A carries it out when it gets to it\n")
    assert requests(journal) == [(1, "local", 1, REQUESTER, "done", "A", ALL_ACCEPTED, None)]
    assert arrivals_per_id(sandbox)["R-2"] == 3 and sandbox.duplicates == {}


# --------------------------------------------------------------------------- no service: the CLI holds the lease


def test_retry_without_a_service_runs_itself_under_the_feeds_lease(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    failed_file(sandbox, inbox, config)
    assert rows(journal, "SELECT holder, epoch FROM leases")[0][1] == 1  # process held it (epoch 1)
    seen: list[tuple[Any, ...]] = []
    checked = sandbox.request_hook

    def lease_while_sending(request: RawRequest) -> None:
        if request.path.endswith("/usageplace/event") and not seen:
            seen.extend((holder, epoch, expires > time.time())
                        for holder, epoch, expires in rows(journal, "SELECT holder, epoch, expires_at FROM leases"))
        if checked is not None:
            checked(request)

    sandbox.request_hook = lease_while_sending
    done = run_cli("retry", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == (f"r.csv: 5 accepted\n  receipt: {inbox / 'outbox' / 'r.csv.receipt.csv'}\n",
                                          "")
    (holder, epoch, live), = seen
    assert holder.startswith(f"retry:{HOST}:") and holder != f"retry:{HOST}:{os.getpid()}"
    assert (epoch, live) == (2, True)  # a new tenure, held while it sent
    assert [(row[0], row[1], row[2] <= time.time()) for row in rows(journal, "SELECT holder, epoch, expires_at FROM leases")] == [
        (holder, 2, True)]  # released at the end
    assert rows(journal, f"SELECT stopped_at IS NOT NULL FROM instances WHERE name = '{holder}'") == [(1,)]
    assert requests(journal) == [(1, "local", 1, REQUESTER, "done", holder, ALL_ACCEPTED, None)]
    assert (inbox / ".usageplace-batch.lease").exists()
    assert arrivals_per_id(sandbox) == {"R-1": 1, "R-2": 3, "R-3": 1, "R-4": 1, "R-5": 1}
    assert sandbox.duplicates == {}
    assert receipt(inbox / "outbox", "r.csv")["counts"] == {**ALL_ACCEPTED, "filtered": 0}


def test_two_retries_at_once_send_each_failed_event_once(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    failed_file(sandbox, inbox, config)
    sandbox.set_faults(latency_ms=300)  # the first one is still sending while the second asks
    command = [sys.executable, "-m", "batch", "retry", "--config", str(config)]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=60) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    assert sorted(out for out, _ in outputs) == [
        "r.csv: 5 accepted\n  receipt: " + str(inbox / "outbox" / "r.csv.receipt.csv") + "\n",
        "r.csv: not sent: no failed events any more (they were sent again meanwhile)\n"]
    assert arrivals_per_id(sandbox) == {"R-1": 1, "R-2": 3, "R-3": 1, "R-4": 1, "R-5": 1}
    assert sandbox.duplicates == {}
    recorded = requests(journal)
    assert [row[:5] for row in recorded] == [(1, "local", 1, REQUESTER, "done"), (2, "local", 1, REQUESTER, "done")]
    assert all(row[5].startswith(f"retry:{HOST}:") for row in recorded)
    results = {row[7]: row[6] for row in recorded}
    assert results == {None: ALL_ACCEPTED,
                       "no failed events any more (they were sent again meanwhile)": dict.fromkeys(ALL_ACCEPTED, 0)}


def test_retry_of_a_file_without_failed_events_records_nothing(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    failed_file(sandbox, inbox, config)
    assert run_cli("retry", "--config", str(config)).returncode == 0
    again = run_cli("retry", "--config", str(config), "--file-id", "1")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "no failed events to retry\n")
    assert len(requests(journal)) == 1


# --------------------------------------------------------------------------- process


def test_process_is_refused_while_a_live_service_holds_the_feed(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    config, journal = configure(tmp_path, sandbox, inbox)
    path = tmp_path / "n.csv"
    path.write_bytes(export("N", 3))
    service = ServiceProcess(config, tmp_path / "a.log")
    try:
        service.wait_log("this instance (A) works the feed (lease epoch 1)")
        refused = run_cli("process", str(path), "--config", str(config))
    finally:
        stop_all(service)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (f"error: feed local is worked by instance A, which holds its lease: drop n.csv into the "
                              f"feed's inbox ({inbox}) and that instance processes it, or stop that instance and run "
                              "process again\n")
    assert sandbox.arrivals == [] and rows(journal, "SELECT count(*) FROM files") == [(0,)]
    done = run_cli("process", str(path), "--config", str(config))  # the service stopped: its lease is released
    assert done.returncode == 0, done.stderr
    assert rows(journal, "SELECT holder LIKE 'process:%', epoch FROM leases") == [(1, 2)]
    assert set(sandbox.accepted_ids) == ids("N", 3)


def test_retry_on_a_postgresql_journal_is_carried_out_by_the_service(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None, pg_database: PgDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The several-hosts setup: the service and the CLI share a PostgreSQL journal and its leases."""
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    config, _ = configure(tmp_path, sandbox, inbox, journal=pg_database.uri)
    failed_file(sandbox, inbox, config)
    service = ServiceProcess(config, tmp_path / "a.log")
    try:
        service.wait_log("this instance (A) works the feed (lease epoch 2)")
        done = run_cli("retry", "--config", str(config), "--file-id", "1")
    finally:
        stop_all(service)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"r.csv: 5 accepted\n  receipt: {inbox / 'outbox' / 'r.csv.receipt.csv'}\n"
    with pg_database.connect() as conn:  # type: ignore[attr-defined]
        recorded = conn.execute(f"SELECT {REQUEST_COLUMNS} FROM retry_requests").fetchall()
    assert [(*row[:6], json.loads(row[6]), row[7]) for row in recorded] == [
        (1, "local", 1, REQUESTER, "done", "A", ALL_ACCEPTED, None)]
    assert arrivals_per_id(sandbox) == {"R-1": 1, "R-2": 3, "R-3": 1, "R-4": 1, "R-5": 1}
    assert sandbox.duplicates == {}


# --------------------------------------------------------------------------- the console's API


def test_a_feed_wide_request_through_the_api_retries_every_file_of_the_feed(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    """What the console does: request_retry(feed=...) returns at once; await_requests carries it
    out under the feed's lease (no service runs) and the journal holds the result per file."""
    from batch.config.service import load_service_config
    from batch.service.retrying import FileResult, await_requests, request_retry
    from batch.service.runtime import Runtime

    config, journal = configure(tmp_path, sandbox, inbox)
    failed_file(sandbox, inbox, config)
    sandbox.set_faults(error_ids=["S-1"])
    second = tmp_path / "s.csv"
    second.write_bytes(export("S", 2))
    assert run_cli("process", str(second), "--config", str(config)).returncode == 1
    sandbox.set_faults()
    with Runtime(load_service_config(config)) as runtime:
        ids_ = request_retry(runtime.journal, runtime.config, requested_by="console:admin", feed="local")
        assert ids_ == [1]
        waiting = runtime.journal.get_retry_request(1)
        assert (waiting.feed, waiting.file_id, waiting.requested_by, waiting.state) == (
            "local", None, "console:admin", "waiting")
        awaited = await_requests(runtime, ids_, timeout=60, kind="console")
        assert [request.id for request in awaited.finished] == [1] and awaited.waiting == []
        request = runtime.journal.retry_requests(feed="local", limit=1)[0]
        assert request == awaited.finished[0]
        assert request.state == "done" and request.taken_by is not None
        assert re.fullmatch(f"console:{re.escape(HOST)}:{os.getpid()}(:[0-9]+)?", request.taken_by)
        assert request.counts == {**ALL_ACCEPTED, "accepted": 7}
        assert [FileResult.from_json(one) for one in request.files] == [
            FileResult(1, "r.csv", "done", {**ALL_ACCEPTED, "filtered": 0}, 0, None,
                       str(inbox / "outbox" / "r.csv.receipt.csv")),
            FileResult(2, "s.csv", "done", {**ALL_ACCEPTED, "accepted": 2, "filtered": 0}, 0, None,
                       str(inbox / "outbox" / "s.csv.receipt.csv"))]
        assert request_retry(runtime.journal, runtime.config, requested_by="console:admin", feed="local") == []
    assert sandbox.duplicates == {}
    assert rows(journal, "SELECT count(*) FROM retry_requests") == [(1,)]


# --------------------------------------------------------------------------- a holder that dies in the middle


def test_a_request_left_running_by_a_killed_service_is_carried_out_by_the_next_holder(
        tmp_path: Path, sandbox: Sandbox, inbox: Path, apicode_env: None) -> None:
    delivery = {**DELIVERY, "breaker_threshold": 1000}  # every event fails: no holding for an outage here
    config, journal = configure(tmp_path, sandbox, inbox, delivery=delivery)
    sandbox.set_faults(error_ids=sorted(ids("B", 40)))
    path = tmp_path / "big.csv"
    path.write_bytes(export("B", 40))
    assert run_cli("process", str(path), "--config", str(config)).returncode == 1  # 40 failed
    sandbox.set_faults(latency_ms=150)
    first = ServiceProcess(config, tmp_path / "a.log")
    second: ServiceProcess | None = None
    try:
        first.wait_log("this instance (A) works the feed (lease epoch 2)")
        asker = subprocess.Popen([sys.executable, "-m", "batch", "retry", "--config", str(config)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent_before = len(sandbox.arrivals)
        wait_until(lambda: len(sandbox.arrivals) >= sent_before + 8, 30, what="the retry under way")
        first.kill()
        assert requests(journal)[0][4:6] == ("running", "A")
        config_b = write_config(tmp_path / "b", sandbox, [{"name": "local", "inbox": str(inbox)}], instance="B",
                                lease_seconds=LEASE_SECONDS, delivery=delivery, journal=str(journal))
        second = ServiceProcess(config_b, tmp_path / "b.log")  # takes the feed over at once: A's pid is gone
        out, err = asker.communicate(timeout=60)
        log = second.text()
    finally:
        stop_all(first, *([second] if second else []))
    assert asker.returncode == 0, err
    assert out == f"big.csv: 40 accepted\n  receipt: {inbox / 'outbox' / 'big.csv.receipt.csv'}\n"
    (_, _, _, _, state, taken_by, counts, message), = requests(journal)
    # B, or the waiting retry itself had A's lease expired first (a slow start of B)
    assert taken_by == "B" or taken_by.startswith(f"retry:{HOST}:"), taken_by
    assert (state, counts, message) == ("done", {**ALL_ACCEPTED, "accepted": 40}, None)
    assert "1 retry request(s) left running by an instance that stopped; carrying them out again" in log + err
    assert set(sandbox.accepted_ids) == ids("B", 40)
    assert sum(sandbox.duplicates.values()) <= 4  # at most max_in_flight were on their way at the kill
