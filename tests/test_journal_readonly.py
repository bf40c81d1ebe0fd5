"""Hardening (issue 7): `status` reads a SQLite journal it cannot write -- on a read-only disk (a
real ext4 loop image mounted read-only), an immutable file and folder (`chattr +i`: root ignores
permissions) -- without switching it to WAL, creating or migrating anything; a journal whose
schema is older than this program is refused with what to do, and left as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from batch.store.journal import SCHEMA_VERSION, Journal, JournalUnusable
from tests.fixtures_journal import old_journal

APICODE_ENV = "UPB_RO_TEST_APICODE"


def make_config(base: Path, journal: Path) -> Path:
    inbox = base / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (base / "mapping.yaml").write_text("format: csv\nfields:\n  usageplacecode: {column: p}\n"
                                       "  time: {column: t}\n  status: {column: s}\n")
    config = {"api": {"base_url": "http://127.0.0.1:1/rest", "cid": "1", "apicode": "${" + APICODE_ENV + "}"},
              "journal": str(journal), "staging_dir": str(base / "staging"),
              "feeds": [{"name": "local", "inbox": str(inbox), "mapping": "mapping.yaml"}]}
    path = base / "service.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fill(journal_path: Path) -> None:
    """A journal with one finished file, closed as the service leaves it (WAL mode)."""
    journal = Journal(journal_path)
    try:
        begun = journal.begin_file("night.csv", hashlib.sha256(b"x").hexdigest(), 1, "local")
        journal.finish_file(begun.file.id, "done")
    finally:
        journal.close()


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch", "status", "--config", str(config), *extra],
                          capture_output=True, text=True, env={**os.environ, APICODE_ENV: "x" * 20})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder)) if (folder / name).is_file()}


@contextmanager
def read_only_mount(path: Path, image: Path) -> Iterator[None]:
    """A small ext4 on a loop device at `path`: written by the block, then remounted read-only."""
    if os.geteuid() != 0 or shutil.which("mount") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root, mount(8) and mkfs.ext4 for a read-only loop-mounted ext4")
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_status_reads_a_journal_on_a_read_only_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with read_only_mount(disk, tmp_path / "disk.img"):
        fill(disk / "journal.sqlite3")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OSError):
            (disk / "probe").write_text("")  # really read-only
        config = make_config(tmp_path, disk / "journal.sqlite3")
        before = snapshot(disk)
        proc = status(config, "--json")
        assert proc.returncode == 0, proc.stderr
        assert '"file": "night.csv"' in proc.stdout and '"state": "done"' in proc.stdout
        proc = status(config)
        assert proc.returncode == 0, proc.stderr
        assert "night.csv" in proc.stdout
        assert "note: leases and instances not shown: journal " in proc.stderr
        assert snapshot(disk) == before


def test_status_reads_an_immutable_journal_file_and_folder(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1) (root ignores file permissions)")
    folder = tmp_path / "var"
    folder.mkdir()
    journal = folder / "journal.sqlite3"
    fill(journal)
    config = make_config(tmp_path, journal)
    os.chmod(journal, 0o444)
    os.chmod(folder, 0o555)
    for target in (journal, folder):
        if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode:
            pytest.skip("this file system does not support chattr +i")
    try:
        before = snapshot(folder)
        proc = status(config, "--json")
        assert proc.returncode == 0, proc.stderr
        assert '"file": "night.csv"' in proc.stdout
        assert snapshot(folder) == before
    finally:
        for target in (folder, journal):
            subprocess.run(["chattr", "-i", str(target)], capture_output=True)
        os.chmod(folder, 0o755)


def test_status_refuses_an_older_journal_schema_and_does_not_migrate_it(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    old_journal(journal, SCHEMA_VERSION - 1)
    before = journal.read_bytes()
    config = make_config(tmp_path, journal)
    proc = status(config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"error: {journal}: journal schema version {SCHEMA_VERSION - 1} is older than this program's "
        f"({SCHEMA_VERSION}) and must be migrated before it can be read: start the service "
        "(`usageplace-batch run`) once with write access to the journal; this command only reads it and "
        "never migrates")
    assert journal.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["inbox", "journal.sqlite3", "mapping.yaml", "service.yaml"]


def test_a_read_only_journal_refuses_writes_and_newer_schemas(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    fill(path)
    journal = Journal(path, read_only=True)
    try:
        assert [record.name for record in journal.recent_files(5, None)] == ["night.csv"]
        with pytest.raises(Exception, match="readonly|read-only|query_only"):
            journal.begin_file("other.csv", "0" * 64, 1, "local")
    finally:
        journal.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalUnusable, match=f"journal schema version {SCHEMA_VERSION + 1} is newer"):
        Journal(path, read_only=True)


def test_a_read_only_journal_sees_what_a_live_writer_committed(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    writer = Journal(path)
    try:
        writer.begin_file("live.csv", hashlib.sha256(b"live").hexdigest(), 4, "local")  # in the WAL only
        reader = Journal(path, read_only=True)
        try:
            assert [(record.name, record.state) for record in reader.recent_files(5, None)] == [
                ("live.csv", "processing")]
        finally:
            reader.close()
    finally:
        writer.close()
