"""Read-only access to a feed's archive/ through its inbox, the same for a local folder and for a
real OpenSSH sshd: the archived data files newest first (the inbox's name rules: markers,
dotfiles, unsafe names, symlinks and folders left out), and one file fetched to a staging folder
(bounded, never through a symlink, never half a copy left behind)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch.config.inbox import InboxSettings
from batch.inbox import open_inbox
from batch.inbox.base import ArchivedFileRefused, FileStat, Inbox, UnsafeNameError, too_large
from batch.inbox.staging import COPY_BLOCK, copy_bounded, staged_file

Settings = Callable[..., InboxSettings]

OLD, MID, NEW = b"id\nold\n", b"id\nmid-1\nmid-2\n", b"id\n" + b"new\n" * 1000


@pytest.fixture(params=["local", "sftp"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def folder(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The inbox folder on disk (for SFTP: as the server, this machine, sees it)."""
    if kind == "sftp":
        return Path(request.getfixturevalue("remote_inbox"))
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def where(kind: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """How the inbox names a path of its archive/ in messages."""
    if kind == "sftp":
        return f"{request.getfixturevalue('sshd').url_prefix}{folder}/archive"
    return f"{folder}/archive"


@pytest.fixture
def inbox(kind: str, folder: Path, request: pytest.FixtureRequest) -> Iterator[Inbox]:
    common = {"marker_suffixes": [".done"], "mode": "polling", "poll_interval_seconds": 0.1}
    if kind == "sftp":
        settings = request.getfixturevalue("sftp_settings")(**common)
    else:
        settings = InboxSettings(inbox=str(folder), **common)
    with open_inbox(settings) as opened:
        yield opened


def fill_archive(archive: Path, outside: Path) -> None:
    """Three data files (old, mid, new by mtime) and everything that is not one."""
    archive.mkdir(parents=True, exist_ok=True)
    for age, (name, data) in enumerate([("new.csv", NEW), ("mid.csv", MID), ("old.csv", OLD)]):
        (archive / name).write_bytes(data)
        os.utime(archive / name, (1_700_000_000 - age * 100,) * 2)
    (archive / "mid.csv.done").write_bytes(b"")                    # a marker that came with its file
    (archive / ".hidden.csv").write_bytes(b"id\nhidden\n")         # a dotfile
    (archive / ".new.csv.0123456789ab.tmp").write_bytes(b"id\n")   # a temporary of ours
    (archive / "notes.txt").write_bytes(b"not a data file\n")      # not in the feed's patterns
    (archive / "bad\x1bname.csv").write_bytes(b"id\n")             # an unsafe name (a control character)
    outside.write_bytes(b"secret\n")
    (archive / "link.csv").symlink_to(outside)                     # a symlink out of the archive
    (archive / "sub.csv").mkdir()                                  # a folder named like data


def test_the_archive_lists_its_data_files_newest_first(inbox: Inbox, folder: Path, tmp_path: Path) -> None:
    assert inbox.list_archive() == []  # opened: the folder is there, empty
    fill_archive(folder / "archive", tmp_path / "outside.csv")
    assert inbox.list_archive() == [
        FileStat("new.csv", len(NEW), 1_700_000_000.0),
        FileStat("mid.csv", len(MID), 1_699_999_900.0),
        FileStat("old.csv", len(OLD), 1_699_999_800.0),
    ]


def test_an_archived_file_is_fetched_whole_and_hashed_as_it_is_copied(inbox: Inbox, folder: Path,
                                                                      tmp_path: Path) -> None:
    fill_archive(folder / "archive", tmp_path / "outside.csv")
    staging = tmp_path / "staging"
    digest = hashlib.sha256()
    copy = inbox.fetch_archived("new.csv", staging, len(NEW), digest.update)
    assert copy == staging / "new.csv" and copy.read_bytes() == NEW
    assert digest.hexdigest() == hashlib.sha256(NEW).hexdigest()
    assert (folder / "archive" / "new.csv").read_bytes() == NEW  # read-only: the archive is as it was
    assert sorted(p.name for p in staging.iterdir()) == ["new.csv"]  # no temporary beside it


def test_what_is_not_an_archived_data_file_is_refused_and_nothing_is_left(
        inbox: Inbox, kind: str, folder: Path, where: str, tmp_path: Path) -> None:
    fill_archive(folder / "archive", tmp_path / "outside.csv")
    staging = tmp_path / "staging"
    refused = {
        "link.csv": f"cannot fetch {where}/link.csv: it is a symbolic link, not a regular file",
        "sub.csv": f"cannot fetch {where}/sub.csv: it is a directory, not a regular file",
        "notes.txt": f"cannot fetch {where}/notes.txt: it is not one of the feed's data files (a marker, a "
                     "dotfile, or a name its patterns do not take)",
        "mid.csv.done": f"cannot fetch {where}/mid.csv.done: it is not one of the feed's data files (a marker, a "
                        "dotfile, or a name its patterns do not take)",
        ".hidden.csv": f"cannot fetch {where}/.hidden.csv: it is not one of the feed's data files (a marker, a "
                       "dotfile, or a name its patterns do not take)",
        "new.csv": f"cannot fetch {where}/new.csv: it is 4,003 bytes, larger than the limit of 4,002 bytes",
    }
    for name, message in refused.items():
        with pytest.raises(ArchivedFileRefused) as error:
            inbox.fetch_archived(name, staging, len(NEW) - 1)
        assert str(error.value) == message, name
    for name, message in [("../outside.csv", "refused file name '../outside.csv': it contains a path separator"),
                          ("bad\x1bname.csv", "refused file name 'bad\\x1bname.csv': it contains control characters")]:
        with pytest.raises(UnsafeNameError) as unsafe:
            inbox.fetch_archived(name, staging, 1 << 20)
        assert str(unsafe.value) == message
    with pytest.raises(FileNotFoundError) as gone:  # listed a moment ago, gone now (pruned by hand)
        inbox.fetch_archived("gone.csv", staging, 1 << 20)
    reason = "No such file" if kind == "sftp" else "No such file or directory"
    assert str(gone.value) == f"cannot fetch from archive/: {where}/gone.csv: {reason} (ENOENT)"
    assert list(staging.iterdir()) == []  # no copy, no temporary


def test_a_file_that_vanishes_between_listing_and_fetching_is_said_to_be_gone(
        inbox: Inbox, kind: str, folder: Path, where: str, tmp_path: Path) -> None:
    fill_archive(folder / "archive", tmp_path / "outside.csv")
    listed = [entry.name for entry in inbox.list_archive()]
    (folder / "archive" / listed[0]).unlink()
    with pytest.raises(FileNotFoundError, match=f"^cannot fetch from archive/: {where}/new.csv: No such file"):
        inbox.fetch_archived(listed[0], tmp_path / "staging", 1 << 20)
    assert inbox.fetch_archived(listed[1], tmp_path / "staging", 1 << 20).read_bytes() == MID


def test_a_file_that_grows_past_the_limit_while_it_is_copied_leaves_nothing(tmp_path: Path) -> None:
    """The limit holds for what is read, not only for the size seen before (a file still growing)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    growing = io.BytesIO(b"x" * (3 * COPY_BLOCK))  # more than the size checked before the copy
    with pytest.raises(ArchivedFileRefused) as refused, staged_file(staging, "g.csv", "fetch from archive/") as out:
        copy_bounded(growing.read, out, 2 * COPY_BLOCK, None, lambda: too_large("/srv/in/archive/g.csv", 2 * COPY_BLOCK))
    assert str(refused.value) == ("cannot fetch /srv/in/archive/g.csv: it grew past the limit of 2,097,152 bytes "
                                  "while it was read")
    assert list(staging.iterdir()) == []
