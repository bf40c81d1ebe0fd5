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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from batch.config.service import load_service_config
from batch.pipeline import FileOutcome
from batch.runtime import Runtime
from batch.sandbox import Faults, Sandbox

APICODE_ENV = "USAGEPLACE_BATCH_DEMO_APICODE"
REJECTED_PLACE = "643007572062443689"  # a place of samples/finnish_cp1252.csv that Ropo "does not know"


@dataclass
class DemoRun:
    workspace: Path
    outcomes: list[tuple[str, FileOutcome]]
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


def sample_pairs(samples: Path, mappings: Path) -> list[tuple[Path, Path]]:
    """(sample, mapping) for every samples/NAME.ext with a config/mappings/NAME.yaml."""
    pairs = []
    for sample in sorted(samples.iterdir()):
        mapping = mappings / f"{sample.stem}.yaml"
        if sample.is_file() and mapping.is_file():
            pairs.append((sample, mapping))
    return pairs


def write_workspace(workspace: Path, pairs: list[tuple[Path, Path]], base_url: str, cid: str) -> Path:
    feeds = []
    for sample, mapping in pairs:
        name = sample.stem
        shutil.copy(mapping, workspace / "mappings" / mapping.name)
        (workspace / "inbox" / name).mkdir(parents=True, exist_ok=True)
        feeds.append(
            {
                "name": name,
                "mapping": f"mappings/{mapping.name}",
                "inbox": f"inbox/{name}",
                "patterns": [f"*{sample.suffix}"],
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
        outcomes: list[tuple[str, FileOutcome]] = []
        drops = [(sample, sample.stem) for sample, _ in pairs] + [(pairs[0][0], pairs[0][0].stem)]
        with Runtime(loaded) as runtime:
            for number, (sample, feed_name) in enumerate(drops):
                settings = runtime.settings(feed_name)
                outbox = runtime.outbox(settings)
                assert outbox is not None
                outbox.mkdir(parents=True, exist_ok=True)
                again = number >= len(pairs)
                # the same content again under a new name, as a re-run export would be
                dropped = Path(settings.inbox) / (f"{sample.stem}-again{sample.suffix}" if again else sample.name)
                shutil.copy(sample, dropped)
                label = dropped.name + (" (same content again)" if again else "")
                outcome = runtime.processor.process(dropped, runtime.feeds[feed_name], outbox)
                outcomes.append((label, outcome))
        return DemoRun(workspace, outcomes, len(sandbox.accepted), sum(sandbox.duplicates.values()))
