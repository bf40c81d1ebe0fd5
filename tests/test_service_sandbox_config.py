"""config/service.sandbox.yaml, used as its comment says: `run --once` against the sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from batch.sandbox.demo import feed_of
from batch.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parent.parent
# every sample, each into the inbox of its feed (named like the sample before its first dot)
FEEDS = {path.name for path in (ROOT / "samples").iterdir() if path.is_file()}


def test_shipped_sandbox_config_processes_every_sample(tmp_path):
    config_dir = tmp_path / "config"
    shutil.copytree(ROOT / "config" / "mappings", config_dir / "mappings")
    with Sandbox() as sandbox:
        # the shipped file, with only the sandbox's port changed (8765 may be taken here)
        text = (ROOT / "config" / "service.sandbox.yaml").read_text(encoding="utf-8")
        assert "http://127.0.0.1:8765/rest" in text
        (config_dir / "service.sandbox.yaml").write_text(text.replace(":8765/", f":{sandbox.port}/"), encoding="utf-8")
        for name in FEEDS:
            inbox = config_dir / "var" / "inbox" / feed_of(Path(name))
            inbox.mkdir(parents=True)
            shutil.copy(ROOT / "samples" / name, inbox / name)
            old = inbox / name
            os.utime(old, (old.stat().st_atime - 60, old.stat().st_mtime - 60))  # older than min_age
        done = subprocess.run(
            [sys.executable, "-m", "batch", "run", "--once", "--config", str(config_dir / "service.sandbox.yaml")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "ROPO_APICODE": sandbox.apicode},
        )
        accepted = len(sandbox.accepted)
    assert done.returncode == 1, done.stderr  # 1: invalid_records.csv has invalid records, as it should
    assert "Traceback" not in done.stderr
    for name in FEEDS:
        inbox = config_dir / "var" / "inbox" / feed_of(Path(name))
        assert (inbox / "archive" / name).is_file()
        assert (inbox / "outbox" / f"{name}.receipt.csv").is_file()
        assert not any((inbox / "processing").iterdir())
    # 4 + 3 + 3 + 3 + 1 + 3 valid events of the first six samples, 3 + 3 + 3 + 2 + 3 + 3 of issue 11's, each once
    assert accepted == 34
