"""The playground's files: a feed's mapping (read, and saved with its earlier versions) and the
files in its archive.

Saving a mapping: only a text that validates (batch.transform.mapcheck, the checks of
`validate`) is written; the text the editor started from must still be the file's content (its
SHA-256), else the save is refused as a concurrent edit; the file in force is kept as
`NAME.yaml.1` (the one before as `.2`, …, `versions` kept) and the new text replaces it
atomically (fsutil.atomic_writer). Savers take a lock on the mapping's folder (flock), so two
consoles never interleave the check and the write. The running service sees the new content at
its next reload poll (batch.service.reload.ConfigWatcher hashes every feed's mapping file) and
loads it as a configuration change; nothing here signals it.

The archive: the feed's `archive/`, local or on its SFTP server, read through the feed's inbox
(batch.inbox.base.Inbox.list_archive and fetch_archived: the inbox's name rules, no symlink
followed, a size limit): listed newest first, and the files a preview or a diff reads copied
into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batch.config.service import FeedSettings
from batch.errors import ConfigurationError
from batch.fsutil import atomic_writer, file_kind, open_folder, read_regular_file
from batch.inbox import (
    ArchivedFileRefused,
    HostKeyError,
    Inbox,
    InboxUnavailable,
    InboxUnusable,
    UnsafeNameError,
    open_inbox,
)
from batch.store.rejected import original_from_archive
from batch.transform.mapcheck import MAX_MAPPING_CHARS, Problem, check_mapping_text

DEFAULT_VERSIONS = 10  # earlier versions kept beside a mapping: NAME.yaml.1 … NAME.yaml.10
MAX_VERSIONS = 1000
MAX_MAPPING_BYTES = 4 * MAX_MAPPING_CHARS  # a kept version read back: what the editor accepts, in UTF-8


class PlaygroundError(ConfigurationError):
    """What the playground cannot do; the message is shown to the administrator as it is."""


class ArchiveNotAvailable(PlaygroundError):
    pass


class ConcurrentEdit(PlaygroundError):
    pass


class MappingRefused(PlaygroundError):
    """The text has problems: nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("the mapping has problems; it was not saved:\n" + "\n".join(p.text for p in problems))


class MappingSlotTaken(PlaygroundError):
    """A save that would have to move, delete or write through something the playground did not
    make (the mapping is a link, a version's name is taken by a folder or a link): nothing written."""


class UnsafeFileName(PlaygroundError):
    """A file name a request gave that is not a plain file of the feed's archive."""


def text_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class MappingText:
    path: Path
    text: str
    hash: str  # of the bytes on disk: what a save must find unchanged


def read_mapping(feed: FeedSettings) -> MappingText:
    try:
        data = read_regular_file(feed.mapping)
    except OSError as exc:
        raise PlaygroundError(f"cannot read the mapping {feed.mapping}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlaygroundError(
            f"the mapping {feed.mapping} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return MappingText(feed.mapping, text, text_hash(data))


@dataclass(frozen=True)
class Saved:
    path: Path
    hash: str
    kept: str | None  # the name the earlier version got (NAME.yaml.1), None for a new file


def save_mapping(feed: FeedSettings, text: str, base_hash: str, versions: int = DEFAULT_VERSIONS) -> Saved:
    """Write `text` as the feed's mapping if it validates and the file still has `base_hash`."""
    if not 0 <= versions <= MAX_VERSIONS:
        raise PlaygroundError(f"versions must be 0 … {MAX_VERSIONS} (got {versions})")
    path = feed.mapping
    checked = check_mapping_text(text, path.name)
    if not checked.ok:
        raise MappingRefused(checked.problems)
    data = text.encode("utf-8")
    if path.is_symlink():
        raise MappingSlotTaken(
            f"{path.name} is a symbolic link (to {os.readlink(path)}): the playground neither replaces the link "
            "nor writes through it; nothing was saved (edit the file it leads to, or replace the link by the file)")
    folder = open_folder(path.parent)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor is closed
        try:
            current = read_regular_file(path)
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise PlaygroundError(f"cannot read the mapping {path}: {exc.strerror or exc}") from None
        if text_hash(current or b"") != base_hash:
            raise ConcurrentEdit(
                f"{path.name} was changed since this editor loaded it (by someone else, or in another tab): "
                "nothing was saved; reload it and make the edit again")
        kept = None
        mode = 0o644
        if current is not None:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            kept = _keep_version(path, current, versions, mode)
        with atomic_writer(path, mode, what="save the mapping") as out:
            out.write(data)
    finally:
        os.close(folder)
    return Saved(path, text_hash(data), kept)


def _version_slot(path: Path, number: int) -> bool:
    """True when NAME.yaml.<number> holds a kept version (a regular file), False when it is free;
    MappingSlotTaken when something else is there (a folder, a link, a FIFO): the playground does not
    move, delete or write through what it did not make."""
    slot = path.with_name(f"{path.name}.{number}")
    try:
        mode = os.lstat(slot).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise MappingSlotTaken(f"cannot look at {slot.name}: {exc.strerror}; nothing was saved") from None
    if stat.S_ISREG(mode):
        return True
    kind = "a symbolic link" if stat.S_ISLNK(mode) else file_kind(mode)
    raise MappingSlotTaken(
        f"{slot.name} is {kind}, not a kept version of {path.name}: the playground does not move or "
        "delete it; nothing was saved (remove or rename it, then save again)")


def _keep_version(path: Path, current: bytes, versions: int, mode: int) -> str | None:
    """NAME.yaml.1 becomes .2 (and so on up to the first free number; when none is free the
    oldest, .`versions`, is dropped); the file in force becomes .1. Each step is a rename or an
    atomic write: a crash leaves every version whole. Nothing moves unless every slot is a kept
    version or free."""
    if versions == 0:
        return None
    taken = [_version_slot(path, number) for number in range(1, versions + 1)]
    free = taken.index(False) + 1 if False in taken else versions
    if free == versions and taken[-1]:
        path.with_name(f"{path.name}.{versions}").unlink()
    for number in range(free - 1, 0, -1):
        os.replace(path.with_name(f"{path.name}.{number}"), path.with_name(f"{path.name}.{number + 1}"))
    first = path.with_name(f"{path.name}.1")
    with atomic_writer(first, mode, what="keep the earlier mapping") as out:
        out.write(current)
    return first.name


def mapping_versions(feed: FeedSettings, versions: int = DEFAULT_VERSIONS) -> list[str]:
    """The kept earlier versions, newest first (NAME.yaml.1, NAME.yaml.2, …): regular files only
    (a link there is not one the playground kept)."""
    path = feed.mapping
    found = []
    for number in range(1, versions + 1):
        try:
            if stat.S_ISREG(os.lstat(path.with_name(f"{path.name}.{number}")).st_mode):
                found.append(f"{path.name}.{number}")
        except OSError:
            continue
    return found


def read_version(feed: FeedSettings, number: int) -> str:
    """The text of the earlier version NAME.yaml.<number> (to load into the editor: a revert is
    an edit like any other, shown in the diff and saved as a new version)."""
    if not 1 <= number <= MAX_VERSIONS:
        raise PlaygroundError(f"no version {number} of {feed.mapping.name}")
    path = feed.mapping.with_name(f"{feed.mapping.name}.{number}")
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):  # never read through: it may lead to any file
            raise PlaygroundError(f"{path.name} is a symbolic link, not a version the playground kept")
        data = read_regular_file(path, MAX_MAPPING_BYTES)
    except FileNotFoundError:
        raise PlaygroundError(f"no version {number} of {feed.mapping.name} is kept") from None
    except OSError as exc:
        raise PlaygroundError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if len(data) > MAX_MAPPING_BYTES:
        raise PlaygroundError(f"{path.name} is bigger than {MAX_MAPPING_BYTES:,} bytes: not a mapping")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlaygroundError(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# --- the archive ---------------------------------------------------------------------------------

#: An archived file larger than this is not read by the playground (it would be copied to a
#: temporary folder first, and mapped twice by a diff).
ARCHIVE_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ArchivedFile:
    name: str
    size: int
    mtime: float


@contextmanager
def _archive(feed: FeedSettings) -> Iterator[Inbox]:
    """The feed's inbox, opened to read its archive (no file system watcher; an SFTP server gets
    the short connect timeout of the console's feeds page). An inbox that cannot be opened or
    reached is an ArchiveNotAvailable that says why, once."""
    quick = feed.model_copy(update={"mode": "polling",
                                    "connect_timeout_seconds": min(feed.connect_timeout_seconds, 5.0)})
    try:
        with open_inbox(quick) as inbox:
            yield inbox
    except InboxUnavailable as exc:
        raise ArchiveNotAvailable(f"feed {feed.name}: its archive cannot be read now: {exc}") from None
    except (InboxUnusable, HostKeyError) as exc:
        raise ArchiveNotAvailable(f"feed {feed.name}: its archive cannot be read: {exc}") from None
    except OSError as exc:  # a local folder (or the staging folder) refused: named by the inbox
        raise PlaygroundError(f"feed {feed.name}: {exc}") from None


def archived_files(feed: FeedSettings, limit: int | None = None) -> list[ArchivedFile]:
    """The data files in the feed's archive (not markers or temporaries), newest first, through
    its inbox (local or SFTP: batch.inbox.base.Inbox.list_archive)."""
    with _archive(feed) as inbox:
        found = [ArchivedFile(entry.name, entry.size, entry.mtime) for entry in inbox.list_archive()]
    return found[:limit] if limit is not None else found


def archived_count(feed: FeedSettings) -> int:
    """How many data files the feed's archive holds (through its inbox)."""
    with _archive(feed) as inbox:
        return len(inbox.list_archive())


def _fetch(feed: FeedSettings, inbox: Inbox, name: str, staging: Path) -> Path:
    try:
        return inbox.fetch_archived(name, staging, ARCHIVE_MAX_BYTES)
    except UnsafeNameError as exc:
        raise UnsafeFileName(str(exc)) from None
    except ArchivedFileRefused as exc:  # a symlink, a folder, not a data file, too large
        raise UnsafeFileName(f"feed {feed.name}: {exc}") from None
    except FileNotFoundError:
        raise PlaygroundError(f"feed {feed.name}: no file {name!r} in its archive") from None


@contextmanager
def archived_copy(feed: FeedSettings, name: str) -> Iterator[Path]:
    """A copy of the archived file `name` (a plain name of a regular data file in the archive, at
    most ARCHIVE_MAX_BYTES), fetched through the feed's inbox into a temporary folder that is
    removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="usageplace-playground-") as staging:
        with _archive(feed) as inbox:
            path = _fetch(feed, inbox, name, Path(staging))
        yield path


@contextmanager
def last_archived_copies(feed: FeedSettings, count: int) -> Iterator[list[tuple[str, Path]]]:
    """(name, copy) of the feed's last `count` archived files, newest first, fetched through its
    inbox (one connection) into a temporary folder that is removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="usageplace-playground-") as staging:
        with _archive(feed) as inbox:
            files = [(entry.name, _fetch(feed, inbox, entry.name, Path(staging)))
                     for entry in inbox.list_archive()[:count]]
        yield files


@contextmanager
def original_copy(feed: FeedSettings, name: str, size: int, sha256: str, staging: Path) -> Iterator[Path | None]:
    """The processed file `name` as the feed's archive holds it (under its name or a stamped one),
    recognised by its size and sha256, fetched through the feed's inbox (local or SFTP) into
    `staging` (batch.store.rejected.original_from_archive) and removed when the block ends; None
    when it is not there. Larger than ARCHIVE_MAX_BYTES: PlaygroundError, nothing fetched."""
    if size > ARCHIVE_MAX_BYTES:
        raise PlaygroundError(f"feed {feed.name}: {name} is {size:,} bytes, larger than the limit of "
                              f"{ARCHIVE_MAX_BYTES:,} bytes the console downloads from an archive")
    with _archive(feed) as inbox, original_from_archive(inbox, staging, name, size, sha256) as copy:
        yield copy
