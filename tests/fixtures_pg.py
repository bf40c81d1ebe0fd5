"""PostgreSQL fixtures: a private cluster for the test session, and a fresh database per test.

The cluster is made with Debian's `initdb` and run with `pg_ctl` in a temporary folder, on a
free loopback port, with password (scram) logins only, as an unprivileged account (PostgreSQL
refuses to run as root: when the tests run as root, a system account is created if missing and
the server runs under it with `runuser`). It is stopped and removed when the session ends.
`tests/install.sh` installs Debian's `postgresql`; nothing is downloaded here.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sshd import free_port

PG_USER = "upb-pg-test"  # the system account the server runs as when the tests run as root
SUPERUSER = "upb"  # the cluster's one role (a superuser), for the tests and the journal


def pg_bindir() -> Path | None:
    """Debian's newest PostgreSQL server programs (/usr/lib/postgresql/N/bin), or pg_config's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PgCluster:
    """One private cluster; `stop()` and `start()` take the server away and back (same port)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self.password = secrets.token_hex(12)
        self._as_other = os.geteuid() == 0
        self._databases = 0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_other:
            command = ["runuser", "-u", PG_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr or done.stdout}"
                               f"\n{self.log.read_text() if self.log.exists() else ''}")
        return done

    def init(self) -> None:
        if self._as_other:
            if subprocess.run(["id", PG_USER], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                "--shell", "/usr/sbin/nologin", PG_USER], check=True, capture_output=True)
            shutil.chown(self.root, PG_USER)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_other:
            shutil.chown(pwfile, PG_USER)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync")
        finally:
            pwfile.unlink()

    def start(self) -> None:
        # a socket folder of our own (Debian's /var/run/postgresql may not be there); no fsync:
        # a test cluster is thrown away, and the tests kill processes, not the machine
        options = (f"-p {self.port} -c listen_addresses={self.host} -k {self.root}"
                   " -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` disconnects every client (as a shutdown or a failover does)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def connect_admin(self, dbname: str = "postgres") -> object:
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=dbname, autocommit=True)

    def uri(self, dbname: str) -> str:
        """The journal URI of a database, without the password (give it through PGPASSWORD etc.)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}?sslmode=disable"

    def create_database(self) -> str:
        self._databases += 1
        name = f"journal_{self._databases}"
        with self.connect_admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with self.connect_admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for the whole session, removed afterwards."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's server programs are not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="upb-pg-"))
    cluster = PgCluster(bindir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # never started, or already stopped by a test
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class PgDatabase:
    """A fresh database of the session's cluster: its URI (no password) and the password."""

    cluster: PgCluster
    name: str

    @property
    def uri(self) -> str:
        return self.cluster.uri(self.name)

    @property
    def password(self) -> str:
        return self.cluster.password

    def connect(self) -> object:
        return self.cluster.connect_admin(self.name)


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh, empty database for one test, dropped afterwards (the cluster is started again
    if the test stopped it)."""
    name = pg_cluster.create_database()
    try:
        yield PgDatabase(pg_cluster, name)
    finally:
        if not (pg_cluster.data / "postmaster.pid").exists():
            pg_cluster.start()
        pg_cluster.drop_database(name)
