"""An outage is one fault, not thousands of failures (issue 8, F6).

The real sandbox goes down mid-run (it stops listening: connections are refused, the ones
in flight are cut) and comes back on the same port; or it answers 503 to everything for a
while. Delivery holds the feed and probes; no event's attempt budget or the file's deadline
is spent on the outage; every event ends accepted; at most max_in_flight are sent twice.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.config.api import DeliverySettings
from batch.delivery.ropo import RopoClient
from batch.delivery.scheduler import CircuitBreaker, Outgoing, State, deliver
from batch.pipeline import FileOutcome
from batch.sandbox.server import Faults, Sandbox
from tests.fixtures_http import APICODE_ENV, settings_for
from tests.fixtures_pipeline import (
    Workspace,
    journal_events,
    make_rows,
    read_receipt,
    write_feed,
)
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceThread, export, ids, receipt, write_config

EVENT = {"usageplacecode": "643007572062443672", "time": "2024-01-04 10:41:40", "status": "disconnected"}


def events(count: int, places: int = 20) -> list[Outgoing]:
    return [Outgoing(n, f"6430075720624{n % places:05d}",
                     {**EVENT, "id": f"f6-{n}", "usageplacecode": f"6430075720624{n % places:05d}"})
            for n in range(count)]


@pytest.mark.slow
def test_F6_sandbox_down_mid_file_holds_delivery_and_every_event_is_accepted(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # the shipped delivery settings (max_attempts 5, backoff 1 s .. 60 s, 1 h deadline)
    sandbox = make_sandbox(faults=Faults(down_at_arrival=600, down_seconds=12.0))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 8, "max_attempts": 5, "backoff_base": 1.0,
                                          "backoff_cap": 60.0})
    rows = make_rows(1500, 300)
    started = time.monotonic()
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    took = time.monotonic() - started
    assert sandbox.outages == 1
    assert outcome.status == "done", outcome.message
    assert outcome.counts["accepted"] == 1500 and not outcome.counts.get("failed"), outcome.counts
    assert sorted(sandbox.accepted_ids) == sorted(r["id"] for r in rows)
    sent_twice = [i for i, n in Counter(a.id for a in sandbox.arrivals).items() if n > 1]
    assert len(sandbox.duplicates) <= 8 and len(sent_twice) <= 8 + 1, (sandbox.duplicates, sent_twice)
    assert {r["outcome"] for r in read_receipt(ws.receipt("a.csv"))} == {"accepted"}
    # charged attempts stay within the budget; the probes and held sends were free
    assert max(e.attempts for e in journal_events(ws)) < 10
    assert took < 12.0 + 15.0 + 10.0


def test_F6_5xx_on_every_event_holds_instead_of_failing_and_spares_the_deadline(
        make_sandbox: Callable[..., Sandbox], make_client: Callable[..., RopoClient]) -> None:
    sandbox = make_sandbox(faults=Faults(error_rate=1.0, error_status=503))
    client = make_client(settings_for(sandbox))
    settings = DeliverySettings(max_in_flight=4, max_attempts=2, backoff_base=0.01, backoff_cap=0.05,
                                deadline_seconds=1.0, breaker_threshold=3, breaker_probe_initial=0.1,
                                breaker_probe_max=0.2)
    threading.Timer(2.0, sandbox.set_faults).start()  # the API is back after 2 s, past the deadline
    outcomes: dict[Any, Any] = {}
    breaker = CircuitBreaker()
    report = deliver(events(60), client, settings, lambda item, o: outcomes.__setitem__(item.key, o),
                     breaker=breaker)
    assert {o.state for o in outcomes.values()} == {State.ACCEPTED}, Counter(o.state for o in outcomes.values())
    assert report.counts[State.FAILED] == 0 and not report.deadline_hit
    assert not breaker.is_open
    assert len(sandbox.accepted_ids) == 60


def test_F6_the_breaker_is_held_across_files_of_a_feed(
        make_sandbox: Callable[..., Sandbox], make_client: Callable[..., RopoClient]) -> None:
    sandbox = make_sandbox(faults=Faults(error_rate=1.0, error_status=502))
    client = make_client(settings_for(sandbox))
    settings = DeliverySettings(max_in_flight=2, max_attempts=2, backoff_base=0.01, backoff_cap=0.05,
                                breaker_threshold=2, breaker_probe_initial=0.3, breaker_probe_max=0.3)
    breaker = CircuitBreaker()
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    first: list[Any] = []
    deliver(events(10), client, settings, lambda item, o: first.append(o), stop=stop, breaker=breaker)
    assert {o.state for o in first} == {State.PENDING}  # held, not failed (max_attempts is 2)
    assert breaker.is_open and breaker.open_since is not None and "HTTP 502" in breaker.reason
    before = len(sandbox.arrivals)
    sandbox.set_faults()
    second: list[Any] = []
    deliver(events(10), client, settings, lambda item, o: second.append(o), breaker=breaker)
    assert {o.state for o in second} == {State.ACCEPTED} and not breaker.is_open
    assert len(sandbox.arrivals) - before == 10  # the first send of the next file was the probe


def test_F6_errors_about_one_event_still_fail_that_event_alone(
        make_sandbox: Callable[..., Sandbox], make_client: Callable[..., RopoClient]) -> None:
    # the 1st event's POSTs all answer 503 while the others are accepted: no outage, its budget is spent
    sandbox = make_sandbox(faults=Faults(error_ids=["f6-0"]))
    client = make_client(settings_for(sandbox))
    settings = DeliverySettings(max_in_flight=1, max_attempts=3, backoff_base=0.05, backoff_cap=0.05,
                                breaker_threshold=2)
    outcomes: dict[Any, Any] = {}
    breaker = CircuitBreaker()
    deliver(events(5, places=5), client, settings, lambda item, o: outcomes.__setitem__(item.key, o),
            breaker=breaker)
    assert outcomes[0].state is State.FAILED and outcomes[0].attempts == 3
    assert "gave up after 3 attempts: HTTP 503" in outcomes[0].message
    assert {outcomes[n].state for n in range(1, 5)} == {State.ACCEPTED}
    assert not breaker.is_open


def test_F6_breaker_threshold_null_keeps_the_old_behaviour(
        make_sandbox: Callable[..., Sandbox], make_client: Callable[..., RopoClient]) -> None:
    sandbox = make_sandbox(faults=Faults(error_rate=1.0))
    settings = DeliverySettings(max_in_flight=2, max_attempts=2, backoff_base=0.01, backoff_cap=0.01,
                                breaker_threshold=None)
    outcomes: list[Any] = []
    deliver(events(6), make_client(settings_for(sandbox)), settings, lambda item, o: outcomes.append(o))
    assert {o.state for o in outcomes} == {State.FAILED}


# --------------------------------------------------------------------------- the service: health, metrics, retry


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _drop(inbox: Path, name: str, data: bytes) -> None:
    (inbox / f".{name}.tmp").write_bytes(data)
    os.rename(inbox / f".{name}.tmp", inbox / name)


SERVICE_DELIVERY = {"max_in_flight": 4, "max_attempts": 2, "backoff_base": 0.05, "backoff_cap": 0.2,
                    "backoff_jitter": 0.0, "breaker_threshold": 3, "breaker_probe_initial": 0.2,
                    "breaker_probe_max": 0.5}


def test_F6_healthz_and_metrics_say_when_a_feed_holds_for_the_api(
        tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                          delivery=SERVICE_DELIVERY, metrics={"host": "127.0.0.1", "port": 0})
    sandbox.set_faults(error_rate=1.0, error_status=503)
    with ServiceThread(config) as runner:
        runner.wait_log("health and metrics at")
        base = "http://{}:{}".format(*runner.service.metrics_server.address)
        _drop(inbox, "held.csv", export("H", 20))
        runner.wait_log("Ropo One is unreachable")
        status, body = _get(f"{base}/healthz")
        health = json.loads(body)
        assert status == 503 and health["status"] == "unhealthy"
        assert health["feeds"]["local"]["state"] == "holding"
        problem = health["feeds"]["local"]["problem"]
        assert problem.startswith("api unreachable since 20"), problem
        assert problem.endswith("Z (HTTP 503: Service Unavailable: Injected by the sandbox)"), problem
        assert health["problems"] == [f"local: holding: {problem}"]
        assert 'usageplace_batch_api_holding{feed="local"} 1.0' in _get(f"{base}/metrics")[1]

        sandbox.set_faults()  # the API is back
        wait_until(lambda: (inbox / "archive" / "held.csv").exists(), 30, what="held.csv archived")
        status, body = _get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        metrics = _get(f"{base}/metrics")[1]
        assert 'usageplace_batch_api_holding{feed="local"} 0.0' in metrics
        assert 'usageplace_batch_inbox_unreachable{feed="local"} 0.0' in metrics
    assert receipt(inbox / "outbox", "held.csv")["counts"]["accepted"] == 20
    assert "Ropo One answers again; delivery resumes" in runner.logs.text


def test_F6_healthz_says_when_the_inbox_is_unreachable(
        tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "not-yet"
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox),
                                               "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 0.5}],
                          metrics={"host": "127.0.0.1", "port": 0})
    with ServiceThread(config) as runner:
        runner.wait_log("inbox problem")
        base = "http://{}:{}".format(*runner.service.metrics_server.address)
        status, body = _get(f"{base}/healthz")
        health = json.loads(body)
        assert status == 503, body
        assert health["feeds"]["local"]["state"] == "unavailable"
        problem = health["feeds"]["local"]["problem"]
        assert problem.startswith("inbox unreachable (") and problem.endswith("; last successful scan never")
        assert str(inbox) in problem
        assert health["feeds"]["local"]["alive"]
        assert 'usageplace_batch_inbox_unreachable{feed="local"} 1.0' in _get(f"{base}/metrics")[1]
        inbox.mkdir()
        wait_until(lambda: _get(f"{base}/healthz")[0] == 200, 30, what="healthy once the inbox exists")


def test_F6_failed_events_are_sent_again_by_the_service_after_retry_failed_after(
        tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                          delivery={**SERVICE_DELIVERY, "retry_failed_after": 1.0})
    sandbox.set_faults(error_ids=["R-2"])  # about this one event only: it fails alone
    with ServiceThread(config) as runner:
        _drop(inbox, "r.csv", export("R", 5))
        wait_until(lambda: (inbox / "archive" / "r.csv").exists(), 30, what="r.csv archived")
        first = receipt(inbox / "outbox", "r.csv")["counts"]
        assert (first["accepted"], first["failed"]) == (4, 1)
        sandbox.set_faults()
        runner.wait_log("r.csv: retried: done")
    assert receipt(inbox / "outbox", "r.csv")["counts"]["accepted"] == 5
    assert receipt(inbox / "outbox", "r.csv")["counts"]["failed"] == 0
    assert set(sandbox.accepted_ids) == ids("R", 5)
    assert "r.csv: sending its failed events again (delivery.retry_failed_after)" in runner.logs.text


def test_F6_a_failed_event_the_service_retries_and_the_api_then_rejects_lands_in_the_rejected_rows_file(
        tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's own retry rewrites the receipt *and* the rejected-rows file, from the archived original."""
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                          delivery={**SERVICE_DELIVERY, "retry_failed_after": 1.0})
    sandbox.set_faults(error_ids=["R-2"])
    data = export("R", 5)
    with ServiceThread(config) as runner:
        _drop(inbox, "r.csv", data)
        wait_until(lambda: (inbox / "archive" / "r.csv").exists(), 30, what="r.csv archived")
        assert not (inbox / "outbox" / "r.csv.rejected.csv").exists()  # failed is not rejected: nothing to fix yet
        sandbox.set_faults(reject_ids=["R-2"])
        runner.wait_log("r.csv: retried: done")
    summary = receipt(inbox / "outbox", "r.csv")
    assert (summary["counts"]["accepted"], summary["counts"]["rejected"]) == (4, 1)
    assert summary["rejected_rows"] == "r.csv.rejected.csv"
    lines = data.decode("utf-8").splitlines(keepends=True) if isinstance(data, bytes) else data.splitlines(True)
    rejected = (inbox / "outbox" / "r.csv.rejected.csv").read_text(encoding="utf-8")
    assert rejected == lines[0] + next(line for line in lines if "R-2" in line)
