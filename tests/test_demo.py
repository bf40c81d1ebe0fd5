"""`usageplace-batch demo`: the first Quick start command, run the way a new user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_receipt(path: Path, encoding: str, delimiter: str) -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def test_demo_runs_every_sample_through_the_service(tmp_path):
    workspace = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "batch", "demo", "--workspace", str(workspace)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    samples = sorted(path.name for path in (ROOT / "samples").iterdir())
    for name in samples:
        feed = name.split(".", 1)[0]
        assert (workspace / "inbox" / feed / "archive" / name).is_file()  # claimed, processed, archived
        assert (workspace / "inbox" / feed / "outbox" / f"{name}.receipt.json").is_file()
        assert name in done.stdout

    finnish = read_receipt(workspace / "inbox/finnish_cp1252/outbox/finnish_cp1252.csv.receipt.csv", "cp1252", ";")
    assert [row["outcome"] for row in finnish] == ["accepted", "rejected", "accepted", "accepted"]
    assert "not known to Ropo One" in finnish[1]["message"]

    invalid = read_receipt(workspace / "inbox/invalid_records/outbox/invalid_records.csv.receipt.csv", "cp1252", ";")
    assert [row["outcome"] for row in invalid].count("invalid") == 9
    assert any("'31.2.2024 7:10:00'" in row["message"] for row in invalid)

    again = json.loads((workspace / "inbox/erp_export/outbox/erp_export-again.xml.receipt.json").read_text())
    assert again["state"] == "skipped" and "same content as 'erp_export.xml'" in again["error"]

    accepted = [json.loads(line) for line in (workspace / "sandbox" / "accepted.jsonl").read_text().splitlines()]
    # every valid event once (16, 3 + 3 of record_types.csv and invoice_pairs.csv, and 11 of the gzip,
    # zip, EBCDIC and workbook samples); the rejected one and the re-drop not at all
    assert len(accepted) == 33
    assert len({event["id"] for event in accepted}) == 33

    status = subprocess.run(
        [sys.executable, "-m", "batch", "status", "--config", str(workspace / "service.yaml"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    files = [row for row in map(json.loads, status.stdout.splitlines()) if row["kind"] == "file"]
    assert {file["file"] for file in files} == set(samples) | {"erp_export-again.xml"}
