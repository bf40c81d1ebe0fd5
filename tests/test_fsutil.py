"""Atomic writes on real files, with a real writer process killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from batch.fsutil import (
    atomic_writer,
    is_temporary_name,
    remove_stale_temporaries,
    temporary_name,
)


def write_atomically(path: Path, data: bytes, mode: int = 0o666) -> None:
    with atomic_writer(path, mode) as handle:
        handle.write(data)

def start_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def test_write_creates_and_replaces_leaving_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.receipt.csv"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["x.receipt.csv"]


def test_temporary_names_are_dotfiles_in_the_same_folder(tmp_path: Path) -> None:
    temp = temporary_name(tmp_path / "a.csv")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".a.csv.") and is_temporary_name(temp.name)
    assert temporary_name(tmp_path / "a.csv") != temp
    assert not is_temporary_name("a.csv") and not is_temporary_name(".profile")


def test_the_temporary_is_a_hidden_file_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    with atomic_writer(target) as handle:
        handle.write(b"partial")
        (entry,) = os.listdir(tmp_path)
        assert entry.startswith(".") and not target.exists()
    assert target.read_bytes() == b"partial"


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    write_atomically(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"new but incomplete")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["r.csv"]


def test_the_mode_follows_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a", b"x")
        write_atomically(tmp_path / "b", b"x", mode=0o600)
    finally:
        os.umask(umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("old", [None, b"old receipt\n"])
def test_a_writer_killed_mid_write_leaves_the_old_file_or_nothing(tmp_path: Path, old: bytes | None) -> None:
    target = tmp_path / "r.csv"
    if old is not None:
        target.write_bytes(old)
    child = start_python(f"""
        import time
        from batch.fsutil import atomic_writer
        with atomic_writer({str(target)!r}) as handle:
            handle.write(b"x" * 1_000_000)
            handle.flush()
            print("half written", flush=True)
            time.sleep(60)
            handle.write(b"rest")
    """)
    assert child.stdout.readline().strip() == "half written", child.stderr.read()
    kill(child)
    if old is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    (stale,) = [p for p in tmp_path.iterdir() if p != target]
    assert is_temporary_name(stale.name) and stale.stat().st_size == 1_000_000
    assert remove_stale_temporaries(tmp_path, older_than_s=3600) == []  # too fresh to remove
    assert remove_stale_temporaries(tmp_path, older_than_s=0) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ([] if old is None else ["r.csv"])


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A child rewrites a 2 MB file in a loop; every read here is one whole version."""
    target = tmp_path / "r.bin"
    size = 2_000_000
    write_atomically(target, b"A" * size)
    child = start_python(f"""
        from batch.fsutil import atomic_writer
        n = 0
        while True:
            with atomic_writer({str(target)!r}) as handle:
                handle.write((b"A", b"B", b"C")[n % 3] * {size})
            n += 1
    """)
    try:
        versions = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            data = target.read_bytes()
            assert len(data) == size and data == data[:1] * size
            versions.add(data[:1])
    finally:
        kill(child)
    assert len(versions) > 1, "the writer never replaced the file while reading"


def test_remove_stale_temporaries_leaves_other_files_alone(tmp_path: Path) -> None:
    keep = [tmp_path / "a.csv", tmp_path / ".hidden", tmp_path / "b.tmp"]
    for path in keep:
        path.write_bytes(b"x")
    stale = tmp_path / ".a.csv.0123456789ab.tmp"
    stale.write_bytes(b"x")
    old = time.time() - 7200
    for path in [*keep, stale]:
        os.utime(path, (old, old))
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
