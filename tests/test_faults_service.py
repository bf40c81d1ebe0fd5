"""Files around faults (issue 8, and D7/D14 of issue 7): a file that fails while resumed, a
journal or a disk that refuses writes, an archive/ that refuses the move, a mapping that
changes under an unfinished file, a second SIGTERM during shutdown. Real sandbox, real
SQLite, real subprocess signals, real read-only and full file systems (loop/tmpfs mounts)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from batch.journal import Journal
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import (
    MAPPING_V2,
    ServiceProcess,
    ServiceThread,
    export,
    ids,
    receipt,
    run_once,
    write_config,
)


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def drop(inbox: Path, name: str, data: bytes) -> Path:
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    final = inbox / name
    os.rename(tmp, final)
    return final


def journal_of(tmp_path: Path) -> Path:
    return tmp_path / "var" / "journal.sqlite3"


def journal_rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only; the test is skipped with a message otherwise)."""
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------- F10


def test_F10_second_sigterm_during_shutdown_exits_0(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    for trial in range(5):
        service = ServiceProcess(config, tmp_path / f"service{trial}.log")
        service.wait_log("watching 1 feed(s)")
        service.signal(signal.SIGTERM)
        # SIGTERMs keep coming until the process is gone: through the join, the close and the
        # interpreter's shutdown
        while service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                service.signal(signal.SIGTERM)
            time.sleep(0.001)
        assert service.wait(30) == 0, f"trial {trial}: exit {service.proc.returncode}\n{service.text()}"
