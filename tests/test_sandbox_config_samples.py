"""config/service.sandbox.yaml covers every sample of samples/ (issue 11): each sample is taken by
exactly one feed — the one named like the sample before its first dot, as `usageplace-batch demo`
names them — with that sample's mapping; and the samples added for issue 11 go through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from batch.config.service import load_service_config
from batch.inbox.base import NameRules
from batch.sandbox.demo import feed_of
from batch.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(path for path in (ROOT / "samples").iterdir() if path.is_file())


def _feeds() -> list:
    os.environ.setdefault("ROPO_APICODE", "sandbox-apicode")  # only for loading; nothing is sent
    return load_service_config(ROOT / "config" / "service.sandbox.yaml").config.feeds


def test_every_sample_is_taken_by_exactly_one_feed_of_the_sandbox_config():
    feeds = _feeds()
    for sample in SAMPLES:
        # a feed takes the sample when the sample is dropped into its inbox and its patterns match
        takers = [feed.name for feed in feeds
                  if Path(feed.inbox).name == feed_of(sample) and NameRules.from_settings(feed).is_data(sample.name)]
        assert takers == [feed_of(sample)], sample.name
        [feed] = [feed for feed in feeds if feed.name == feed_of(sample)]
        assert Path(feed.mapping).name == f"{feed_of(sample)}.yaml"
        assert (ROOT / "config" / "mappings" / f"{feed_of(sample)}.yaml").is_file()
    # and no feed without a sample
    assert sorted(feed.name for feed in feeds) == sorted(feed_of(sample) for sample in SAMPLES)


def test_the_rejected_rows_file_goes_back_into_the_same_feed():
    """NAME.rejected.<ext> is dropped into the feed's inbox again: its patterns take it (a
    compressed file's rejected rows are uncompressed; a workbook's are a CSV, for a CSV feed)."""
    rejected = {
        "finnish_gzip.csv.gz": "finnish_gzip.csv.gz.rejected.csv",
        "erp_zip.zip": "erp_zip.zip.rejected.xml",
        "mainframe_ebcdic.dat": "mainframe_ebcdic.dat.rejected.dat",
        "record_types.csv": "record_types.csv.rejected.csv",
        "invoice_pairs.csv": "invoice_pairs.csv.rejected.csv",
    }
    feeds = {feed.name: feed for feed in _feeds()}
    for sample, name in rejected.items():
        assert NameRules.from_settings(feeds[feed_of(Path(sample))]).is_data(name), name


NEW_SAMPLES = {  # sample -> (accepted, invalid, filtered): each sample's own receipt
    "record_types.csv": (3, 0, 5), "invoice_pairs.csv": (3, 1, 0), "finnish_gzip.csv.gz": (3, 0, 0),
    "erp_zip.zip": (2, 0, 0), "mainframe_ebcdic.dat": (3, 0, 0), "workbook_billing.xlsx": (3, 1, 0),
}


def test_the_shipped_sandbox_config_processes_the_issue_11_samples(tmp_path):
    config_dir = tmp_path / "config"
    shutil.copytree(ROOT / "config" / "mappings", config_dir / "mappings")
    with Sandbox() as sandbox:
        text = (ROOT / "config" / "service.sandbox.yaml").read_text(encoding="utf-8")
        (config_dir / "service.sandbox.yaml").write_text(text.replace(":8765/", f":{sandbox.port}/"), encoding="utf-8")
        for feed in _feeds():  # every inbox, as the config's comment says to make them
            (config_dir / "var" / "inbox" / feed.name).mkdir(parents=True)
        for name in NEW_SAMPLES:
            target = config_dir / "var" / "inbox" / feed_of(Path(name)) / name
            shutil.copy(ROOT / "samples" / name, target)
            os.utime(target, (target.stat().st_atime - 60, target.stat().st_mtime - 60))  # older than min_age
        done = subprocess.run(
            [sys.executable, "-m", "batch", "run", "--once", "--config", str(config_dir / "service.sandbox.yaml")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "ROPO_APICODE": sandbox.apicode},
        )
        accepted = len(sandbox.accepted)
    assert "Traceback" not in done.stderr
    for name in NEW_SAMPLES:
        inbox = config_dir / "var" / "inbox" / feed_of(Path(name))
        assert (inbox / "archive" / name).is_file(), done.stderr
        counts = json.loads((inbox / "outbox" / f"{name}.receipt.json").read_text(encoding="utf-8"))["counts"]
        assert (counts["accepted"], counts["invalid"], counts["filtered"]) == NEW_SAMPLES[name], name
    assert accepted == sum(accepted for accepted, _, _ in NEW_SAMPLES.values())
