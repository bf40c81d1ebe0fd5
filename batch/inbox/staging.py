"""Local copies in a staging folder: what an inbox downloads (a claimed file from an SFTP server,
an archived file from either inbox) is written here, never half a file under its final name.

`staged_file` writes to a ``.NAME.<hex>.part`` temporary (locked while it is written, so that a
sweep of stale temporaries leaves a live one alone) and renames it to ``staging/NAME`` only when
the copy is complete; on any error the temporary is removed. `copy_bounded` copies a stream into
it, refusing to go past a limit. `clean_staging` removes what a killed copy left.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from batch.fsutil import PART_SUFFIX, display_name, named_error, remove_stale_temporaries, temporary_name

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20


class StagingWriter:
    """The local side of a copy: its write errors (a full disk) name the staging file, not the
    file being copied."""

    def __init__(self, out: BinaryIO, operation: str, path: Path) -> None:
        self._out, self._operation, self._path = out, operation, path

    def write(self, data: bytes) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            raise named_error(self._operation, self._path, exc) from exc

    def flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise named_error(self._operation, self._path, exc) from exc

    def fileno(self) -> int:
        return self._out.fileno()


def prepare_staging(staging_dir: Path, operation: str) -> None:
    """Create the staging folder (its failure names `operation` and the folder)."""
    try:
        staging_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_error(operation, staging_dir, exc) from exc


def clean_staging(staging_dir: Path, where: str) -> None:
    """Copies and receipts a killed run left half-written in the staging folder (and its
    receipts/ folder); failures are only logged."""
    for folder in (staging_dir, staging_dir / "receipts"):
        try:
            for stale in remove_stale_temporaries(folder):
                log.info("%s: removed %s, a temporary a killed download or receipt write left", where,
                         display_name(str(stale)))
        except OSError as exc:
            log.warning("%s: could not clean stale temporaries in %s: %s", where, display_name(str(folder)), exc)


@contextmanager
def staged_file(staging_dir: Path, name: str, operation: str) -> Iterator[StagingWriter]:
    """Yield a writer; on normal exit what was written becomes ``staging_dir/name`` (a rename:
    never half a file under that name); on an exception the temporary is removed and nothing
    else changes. Errors of the local disk name `operation` and the staging path."""
    final = staging_dir / name
    tmp = temporary_name(final, PART_SUFFIX)
    try:
        try:
            out = open(tmp, "xb")  # noqa: SIM115 - its own error; the `with` follows
        except OSError as exc:
            raise named_error(operation, tmp, exc) from exc
        with out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # "alive": a stale-temporary sweep leaves it alone
            staged = StagingWriter(out, operation, tmp)
            yield staged
            staged.flush()
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise named_error(operation, final, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def copy_bounded(read: Callable[[int], bytes], out: StagingWriter, limit: int,
                 on_data: Callable[[bytes], None] | None, too_large: Callable[[], Exception]) -> int:
    """Copy what `read` gives into `out` until it gives nothing; raise `too_large()` as soon as
    more than `limit` bytes came (a file that grew after its size was checked). Each block goes
    to `on_data` too (a hash computed while copying). Returns the bytes copied."""
    copied = 0
    while block := read(COPY_BLOCK):
        copied += len(block)
        if copied > limit:
            raise too_large()
        if on_data is not None:
            on_data(block)
        out.write(block)
    return copied
