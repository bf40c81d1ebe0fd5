"""SFTP fixtures: a real OpenSSH sshd on loopback, and drops made with the real `sftp` client."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.config.inbox import InboxSettings
from tests.sshd import SSHD, Sshd


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class Dropper:
    """Drops files into the remote inbox the way legacy systems do, with OpenSSH's `sftp`."""

    def __init__(self, sshd: Sshd, inbox: Path, scratch: Path) -> None:
        self.sshd = sshd
        self.inbox = inbox
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)

    def _local(self, name: str, data: bytes) -> Path:
        path = self.scratch / name
        path.write_bytes(data)
        return path

    def put(self, name: str, data: bytes) -> None:
        """A plain `put`: the file appears under its final name and grows while uploading."""
        local = self._local(name, data)
        self.sshd.sftp_batch([f'put "{local}" "{self.inbox}/{name}"'])

    def put_then_rename(self, name: str, data: bytes, temp_name: str | None = None) -> None:
        """Upload under a temporary name, then rename to the final name."""
        local = self._local(name, data)
        temp = temp_name or f"{name}.part"
        self.sshd.sftp_batch([f'put "{local}" "{self.inbox}/{temp}"', f'rename "{self.inbox}/{temp}" "{self.inbox}/{name}"'])

    def put_with_marker(self, name: str, data: bytes, suffix: str = ".done") -> None:
        """The data, then an empty marker NAME + suffix in a second step."""
        self.put(name, data)
        self.put_marker(name, suffix)

    def put_marker(self, name: str, suffix: str = ".done") -> None:
        marker = self._local(name + suffix, b"")
        self.sshd.sftp_batch([f'put "{marker}" "{self.inbox}/{name}{suffix}"'])

    def slow_upload(self, name: str, pieces: list[bytes]) -> SlowUpload:
        """An upload in pieces: `put` the first, then `reput` (append) each further piece,
        all in one sftp session; the caller decides when each piece goes."""
        return SlowUpload(self, name, pieces)


class SlowUpload:
    def __init__(self, dropper: Dropper, name: str, pieces: list[bytes]) -> None:
        self.dropper = dropper
        self.name = name
        self.pieces = pieces
        self.sent = 0
        self.local = dropper.scratch / name
        self.local.write_bytes(b"")
        self.remote = dropper.inbox / name
        self.proc = dropper.sshd.sftp_session()

    @property
    def done(self) -> bool:
        return self.sent == len(self.pieces)

    def send_next(self, timeout: float = 30.0) -> None:
        """Append the next piece to the local file and upload it; returns when the server has it."""
        with open(self.local, "ab") as f:
            f.write(self.pieces[self.sent])
        self.sent += 1
        verb = "put" if self.sent == 1 else "reput"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f'{verb} "{self.local}" "{self.remote}"\n')
        self.proc.stdin.flush()
        expected = self.local.stat().st_size
        wait_until(lambda: self.remote.exists() and self.remote.stat().st_size == expected, timeout,
                   what=f"piece {self.sent} of {self.name} on the server")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.done:
            assert self.proc.returncode == 0, self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running sshd on 127.0.0.1 for this test; stopped (and its sessions ended) afterwards."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server openssh-client)")
    server = Sshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def remote_inbox(tmp_path: Path) -> Path:
    """The inbox folder as the server sees it (the server is this machine)."""
    path = tmp_path / "remote" / "inbox"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def dropper(sshd: Sshd, remote_inbox: Path, tmp_path: Path) -> Dropper:
    return Dropper(sshd, remote_inbox, tmp_path / "legacy")


@pytest.fixture
def sftp_settings(sshd: Sshd, remote_inbox: Path) -> Callable[..., InboxSettings]:
    """InboxSettings for the test sshd's inbox; keyword arguments override fields."""

    def make(**overrides: Any) -> InboxSettings:
        fields: dict[str, Any] = {
            "inbox": f"{sshd.url_prefix}{remote_inbox}",
            "private_key_file": sshd.client_key,
            "known_hosts": sshd.known_hosts,
            "min_age_seconds": 0.5,
            "poll_interval_seconds": 0.1,
            "connect_timeout_seconds": 10,
            "io_timeout_seconds": 20,
            "reconnect_initial_seconds": 0.2,
            "reconnect_max_seconds": 2,
        }
        fields.update(overrides)
        return InboxSettings(**fields)

    return make


PASSWORD_USER = "upb-sftp-test"  # a system account for password logins only (no shell, no home)


@pytest.fixture
def password_account() -> Iterator[tuple[str, str]]:
    """A local account with a fresh random password, for sshd's password authentication."""
    if os.geteuid() != 0:
        pytest.skip("creating a local account for password logins needs root")
    exists = subprocess.run(["id", PASSWORD_USER], capture_output=True).returncode == 0
    if not exists:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", PASSWORD_USER], check=True, capture_output=True)
    password = hashlib.sha256(os.urandom(16)).hexdigest()[:20]
    subprocess.run(["chpasswd"], input=f"{PASSWORD_USER}:{password}\n", text=True, check=True, capture_output=True)
    try:
        yield PASSWORD_USER, password
    finally:
        subprocess.run(["passwd", "--lock", PASSWORD_USER], capture_output=True)  # no login left behind
