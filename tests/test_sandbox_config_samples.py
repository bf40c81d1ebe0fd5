"""config/service.sandbox.yaml covers every sample of samples/ (issue 11): each sample is taken by
exactly one feed — the one named like the sample before its first dot, as `usageplace-batch demo`
names them — with that sample's mapping (tests/test_service_sandbox_config.py runs them all)."""

from __future__ import annotations

from pathlib import Path

from batch.config.service import load_service_config
from batch.inbox.base import NameRules
from batch.sandbox.demo import feed_of

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(path for path in (ROOT / "samples").iterdir() if path.is_file())


def _feeds(monkeypatch) -> list:
    monkeypatch.setenv("ROPO_APICODE", "sandbox-apicode")  # only for loading; nothing is sent
    return load_service_config(ROOT / "config" / "service.sandbox.yaml").config.feeds


def test_every_sample_is_taken_by_exactly_one_feed_of_the_sandbox_config(monkeypatch):
    feeds = _feeds(monkeypatch)
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


def test_the_rejected_rows_file_goes_back_into_the_same_feed(monkeypatch):
    """NAME.rejected.<ext> is dropped into the feed's inbox again: its patterns take it (a
    compressed file's rejected rows are uncompressed; a workbook's are a CSV, for a CSV feed)."""
    rejected = {
        "finnish_gzip.csv.gz": "finnish_gzip.csv.gz.rejected.csv",
        "erp_zip.zip": "erp_zip.zip.rejected.xml",
        "mainframe_ebcdic.dat": "mainframe_ebcdic.dat.rejected.dat",
        "record_types.csv": "record_types.csv.rejected.csv",
        "invoice_pairs.csv": "invoice_pairs.csv.rejected.csv",
    }
    feeds = {feed.name: feed for feed in _feeds(monkeypatch)}
    for sample, name in rejected.items():
        assert NameRules.from_settings(feeds[feed_of(Path(sample))]).is_data(name), name
