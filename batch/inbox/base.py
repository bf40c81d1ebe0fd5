"""The inbox interface, its settings, and the pure pieces both inboxes share.

An inbox is where a legacy system drops export files: a local folder, or a folder on an
SFTP server. Both implementations offer the same life cycle for one file:

    scan() -> Candidate        finished files, oldest first
    claim(candidate) -> Claimed | None     rename into processing/ (None: someone else has it)
    open_local(claimed, staging) -> Path   a local path to read
    put_receipt(path, name)                atomic write into the outbox
    finish(claimed, ok)                    processing/ -> archive/ or error/

and what differs between a local folder and SFTP, so that callers never ask which one it is:

    receipt_dir(staging) -> Path           where a receipt is written (local: the outbox itself;
                                           SFTP: staging/receipts, to be uploaded)
    publish_receipt(files, before)         bring a written receipt to the outbox (local: it is
                                           there; SFTP: upload CSV, rejected rows, JSON last)
    release_local(path)                    the copy open_local gave is done with (SFTP: removed)

and `resume()` for what a previous run left in processing/. Read-only, the feed's archive/ (what
`retry` rewrites a rejected-rows file from, and what the mapping playground previews and diffs):

    list_archive() -> [FileStat]           the archived data files, newest first
    fetch_archived(name, staging, max_bytes, on_data) -> Path
                                           a complete local copy in the staging folder (the
                                           caller removes it), bounded by `max_bytes`

The inbox also carries the *lease marker* (`LeaseMarker`, the file `.usageplace-batch.lease` in
the inbox folder): which instance, of which journal, works the feed, and until when. Instances
that share a journal arbitrate through the journal's leases (batch.store.leases); the marker is
what an instance with *another* journal (a second host with its own SQLite file) can see.
"""

from __future__ import annotations

import abc
import fnmatch
import json
import logging
import posixpath
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from batch.config.inbox import InboxSettings
from batch.errors import AccessRefused, BatchError, ConfigurationError, InputFileError, TransientError
from batch.fsutil import display_name, file_kind, fit_name

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- errors


class InboxError(BatchError):
    """The family of everything an inbox raises (never raised itself; see batch.errors)."""


class InboxUnusable(InboxError, ConfigurationError):
    """The inbox cannot be used as configured (folder, key, login): retrying right away will
    not fix it."""


class UnsafeNameError(InboxError, InputFileError):
    """A file name that would leave the inbox folder (or cannot be trusted as a name)."""


class InboxUnavailable(InboxError, TransientError):
    """Transient: the inbox cannot be reached now (connection refused or dropped).

    The operation that raised it did nothing irreversible; call it again later."""


class HostKeyError(InboxError, AccessRefused):
    """The SFTP server's host key is unknown or differs from the one in known_hosts."""


class ArchivedFileRefused(InboxError, InputFileError):
    """An archived file that is not fetched: larger than the caller's limit, not a regular file
    (a symlink is never followed), or not one of the feed's data files."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True)
class FileStat:
    """One entry of an inbox listing (regular files only)."""

    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Candidate:
    """A file in the inbox that is ready to be claimed."""

    name: str
    size: int
    mtime: float
    marker: str | None = None  # name of the marker file that made it ready, if any


@dataclass(frozen=True)
class Claimed:
    """A file this instance owns, in processing/.

    `name` is its name inside processing/ (the original name, or that name with a
    timestamp when processing/ already held one); `source_name` the name it had in the inbox,
    as text to store and show (`fsutil.display_name`: a name that is not UTF-8 is escaped)."""

    name: str
    source_name: str
    size: int
    mtime: float
    marker: str | None = None  # the marker's name inside processing/, if it came with one


LEASE_MARKER_NAME = ".usageplace-batch.lease"  # a dotfile: never taken as data
LEASE_MARKER_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class LeaseMarker:
    """Who works this inbox's feed: written atomically into the inbox, renewed with the heartbeat.

    `expires_at` is unix seconds by the writer's clock (hosts must keep their clocks in sync,
    e.g. NTP; the lease is tens of seconds, skew should be well under that)."""

    instance: str      # the instance's name (config `instance:`)
    host: str
    pid: int
    journal: str       # the journal's identity (LeaseStore.journal_id)
    journal_path: str  # where that journal is, on its host (for people)
    feed: str
    epoch: int
    expires_at: float
    written_at: float

    def live(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)

    @property
    def expires(self) -> str:
        return datetime.fromtimestamp(self.expires_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_bytes(self) -> bytes:
        return (json.dumps({**asdict(self), "expires": self.expires}, ensure_ascii=False, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LeaseMarker:
        """Parse a marker; InboxUnusable names the file and says how to clear it."""
        try:
            raw = json.loads(data.decode("utf-8"))
            return cls(instance=str(raw["instance"]), host=str(raw["host"]), pid=int(raw["pid"]),
                       journal=str(raw["journal"]), journal_path=str(raw["journal_path"]), feed=str(raw["feed"]),
                       epoch=int(raw["epoch"]), expires_at=float(raw["expires_at"]),
                       written_at=float(raw["written_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InboxUnusable(f"lease marker {where} cannot be read ({type(exc).__name__}: {exc}); "
                                "if no other instance works this inbox, remove the file") from None


# --------------------------------------------------------------------------- pure helpers


def check_name(name: str) -> str:
    """Return `name` if it is a plain file name inside a folder; raise UnsafeNameError otherwise."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise UnsafeNameError(f"refused file name {name!r}: not a plain file name")
    if "/" in name or "\\" in name:
        raise UnsafeNameError(f"refused file name {name!r}: it contains a path separator")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeNameError(f"refused file name {name!r}: it contains control characters")
    return name


def stamped_name(name: str, when: float | None = None, attempt: int = 0) -> str:
    """`report.csv` -> `report.20240131T020304Z.csv` (and `...Z-2.csv` on later attempts).

    Used when a target folder already holds a file of that name: nothing is overwritten.
    A name that would not fit in NAME_MAX bytes is shortened before the stamp (`fit_name`)."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if attempt:
        stamp = f"{stamp}-{attempt + 1}"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dotfile like ".x"
        return fit_name(f"{name}.{stamp}", keep_end=f".{stamp}")
    return fit_name(f"{stem}.{stamp}.{ext}", keep_end=f".{stamp}.{ext}")


def marker_name(data_name: str, source_name: str, marker: str) -> str:
    """The name a marker gets beside its data file's new name `data_name` (within NAME_MAX)."""
    suffix = marker[len(source_name):]
    return fit_name(data_name + suffix, keep_end=suffix)


def folder_path(base: str, folder: str) -> str:
    """A configured folder (POSIX): absolute as given, relative to the inbox otherwise."""
    return posixpath.normpath(folder if folder.startswith("/") else posixpath.join(base, folder))


def _match(name: str, patterns: list[str]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


@dataclass(frozen=True)
class NameRules:
    """Which names in an inbox are data files, markers, or neither. Case-insensitive globs."""

    patterns: tuple[str, ...]
    ignore_patterns: tuple[str, ...]
    marker_suffixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: InboxSettings) -> NameRules:
        return cls(tuple(settings.patterns), tuple(settings.ignore_patterns), tuple(settings.marker_suffixes))

    def is_marker(self, name: str) -> bool:
        lowered = name.lower()
        return not name.startswith(".") and any(lowered.endswith(s.lower()) for s in self.marker_suffixes)

    def is_data(self, name: str) -> bool:
        if name.startswith(".") or self.is_marker(name):
            return False
        if _match(name, list(self.ignore_patterns)):
            return False
        return _match(name, list(self.patterns))

    def markers_for(self, name: str) -> list[str]:
        return [name + s for s in self.marker_suffixes]


# --------------------------------------------------------------------------- interface


def name_is_safe(name: str, refused: set[str], where: str) -> bool:
    """False for a name that tries to leave the inbox (logged once per name; the file stays put)."""
    try:
        check_name(name)
    except UnsafeNameError as exc:
        if name not in refused:
            refused.add(name)
            log.error("%s: %s; the file is left where it is", where, exc)
        return False
    return True


def newest_first(entries: list[FileStat], rules: NameRules) -> list[FileStat]:
    """The data files among `entries` (a folder's regular files), newest first (mtime, then name)."""
    return sorted((entry for entry in entries if rules.is_data(entry.name)), key=lambda e: (e.mtime, e.name),
                  reverse=True)


def archived_data_name(name: str, rules: NameRules, where: str) -> str:
    """`name` if an archived file of that name may be fetched: a plain name (UnsafeNameError
    otherwise) of one of the feed's data files (ArchivedFileRefused: a marker, a dotfile, a name
    its patterns do not take). `where` is the file's path, for the message."""
    check_name(name)
    if not rules.is_data(name):
        raise ArchivedFileRefused(f"cannot fetch {display_name(where)}: it is not one of the feed's data files (a "
                                  "marker, a dotfile, or a name its patterns do not take)")
    return name


def refuse_unless_regular(mode: int, where: str) -> None:
    """ArchivedFileRefused unless `mode` (by lstat, or of an opened file) is a regular file's."""
    if stat.S_ISREG(mode):
        return
    kind = "a symbolic link" if stat.S_ISLNK(mode) else file_kind(mode)
    raise ArchivedFileRefused(f"cannot fetch {display_name(where)}: it is {kind}, not a regular file")


def too_large(where: str, limit: int, size: int | None = None) -> ArchivedFileRefused:
    """The error for an archived file over `limit` bytes: its size when known before the copy,
    else (it grew while it was read) that it went past the limit."""
    if size is not None:
        return ArchivedFileRefused(f"cannot fetch {display_name(where)}: it is {size:,} bytes, larger than the "
                                   f"limit of {limit:,} bytes")
    return ArchivedFileRefused(f"cannot fetch {display_name(where)}: it grew past the limit of {limit:,} bytes "
                               "while it was read")


def left_in_processing(entries: list[FileStat], rules: NameRules) -> list[Claimed]:
    """The data files a previous run left in processing/, each with its marker, oldest first."""
    names = {entry.name for entry in entries}
    found = []
    for entry in entries:
        if not rules.is_data(entry.name):
            continue
        marker = next((m for m in rules.markers_for(entry.name) if m in names), None)
        found.append(Claimed(entry.name, display_name(entry.name), entry.size, entry.mtime, marker))
    found.sort(key=lambda claimed: (claimed.mtime, claimed.name))
    return found


class Inbox(abc.ABC):
    """One feed's inbox. Not thread-safe: use one instance per thread."""

    settings: InboxSettings

    @abc.abstractmethod
    def scan(self) -> list[Candidate]:
        """Files that are ready now, oldest first (by mtime, then name)."""

    @abc.abstractmethod
    def claim(self, candidate: Candidate) -> Claimed | None:
        """Rename the file into processing/; None when another instance took it first."""

    @abc.abstractmethod
    def open_local(self, claimed: Claimed, staging_dir: Path) -> Path:
        """A local path with the claimed file's complete content."""

    @abc.abstractmethod
    def put_receipt(self, local_path: Path, name: str) -> None:
        """Place a receipt in the outbox under `name`, atomically (never half a file)."""

    @abc.abstractmethod
    def receipt_dir(self, staging_dir: Path) -> Path:
        """The folder a receipt of this inbox is written into: the outbox itself when it is a
        local folder, else a folder under the feed's `staging_dir` (`publish_receipt` uploads)."""

    @abc.abstractmethod
    def publish_receipt(self, files: Sequence[Path], before: Callable[[Path], None] | None = None) -> list[str]:
        """Bring a receipt written into `receipt_dir` to the outbox: each of `files` that is
        there, in the order given (ReceiptPaths.files: the CSV, its rejected-rows file, the JSON
        -- the sign of a complete receipt -- last), `before(path)` called before each is put
        (the worker's fence: it raises to refuse). A local outbox has them already: nothing is
        done. The staged copies are removed once every file is in the outbox. Returns where
        each of `files` is now, for people."""

    def release_local(self, path: Path) -> None:  # noqa: B027 - a local inbox has nothing to release
        """The local path `open_local` gave is no longer needed: a copy in the staging folder
        (SFTP) is removed; a local inbox's path is the file itself and stays."""

    @abc.abstractmethod
    def finish(self, claimed: Claimed, ok: bool) -> str:
        """Move the file (and its marker) to archive/ (ok) or error/; returns the name it got there."""

    @abc.abstractmethod
    def resume(self, began: Callable[[Claimed], bool] | None = None) -> list[Claimed]:
        """Files in processing/ to resume, oldest first.

        With `began` (the worker's: is this file known to the journal as begun by this tool?),
        a file this tool did not claim -- copied into processing/ by hand, perhaps still being
        written -- is returned only once it passes the readiness rules of a new arrival; until
        then it is in `waiting_in_processing` (batch.inbox.processing). Without `began`: every
        data file there, for a listing (status, handover), never to take."""

    @property
    def waiting_in_processing(self) -> tuple[str, ...]:
        """Files in processing/ this tool did not claim that are not ready yet (the last `resume`)."""
        return ()

    @abc.abstractmethod
    def list_archive(self) -> list[FileStat]:
        """The data files in archive/, newest first (by mtime, then name), read-only. The feed's
        name rules apply as in the inbox: markers, dotfiles (temporaries), names its patterns do
        not take and unsafe names are left out, and so is every entry that is not a regular file
        (a symlink is never followed, a folder never entered). An archive/ that is not there
        lists nothing."""

    @abc.abstractmethod
    def fetch_archived(self, name: str, staging_dir: Path, max_bytes: int,
                       on_data: Callable[[bytes], None] | None = None) -> Path:
        """A complete copy of archive/`name` at `staging_dir`/`name`, made with the staging
        helpers of `open_local` (a temporary renamed when complete: never half a file there).
        The caller owns the copy and removes it. Each block read goes to `on_data` too (e.g. a
        hash, computed while the file is copied).

        Refused: an unsafe name (UnsafeNameError); a name that is not one of the feed's data
        files, an entry that is not a regular file (a symlink is never followed), a file of more
        than `max_bytes` bytes, or one that grows past them while it is read (ArchivedFileRefused,
        the copy removed). A file that is not there: FileNotFoundError naming it."""

    @abc.abstractmethod
    def read_lease_marker(self) -> LeaseMarker | None:
        """The inbox's lease marker, or None when there is none."""

    @abc.abstractmethod
    def write_lease_marker(self, marker: LeaseMarker, *, replace: bool) -> bool:
        """Write the marker atomically (a temporary, then a rename). `replace=False`: only if
        there is none (a rename that never replaces: of two instances, one wins); False when
        one was there."""

    @abc.abstractmethod
    def remove_lease_marker(self) -> None:
        """Remove the marker (nothing if there is none)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` (default: the poll interval); True if woken early by a change."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release watchers and connections. Idempotent."""

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
