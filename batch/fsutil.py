"""Atomic file writes: nobody ever reads half a file.

The data goes to a temporary dotfile in the same folder (inbox watchers and legacy
pick-up jobs ignore dotfiles), is flushed and fsynced, renamed over the target with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced so the
rename itself survives a power loss. A reader sees the old file (or none) or the whole
new one. A process killed mid-write leaves at most a stale temporary dotfile, which
``remove_stale_temporaries`` cleans up.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temporary_name(target: Path) -> Path:
    """A fresh dotfile name next to ``target``: ``.<name>.<random>.tmp``."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temporary_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_directory(directory: Path) -> None:
    """Make a rename or creation inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it atomically becomes ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``mode`` is reduced by the umask, like ``open()`` does (default: rw for all the
    umask allows, so an SFTP user can read a receipt another user wrote).
    """
    target = Path(path)
    temp = temporary_name(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def remove_stale_temporaries(directory: str | os.PathLike[str], older_than_s: float = 3600.0) -> list[Path]:
    """Remove temporary dotfiles left by killed writers; returns what was removed.

    Only files older than ``older_than_s`` go, so a write in progress is never disturbed.
    """
    limit = time.time() - older_than_s
    removed = []
    for entry in Path(directory).iterdir():
        if is_temporary_name(entry.name) and entry.is_file() and entry.stat().st_mtime < limit:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
