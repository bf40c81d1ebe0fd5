"""Helpers for the tests of several instances (leases, fencing): drops, journal rows, configs of
two hosts (two journals) or one host (one shared journal), `status` output, stopping services."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.service_helpers import ServiceProcess, write_config

LEASE_SECONDS = 3.0  # short for the tests; renewed every second, so a loaded machine still keeps it
MAX_IN_FLIGHT = 4  # write_config's delivery.max_in_flight


def drop(inbox: Path, name: str, data: bytes) -> None:
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    tmp.rename(inbox / name)


def rows(journal: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(journal)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stop_all(*services: ServiceProcess) -> None:
    for service in services:
        if service.proc.poll() is None:
            service.signal(signal.SIGTERM)
    for service in services:
        try:
            service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`usageplace-batch ARGS` as a subprocess (its output as text)."""
    return subprocess.run([sys.executable, "-m", "batch", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "400"})


def status_text(config: Path) -> str:
    done = run_cli("status", "--config", str(config))
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # rich wraps cells: compare words


def feed_of(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """The feed's settings and the inbox folder as this machine sees it."""
    if where == "local":
        folder = tmp_path / "inbox"
        folder.mkdir()
        return {"name": "shared", "inbox": str(folder)}, folder
    sshd = request.getfixturevalue("sshd")
    folder = request.getfixturevalue("remote_inbox")
    return {"name": "shared", "inbox": f"{sshd.url_prefix}{folder}", "private_key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts), "connect_timeout_seconds": 5, "io_timeout_seconds": 10,
            "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1}, folder


def two_journals(tmp_path: Path, sandbox, feed: dict[str, Any]) -> tuple[Path, Path]:
    """Two hosts as configured today: each instance with its own SQLite journal."""
    return (write_config(tmp_path / "host-a", sandbox, [feed], instance="A", lease_seconds=LEASE_SECONDS),
            write_config(tmp_path / "host-b", sandbox, [feed], instance="B", lease_seconds=LEASE_SECONDS))


def shared_journal(tmp_path: Path, sandbox, feeds: list[dict[str, Any]], names: list[str]) -> list[Path]:
    """One host: instances with their own staging folders and one SQLite journal."""
    journal = tmp_path / "shared" / "journal.sqlite3"
    return [write_config(tmp_path / name, sandbox, feeds, instance=name, lease_seconds=LEASE_SECONDS,
                         journal=str(journal), staging_dir=str(tmp_path / name / "staging")) for name in names]


def as_host(name: str) -> list[str]:
    """A command prefix that runs a program as a process of another host: its own UTS namespace
    (`unshare --uts`, root only) whose host name is `name`. Other instances then cannot tell
    whether its pid still runs (a pid is only checked on the same host) and must wait for its
    lease to expire, as with a real second host."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name]


def can_fake_hosts() -> bool:
    """True if `as_host` works here (root and util-linux's unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    done = subprocess.run([*as_host("upb-probe"), "hostname"], capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and done.stdout.strip() == "upb-probe"
