"""`usageplace-batch demo`: every sample through the real pipeline against a local sandbox.

No configuration and no outside service: a temporary workspace gets a service configuration,
a journal and one local inbox per sample feed; the sandbox plays Ropo One on loopback (and
refuses one usage place, so that a rejection shows too); each sample is processed like a
dropped file, one sample is dropped twice, and the receipts are left for reading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from batch.config.service import LoadedService, load_service_config
from batch.errors import ExitStatus
from batch.inbox.local import local_outbox
from batch.sandbox.server import Faults, Sandbox
from batch.service.supervisor import Service
from batch.store.journals import open_journal
from batch.store.receipts import receipt_names

APICODE_ENV = "USAGEPLACE_BATCH_DEMO_APICODE"
REJECTED_PLACE = "643007572062443689"  # a place of samples/finnish_cp1252.csv that Ropo "does not know"


@dataclass
class DemoFile:
    label: str
    state: str  # the journal's file state: done, skipped, error, processing
    counts: dict[str, int]
    receipt: Path | None


@dataclass
class DemoRun:
    workspace: Path
    files: list[DemoFile]
    exit_code: ExitStatus
    sandbox_accepted: int
    sandbox_duplicates: int


def find_examples(start: Path | None = None) -> tuple[Path, Path]:
    """The samples/ and config/mappings/ folders: in the working directory or beside the package."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent.parent]
    for base in candidates:
        samples, mappings = base / "samples", base / "config" / "mappings"
        if samples.is_dir() and mappings.is_dir():
            return samples, mappings
    raise FileNotFoundError(
        "cannot find samples/ and config/mappings/: run the demo from a clone of the repository"
    )


def feed_of(sample: Path) -> str:
    """A sample's feed: its name before the first dot (finnish_gzip.csv.gz -> finnish_gzip)."""
    return sample.name.split(".", 1)[0]


def sample_pairs(samples: Path, mappings: Path) -> list[tuple[Path, Path]]:
    """(sample, mapping) for every samples/NAME.ext (.csv.gz too) with a config/mappings/NAME.yaml."""
    pairs = []
    for sample in sorted(samples.iterdir()):
        mapping = mappings / f"{feed_of(sample)}.yaml"
        if sample.is_file() and mapping.is_file():
            pairs.append((sample, mapping))
    return pairs


def write_workspace(workspace: Path, pairs: list[tuple[Path, Path]], base_url: str, cid: str) -> Path:
    feeds = []
    for sample, mapping in pairs:
        name = feed_of(sample)
        shutil.copy(mapping, workspace / "mappings" / mapping.name)
        (workspace / "inbox" / name).mkdir(parents=True, exist_ok=True)
        feeds.append(
            {
                "name": name,
                "mapping": f"mappings/{mapping.name}",
                "inbox": f"inbox/{name}",
                "patterns": ["*" + sample.name[len(name):]],  # *.csv.gz
                "min_age_seconds": 0,
            }
        )
    config = {
        "api": {"base_url": base_url, "cid": cid, "apicode": "${" + APICODE_ENV + "}"},
        "delivery": {"max_in_flight": 8, "backoff_base": 0.2, "backoff_cap": 2.0},
        "journal": "var/journal.sqlite3",
        "feeds": feeds,
    }
    path = workspace / "service.yaml"
    path.write_text(
        "# Written by `usageplace-batch demo`: the sandbox stands in for Ropo One.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return path


def run_demo(
    workspace: Path | None = None,
    examples: tuple[Path, Path] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoRun:
    """Drop every sample into its feed's inbox (and one again under a new name), then let the
    service process what is ready, exactly as `usageplace-batch run --once` would."""
    samples, mappings = examples or find_examples()
    pairs = sample_pairs(samples, mappings)
    if not pairs:
        raise FileNotFoundError(f"no sample in {samples} has a mapping in {mappings}")
    workspace = workspace or Path(tempfile.mkdtemp(prefix="usageplace-batch-demo-"))
    (workspace / "mappings").mkdir(parents=True, exist_ok=True)
    faults = Faults(reject_places=[REJECTED_PLACE])
    with Sandbox(data_dir=workspace / "sandbox", faults=faults) as sandbox:
        echo(f"sandbox (stand-in for Ropo One) at {sandbox.base_url}")
        config_path = write_workspace(workspace, pairs, sandbox.base_url, sandbox.cid)
        os.environ[APICODE_ENV] = sandbox.apicode
        loaded = load_service_config(config_path)
        dropped = _drop(loaded, pairs)
        exit_code = Service(loaded, once=True).run()
        files = _results(loaded, dropped)
        return DemoRun(workspace, files, exit_code, len(sandbox.accepted), sum(sandbox.duplicates.values()))


def console_hint(workspace: Path, port: int = 8780) -> list[str]:
    """How to look at the demo's files in the web console (the demo's last lines)."""
    return [f"  console:   usageplace-batch console --config {workspace}/service.yaml",
            f"             then open http://127.0.0.1:{port}/ (the feeds, every record of each file, downloads)"]


def _drop(loaded: LoadedService, pairs: list[tuple[Path, Path]]) -> list[tuple[str, str, str]]:
    """Copy the samples into the inboxes; the first one also again, later, under a new name
    (a re-run export: same content). Returns (feed, file name, label) in drop order."""
    drops = [(sample, feed_of(sample), sample.name, sample.name) for sample, _ in pairs]
    first = pairs[0][0]
    again = f"{first.stem}-again{first.suffix}"
    drops.append((first, first.stem, again, f"{again} (same content again)"))
    now = time.time()
    dropped = []
    for number, (sample, feed, name, label) in enumerate(drops):
        target = Path(loaded.config.feed(feed).inbox) / name
        shutil.copy(sample, target)
        os.utime(target, (now - 60 + number, now - 60 + number))  # oldest first: drop order
        dropped.append((feed, name, label))
    return dropped


def _results(loaded: LoadedService, dropped: list[tuple[str, str, str]]) -> list[DemoFile]:
    journal = open_journal(loaded.config)
    assert journal is not None  # create=True: always a journal
    with journal:
        latest = {(record.feed, record.name): record for record in reversed(journal.recent_files(1000))}
    files = []
    for feed, name, label in dropped:
        record = latest.get((feed, name))
        outbox = local_outbox(loaded.config.feed(feed))
        receipt = outbox / receipt_names(name).csv if outbox is not None else None
        files.append(
            DemoFile(
                label,
                record.state if record else "not processed",
                dict(record.counts) if record else {},
                receipt if receipt is not None and receipt.exists() else None,
            )
        )
    return files
