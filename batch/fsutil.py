"""File names and atomic file writes: nobody ever reads half a file, no name is too long.

The data goes to a temporary dotfile in the same folder (inbox watchers and legacy
pick-up jobs ignore dotfiles), is flushed and fsynced, renamed over the target with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced so the
rename itself survives a power loss. A reader sees the old file (or none) or the whole
new one. A process killed mid-write leaves at most a stale temporary dotfile, which
``remove_stale_temporaries`` cleans up: the writer holds an exclusive ``flock`` on its
temporary, so a temporary nobody holds (and that is not brand new) belongs to a dead writer.

Names: every name this tool makes (receipts, temporaries, timestamped archive names) must
fit where the input's own name fitted: ``NAME_MAX`` = 255 bytes in the file system's
encoding. ``fit_name`` shortens a name that would not fit with a hash of the full name:
deterministic, and still recognisable (`<start of the name>~<hash><ending>`).

A name that is not valid UTF-8 (a cp1252 upload, ``latin\\xe4.csv``) is a ``str`` with
surrogate escapes here, as ``os.fsdecode`` makes it: right for the file system, but not
text that SQLite, JSON or a log can hold. ``display_name`` gives the text to store and show
(``latin\\xe4.csv`` with a literal backslash) and ``real_name`` turns it back: inbox names
never contain a backslash (``check_name`` refuses it), so the escape is unambiguous.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PosixPath
from typing import BinaryIO

from batch.errors import ConfigurationError

TEMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"
NAME_MAX = 255  # bytes: Linux file systems, and what OpenSSH servers accept on them
# A temporary whose writer died is removed once it is this old (and nobody holds its lock):
# a live writer takes its lock right after creating it, so this only covers that instant.
STALE_LOCAL_SECONDS = 60.0

# The temporaries this tool makes: `.<target>.<12 hex>.tmp|.part` (8 hex in older versions).
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}(?:[0-9a-f]{4})?\.(?:tmp|part)", re.DOTALL)
_HASH_CHARS = 10


# --------------------------------------------------------------------------- reading


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words ('a FIFO')."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def read_regular_file(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of `path` (symlinks followed; at most `limit` + 1 when given), or OSError
    EINVAL unless it is a regular file: a FIFO would block the reader for ever (a reload
    thread, `validate-config`) and /dev/zero never ends. The type is checked on the opened
    descriptor (opened without blocking), so a path swapped meanwhile cannot slip through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno_codes.EINVAL, f"not a regular file ({file_kind(mode)}); give the path of a file",
                          str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as stream:
            fd = -1  # the stream closes it
            return stream.read() if limit is None else stream.read(limit + 1)
    finally:
        if fd >= 0:
            os.close(fd)


# --------------------------------------------------------------------------- names


def name_bytes(name: str) -> int:
    """The length of a name in the file system's encoding (surrogate escapes are one byte)."""
    return len(os.fsencode(name))


def display_name(name: str) -> str:
    """The name as text to store and show: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_ESCAPED_BYTE = re.compile(r"\\x([0-9a-f]{2})")


def real_name(shown: str) -> str:
    """The file system name of a ``display_name`` (its inverse for every inbox name)."""
    if "\\x" not in shown:
        return shown
    raw = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), shown)
    return os.fsdecode(os.fsencode(raw))  # normalise: surrogates stand for single bytes


def _cut(text: str, max_bytes: int) -> str:
    """The longest start of `text` within `max_bytes`, never splitting a character."""
    used = 0
    for index, char in enumerate(text):
        used += name_bytes(char)
        if used > max_bytes:
            return text[:index]
    return text


def fit_name(name: str, limit: int = NAME_MAX, keep_end: str = "") -> str:
    """`name` if it fits in `limit` bytes, else its start + ``~`` + a hash of all of it + its end.

    The end kept is `keep_end` when `name` ends with it, else the name's extension (``.csv``)
    when that is short. The same name always gives the same result."""
    if name_bytes(name) <= limit:
        return name
    end = keep_end if keep_end and name.endswith(keep_end) else ""
    if not end:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and name_bytes(extension) <= 16:
            end = "." + extension
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_HASH_CHARS]
    room = limit - name_bytes(end) - 1 - _HASH_CHARS
    if room < 1:
        raise ValueError(f"no name fits in {limit} bytes with the ending {display_name(end)!r}")
    return f"{_cut(name[: len(name) - len(end)], room)}~{digest}{end}"


def temporary_name(target: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh dotfile name next to ``target``: ``.<name>.<random>.tmp`` (within NAME_MAX)."""
    token = secrets.token_hex(6)
    room = NAME_MAX - 1 - 1 - len(token) - len(suffix)
    return target.with_name(f".{fit_name(target.name, room)}.{token}{suffix}")


def temporary_basename(name: str, suffix: str = TEMP_SUFFIX) -> str:
    """`temporary_name` for a bare name (e.g. on an SFTP server)."""
    return temporary_name(Path(name), suffix).name


def is_temporary_name(name: str) -> bool:
    """True for the names `temporary_name` makes (and only for those)."""
    return _TEMPORARY.fullmatch(name) is not None


# --------------------------------------------------------------------------- errors

_NAMED_CLASSES: dict[type[OSError], type[OSError]] = {}


def _named_class(base: type[OSError]) -> type[OSError]:
    found = _NAMED_CLASSES.get(base)
    if found is None:

        def __str__(self: OSError) -> str:  # noqa: N807
            code = errno_codes.errorcode.get(self.errno or 0)
            reason = f"{self.strerror} ({code})" if code else str(self.strerror)
            if reason == "Failure":  # SFTP's SSH_FX_FAILURE: no reason given
                reason = "the server answered only 'Failure' (often a full disk or a quota)"
            return f"cannot {self.operation}: {self.where}: {reason}"  # type: ignore[attr-defined]  # named_error sets them

        found = _NAMED_CLASSES[base] = type(base.__name__, (base,), {"__str__": __str__, "__module__": base.__module__})
    return found


def named_error(operation: str, where: str | os.PathLike[str], cause: OSError) -> OSError:
    """`cause` again (same class and errno), its message naming the operation and the path:
    ``cannot write receipt: /srv/in/outbox/a.csv.receipt.csv: No space left on device (ENOSPC)``.

    An error that already names its operation is returned as it is."""
    if hasattr(cause, "operation"):
        return cause
    error = _named_class(type(cause))(cause.errno, cause.strerror or str(cause))
    error.operation = operation  # type: ignore[attr-defined]  # read by the class's __str__
    error.where = display_name(os.fspath(where))  # type: ignore[attr-defined]  # read by __str__ too
    error.filename = os.fspath(where)
    return error


# --------------------------------------------------------------------------- folders


class OwnFolderPath(PosixPath):
    """A path inside one of the service's own folders (an inbox's outbox/, ...).

    ``atomic_writer`` refuses to write into such a path's folder when the folder is a
    symbolic link: whoever can write the inbox could otherwise send receipts anywhere."""


class SymlinkRefused(NotADirectoryError, ConfigurationError):
    """A folder of the service's own that is a symlink: the message says which and why."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_folder(path: Path, *, follow: bool = True) -> int:
    """A file descriptor of the folder `path`; with ``follow=False`` a symlink is refused
    (OSError ELOOP or ENOTDIR) instead of followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    return os.open(path, flags)


def symlink_refusal(path: str | os.PathLike[str], what: str) -> str:
    return (f"{what} {display_name(str(path))} is a symbolic link; the service's own folders must be "
            "real folders, so it refuses to follow it (replace the link by a folder)")


def fsync_directory(directory: Path | int) -> None:
    """Make a rename or creation inside ``directory`` (a path or an open folder) durable."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = open_folder(directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o666, *, what: str = "write") -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it atomically becomes ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. OS
    errors name `what` was being done and the path. ``mode`` is reduced by the umask, like
    ``open()`` does (default: rw for all the umask allows, so an SFTP user can read a
    receipt another user wrote). For an ``OwnFolderPath`` the folder must not be a symlink.
    """
    target = Path(path)
    temp = temporary_name(target)
    try:
        folder = open_folder(target.parent, follow=not isinstance(path, OwnFolderPath))
    except OSError as exc:
        if exc.errno in (errno_codes.ELOOP, errno_codes.ENOTDIR) and os.path.islink(target.parent):
            raise SymlinkRefused(errno_codes.ELOOP,
                                 f"cannot {what}: {symlink_refusal(target.parent, 'the folder')}") from exc
        raise named_error(what, target, exc) from exc
    try:
        # Everything happens inside the folder opened above: a folder swapped for a link
        # meanwhile is not followed.
        try:
            fd = os.open(temp.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=folder)
        except OSError as exc:
            raise named_error(what, target, exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # "alive": see remove_stale_temporaries
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp.name, target.name, src_dir_fd=folder, dst_dir_fd=folder)
            fsync_directory(folder)
        except OSError as exc:
            _unlink_quietly(temp.name, folder)
            raise named_error(what, target, exc) from exc
        except BaseException:
            _unlink_quietly(temp.name, folder)
            raise
    finally:
        os.close(folder)


def _unlink_quietly(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except OSError:
        pass


# --------------------------------------------------------------------------- leftovers


def _held_by_a_live_writer(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temporaries(
    directory: str | os.PathLike[str], older_than_s: float = STALE_LOCAL_SECONDS
) -> list[Path]:
    """Remove the temporaries killed writers left in `directory`; returns what was removed.

    Only names this tool makes (``is_temporary_name``), only regular files, only those no
    live writer holds locked, and only those older than ``older_than_s``. A folder that is
    missing has nothing to clean."""
    limit = time.time() - older_than_s
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not is_temporary_name(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(entry.path)
        if stat.S_ISREG(info.st_mode) and info.st_mtime < limit and not _held_by_a_live_writer(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
