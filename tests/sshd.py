"""A real OpenSSH sshd on a loopback port, owned by the caller (tests and the SFTP bench).

The daemon runs in the foreground (`-D -e`) with its own host key, key-only login for
root through a private `AuthorizedKeysFile` (password logins for other accounts only with
`passwords=True`), and `internal-sftp`. `sftp_batch` drives the
real OpenSSH `sftp` client in batch mode, the way a legacy system drops files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
USER = "root"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, *, key_type: str = "ed25519", passphrase: str = "") -> Path:
    """Generate a key pair with the real ssh-keygen; returns the private key path."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", path.name, "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
    return path


def fingerprint(pub_key: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key file (`SHA256:...`)."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub_key)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


class Sshd:
    """One sshd instance in `workdir`; `start()` may be called again after `kill()`/`stop()`
    and reuses the same port and host key (a restart, as far as a client can tell)."""

    def __init__(self, workdir: Path, port: int | None = None, *, passwords: bool = False) -> None:
        self.passwords = passwords  # also allow password logins (root stays key-only)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.user = USER
        self.port = port or free_port()
        self.host_key = keygen(workdir / "ssh_host_ed25519_key")
        self.client_key = keygen(workdir / "client_ed25519")
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text((workdir / "client_ed25519.pub").read_text())
        self.known_hosts = workdir / "known_hosts"
        host_pub = (workdir / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"[{HOST}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.host_key_type = host_pub[0]
        self.host_key_fingerprint = fingerprint(workdir / "ssh_host_ed25519_key.pub")
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {HOST}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    f"PasswordAuthentication {'yes' if self.passwords else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "MaxStartups 50:30:100",
                    "Subsystem sftp internal-sftp",
                    "LogLevel INFO",
                    "",
                ]
            )
        )

    @property
    def url_prefix(self) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
        log = open(self.log, "ab")  # noqa: SIM115 - closed in the finally below, once sshd holds it
        try:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                    s.settimeout(5.0)
                    if s.recv(4).startswith(b"SSH-"):  # the banner: sshd itself, not a stale listener
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"sshd did not accept on port {self.port}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the daemon and every session it forked: connections drop at once."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        kids = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in kids:  # sessions survive their listener; end them too
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.proc = None

    def sftp_command(self, known_hosts: Path | None = None) -> list[str]:
        return [
            "sftp",
            "-q",
            "-F",
            "/dev/null",
            "-b",
            "-",
            "-i",
            str(self.client_key),
            "-P",
            str(self.port),
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{self.user}@{self.host}",
        ]

    def sftp_batch(self, commands: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run OpenSSH `sftp -b -` with these commands; raises with its output if it fails."""
        proc = subprocess.run(
            self.sftp_command(),
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sftp failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout.strip()}")
        return proc

    def sftp_session(self) -> subprocess.Popen[str]:
        """An open `sftp -b -` session: write commands to stdin one at a time."""
        return subprocess.Popen(
            self.sftp_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
