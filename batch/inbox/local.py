"""The inbox as a local folder: watchdog (inotify) events, or a plain scan for NFS/CIFS mounts.

Used when the service runs on the SFTP host itself. Claims and archive moves are renames
inside one file system; on Linux they use renameat2(RENAME_NOREPLACE), so a second
instance can never take the same file and nothing is ever overwritten.

The service's own folders (processing/, archive/, error/, outbox/) must be real folders: a
symlink there, or between the inbox and them, is refused when the inbox opens, and every
move, listing and receipt write goes through a folder descriptor opened with O_NOFOLLOW, so
a link put in place later is refused too, never followed. (The configured inbox folder
itself may be a symlink: that is the administrator's.) Temporaries a killed receipt write
left in the outbox are removed when the inbox opens (`fsutil.remove_stale_temporaries`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batch.config.inbox import InboxSettings, LocalLocation
from batch.fsutil import (
    OwnFolderPath,
    atomic_writer,
    display_name,
    named_error,
    open_folder,
    remove_stale_temporaries,
    symlink_refusal,
    temporary_basename,
)
from batch.inbox.base import (
    LEASE_MARKER_MAX_BYTES,
    LEASE_MARKER_NAME,
    ArchivedFileRefused,
    Candidate,
    Claimed,
    FileStat,
    Inbox,
    InboxUnusable,
    LeaseMarker,
    NameRules,
    archived_data_name,
    check_name,
    folder_path,
    left_in_processing,
    marker_name,
    name_is_safe,
    newest_first,
    refuse_unless_regular,
    stamped_name,
    too_large,
)
from batch.inbox.processing import ProcessingFolder
from batch.inbox.readiness import Readiness
from batch.inbox.staging import clean_staging, copy_bounded, prepare_staging, staged_file

if TYPE_CHECKING:  # watchdog is imported when a local inbox starts watching
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver

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
    _renameat2 = None  # type: ignore[assignment]  # checked before each use


def rename_noreplace(src: Path | str, dst: Path | str, *, src_dir_fd: int = _AT_FDCWD,
                     dst_dir_fd: int = _AT_FDCWD) -> None:
    """Rename atomically, failing with FileExistsError instead of replacing `dst`.

    FileNotFoundError means `src` is gone (another instance renamed it first). With folder
    descriptors, `src` and `dst` are names inside those folders (renameat2)."""
    if _renameat2 is not None:
        if _renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # File systems without RENAME_NOREPLACE: check, then rename. The rename itself is still
    # atomic, so two instances cannot both take `src`; only a same-named file arriving at
    # `dst` in between could be replaced.
    fd_src = None if src_dir_fd == _AT_FDCWD else src_dir_fd
    fd_dst = None if dst_dir_fd == _AT_FDCWD else dst_dir_fd
    try:
        os.stat(dst, dir_fd=fd_dst, follow_symlinks=False)
        raise FileExistsError(errno.EEXIST, "target exists", str(dst))
    except FileNotFoundError:
        pass
    os.rename(src, dst, src_dir_fd=fd_src, dst_dir_fd=fd_dst)


# --------------------------------------------------------------------------- events


def _not_shutdown_noise(record: logging.LogRecord) -> bool:
    # watchdog logs this at ERROR when its inotify thread is stopped while reading: harmless,
    # and alarming in an operator's log. Filtered where it is emitted, for every entry point.
    return "called when the thread is inactive" not in str(record.msg)


logging.getLogger("watchdog.observers.inotify").addFilter(_not_shutdown_noise)


def _make_observer() -> BaseObserver:
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

    def dispatch(self, event: FileSystemEvent) -> None:
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


def local_outbox(settings: InboxSettings) -> Path | None:
    """A local feed's outbox, where its receipts are written (`LocalInbox.receipt_dir`), known
    without opening the inbox (the `process` command); None for an SFTP feed (receipts are uploaded)."""
    location = settings.location
    if not isinstance(location, LocalLocation):
        return None
    # OwnFolderPath: a receipt is never written through a symlink put in place of the outbox (D19)
    return OwnFolderPath(folder_path(os.path.abspath(location.path), settings.outbox_dir))


class LocalInbox(Inbox):
    def __init__(self, settings: InboxSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        location = settings.location
        if not isinstance(location, LocalLocation):
            raise InboxUnusable(f"not a local inbox: {settings.inbox}")
        self.settings = settings
        # The configured folder itself may be a symlink an administrator made; the folders
        # the service writes to inside it may not (whoever can upload could point them anywhere).
        self.root = Path(os.path.abspath(location.path))
        if not self.root.is_dir():
            raise InboxUnusable(f"inbox folder {self.root} does not exist or is not a folder")
        self.processing = Path(folder_path(str(self.root), settings.processing_dir))
        self.archive = Path(folder_path(str(self.root), settings.archive_dir))
        self.error = Path(folder_path(str(self.root), settings.error_dir))
        self.outbox = Path(folder_path(str(self.root), settings.outbox_dir))
        self._labels = {self.processing: settings.processing_dir, self.archive: settings.archive_dir,
                        self.error: settings.error_dir, self.outbox: settings.outbox_dir}
        for folder in self._labels:
            self._make_folder(folder)
        for stale in remove_stale_temporaries(self.outbox):
            log.info("inbox %s: removed %s, a temporary a killed receipt write left", self.root,
                     display_name(str(stale)))

        self._rules = NameRules.from_settings(settings)
        self._readiness = Readiness(self._rules, settings.min_age_seconds, clock)
        self._processing = ProcessingFolder(self._rules, settings.min_age_seconds, f"inbox {self.root}", clock)
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self._refused: set[str] = set()
        self._staging_cleaned: set[Path] = set()
        self._observer: BaseObserver | None = None
        if settings.mode == "native":
            self._start_observer()

    # -- the service's own folders

    def _make_folder(self, folder: Path) -> None:
        """Create one of the own folders if missing; refuse it if it (or a folder between the
        inbox and it) is a symlink or not a folder."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a symlink to nowhere or a file: said below
        except OSError as exc:
            raise InboxUnusable(f"inbox {self.root}: {named_error('create folder', folder, exc)}") from exc
        if folder.is_relative_to(self.root):
            parts = folder.relative_to(self.root).parts
            steps = [self.root.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1)]
        else:  # an absolute folder elsewhere: the administrator's; only its last step is checked
            steps = [folder]
        for step in steps:
            self._check_folder(step, folder)

    def _check_folder(self, path: Path, own: Path) -> None:
        label = self._labels[own]
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise InboxUnusable(f"inbox {self.root}: {named_error(f'check the {label} folder', path, exc)}") from exc
        if stat.S_ISLNK(info.st_mode):
            raise InboxUnusable(f"inbox {self.root}: {symlink_refusal(path, f'the {label} folder')}")
        if not stat.S_ISDIR(info.st_mode):
            raise InboxUnusable(f"inbox {self.root}: the {label} folder {path} is not a folder")

    def _open(self, folder: Path, operation: str) -> int:
        """A descriptor of one of the inbox's folders; an own folder that became a symlink is
        refused (O_NOFOLLOW), so what is done through the descriptor stays in the real folder."""
        own = folder in self._labels
        try:
            return open_folder(folder, follow=not own)
        except OSError as exc:
            if own and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._check_folder(folder, folder)  # says "symbolic link" or "not a folder"
            raise named_error(operation, folder, exc) from exc

    def _start_observer(self) -> None:
        observer = _make_observer()
        handler = _Handler(str(self.root), self._events, self._wake)
        try:
            observer.schedule(handler, str(self.root), recursive=False)  # type: ignore[arg-type]  # needs dispatch()
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

    def _list(self, folder: Path, odd: list[str] | None = None, operation: str = "list") -> list[FileStat]:
        """The regular files in `folder` (by lstat: a symlink is never followed); the names of
        other entries (symlinks, FIFOs, folders, devices; dotfiles aside) go to `odd` if given."""
        entries: list[FileStat] = []
        fd = self._open(folder, operation)
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if not self._safe(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):  # never follow a symlink out of the inbox
                        entries.append(FileStat(entry.name, st.st_size, st.st_mtime))
                    elif odd is not None and not entry.name.startswith("."):
                        odd.append(entry.name)
        finally:
            os.close(fd)
        return entries

    def scan(self) -> list[Candidate]:
        self._drain_events()
        return self._readiness.observe(self._list(self.root))

    # -- claim and finish

    def _move(self, src_fd: int, src_name: str, folder: Path, folder_fd: int, name: str, operation: str) -> str:
        """Rename `src_name` into `folder` as `name`, or a timestamped name if that is taken."""
        target = name
        for attempt in range(_MAX_NAME_ATTEMPTS):
            try:
                rename_noreplace(src_name, target, src_dir_fd=src_fd, dst_dir_fd=folder_fd)
                return target
            except FileExistsError:
                target = stamped_name(name, attempt=attempt)
            except OSError as exc:
                raise named_error(operation, folder / target, exc) from exc
        raise InboxUnusable(f"cannot {operation} {display_name(str(folder / name))}: no free name "
                         f"after {_MAX_NAME_ATTEMPTS} attempts")

    def _moving(self, src: Path, dst: Path, operation: str) -> tuple[int, int]:
        src_fd = self._open(src, operation)
        try:
            return src_fd, self._open(dst, operation)
        except BaseException:
            os.close(src_fd)
            raise

    def claim(self, candidate: Candidate) -> Claimed | None:
        name = check_name(candidate.name)
        operation = f"claim into {self.settings.processing_dir}/"
        root_fd, processing_fd = self._moving(self.root, self.processing, operation)
        try:
            try:
                target = self._move(root_fd, name, self.processing, processing_fd, name, operation)
            except FileNotFoundError:
                log.info("inbox %s: %s was claimed by another instance", self.root, display_name(name))
                self._readiness.forget(name)
                return None
            self._readiness.forget(name)
            self._processing.claimed(target)
            st = os.stat(target, dir_fd=processing_fd, follow_symlinks=False)
            marker = None
            if candidate.marker is not None:
                check_name(candidate.marker)
                marker_target = marker_name(target, name, candidate.marker)
                try:
                    rename_noreplace(candidate.marker, marker_target, src_dir_fd=root_fd, dst_dir_fd=processing_fd)
                    marker = marker_target
                except (FileNotFoundError, FileExistsError) as exc:
                    log.warning("inbox %s: marker %s not moved with %s: %s", self.root,
                                display_name(candidate.marker), display_name(name), exc)
        finally:
            os.close(root_fd)
            os.close(processing_fd)
        return Claimed(target, display_name(name), st.st_size, st.st_mtime, marker)

    def finish(self, claimed: Claimed, ok: bool) -> str:
        name = check_name(claimed.name)
        folder = self.archive if ok else self.error
        operation = f"move to {self.settings.archive_dir if ok else self.settings.error_dir}/"
        processing_fd, folder_fd = self._moving(self.processing, folder, operation)
        try:
            target = self._move(processing_fd, name, folder, folder_fd, name, operation)
            self._processing.finished(name)
            if claimed.marker is not None:
                check_name(claimed.marker)
                try:
                    self._move(processing_fd, claimed.marker, folder, folder_fd,
                               marker_name(target, name, claimed.marker), operation)
                except FileNotFoundError:
                    pass
        finally:
            os.close(processing_fd)
            os.close(folder_fd)
        return target

    def resume(self, began: Callable[[Claimed], bool] | None = None) -> list[Claimed]:
        if began is None:
            return left_in_processing(self._list(self.processing), self._rules)
        odd: list[str] = []
        entries = self._list(self.processing, odd)
        return self._processing.take(entries, odd, began)

    @property
    def waiting_in_processing(self) -> tuple[str, ...]:
        return self._processing.waiting

    # -- content

    def open_local(self, claimed: Claimed, staging_dir: Path) -> Path:
        name = check_name(claimed.name)
        fd = self._open(self.processing, "read")
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        finally:
            os.close(fd)
        path = self.processing / name
        if info is None or not stat.S_ISREG(info.st_mode):
            raise InboxUnusable(f"{display_name(str(path))} is not in processing/ any more")
        return path

    # -- the archive (read-only)

    def list_archive(self) -> list[FileStat]:
        try:
            return newest_first(self._list(self.archive, operation=f"list {self.settings.archive_dir}/"),
                                self._rules)
        except FileNotFoundError:
            return []  # removed since the inbox opened: nothing archived

    def fetch_archived(self, name: str, staging_dir: Path, max_bytes: int,
                       on_data: Callable[[bytes], None] | None = None) -> Path:
        path = self.archive / name
        archived_data_name(name, self._rules, str(path))
        what = f"fetch from {self.settings.archive_dir}/"
        prepare_staging(staging_dir, what)
        if staging_dir not in self._staging_cleaned:
            self._staging_cleaned.add(staging_dir)
            clean_staging(staging_dir, f"inbox {self.root}")
        folder = self._open(self.archive, what)  # archive/ itself a symlink: refused
        try:
            # O_NOFOLLOW: a symlink put in the file's place is refused, never followed out of archive/;
            # O_NONBLOCK: a FIFO does not block the open (its type is refused below)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_unless_regular(stat.S_IFLNK, str(path))
            raise named_error(what, path, exc) from exc
        finally:
            os.close(folder)
        try:
            info = os.fstat(fd)
            refuse_unless_regular(info.st_mode, str(path))  # of what was opened: a swap cannot slip through
            if info.st_nlink > 1:  # the service never links its files: another name of it may be any file
                raise ArchivedFileRefused(f"cannot fetch {display_name(str(path))}: it has other hard links (it "
                                          "may be a file of another folder)")
            if info.st_size > max_bytes:
                raise too_large(str(path), max_bytes, info.st_size)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as source:

            def read(size: int) -> bytes:
                try:
                    return source.read(size)
                except OSError as exc:
                    raise named_error(what, path, exc) from exc

            with staged_file(staging_dir, name, what) as out:
                copy_bounded(read, out, max_bytes, on_data, lambda: too_large(str(path), max_bytes))
        return staging_dir / name

    def put_receipt(self, local_path: Path, name: str) -> None:
        check_name(name)
        os.close(self._open(self.outbox, "write receipt"))  # a symlink: refused with its name
        with open(local_path, "rb") as src, \
                atomic_writer(OwnFolderPath(self.outbox / name), what="write receipt") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def receipt_dir(self, staging_dir: Path) -> Path:
        outbox = local_outbox(self.settings)
        assert outbox is not None  # a local inbox
        return outbox

    def publish_receipt(self, files: Sequence[Path], before: Callable[[Path], None] | None = None) -> list[str]:
        return [str(path) for path in files]  # written into the outbox itself (receipt_dir)

    # -- the lease marker (in the inbox folder itself, beside the files it is about)

    def read_lease_marker(self) -> LeaseMarker | None:
        fd = self._open(self.root, "read the lease marker")
        try:
            try:
                marker_fd = os.open(LEASE_MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise named_error("read the lease marker", self.root / LEASE_MARKER_NAME, exc) from exc
            with os.fdopen(marker_fd, "rb") as handle:
                data = handle.read(LEASE_MARKER_MAX_BYTES + 1)
        finally:
            os.close(fd)
        return LeaseMarker.from_bytes(data, str(self.root / LEASE_MARKER_NAME))

    def write_lease_marker(self, marker: LeaseMarker, *, replace: bool) -> bool:
        what = "write the lease marker"
        if replace:
            with atomic_writer(self.root / LEASE_MARKER_NAME, what=what) as out:
                out.write(marker.to_bytes())
            return True
        fd = self._open(self.root, what)
        temp = temporary_basename(LEASE_MARKER_NAME)
        try:
            try:
                out_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                 dir_fd=fd)
                with os.fdopen(out_fd, "wb") as out:
                    out.write(marker.to_bytes())
                    out.flush()
                    os.fsync(out.fileno())
                rename_noreplace(temp, LEASE_MARKER_NAME, src_dir_fd=fd, dst_dir_fd=fd)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                raise named_error(what, self.root / LEASE_MARKER_NAME, exc) from exc
            finally:
                try:
                    os.unlink(temp, dir_fd=fd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)

    def remove_lease_marker(self) -> None:
        fd = self._open(self.root, "remove the lease marker")
        try:
            os.unlink(LEASE_MARKER_NAME, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise named_error("remove the lease marker", self.root / LEASE_MARKER_NAME, exc) from exc
        finally:
            os.close(fd)

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
