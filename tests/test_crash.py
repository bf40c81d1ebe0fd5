"""Crash recovery: `usageplace-batch process` killed with SIGKILL at random moments, then rerun.

The client is a real subprocess; the sandbox runs in a subprocess of its own (so the test
process only watches) with a few milliseconds of latency, so that kills land mid-delivery.
Each trial: a fresh journal, 5,000 events (unique ids, 500 usage places), one or two kills at
a random number of events received, then a rerun to completion. Afterwards:

- every event id reached the sandbox and was accepted;
- the ids received more than once, per kill, are at most max_in_flight (only requests that
  were on their way, or answered but not yet journaled, when the process died are re-sent);
- the journal (one file, every event accepted) and the receipt (5,000 rows, all accepted)
  agree with the sandbox.

One trial kills during the reading/journaling phase, before any event was sent.

    CRASH_TRIALS=100 python -m pytest tests/test_crash.py -s     # a longer run
    CRASH_SEED=1234 ...                                          # replay a run
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from batch.sandbox.server import DEFAULT_APICODE, DEFAULT_CID
from tests.fixtures_pipeline import (
    Workspace,
    make_rows,
    read_receipt,
    write_feed,
    write_workspace,
)

pytestmark = pytest.mark.slow  # crash trials: a minute or more

EVENTS = 5000
PLACES = 500
MAX_IN_FLIGHT = 16
LATENCY_MS, JITTER_MS = 2.0, 3.0
TRIALS = int(os.environ.get("CRASH_TRIALS", "10"))
SEED = int(os.environ.get("CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
APICODE_ENV = "CRASH_TEST_APICODE"
TIMEOUT = 120.0  # seconds for any one wait: generous for a loaded 2-core machine


# --------------------------------------------------------------------------- the sandbox process


@dataclass
class RemoteSandbox:
    base_url: str
    process: subprocess.Popen[bytes]
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def root(self) -> str:
        return self.base_url.rsplit("/rest", 1)[0] + "/_sandbox/"

    def control(self, method: str, name: str, body: Any = None) -> Any:
        response = self.session.request(method, self.root + name, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def arrivals_count(self) -> int:
        return self.control("GET", "state")["arrivals"]

    def arrivals(self) -> list[dict[str, Any]]:
        return self.control("GET", "arrivals")

    def reset(self) -> None:
        self.control("POST", "reset")
        self.control("POST", "faults", {"latency_ms": LATENCY_MS, "latency_jitter_ms": JITTER_MS})


@pytest.fixture(scope="module")
def remote_sandbox() -> Iterator[RemoteSandbox]:
    process = subprocess.Popen([sys.executable, "-u", "-m", "batch.sandbox.server", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()  # it prints its base URL when listening
        assert url.startswith("http://127.0.0.1:"), url
        yield RemoteSandbox(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def feed_rows() -> list[dict[str, str]]:
    return make_rows(EVENTS, PLACES)  # record i belongs to place i % 500: 10 events a place


# --------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    number: int
    kills: int = 0
    kills_before_delivery: int = 0
    runs: int = 0
    duplicates_per_kill: list[int] = field(default_factory=list)
    seconds: float = 0.0


def start_process(ws: Workspace, path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, APICODE_ENV: DEFAULT_APICODE}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "batch", "process", str(path), "--config", str(ws.config)],
            env=env, stdout=out, stderr=subprocess.STDOUT)


def journal_has_file(path: Path) -> bool:
    """The process registered the file (begin_file committed): it is reading/journaling now."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def wait_until(condition: Any, process: subprocess.Popen[bytes], what: str) -> bool:
    """Poll until condition() (True) or the process ended (False)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)


def run_trial(number: int, rng: random.Random, sandbox: RemoteSandbox, root: Path,
              rows: list[dict[str, str]], before_delivery: bool) -> Trial:
    trial = Trial(number)
    started = time.monotonic()
    sandbox.reset()
    ws = write_workspace(root, sandbox.base_url, DEFAULT_CID, apicode_env=APICODE_ENV,
                         delivery={"max_in_flight": MAX_IN_FLIGHT, "backoff_base": 0.05,
                                   "backoff_cap": 0.5, "max_attempts": 10})
    path = write_feed(ws.inbox / "big.csv", rows)
    log = root / "process.log"
    boundaries: list[float] = []  # time.monotonic() at each rerun start (shared clock on Linux)
    planned = 1 + (rng.random() < 0.4)  # one or two kills
    attempts_before_delivery = 0
    while True:
        trial.runs += 1
        process = start_process(ws, path, log)
        want_kill = trial.kills < planned or (before_delivery and not trial.kills_before_delivery)
        if want_kill and before_delivery and not trial.kills_before_delivery and attempts_before_delivery < 5:
            # kill while reading/journaling: as soon as the file is registered, plus 0-30 ms
            attempts_before_delivery += 1
            if wait_until(lambda: journal_has_file(ws.journal), process, "the file registration"):
                time.sleep(rng.uniform(0, 0.03))
                if process.poll() is None:
                    sent = sandbox.arrivals_count()
                    kill(process)
                    trial.kills += 1
                    if sent == 0 and sandbox.arrivals_count() == 0:
                        trial.kills_before_delivery += 1
                    boundaries.append(time.monotonic())
                    continue
        elif want_kill:
            base = sandbox.arrivals_count()
            accepted_before = sum(1 for a in sandbox.arrivals() if a["status"] == 200) if base else 0
            remaining = EVENTS - accepted_before
            if remaining > 2:
                target = base + rng.randint(1, remaining - 1)
                if wait_until(lambda: sandbox.arrivals_count() >= target, process,  # noqa: B023 - waited for at once
                              f"{target} arrivals"):
                    kill(process)
                    trial.kills += 1
                    boundaries.append(time.monotonic())
                    continue
        code = process.wait(TIMEOUT)
        assert code == 0, f"trial {number}: process exited {code}:\n{log.read_text()[-3000:]}"
        break
    check_trial(trial, sandbox, ws, rows, boundaries)
    trial.seconds = time.monotonic() - started
    return trial


def check_trial(trial: Trial, sandbox: RemoteSandbox, ws: Workspace, rows: list[dict[str, str]],
                boundaries: list[float]) -> None:
    ids = [row["id"] for row in rows]
    arrivals = sandbox.arrivals()
    # every event reached the sandbox and was accepted there
    accepted = {a["id"] for a in arrivals if a["status"] == 200}
    assert accepted == set(ids), f"trial {trial.number}: {len(set(ids) - accepted)} events never accepted"
    # the only other answers: 400 to a request body cut short by the kill (no id readable)
    cut = [a for a in arrivals if a["status"] != 200]
    assert all(a["status"] == 400 and a["id"] is None for a in cut), cut
    assert len(cut) <= len(boundaries) * MAX_IN_FLIGHT
    arrivals = [a for a in arrivals if a["status"] == 200]
    # duplicates: per run segment. A run is known by its connections: each connection belongs
    # to the run in which its first request arrived, so a request the killed run had sent but
    # the server (slowed by a busy machine) read only after the kill still counts as that run's.
    def segment_at(instant: float) -> int:
        return sum(instant >= b for b in boundaries)

    opened: dict[int, float] = {}
    for arrival in arrivals:
        connection = arrival["connection"]
        opened[connection] = min(opened.get(connection, arrival["started"]), arrival["started"])
    segments: list[set[str]] = [set() for _ in range(len(boundaries) + 1)]
    for arrival in arrivals:
        segment = segment_at(opened[arrival["connection"]])
        assert arrival["id"] not in segments[segment], (
            f"trial {trial.number}: {arrival['id']} sent twice by one run")
        segments[segment].add(arrival["id"])
    seen: set[str] = set()
    for run_ids in segments:
        if seen:
            trial.duplicates_per_kill.append(len(run_ids & seen))
        seen |= run_ids
    total_duplicates = len(arrivals) - len(set(a["id"] for a in arrivals))
    assert sum(trial.duplicates_per_kill) == total_duplicates
    assert max(trial.duplicates_per_kill, default=0) <= MAX_IN_FLIGHT, trial
    # the journal agrees: one file (resumed after every kill), done, every event accepted
    with sqlite3.connect(f"file:{ws.journal}?mode=ro", uri=True) as conn:
        files = conn.execute("SELECT id, state, n_accepted FROM files").fetchall()
        assert len(files) == 1 and files[0][1:] == ("done", EVENTS), files
        states = dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
        assert states == {"accepted": EVENTS}, states
        journaled = {row[0] for row in conn.execute("SELECT event_id FROM events")}
    assert journaled == accepted
    # the receipt agrees
    receipt = read_receipt(ws.receipt("big.csv"))
    assert [r["event_id"] for r in receipt] == ids
    assert {r["outcome"] for r in receipt} == {"accepted"}
    assert ws.summary("big.csv")["counts"]["accepted"] == EVENTS


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(120 + 20 * TRIALS)
def test_sigkill_at_random_moments_loses_nothing_and_resends_at_most_the_in_flight(
        remote_sandbox: RemoteSandbox, feed_rows: list[dict[str, str]], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    trials = [
        run_trial(number, rng, remote_sandbox, tmp_path / f"trial{number}", feed_rows,
                  before_delivery=number == 0)
        for number in range(TRIALS)
    ]
    kills = sum(t.kills for t in trials)
    per_kill = [d for t in trials for d in t.duplicates_per_kill]
    print(f"\ncrash test (seed {SEED}): {len(trials)} trials, {kills} kills "
          f"({sum(t.kills_before_delivery for t in trials)} before delivery), "
          f"{sum(t.runs for t in trials)} runs; duplicates per kill: max {max(per_kill, default=0)}, "
          f"mean {sum(per_kill) / max(1, len(per_kill)):.1f}, total {sum(per_kill)}; "
          f"{sum(t.seconds for t in trials):.1f} s")
    assert kills >= TRIALS
    assert sum(t.kills_before_delivery for t in trials) >= 1, "no kill landed before delivery"
