"""Delivery throughput: 20,000 events through the `process` path against the sandbox.

    python bench/bench_delivery.py                 # 20,000 events, 0 ms and 50 ms latency
    python bench/bench_delivery.py --events 5000   # a quicker look

The sandbox runs in its own process (`python -m batch.sandbox.server --port 0`), so client and
server do not share a GIL; latency is injected through its /_sandbox/faults control.

What is measured (each on a fresh journal):

- process:  Processor.process, in this process — the function the `process` command and the
            service call, built by Runtime from a service.yaml exactly as the command builds
            it (read + map + journal + deliver + receipt; interpreter start-up excluded).
            max_in_flight 16. The rate is events / wall time of process().
- naive:    what a user would write instead: pandas.read_csv, then for each row a dict and
            `requests.post(url, json=...)` — no session (a new connection per event), one
            after another. At 50 ms it runs on a sample (default 300 rows) and the rate is
            extrapolated; the output says so.
- bare:     a requests.Session POSTing pre-built bodies one after another: the floor of any
            requests-based client (at 0 ms only).

- rate limit: deliver() with ``rate_limit`` 200/s over 400 events at 0 ms: the achieved rate
            as a share of the limit (the test suite checks the pacing on a test clock only;
            real-time bounds flake on a busy machine, so they live here).

Targets: at 50 ms, process >= 90 % of max_in_flight / 0.05 (320/s) and >= 14x naive; at 0 ms,
process >= 60 % of the bare Session loop; the rate limit between 90 % and 101 % of itself.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batch.config.service import load_service_config  # noqa: E402
from batch.pipeline import Progress  # noqa: E402
from batch.sandbox.server import DEFAULT_APICODE, DEFAULT_CID  # noqa: E402
from batch.service.runtime import Runtime  # noqa: E402

MAX_IN_FLIGHT = 16
APICODE_ENV = "BENCH_DELIVERY_APICODE"
MAPPING = """\
name: bench
format: csv
csv:
  encoding: utf-8
  delimiter: ","
fields:
  id: {column: id, required: true}
  usageplacecode: {column: place}
  customernumber: {column: customer}
  contract_no: {column: contract}
  time:
    column: time
    formats: ["%Y-%m-%d %H:%M:%S"]
  status:
    column: status
    map: {K: disconnected, KY: connected, EK: not_disconnected}
  description: {column: description}
invoices:
  mode: columns
  invoicenumber: {column: invoices, split: "|"}
  jobid: {column: jobs, split: "|"}
"""
COLUMNS = ("id", "place", "customer", "contract", "time", "status", "description", "invoices", "jobs")
STATUS = {"K": "disconnected", "KY": "connected", "EK": "not_disconnected"}


# --------------------------------------------------------------------------- data and sandbox


def generate(path: Path, events: int, places: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        for i in range(events):
            writer.writerow([
                f"EV-{i:08d}", f"6430075720{i % places:08d}", f"A{100000 + i % 9973}", f"S{i % 7777}b",
                f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}",
                ("K", "KY", "EK")[i % 3], f"Event number {i} of the nightly export",
                f"{5000000 + i}|{6000000 + i}", f"{100 + i % 9000}|{200 + i % 9000}",
            ])


class SandboxProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "batch.sandbox.server", "--port", "0"],
                                        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().decode().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the sandbox did not start: {self.base_url!r}")
        self.control_url = self.base_url.rsplit("/rest", 1)[0] + "/_sandbox/"

    def control(self, method: str, name: str, body: Any = None) -> Any:
        response = requests.request(method, self.control_url + name, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def reset(self, latency_ms: float) -> None:
        self.control("POST", "reset")
        self.control("POST", "faults", {"latency_ms": latency_ms})

    def accepted(self) -> int:
        return self.control("GET", "state")["accepted"]

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --------------------------------------------------------------------------- the three clients


def run_process(sandbox: SandboxProcess, data: Path, work: Path, latency_ms: float, events: int) -> dict[str, float]:
    """The real path: Runtime from a service.yaml, then Processor.process (as `process` does)."""
    sandbox.reset(latency_ms)
    work.mkdir(parents=True)
    (work / "bench.yaml").write_text(MAPPING, encoding="utf-8")
    (work / "inbox").mkdir()
    config = {
        "api": {"base_url": sandbox.base_url, "cid": DEFAULT_CID, "apicode": "${" + APICODE_ENV + "}"},
        "delivery": {"max_in_flight": MAX_IN_FLIGHT},
        "journal": "journal.sqlite3",
        "feeds": [{"name": "bench", "mapping": "bench.yaml", "inbox": "inbox", "min_age_seconds": 0}],
    }
    (work / "service.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    os.environ[APICODE_ENV] = DEFAULT_APICODE
    marks: dict[str, float] = {}

    def delivery_started(_: int) -> None:
        marks.setdefault("delivery", time.perf_counter())

    progress = Progress(on_delivery_start=delivery_started)
    with Runtime(load_service_config(work / "service.yaml")) as runtime:
        started = time.perf_counter()
        outcome = runtime.processor.process(data, runtime.feeds["bench"], work, progress=progress)
        elapsed = time.perf_counter() - started
    if outcome.counts.get("accepted") != events or sandbox.accepted() != events:
        raise RuntimeError(f"not every event was accepted: {outcome.counts}, sandbox {sandbox.accepted()}")
    delivery = elapsed - (marks["delivery"] - started)
    return {"seconds": elapsed, "events_per_s": events / elapsed,
            "record_seconds": marks["delivery"] - started, "delivery_events_per_s": events / delivery}


def run_naive(sandbox: SandboxProcess, data: Path, latency_ms: float, sample: int | None) -> dict[str, float]:
    """pandas rows + requests.post per row: no session, sequential (what a user would write)."""
    import pandas as pd

    sandbox.reset(latency_ms)
    started = time.perf_counter()
    frame = pd.read_csv(data, dtype=str, keep_default_na=False, nrows=sample)
    token = requests.post(f"{sandbox.base_url}/token",
                          json={"cid": DEFAULT_CID, "apicode": DEFAULT_APICODE}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    sent = 0
    for _, row in frame.iterrows():
        invoices = [{"invoicenumber": n, "jobid": int(j)}
                    for n, j in zip(row["invoices"].split("|"), row["jobs"].split("|"))]
        event = {"id": row["id"], "usageplacecode": row["place"], "customernumber": row["customer"],
                 "contract_no": row["contract"], "invoices": invoices, "time": row["time"],
                 "status": STATUS[row["status"]], "description": row["description"]}
        response = requests.post(f"{sandbox.base_url}/usageplace/event", json=event, headers=headers)
        response.raise_for_status()
        sent += 1
    elapsed = time.perf_counter() - started
    return {"events": sent, "seconds": elapsed, "events_per_s": sent / elapsed}


def run_bare_session(sandbox: SandboxProcess, bodies: list[bytes], latency_ms: float) -> dict[str, float]:
    """A requests.Session POSTing pre-built bodies, one after another: the floor of a requests client."""
    sandbox.reset(latency_ms)
    with requests.Session() as session:
        token = session.post(f"{sandbox.base_url}/token",
                             json={"cid": DEFAULT_CID, "apicode": DEFAULT_APICODE}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        url = f"{sandbox.base_url}/usageplace/event"
        started = time.perf_counter()
        for body in bodies:
            response = session.post(url, data=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"bare session: HTTP {response.status_code}")
        elapsed = time.perf_counter() - started
    return {"events": len(bodies), "seconds": elapsed, "events_per_s": len(bodies) / elapsed}


def run_rate_limit(sandbox: SandboxProcess, limit: float = 200.0, events: int = 400) -> dict[str, float]:
    """deliver() with a rate limit, real time: events per second sent against the limit."""
    from batch.config.api import ApiSettings, DeliverySettings
    from batch.delivery.ropo import RopoClient
    from batch.delivery.scheduler import Outgoing, deliver

    sandbox.reset(0)
    settings = ApiSettings(base_url=sandbox.base_url, cid=DEFAULT_CID, apicode="${" + APICODE_ENV + "}")
    items = [Outgoing(f"r{n}", f"P{n}", {"id": f"r{n}", "usageplacecode": f"P{n}", "status": "disconnected",
                                         "time": "2024-01-04 10:41:40"}) for n in range(events)]
    with RopoClient(settings, pool_size=MAX_IN_FLIGHT, env={APICODE_ENV: DEFAULT_APICODE}) as client:
        client.authenticate()
        report = deliver(items, client, DeliverySettings(max_in_flight=MAX_IN_FLIGHT, rate_limit=limit),
                         lambda item, outcome: None)
    rate = (events - 1) / report.elapsed  # the first send is free (a burst of 1)
    return {"events": events, "limit": limit, "events_per_s": rate, "share_of_limit": rate / limit}


def prebuilt_bodies(data: Path, limit: int) -> list[bytes]:
    bodies: list[bytes] = []
    with open(data, encoding="utf-8", newline="") as stream:
        for row in csv.DictReader(stream):
            if len(bodies) == limit:
                break
            invoices = [{"invoicenumber": n, "jobid": int(j)}
                        for n, j in zip(row["invoices"].split("|"), row["jobs"].split("|"))]
            event = {"id": row["id"], "usageplacecode": row["place"], "customernumber": row["customer"],
                     "contract_no": row["contract"], "invoices": invoices, "time": row["time"],
                     "status": STATUS[row["status"]], "description": row["description"]}
            bodies.append(json.dumps(event, separators=(",", ":")).encode())
    return bodies


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--places", type=int, default=2_000)
    parser.add_argument("--naive-sample", type=int, default=300, help="rows for the naive loop at 50 ms")
    parser.add_argument("--naive-sample-0ms", type=int, default=2_000, help="rows for the naive loop at 0 ms")
    args = parser.parse_args()
    events = args.events
    sandbox = SandboxProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
            root = Path(tmp)
            data = root / "events.csv"
            generate(data, events, args.places)
            print(f"{events} events, {args.places} usage places, sandbox at {sandbox.base_url} (own process); "
                  f"process = Processor.process in this process, max_in_flight {MAX_IN_FLIGHT}", flush=True)

            zero = run_process(sandbox, data, root / "p0", 0, events)
            print(f"  process   0 ms: {zero['events_per_s']:8.0f} events/s end to end ({zero['seconds']:.1f} s; "
                  f"read+map+journal {zero['record_seconds']:.2f} s; delivery+receipt "
                  f"{zero['delivery_events_per_s']:.0f} events/s)", flush=True)
            bare = run_bare_session(sandbox, prebuilt_bodies(data, events), 0)
            print(f"  bare Session loop 0 ms: {bare['events_per_s']:8.0f} events/s "
                  f"({bare['events']} pre-built bodies, sequential)", flush=True)
            naive0 = run_naive(sandbox, data, 0, min(events, args.naive_sample_0ms))
            print(f"  naive loop 0 ms: {naive0['events_per_s']:8.0f} events/s "
                  f"(sample of {naive0['events']} rows, extrapolated)", flush=True)

            fifty = run_process(sandbox, data, root / "p50", 50, events)
            bound = MAX_IN_FLIGHT / 0.05
            print(f"  process  50 ms: {fifty['events_per_s']:8.1f} events/s end to end ({fifty['seconds']:.1f} s; "
                  f"bound {bound:.0f}/s = {MAX_IN_FLIGHT} in flight / 50 ms: "
                  f"{100 * fifty['events_per_s'] / bound:.1f} %)", flush=True)
            naive50 = run_naive(sandbox, data, 50, min(events, args.naive_sample))
            print(f"  naive loop 50 ms: {naive50['events_per_s']:8.1f} events/s "
                  f"(sample of {naive50['events']} rows, extrapolated to {events}: "
                  f"{events / naive50['events_per_s'] / 60:.1f} min)", flush=True)
            limited = run_rate_limit(sandbox)
            print(f"  rate limit {limited['limit']:.0f}/s: {limited['events_per_s']:8.1f} events/s "
                  f"({100 * limited['share_of_limit']:.1f} % of the limit)", flush=True)
    finally:
        sandbox.close()

    result = {
        "events": events,
        "max_in_flight": MAX_IN_FLIGHT,
        "process_mode": "Processor.process in-process (Runtime from service.yaml); sandbox in its own process",
        "events_per_s_50ms": round(fifty["events_per_s"], 1),
        "bound_50ms": MAX_IN_FLIGHT / 0.05,
        "share_of_bound_50ms": round(fifty["events_per_s"] / (MAX_IN_FLIGHT / 0.05), 3),
        "naive_events_per_s_50ms": round(naive50["events_per_s"], 2),
        "naive_sample_50ms": naive50["events"],
        "speedup_vs_naive_50ms": round(fifty["events_per_s"] / naive50["events_per_s"], 1),
        "events_per_s_0ms": round(zero["events_per_s"], 1),
        "delivery_events_per_s_0ms": round(zero["delivery_events_per_s"], 1),
        "bare_session_events_per_s_0ms": round(bare["events_per_s"], 1),
        "share_of_bare_session_0ms": round(zero["events_per_s"] / bare["events_per_s"], 3),
        "naive_events_per_s_0ms": round(naive0["events_per_s"], 1),
        "naive_sample_0ms": naive0["events"],
        "rate_limit_share": round(limited["share_of_limit"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
