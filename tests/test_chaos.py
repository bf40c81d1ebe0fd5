"""Chaos (issue 10 point 6): three `run` processes with their own names, hosts (a UTS namespace of
their own when the tests run as root, tests/fixtures_leases.as_host) and staging folders, on one
PostgreSQL journal (tests/fixtures_pg.py); three feeds: one on a real sshd, two in local folders;
30 files. While they work, the instances are killed (SIGKILL, then restarted) and frozen (SIGSTOP,
then SIGCONT, sometimes within the lease, sometimes long after) at random, and PostgreSQL is
restarted once. Afterwards:

- every event id was accepted by the sandbox, and the journal has every event accepted (none lost);
- duplicates: an event sent again was first sent under an epoch that ended by a kill, a freeze or
  the PostgreSQL restart; per feed and such epoch, at most max_in_flight (plus max_in_flight per
  PostgreSQL restart within the epoch);
- no feed was worked by two live instances at once: every request the sandbox received came on a
  connection (one process) whose instance held the lease of that event's feed at that moment
  (tenures from the instances' logs: "works the feed (lease epoch N)");
- per-usage-place order: the first accepted arrival of each event of a place follows file order
  (files of a feed by name/mtime, records in file order), across files and instances;
- every file is archived once with one receipt, one journal row `done`, and its receipt (rows
  and counts) agrees with the journal.

    CHAOS_TRIALS=5 python -m pytest tests/test_chaos.py -s    # more runs (seed, seed+1, ...)
    CHAOS_SEED=1234 CHAOS_ROUNDS=12 ...                        # replay a run / more disruptions
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from batch.fsutil import is_temporary_name
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_leases import LEASE_SECONDS, MAX_IN_FLIGHT, as_host, can_fake_hosts, stop_all
from tests.fixtures_pg import PgDatabase
from tests.fixtures_pipeline import read_receipt
from tests.service_helpers import ServiceProcess, export, write_config

pytestmark = pytest.mark.slow  # about a minute a trial

TRIALS = int(os.environ.get("CHAOS_TRIALS", "1"))
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "10"))  # disruptions (kills and freezes) per trial
SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
FILES_PER_FEED = 10
EVENTS_PER_FILE = 600
PLACES_PER_FEED = 50  # service_helpers.export: record i belongs to place base + i % 50
INSTANCES = ("A", "B", "C")
FEEDS = ("sftp", "local1", "local2")
TIMEOUT = 150.0  # for the whole run to finish: generous for a loaded 2-core machine

WORKS = "works the feed (lease epoch "
WOKEN_GRACE_SECONDS = 1.0  # after a SIGCONT: a request begun before the freeze reaches the sandbox


@dataclass
class Chaos:
    """What the test did, for the checks and the printout."""

    kills: int = 0
    freezes: int = 0
    exits: int = 0  # instances that ended by themselves (e.g. started while PostgreSQL was down)
    conts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # SIGCONTs (monotonic)
    pg_restarts: list[tuple[float, float]] = field(default_factory=list)  # (stopped, started) wall times
    events: list[str] = field(default_factory=list)


def file_name(feed: str, number: int) -> str:
    return f"{feed}-{number:02d}.csv"


def prefix(feed: str, number: int) -> str:
    return f"{feed}{number:02d}"


def place_base(feed: str) -> int:
    return 643007572062450000 + 1000 * FEEDS.index(feed)


def drop_in_order(folder: Path, feed: str, epoch: float) -> None:
    """The feed's files, oldest first (mtimes 10 s apart: SFTP shows whole seconds)."""
    for number in range(FILES_PER_FEED):
        name = file_name(feed, number)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(export(prefix(feed, number), EVENTS_PER_FILE, place_base=place_base(feed)))
        moment = epoch + 10 * number
        os.utime(tmp, (moment, moment))
        tmp.rename(folder / name)


def tenures(services: dict[str, list[ServiceProcess]]) -> dict[str, list[tuple[float, int, str]]]:
    """Per feed, from every instance's (JSON) log: (wall time, epoch, holder) of each takeover."""
    found: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for name, runs in services.items():
        for service in runs:
            for line in service.text().splitlines():
                if WORKS not in line or not line.startswith("{"):
                    continue
                entry = json.loads(line)
                message = entry["message"]  # feed F: this instance (N) works the feed (lease epoch E)
                feed = message.split(":", 1)[0].removeprefix("feed ")
                epoch = int(message.split(WORKS, 1)[1].rstrip(")"))
                at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
                found[feed].append((at, epoch, name))
    for feed, starts in found.items():
        starts.sort()
        epochs = [epoch for _, epoch, _ in starts]
        assert epochs == sorted(set(epochs)), f"feed {feed}: an epoch taken twice or out of order: {starts}"
    return found


def holder_at(starts: list[tuple[float, int, str]], moment: float) -> tuple[int, str]:
    current = (0, "nobody")
    for at, epoch, holder in starts:
        if at > moment:
            break
        current = (epoch, holder)
    return current


def feed_of_id(event_id: str) -> tuple[str, int, int]:
    """(feed, file number, record number) of an event id like local101-17."""
    head, record = event_id.rsplit("-", 1)
    return head[:-2], int(head[-2:]), int(record)


def pg_rows(database: PgDatabase, sql: str) -> list[tuple[Any, ...]]:
    with database.connect() as conn:  # type: ignore[attr-defined]
        return [tuple(row) for row in conn.execute(sql).fetchall()]


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("trial", range(TRIALS))
def test_three_instances_under_kills_freezes_and_a_postgresql_restart(
        trial: int, tmp_path: Path, sandbox, apicode_env, pg_database: PgDatabase, sshd, remote_inbox: Path) -> None:
    seed = SEED + trial
    rng = random.Random(seed)
    print(f"\nchaos trial {trial}: CHAOS_SEED={seed} CHAOS_ROUNDS={ROUNDS}")
    sandbox.set_faults(latency_ms=2, latency_jitter_ms=2)
    folders = {"sftp": remote_inbox, "local1": tmp_path / "local1", "local2": tmp_path / "local2"}
    folders["local1"].mkdir()
    folders["local2"].mkdir()
    feeds: list[dict[str, Any]] = [
        {"name": "sftp", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
         "known_hosts": str(sshd.known_hosts), "connect_timeout_seconds": 5, "io_timeout_seconds": 10,
         "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1},
        {"name": "local1", "inbox": str(folders["local1"])},
        {"name": "local2", "inbox": str(folders["local2"])},
    ]
    configs = {name: write_config(tmp_path / name, sandbox, feeds, instance=name, lease_seconds=LEASE_SECONDS,
                                  journal=pg_database.uri, staging_dir=str(tmp_path / name / "staging"),
                                  logging={"format": "json"}) for name in INSTANCES}
    hosts = can_fake_hosts()
    env = {"PGPASSWORD": pg_database.password}

    def start(name: str) -> ServiceProcess:
        wrap = as_host(f"host-{name.lower()}") if hosts else ()
        run = len(services[name])
        service = ServiceProcess(configs[name], tmp_path / f"{name}-{run}.log", env=env, wrap=wrap)
        services[name].append(service)
        return service

    services: dict[str, list[ServiceProcess]] = {name: [] for name in INSTANCES}
    chaos = Chaos()
    frozen: set[str] = set()
    pending: list[tuple[float, str, str]] = []  # (when, action, instance): restarts and SIGCONTs
    cluster = pg_database.cluster
    epoch = time.time() - 3600
    for feed in FEEDS:
        drop_in_order(folders[feed], feed, epoch)
    for name in INSTANCES:
        start(name)
    expected = {feed: [file_name(feed, n) for n in range(FILES_PER_FEED)] for feed in FEEDS}

    def finished() -> bool:
        return all(sorted(p.name for p in (folders[feed] / "archive").glob("*.csv")) == expected[feed]
                   if (folders[feed] / "archive").exists() else False for feed in FEEDS)

    def live_holders() -> list[str]:
        return [holder for holder, in pg_rows(pg_database, "SELECT holder FROM leases WHERE expires_at > "
                                                           "extract(epoch FROM clock_timestamp())")]

    pg_round = rng.randrange(2, max(3, ROUNDS - 1))
    rounds = 0
    next_round = time.monotonic() + rng.uniform(1.0, 3.0)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not finished():
            assert time.monotonic() < deadline, f"not finished after {TIMEOUT:g} s (seed {seed}): {chaos.events}"
            now = time.monotonic()
            for due in [entry for entry in pending if entry[0] <= now]:
                pending.remove(due)
                _, action, name = due
                if action == "restart":
                    start(name)
                else:
                    services[name][-1].signal(signal.SIGCONT)
                    chaos.conts[name].append(time.monotonic())
                    frozen.discard(name)
                chaos.events.append(f"{now:.1f} {action} {name}")
            for name in INSTANCES:  # as systemd's Restart=on-failure does
                ended = services[name][-1].proc.poll()
                if ended is not None and ended != -signal.SIGKILL and not any(n == name for _, _, n in pending):
                    chaos.exits += 1
                    pending.append((now + 1.0, "restart", name))
                    chaos.events.append(f"{now:.1f} {name} exited {ended}")
            if rounds < ROUNDS and now >= next_round:
                rounds += 1
                next_round = now + rng.uniform(1.0, 3.0)
                if rounds == pg_round and not all("watching 3 feed(s)" in services[name][-1].text()
                                                   for name in INSTANCES):
                    rounds -= 1  # not while an instance starts: it would end at once (and be restarted)
                elif rounds == pg_round:
                    stopped = time.time()
                    cluster.stop()  # every connection is cut; the instances pause, their leases lapse
                    time.sleep(rng.uniform(0.5, 2.0))
                    cluster.start()
                    chaos.pg_restarts.append((stopped, time.time()))
                    chaos.events.append(f"{now:.1f} postgresql restarted")
                    continue
                running = [name for name in INSTANCES
                           if services[name][-1].proc.poll() is None and name not in frozen]
                if len(running) < 2:
                    continue  # one instance always runs
                try:
                    holding = [name for name in live_holders() if name in running]
                except Exception:  # noqa: BLE001 - the journal restarting: pick any
                    holding = []
                victim = rng.choice(holding if holding and rng.random() < 0.8 else running)
                if rng.random() < 0.5:
                    services[victim][-1].kill()
                    chaos.kills += 1
                    pending.append((now + rng.uniform(0.2, 2.0), "restart", victim))
                    chaos.events.append(f"{now:.1f} SIGKILL {victim}")
                else:
                    services[victim][-1].signal(signal.SIGSTOP)
                    frozen.add(victim)
                    chaos.freezes += 1
                    pending.append((now + rng.uniform(0.5, 2.5 * LEASE_SECONDS), "cont", victim))
                    chaos.events.append(f"{now:.1f} SIGSTOP {victim}")
            time.sleep(0.05)
    finally:
        for name in frozen:
            services[name][-1].signal(signal.SIGCONT)
            chaos.conts[name].append(time.monotonic())
        stop_all(*(runs[-1] for runs in services.values()))
    print(f"chaos trial {trial}: {chaos.kills} kills, {chaos.freezes} freezes, {chaos.exits} exits, "
          f"{len(chaos.pg_restarts)} PostgreSQL restart(s); {'; '.join(chaos.events)}")
    check(sandbox, pg_database, folders, services, chaos)


def check(sandbox, database: PgDatabase, folders: dict[str, Path], services: dict[str, list[ServiceProcess]],
          chaos: Chaos) -> None:
    every_id = {f"{prefix(feed, n)}-{i}" for feed in FEEDS for n in range(FILES_PER_FEED)
                for i in range(1, EVENTS_PER_FILE + 1)}
    for runs in services.values():
        for service in runs:
            assert "Traceback" not in service.text(), service.text()[-5000:]
    # none lost: every id accepted by the sandbox, every event accepted in the journal
    arrivals = sorted(sandbox.arrivals, key=lambda a: a.seq)
    accepted = [a for a in arrivals if a.status == 200]
    assert {a.id for a in accepted} == every_id
    assert pg_rows(database, "SELECT state, count(*) FROM events GROUP BY state") == [("accepted", len(every_id))]

    # no feed worked by two live instances at once; duplicates only where an epoch ended badly
    starts = tenures(services)
    offset = time.time() - time.monotonic()  # the sandbox's arrival times are this process's monotonic clock
    connection_holder: dict[int, str] = {}
    woken: Counter[tuple[str, float, str]] = Counter()  # (instance, its SIGCONT, feed): requests finished late
    # a duplicate is charged to the epoch of the id's previous acceptance: that epoch ended before
    # its result was journaled (a resend whose own result is lost again is the next epoch's)
    last_epoch: dict[str, tuple[str, int]] = {}
    resent: Counter[tuple[str, int]] = Counter()
    for arrival in arrivals:
        if arrival.id is None:
            continue  # a body cut short by a kill
        feed = feed_of_id(arrival.id)[0]
        epoch, holder = holder_at(starts[feed], arrival.started + offset)
        owner = connection_holder.setdefault(arrival.connection, holder)
        if owner != holder:
            # only a request the instance had begun to send when it was frozen may reach the
            # sandbox after another took the feed: right after its SIGCONT, max_in_flight at most
            cont = next((c for c in chaos.conts[owner] if c <= arrival.started <= c + WOKEN_GRACE_SECONDS), None)
            before = [c for c in chaos.conts[owner] if c <= arrival.started]
            woke = f"its last SIGCONT {arrival.started - before[-1]:.2f} s before" if before else "never continued"
            assert cont is not None, (f"{arrival.id} (arrival {arrival.seq}) came from instance {owner}'s "
                                      f"connection while {holder} held feed {feed} (epoch {epoch}); {woke}")
            woken[owner, cont, feed] += 1
            assert woken[owner, cont, feed] <= MAX_IN_FLIGHT, (owner, feed, woken)
        if arrival.status != 200 or owner != holder:
            continue  # a woken request's duplicate is bounded above (per SIGCONT), not charged to an epoch
        if arrival.id in last_epoch:
            resent[last_epoch[arrival.id]] += 1
        last_epoch[arrival.id] = (feed, epoch)
    for (feed, epoch), count in resent.items():
        began = next(at for at, number, _ in starts[feed] if number == epoch)
        ended = next((at for at, number, _ in starts[feed] if number > epoch), float("inf"))
        # a restart that overlaps the epoch (also one that began before it and was not over yet)
        restarts = sum(1 for stopped, started in chaos.pg_restarts if stopped < ended and started > began)
        assert count <= MAX_IN_FLIGHT * (1 + restarts), (feed, epoch, count, restarts)
    print(f"duplicates per ended epoch (feed, epoch): {dict(resent)}; max_in_flight {MAX_IN_FLIGHT}; "
          f"epochs per feed: { {feed: len(s) for feed, s in starts.items()} }; requests that reached the sandbox "
          f"after their frozen sender lost the feed: {sum(woken.values())}")

    # per-usage-place order: first accepted arrivals of a place in file order, across files
    by_place: dict[str, list[tuple[int, int]]] = defaultdict(list)
    firsts: set[str] = set()
    for arrival in accepted:
        if arrival.id in firsts:
            continue
        firsts.add(arrival.id)
        feed, number, record = feed_of_id(arrival.id)
        by_place[f"{feed}/{arrival.usageplacecode}"].append((number, record))
    for place, order in by_place.items():
        assert order == sorted(order), f"place {place}: events out of file order: {order}"

    # every file archived once, one receipt, one journal row; the receipt agrees with the journal
    journal_files = pg_rows(database, "SELECT id, feed, name, state, n_accepted FROM files")
    assert sorted((feed, name, state) for _, feed, name, state, _ in journal_files) == sorted(
        (feed, file_name(feed, n), "done") for feed in FEEDS for n in range(FILES_PER_FEED))
    for file_id, feed, name, _, n_accepted in journal_files:
        inbox = folders[feed]
        assert n_accepted == EVENTS_PER_FILE
        assert not (inbox / "processing" / name).exists()
        assert (inbox / "archive" / name).exists()
        summary = json.loads((inbox / "outbox" / f"{name}.receipt.json").read_text())
        counts = dict(zip(("accepted", "rejected", "invalid", "failed", "duplicate", "not_sent", "pending"),
                          pg_rows(database, "SELECT n_accepted, n_rejected, n_invalid, n_failed, n_duplicate, "
                                            f"n_not_sent, n_pending FROM files WHERE id = {file_id}")[0]))
        assert {key: summary["counts"].get(key, 0) for key in counts} == counts, (name, summary["counts"])
        rows = read_receipt(inbox / "outbox" / f"{name}.receipt.csv")
        journaled = pg_rows(database, f"SELECT event_id, state FROM events WHERE file_id = {file_id} ORDER BY line")
        assert [(row["event_id"], row["outcome"]) for row in rows] == journaled
    for feed in FEEDS:
        # a receipt write killed half-way leaves its dot-named temporary, never published; the
        # next opening of the inbox removes it once stale (fsutil.remove_stale_temporaries)
        outbox = sorted(p.name for p in (folders[feed] / "outbox").iterdir() if not is_temporary_name(p.name))
        assert outbox == sorted(f"{file_name(feed, n)}.receipt.{kind}" for n in range(FILES_PER_FEED)
                                for kind in ("csv", "json")), outbox
        assert not list((folders[feed] / "processing").iterdir())
