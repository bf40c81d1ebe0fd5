"""A workspace with a service.yaml and a simple CSV mapping, feed files, receipts, and the
fixtures that process files through a Runtime: shared by the pipeline, CLI, crash, TLS and
fault tests (registered in conftest.py; import the helpers from here, never from a test file).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.config.service import load_service_config
from batch.pipeline import FileOutcome
from batch.sandbox.server import Arrival, Sandbox
from batch.service.runtime import Runtime
from batch.store.journal import Journal
from tests.fixtures_http import APICODE_ENV

FEED = "simple"
COLUMNS = ("id", "place", "customer", "time", "status", "description")
SIMPLE_MAPPING = """\
name: simple
format: csv
csv:
  encoding: utf-8
  delimiter: ","
fields:
  id: {column: id, required: true}
  usageplacecode: {column: place}
  customernumber: {column: customer}
  time:
    column: time
    formats: ["%Y-%m-%d %H:%M:%S"]
  status:
    column: status
    map: {K: disconnected, KY: connected, EK: not_disconnected}
  description: {column: description}
"""
#: Delivery settings for tests: quick retries, so fault tests take milliseconds.
FAST_DELIVERY: dict[str, Any] = {
    "max_in_flight": 8, "max_attempts": 8, "backoff_base": 0.01, "backoff_cap": 0.05,
}


@dataclass
class Workspace:
    """A service configuration on disk: config, mapping, local inbox (receipts in inbox/outbox)."""

    root: Path
    config: Path
    inbox: Path
    journal: Path

    @property
    def outbox(self) -> Path:
        return self.inbox / "outbox"

    def receipt(self, name: str) -> Path:
        return self.outbox / f"{name}.receipt.csv"

    def summary(self, name: str) -> dict[str, Any]:
        return json.loads((self.outbox / f"{name}.receipt.json").read_text("utf-8"))

    def runtime(self) -> Runtime:
        return Runtime(load_service_config(self.config))


def write_workspace(
    root: Path,
    base_url: str,
    cid: str,
    *,
    delivery: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    mapping_text: str = SIMPLE_MAPPING,
    mapping_name: str = "simple",
    apicode_env: str = APICODE_ENV,
) -> Workspace:
    """Write ROOT/service.yaml (one feed, `mapping_name`, local inbox ROOT/inbox)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mappings").mkdir(exist_ok=True)
    (root / "mappings" / f"{mapping_name}.yaml").write_text(mapping_text, encoding="utf-8")
    inbox = root / "inbox"
    inbox.mkdir(exist_ok=True)
    config = {
        "api": {"base_url": base_url, "cid": cid, "apicode": "${" + apicode_env + "}",
                "connect_timeout": 2.0, "read_timeout": 10.0, **(api or {})},
        "delivery": {**FAST_DELIVERY, **(delivery or {})},
        "journal": "var/journal.sqlite3",
        "feeds": [{"name": mapping_name, "mapping": f"mappings/{mapping_name}.yaml",
                   "inbox": "inbox", "patterns": ["*"], "min_age_seconds": 0}],
    }
    path = root / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Workspace(root, path, inbox, root / "var" / "journal.sqlite3")


def make_rows(count: int, places: int, *, prefix: str = "E", start: int = 0,
              shuffle_seed: int | None = None) -> list[dict[str, str]]:
    """`count` valid records with unique ids; record i belongs to place i % places."""
    rows = []
    for i in range(start, start + count):
        rows.append({
            "id": f"{prefix}{i:06d}", "place": f"6430075720{i % places:08d}",
            "customer": f"C{i % 997}", "time": f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:00",
            "status": ("K", "KY", "EK")[i % 3], "description": f"event {i}",
        })
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return rows


def write_feed(path: Path, rows: Sequence[dict[str, str]], *, columns: Sequence[str] = COLUMNS,
               encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with open(path, "w", encoding=encoding, newline="") as stream:
        writer = csv.writer(stream, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def read_receipt(path: Path, *, encoding: str = "utf-8", delimiter: str = ",") -> list[dict[str, str]]:
    text = path.read_bytes().decode(encoding)
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def by_place(arrivals: Sequence[Arrival]) -> dict[str, list[Arrival]]:
    places: dict[str, list[Arrival]] = defaultdict(list)
    for arrival in sorted(arrivals, key=lambda a: a.seq):
        places[arrival.usageplacecode or ""].append(arrival)
    return places


def dedupe_consecutive(values: Sequence[str | None]) -> list[str | None]:
    return [key for key, _ in itertools.groupby(values)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def workspace_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Workspace]:
    """Workspace for a sandbox (the apicode is put in ${ROPO_TEST_APICODE})."""
    counter = itertools.count()

    def make(sandbox: Sandbox, **kwargs: Any) -> Workspace:
        monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
        return write_workspace(tmp_path / f"ws{next(counter)}", sandbox.base_url, sandbox.cid, **kwargs)

    return make


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    opened: list[Runtime] = []
    yield opened
    for runtime in opened:
        runtime.close()


@pytest.fixture
def process_file(runtimes: list[Runtime]) -> Callable[..., FileOutcome]:
    """process_file(ws, path, **kwargs): one Runtime per workspace, kept for the test."""
    by_config: dict[Path, Runtime] = {}

    def run(ws: Workspace, path: Path, **kwargs: Any) -> FileOutcome:
        runtime = by_config.get(ws.config)
        if runtime is None:
            runtime = by_config[ws.config] = ws.runtime()
            runtimes.append(runtime)
        ws.outbox.mkdir(exist_ok=True)
        feed = runtime.feeds[runtime.feed_for(path.name).name]
        return runtime.processor.process(path, feed, ws.outbox, **kwargs)

    return run


def assert_all_accepted(ws: Workspace, outcome: FileOutcome, sandbox: Sandbox,
                        rows: Sequence[dict[str, str]], name: str) -> list[dict[str, str]]:
    """Journal, receipt and sandbox agree that every row was accepted; returns the receipt."""
    ids = [row["id"] for row in rows]
    assert outcome.status == "done", outcome.message
    assert outcome.counts["accepted"] == len(rows), outcome.counts
    assert outcome.all_accepted
    receipt = read_receipt(ws.receipt(name))
    assert [r["event_id"] for r in receipt] == ids
    assert {r["outcome"] for r in receipt} == {"accepted"}
    assert {r["http_status"] for r in receipt} == {"200"}
    assert set(sandbox.accepted_ids) >= set(ids)
    summary = ws.summary(name)
    assert summary["state"] == "done" and summary["counts"]["accepted"] == len(rows)
    return receipt


def journal_events(ws: Workspace) -> list[Any]:
    with Journal(ws.journal) as journal:
        files = journal.recent_files(100)
        return [event for file in reversed(files) for event in journal.file_events(file.id)]
