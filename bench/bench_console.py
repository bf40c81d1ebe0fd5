"""The console's pages on a big journal: the feeds page, and a file page of a 100,000-record file.

    python bench/bench_console.py                   # 100,000 records, 5 timed requests per page
    python bench/bench_console.py --records 20000   # a quicker look

What is built: a workspace with 12 local feeds and a SQLite journal written through the journal's
API as the pipeline writes it (begin_file, record_events in chunks of 5,000 -- valid events, and
invalid ones with their errors as data --, record_results -- accepted, rejected with a problem
title and detail, failed --, finish_file): one file of ``--records`` records (1 % invalid, 0.5 %
rejected, 0.2 % failed) and 3 small files per feed.

What is measured: the console runs as `usageplace-batch console --port 0` in its own process (the
real app, uvicorn, over HTTP on loopback); each page is requested once to warm up, then
``--repeat`` times with a requests.Session; the figure is the median (and the slowest) wall time of
a request. Pages: the feeds page; the big file's first, middle and last page; a filter (invalid,
its middle page; failed); a search by event id and by usage place code. Then the console's CPU
time over ``--idle`` seconds with no request (/proc/PID/stat): ~0 expected.

Targets: every page <= 300 ms (median); idle CPU <= 1 % of a core.

The diff of a mapping edit (issue 12 point 6: 5 archived files of 20,000 records, <= 10 s) is
measured by bench/bench_playground.py's ``diff_figures`` (the playground's diff engine on generated
files); its figures go into the JSON under "diff".

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batch.store.journal import Journal, NewEvent, Result  # noqa: E402

FEEDS = 12
CHUNK = 5000
PAGE_TARGET_MS = 300.0
IDLE_TARGET = 0.01  # share of one core
MAPPING = """\
name: bench
format: csv
csv: {encoding: utf-8, delimiter: ","}
fields:
  id: {column: id, required: true}
  usageplacecode: {column: place}
  time: {column: time, formats: ["%Y-%m-%d %H:%M:%S"]}
  status: {column: status, map: {K: disconnected, KY: connected}}
"""


def write_config(root: Path) -> Path:
    (root / "mappings").mkdir(parents=True, exist_ok=True)
    (root / "mappings" / "bench.yaml").write_text(MAPPING, encoding="utf-8")
    feeds = []
    for number in range(FEEDS):
        name = f"feed{number:02d}"
        (root / "inbox" / name).mkdir(parents=True, exist_ok=True)
        feeds.append({"name": name, "mapping": "mappings/bench.yaml", "inbox": f"inbox/{name}", "patterns": ["*.csv"]})
    config = {"api": {"base_url": "http://127.0.0.1:9/rest", "cid": "1", "apicode": "${BENCH_CONSOLE_APICODE}"},
              "journal": "var/journal.sqlite3", "feeds": feeds}
    path = root / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def record_file(journal: Journal, feed: str, name: str, records: int) -> int:
    """One file as the pipeline records it; returns its id."""
    file_id = journal.begin_file(name, f"{feed}-{name}-{records}".ljust(64, "0"), records * 120, feed).file.id
    for first in range(0, records, CHUNK):
        events = []
        for index in range(first, min(records, first + CHUNK)):
            line = index + 2
            payload = {"id": f"{feed}-{name}-{index:07d}", "usageplacecode": f"6430075720{index % 50_000:08d}",
                       "time": "2026-11-28 22:15:00", "status": "disconnected", "description": f"event {index}",
                       "invoices": [{"number": f"INV{index}", "jobid": index}]}
            if index % 100 == 7:
                events.append(NewEvent.invalid(line, "status (column 'Tila' = 'X'): not a known status", payload,
                                               [{"field": "status", "source": "column 'Tila'", "value": "X",
                                                 "message": "not a known status"}]))
            else:
                events.append(NewEvent.valid(line, payload))
        journal.record_events(file_id, events)
        results = []
        for index in range(first, min(records, first + CHUNK)):
            if index % 100 == 7:
                continue
            if index % 200 == 11:
                results.append(Result(file_id, index + 2, "rejected", 422, "HTTP 422: Unprocessable event: not known",
                                      title="Unprocessable event", detail="The usage place is not known to Ropo One"))
            elif index % 500 == 13:
                results.append(Result(file_id, index + 2, "failed", 503, "HTTP 503 after 8 attempts", attempts=8))
            else:
                results.append(Result(file_id, index + 2, "accepted", 200))
        journal.record_results(results)
    journal.mark_recorded(file_id)
    journal.finish_file(file_id, "done")
    return file_id


def build(root: Path, records: int, days: int) -> tuple[Path, int, str, str]:
    """The workspace; (config, the big file's id, an event id and a place code of its middle)."""
    config = write_config(root)
    (root / "var").mkdir()
    today = datetime.now(timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
    with Journal(root / "var" / "journal.sqlite3") as journal:
        for day in range(days - 1, -1, -1):
            journal.clock = lambda day=day: today - timedelta(days=day)  # type: ignore[misc]
            for number in range(FEEDS):
                record_file(journal, f"feed{number:02d}", f"export-{day}.csv", 50)
        big = record_file(journal, "feed00", "nightly-big.csv", records)
    middle = records // 2
    return config, big, f"feed00-nightly-big.csv-{middle:07d}", f"6430075720{middle % 50_000:08d}"


def start_console(config: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_CONSOLE_APICODE": "x"}
    process = subprocess.Popen([sys.executable, "-m", "batch", "console", "--config", str(config), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://\S+/)", line)
    if not found:
        process.kill()
        raise SystemExit(f"the console did not start: {line}{process.stderr.read() if process.stderr else ''}")
    return process, found.group(1)


def timed(http: requests.Session, url: str, repeat: int, expect: str) -> dict[str, float]:
    answer = http.get(url, timeout=60)  # warm-up
    if answer.status_code != 200 or expect not in answer.text:
        raise SystemExit(f"{url}: {answer.status_code}, {expect!r} not in the page")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        answer = http.get(url, timeout=60)
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def diff_figures() -> dict[str, Any]:
    """The playground's diff of a mapping edit over 5 archived files of 20,000 records (target
    <= 10 s): bench/bench_playground.py's figures (the diff engine the playground's page runs)."""
    from bench import bench_playground  # ROOT is on sys.path (above)

    return bench_playground.diff_figures(echo=lambda line: print(line, file=sys.stderr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--days", type=int, default=90, help="nights of small files per feed")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        config, big, event_id, place = build(root, args.records, args.days)
        print(f"journal built: {args.records:,} records + {FEEDS * args.days:,} small files in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        pages_total = -(-args.records // 100)
        invalid_pages = -(-(args.records // 100) // 100)
        process, url = start_console(config)
        http = requests.Session()
        try:
            pages = {
                "feeds": (url, 'data-feed="feed11"'),
                "feeds_7_days": (f"{url}?days=7", 'data-feed="feed11"'),
                "file_first": (f"{url}files/{big}", "page 1 of"),
                "file_middle": (f"{url}files/{big}?page={pages_total // 2}", f"page {pages_total // 2} of"),
                "file_last": (f"{url}files/{big}?page={pages_total}", f"page {pages_total} of"),
                "filter_invalid_middle": (f"{url}files/{big}?outcome=invalid&page={max(1, invalid_pages // 2)}",
                                          "records invalid"),
                "filter_failed": (f"{url}files/{big}?outcome=failed", "records failed"),
                "search_event_id": (f"{url}files/{big}?q={event_id}", "1 record matching"),
                "search_place": (f"{url}files/{big}?q={place}", "matching"),
            }
            figures = {}
            for name, (page_url, expect) in pages.items():
                figures[name] = timed(http, page_url, args.repeat, expect)
                print(f"{name:24} median {figures[name]['median_ms']:7.1f} ms   slowest "
                      f"{figures[name]['max_ms']:7.1f} ms", file=sys.stderr)
            http.close()
            before = cpu_seconds(process.pid)
            time.sleep(args.idle)
            idle = (cpu_seconds(process.pid) - before) / args.idle
            print(f"idle CPU over {args.idle:g} s: {idle:.2%} of a core", file=sys.stderr)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        slowest = max(figure["median_ms"] for figure in figures.values())
        result = {
            "records": args.records, "small_files": FEEDS * args.days, "pages": figures, "slowest_median_ms": slowest,
            "pages_target_ms": PAGE_TARGET_MS, "pages_met": slowest <= PAGE_TARGET_MS,
            "idle_cpu_share": round(idle, 4), "idle_met": idle <= IDLE_TARGET,
        }
    result["diff"] = diff = diff_figures()
    result["diff_met"] = diff["pass"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
