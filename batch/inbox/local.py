"""The inbox as a local folder: watchdog (inotify) events, or a plain scan for NFS/CIFS mounts.

Used when the service runs on the SFTP host itself. Claims and archive moves are renames
inside one file system; on Linux they use renameat2(RENAME_NOREPLACE), so a second
instance can never take the same file and nothing is ever overwritten.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from batch.inbox.base import (
    name_is_safe,
    left_in_processing,
    Candidate,
    Claimed,
    FileStat,
    Inbox,
    InboxError,
    InboxSettings,
    LocalLocation,
    NameRules,
    check_name,
    folder_path,
    stamped_name,
)
from batch.inbox.readiness import Readiness

log = logging.getLogger(__name__)

_MAX_NAME_ATTEMPTS = 20

# --------------------------------------------------------------------------- no-replace rename

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc / not Linux
    _renameat2 = None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename atomically, failing with FileExistsError instead of replacing `dst`.

    FileNotFoundError means `src` is gone (another instance renamed it first)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # File systems without RENAME_NOREPLACE: check, then rename. The rename itself is still
    # atomic, so two instances cannot both take `src`; only a same-named file arriving at
    # `dst` in between could be replaced.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "target exists", str(dst))
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- events


def _not_shutdown_noise(record: logging.LogRecord) -> bool:
    # watchdog logs this at ERROR when its inotify thread is stopped while reading: harmless,
    # and alarming in an operator's log. Filtered where it is emitted, for every entry point.
    return "called when the thread is inactive" not in str(record.msg)


logging.getLogger("watchdog.observers.inotify").addFilter(_not_shutdown_noise)


def _make_observer():  # type: ignore[no-untyped-def]
    try:
        from watchdog.observers.inotify import InotifyObserver

        # Full events: a file moved in from another folder is a move (with an empty source),
        # not a "created" event that would look like a writer still at work.
        return InotifyObserver(generate_full_events=True)
    except (ImportError, OSError):
        from watchdog.observers import Observer

        return Observer()


class _Handler:
    """Turns watchdog events for the inbox folder into (kind, name) messages."""

    def __init__(self, root: str, events: queue.SimpleQueue[tuple[str, str]], wake: threading.Event) -> None:
        self._root = root
        self._events = events
        self._wake = wake

    def dispatch(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.is_directory:
            return
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        if kind == "closed":
            self._put("closed", src, wake=True)
        elif kind == "moved":
            dest = os.fsdecode(event.dest_path)
            if dest:
                self._put("closed", dest, wake=True)  # renamed into (or inside) the inbox
        elif kind in ("created", "modified"):
            self._put("changed", src, wake=False)

    def _put(self, kind: str, path: str, *, wake: bool) -> None:
        if os.path.dirname(path) != self._root:
            return
        self._events.put((kind, os.path.basename(path)))
        if wake:
            self._wake.set()


# --------------------------------------------------------------------------- the inbox


class LocalInbox(Inbox):
    def __init__(self, settings: InboxSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        location = settings.location
        if not isinstance(location, LocalLocation):
            raise InboxError(f"not a local inbox: {settings.inbox}")
        self.settings = settings
        self.root = Path(os.path.abspath(location.path))
        if not self.root.is_dir():
            raise InboxError(f"inbox folder {self.root} does not exist or is not a folder")
        self.processing = Path(folder_path(str(self.root), settings.processing_dir))
        self.archive = Path(folder_path(str(self.root), settings.archive_dir))
        self.error = Path(folder_path(str(self.root), settings.error_dir))
        self.outbox = Path(folder_path(str(self.root), settings.outbox_dir))
        for folder in (self.processing, self.archive, self.error, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)

        self._rules = NameRules.from_settings(settings)
        self._readiness = Readiness(self._rules, settings.min_age_seconds, clock)
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self._refused: set[str] = set()
        self._observer = None
        if settings.mode == "native":
            self._start_observer()

    def _start_observer(self) -> None:
        observer = _make_observer()
        try:
            observer.schedule(_Handler(str(self.root), self._events, self._wake), str(self.root), recursive=False)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit
            log.warning("inbox %s: file system events unavailable (%s); polling every %.0f s",
                        self.root, exc, self.settings.poll_interval_seconds)
            return
        self._observer = observer

    @property
    def native(self) -> bool:
        """True when file system events are being received."""
        return self._observer is not None

    # -- scan

    def _drain_events(self) -> None:
        while True:
            try:
                kind, name = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "closed" and self.settings.ready_on_close:
                self._readiness.note_closed(name)
            elif kind == "changed":
                self._readiness.note_changed(name)

    def _safe(self, name: str) -> bool:
        return name_is_safe(name, self._refused, f"inbox {self.root}")

    def _list(self, folder: Path) -> list[FileStat]:
        entries: list[FileStat] = []
        with os.scandir(folder) as it:
            for entry in it:
                if not self._safe(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):  # never follow a symlink out of the inbox
                    entries.append(FileStat(entry.name, st.st_size, st.st_mtime))
        return entries

    def scan(self) -> list[Candidate]:
        self._drain_events()
        return self._readiness.observe(self._list(self.root))

    # -- claim and finish

    def _move(self, src: Path, folder: Path, name: str) -> str:
        """Rename `src` into `folder` as `name`, or a timestamped name if that is taken."""
        target = name
        for attempt in range(_MAX_NAME_ATTEMPTS):
            try:
                rename_noreplace(src, folder / target)
                return target
            except FileExistsError:
                target = stamped_name(name, attempt=attempt)
        raise InboxError(f"no free name for {name} in {folder} after {_MAX_NAME_ATTEMPTS} attempts")

    def claim(self, candidate: Candidate) -> Claimed | None:
        name = check_name(candidate.name)
        try:
            target = self._move(self.root / name, self.processing, name)
        except FileNotFoundError:
            log.info("inbox %s: %s was claimed by another instance", self.root, name)
            self._readiness.forget(name)
            return None
        self._readiness.forget(name)
        st = os.stat(self.processing / target)
        marker = None
        if candidate.marker is not None:
            check_name(candidate.marker)
            marker_target = target + candidate.marker[len(name):]
            try:
                rename_noreplace(self.root / candidate.marker, self.processing / marker_target)
                marker = marker_target
            except (FileNotFoundError, FileExistsError) as exc:
                log.warning("inbox %s: marker %s not moved with %s: %s", self.root, candidate.marker, name, exc)
        return Claimed(target, name, st.st_size, st.st_mtime, marker)

    def finish(self, claimed: Claimed, ok: bool) -> str:
        name = check_name(claimed.name)
        folder = self.archive if ok else self.error
        target = self._move(self.processing / name, folder, name)
        if claimed.marker is not None:
            check_name(claimed.marker)
            try:
                self._move(self.processing / claimed.marker, folder, target + claimed.marker[len(name):])
            except FileNotFoundError:
                pass
        return target

    def resume(self) -> list[Claimed]:
        return left_in_processing(self._list(self.processing), self._rules)

    # -- content

    def open_local(self, claimed: Claimed, staging_dir: Path) -> Path:
        path = self.processing / check_name(claimed.name)
        if not path.is_file():
            raise InboxError(f"{path} is not in processing/ any more")
        return path

    def put_receipt(self, local_path: Path, name: str) -> None:
        check_name(name)
        tmp = self.outbox / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            with open(local_path, "rb") as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, self.outbox / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.outbox)

    # -- waiting

    def wait(self, timeout: float | None = None) -> bool:
        if self._closed:
            return False
        woke = self._wake.wait(self.settings.poll_interval_seconds if timeout is None else timeout)
        self._wake.clear()
        return woke and not self._closed

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
