"""The inbox on a remote SFTP server (paramiko).

- The server's host key must match the feed's known_hosts; an unknown key is refused
  unless `accept_new_host_key` is set, in which case it is recorded there (trust on first
  use). A changed key is always refused. No SSH agent, no ~/.ssh keys: only what the feed
  configures.
- The connection is opened on first use and re-opened after a drop, with exponential
  backoff between failed attempts; an operation that meets a dead connection raises
  `InboxUnavailable` (transient) and has changed nothing that a retry would not redo.
- Downloads use read-ahead (prefetch): a plain read without it waits one round trip per
  32 KiB block and is ~20x slower.
- Claims and archive moves use the standard SFTP rename, which does not replace an
  existing target (OpenSSH implements it with link + unlink), so two instances can never
  take the same file. Receipts are uploaded under a temporary dotfile name, then renamed
  with the posix-rename extension (atomic replace) where the server has it.
- Names travel as bytes: a name that is not UTF-8 is listed (paramiko's own listing would
  fail on it) and moved with its real bytes, and shown escaped (`fsutil.display_name`).
- The service's folders on the server (processing/, archive/, error/, outbox/) must be
  real folders: a symlink there is refused (lstat) at connect and before every move or upload.
- After every (re)connect, temporaries a killed upload left in the outbox are removed once
  they are an hour old (by the server's mtime; an upload in progress keeps its mtime fresh);
  stale `.part` downloads in the staging folder are removed before the next download.
- The archive is readable (`list_archive`, `fetch_archived`): listed by lstat like the inbox,
  and a file is fetched only if it is still the regular file the lstat saw once it is opened
  (SFTP has no O_NOFOLLOW: the opened handle's fstat must agree), within the caller's limit.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR, SFTPError
from paramiko.sftp_attr import SFTPAttributes
from pydantic import SecretStr

from batch.backoff import doubling
from batch.config.inbox import InboxSettings, SftpLocation
from batch.config.secrets import SecretResolutionError
from batch.fsutil import (
    display_name,
    is_temporary_name,
    named_error,
    read_regular_file,
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
    HostKeyError,
    Inbox,
    InboxError,
    InboxUnavailable,
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

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_NAME_ATTEMPTS = 20
REMOTE_STALE_SECONDS = 3600.0  # by the server's clock: an hour is safe against clock skew


def _b(path: str) -> bytes:
    """A remote path as the bytes to send (a surrogate-escaped name gets its real bytes back)."""
    return os.fsencode(path)


_SIZE_MISMATCH = re.compile(r"size mismatch in put!\s+(\d+) != (\d+)")


def _short_upload(exc: OSError) -> OSError:
    """paramiko's "size mismatch in put!  0 != 200" (pipelined writes that the server did not
    store, e.g. on a full disk) as a sentence; any other error as it is."""
    found = _SIZE_MISMATCH.search(str(exc))
    if found is None:
        return exc
    return OSError(None, f"the server stored only {found.group(1)} of {found.group(2)} bytes "
                         "(often a full disk or a quota)")


def listdir_attr(sftp: paramiko.SFTPClient, folder: str) -> list[SFTPAttributes]:
    """`SFTPClient.listdir_attr`, but names that are not UTF-8 come back surrogate-escaped
    (like `os.listdir`) instead of failing the whole listing with UnicodeDecodeError."""
    # paramiko's own listdir_attr, on its private request and decoding calls (not in its stubs)
    request = sftp._request  # type: ignore[attr-defined]  # private: see the comment above
    from_msg = SFTPAttributes._from_msg  # type: ignore[attr-defined]  # private: see the comment above
    kind, msg = request(CMD_OPENDIR, _b(folder))
    if kind != CMD_HANDLE:
        raise SFTPError("Expected handle")
    handle = msg.get_binary()
    found = []
    try:
        while True:
            try:
                kind, msg = request(CMD_READDIR, handle)
            except EOFError:
                break
            if kind != CMD_NAME:
                raise SFTPError("Expected name response")
            for _ in range(msg.get_int()):
                filename = os.fsdecode(msg.get_string())
                longname = msg.get_string().decode("utf-8", "replace")
                attr = from_msg(msg, filename, longname)
                if filename not in (".", ".."):
                    found.append(attr)
    finally:
        request(CMD_CLOSE, handle)
    return found

# Signature algorithms that carry an RSA host key (known_hosts records it as ssh-rsa).
_KEY_TYPE_ALGORITHMS = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}


def known_hosts_name(host: str, port: int) -> str:
    """The host as OpenSSH writes it in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


def verify_host_key(
    host_keys: paramiko.HostKeys, known_hosts: Path, host: str, port: int, key: paramiko.PKey
) -> bool:
    """True if `key` is known for the host; False if the host is unknown; HostKeyError if it changed."""
    name = known_hosts_name(host, port)
    known = host_keys.lookup(name)
    if not known:
        return False
    expected = known.get(key.get_name())
    if expected is not None and expected == key:
        return True
    recorded = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in known.values())
    raise HostKeyError(
        f"host key for {name} has CHANGED: the server presents {key.get_name()} {key.fingerprint}, "
        f"but {known_hosts} records {recorded}. Refusing to connect: this may be an attack. If the "
        f"change is expected, remove the old entry (ssh-keygen -R '{name}' -f {known_hosts}) and add the new one."
    )


def record_host_key(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Append the key to known_hosts (created 0600 if missing), as OpenSSH would."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        if f.tell() > 0:
            with open(known_hosts, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    f.write("\n")
        f.write(f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n")


def load_private_key(path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
    """The private key in `path`, decrypted with `passphrase` if it is encrypted.

    Every failure is an InboxError that names the file and says what to do, never the passphrase
    (paramiko and cryptography raise TypeError, ValueError or SSHException, depending on the format)."""
    try:
        read_regular_file(path, 0)  # a FIFO would block paramiko's read for ever, /dev/zero never end
        return paramiko.PKey.from_path(path, None)
    except OSError as exc:
        raise InboxUnusable(f"cannot read private key {path}: {exc.strerror or exc}") from None
    except (TypeError, paramiko.PasswordRequiredException):
        pass  # encrypted (what paramiko 3+ says with a TypeError): decrypt it below
    except (ValueError, paramiko.SSHException) as exc:
        raise InboxUnusable(f"cannot load private key {path}: not a private key in a format paramiko reads "
                         f"(OpenSSH, or PEM RSA/ECDSA): {type(exc).__name__}") from None
    if passphrase is None:
        raise InboxUnusable(f"private key {path} is encrypted: set key_passphrase or key_passphrase_file")
    try:
        # paramiko annotates the password as str, but hands it to cryptography's loaders, which take bytes only
        secret = passphrase.get_secret_value().encode()
        return paramiko.PKey.from_path(path, secret)  # type: ignore[arg-type]  # bytes: see above
    except (TypeError, ValueError, paramiko.SSHException, OSError):
        raise InboxUnusable(f"cannot decrypt private key {path} with the configured passphrase "
                         "(key_passphrase / key_passphrase_file): is it the right one?") from None


class SftpInbox(Inbox):
    def __init__(self, settings: InboxSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        location = settings.location
        if not isinstance(location, SftpLocation):
            raise InboxUnusable(f"not an sftp:// inbox: {settings.inbox}")
        assert settings.known_hosts is not None  # the settings model requires it
        self.settings = settings
        self.location = location
        self.root = location.path
        self.processing = folder_path(self.root, settings.processing_dir)
        self.archive = folder_path(self.root, settings.archive_dir)
        self.error = folder_path(self.root, settings.error_dir)
        self.outbox = folder_path(self.root, settings.outbox_dir)
        self._clock = clock
        self._rules = NameRules.from_settings(settings)
        self._readiness = Readiness(self._rules, settings.min_age_seconds, clock)
        self._processing = ProcessingFolder(self._rules, settings.min_age_seconds, location.display, clock)
        self._refused: set[str] = set()
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: InboxError | None = None
        self._closed = threading.Event()
        self._staging_cleaned: set[Path] = set()

    def _label(self, folder: str) -> str:
        s = self.settings
        return {self.processing: s.processing_dir, self.archive: s.archive_dir, self.error: s.error_dir,
                self.outbox: s.outbox_dir}[folder]

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._sftp is not None and self._transport is not None and self._transport.is_active()

    def connect(self) -> None:
        """Connect now (otherwise the first operation does). Raises like any operation."""
        self._session()

    def _session(self) -> paramiko.SFTPClient:
        if self._closed.is_set():
            raise InboxUnusable(f"{self.location.display}: inbox is closed")
        if self.connected:
            assert self._sftp is not None
            return self._sftp
        self._drop()
        wait = self._retry_at - self._clock()
        if wait > 0 and self._last_error is not None:
            # Same class as the last failure: a host key or login problem stays one while we wait.
            raise type(self._last_error)(f"{self._last_error} (not retrying for another {wait:.1f} s)")
        try:
            self._sftp = self._connect()
        except InboxError as exc:
            self._backoff(exc)
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            error = InboxUnavailable(f"{self.location.display}: cannot connect: {type(exc).__name__}: {exc}")
            self._backoff(error)
            raise error from exc
        if self._failures:
            log.info("%s: connected again after %d failed attempt(s)", self.location.display, self._failures)
        self._failures = 0
        self._retry_at = 0.0
        return self._sftp

    def _backoff(self, error: InboxError) -> None:
        self._drop()
        self._failures += 1
        delay = doubling(self._failures, self.settings.reconnect_initial_seconds, self.settings.reconnect_max_seconds)
        self._retry_at = self._clock() + delay
        self._last_error = error
        log.warning("%s: connection failed (%s); next attempt in %.1f s", self.location.display, error, delay)

    def _connect(self) -> paramiko.SFTPClient:
        s, loc = self.settings, self.location
        assert s.known_hosts is not None
        host_keys = paramiko.HostKeys()
        if s.known_hosts.exists():
            try:
                read_regular_file(s.known_hosts, 0)  # as for the key: never a FIFO or a device
                host_keys.load(str(s.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise InboxUnusable(f"cannot read known_hosts {s.known_hosts}: {exc}") from exc
        pkey = self._load_key()

        sock = socket.create_connection((loc.host, loc.port), timeout=s.connect_timeout_seconds)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = s.connect_timeout_seconds
            transport.handshake_timeout = s.connect_timeout_seconds
            transport.auth_timeout = s.connect_timeout_seconds
            known = host_keys.lookup(known_hosts_name(loc.host, loc.port))
            if known:  # negotiate the key type we can verify
                preferred = [a for k in known for a in _KEY_TYPE_ALGORITHMS.get(k, [k])]
                options = transport.get_security_options()
                options.key_types = preferred + [t for t in options.key_types if t not in preferred]
            transport.start_client(timeout=s.connect_timeout_seconds)
            key = transport.get_remote_server_key()
            if not verify_host_key(host_keys, s.known_hosts, loc.host, loc.port, key):
                self._unknown_host_key(key)
            self._authenticate(transport, pkey)
            if s.keepalive_seconds:
                transport.set_keepalive(s.keepalive_seconds)
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise InboxUnavailable(f"{loc.display}: the server refused the sftp subsystem")
            channel = sftp.get_channel()
            assert channel is not None  # from_transport opened it
            channel.settimeout(s.io_timeout_seconds)
            self._transport = transport
            try:
                if not stat.S_ISDIR(sftp.stat(self.root).st_mode or 0):
                    raise InboxUnusable(f"{loc.display} is not a folder")
            except FileNotFoundError as exc:
                raise InboxUnusable(f"inbox folder {self.root} does not exist on {loc.host}") from exc
            for folder in (self.processing, self.archive, self.error, self.outbox):
                self._ensure_folder(sftp, folder, self._label(folder))
            self._remove_stale_uploads(sftp)
            self._staging_cleaned.clear()
            return sftp
        except BaseException:
            transport.close()
            self._transport = None
            raise

    def _unknown_host_key(self, key: paramiko.PKey) -> None:
        s, loc = self.settings, self.location
        assert s.known_hosts is not None
        name = known_hosts_name(loc.host, loc.port)
        if not s.accept_new_host_key:
            raise HostKeyError(
                f"unknown host key for {name}: the server presents {key.get_name()} {key.fingerprint}, "
                f"which is not in {s.known_hosts}. Check the fingerprint with the server's administrator "
                f"and add the key (ssh-keyscan -p {loc.port} {loc.host} >> {s.known_hosts}), or set "
                f"accept_new_host_key: true to trust it on first use."
            )
        record_host_key(s.known_hosts, loc.host, loc.port, key)
        log.warning(
            "%s: trusting new host key %s %s on first use; recorded in %s",
            name, key.get_name(), key.fingerprint, s.known_hosts,
        )

    def _load_key(self) -> paramiko.PKey | None:
        s = self.settings
        if s.private_key_file is None:
            return None
        try:
            passphrase = s.resolved_key_passphrase()
        except SecretResolutionError as exc:
            raise InboxUnusable(f"cannot load private key {s.private_key_file}: {exc}") from None
        return load_private_key(s.private_key_file, passphrase)

    def _authenticate(self, transport: paramiko.Transport, pkey: paramiko.PKey | None) -> None:
        s, loc = self.settings, self.location
        try:
            if pkey is not None:
                transport.auth_publickey(loc.user, pkey)
            else:
                try:
                    password = s.resolved_password()
                except SecretResolutionError as exc:
                    raise InboxUnusable(f"{loc.display}: {exc}") from None
                assert password is not None
                transport.auth_password(loc.user, password.get_secret_value())
        except paramiko.AuthenticationException as exc:
            how = f"key {s.private_key_file}" if pkey is not None else "password"
            raise InboxUnusable(f"{loc.display}: authentication as {loc.user} with {how} failed: {exc}") from exc
        if not transport.is_authenticated():
            raise InboxUnusable(f"{loc.display}: authentication as {loc.user} failed")

    def _ensure_folder(self, sftp: paramiko.SFTPClient, folder: str, label: str) -> None:
        """Create `folder` (and missing parents) unless it exists; refuse it if it is a symlink."""
        try:
            self._check_folder(sftp, folder, label)
            return
        except FileNotFoundError:
            pass
        parent = posixpath.dirname(folder)
        if parent != folder and not self._exists(sftp, parent):
            self._ensure_folder(sftp, parent, label)
        try:
            sftp.mkdir(_b(folder))
        except OSError as exc:
            if not self._exists(sftp, folder):  # created meanwhile by another instance?
                refused = named_error(f"create the {label} folder", folder, exc)
                raise InboxUnusable(f"{self.location.display}: {refused}") from exc
        self._check_folder(sftp, folder, label)

    def _check_folder(self, sftp: paramiko.SFTPClient, folder: str, label: str) -> None:
        """The folder must be a real folder: FileNotFoundError if missing, InboxError if a symlink or a file."""
        mode = sftp.lstat(_b(folder)).st_mode or 0
        if stat.S_ISLNK(mode):
            raise InboxUnusable(f"{self.location.display}: {symlink_refusal(folder, f'the {label} folder')}")
        if not stat.S_ISDIR(mode):
            raise InboxUnusable(f"{self.location.display}: the {label} folder {display_name(folder)} exists "
                             "on the server but is not a folder")

    def _check_own(self, sftp: paramiko.SFTPClient, *folders: str) -> None:
        """Before a move or an upload: the own folders involved are still real folders."""
        for folder in folders:
            try:
                self._check_folder(sftp, folder, self._label(folder))
            except FileNotFoundError as exc:
                raise InboxUnusable(f"{self.location.display}: the {self._label(folder)} folder "
                                 f"{display_name(folder)} is gone from the server") from exc

    def _remove_stale_uploads(self, sftp: paramiko.SFTPClient) -> None:
        """Temporaries a killed receipt upload left in the outbox; failures are only logged."""
        try:
            for attr in listdir_attr(sftp, self.outbox):
                if (is_temporary_name(attr.filename) and stat.S_ISREG(attr.st_mode or 0)
                        and (attr.st_mtime or 0) < time.time() - REMOTE_STALE_SECONDS):
                    path = posixpath.join(self.outbox, attr.filename)
                    sftp.remove(_b(path))
                    log.info("%s: removed %s, a temporary a killed receipt upload left", self.location.display,
                             display_name(path))
        except (OSError, SFTPError) as exc:
            log.warning("%s: could not clean stale temporaries in %s: %s", self.location.display,
                        display_name(self.outbox), exc)

    def _clean_staging(self, staging_dir: Path) -> None:
        """Downloads and receipts a killed run left half-written in the staging folder (once a
        connection; staging.clean_staging)."""
        if staging_dir in self._staging_cleaned:
            return
        self._staging_cleaned.add(staging_dir)
        clean_staging(staging_dir, self.location.display)

    def _drop(self) -> None:
        sftp, transport = self._sftp, self._transport
        self._sftp = self._transport = None
        for thing in (sftp, transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may fail in any way
                    pass

    def _run(self, what: str, operation: Callable[[paramiko.SFTPClient], T], where: str | None = None) -> T:
        """Run one operation on the session; a dead connection becomes InboxUnavailable.

        SFTP status errors (no such file, permission denied) arrive as OSError on a live
        connection and keep their class, their message naming the operation and `where`."""
        sftp = self._session()
        try:
            return operation(sftp)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, (TimeoutError, EOFError, paramiko.SSHException)) or not self.connected:
                self._drop()
                of = f" of {display_name(where)}" if where is not None else ""
                raise InboxUnavailable(
                    f"{self.location.display}: connection lost during {what}{of}: {type(exc).__name__}: {exc}"
                ) from exc
            if where is None or not isinstance(exc, OSError):
                raise
            raise named_error(what, f"{self._where}{where}", exc) from exc

    # ------------------------------------------------------------------ scanning

    def _safe(self, name: str) -> bool:
        return name_is_safe(name, self._refused, self.location.display)

    def _list(self, sftp: paramiko.SFTPClient, folder: str, odd: list[str] | None = None) -> list[FileStat]:
        """The regular files in `folder`; the names of other entries (symlinks, FIFOs, folders;
        dotfiles aside) go to `odd` if given."""
        entries = []
        for attr in listdir_attr(sftp, folder):
            if not self._safe(attr.filename):
                continue
            # listdir reports lstat(): symlinks are not regular files and are never followed.
            if attr.st_mode is not None and stat.S_ISREG(attr.st_mode):
                entries.append(FileStat(attr.filename, int(attr.st_size or 0), float(attr.st_mtime or 0)))
            elif odd is not None and not attr.filename.startswith("."):
                odd.append(attr.filename)
        return entries

    def scan(self) -> list[Candidate]:
        listing = self._run("list", lambda sftp: self._list(sftp, self.root), self.root)
        return self._readiness.observe(listing)

    def resume(self, began: Callable[[Claimed], bool] | None = None) -> list[Claimed]:
        odd: list[str] = []
        entries = self._run("list", lambda sftp: self._list(sftp, self.processing, odd), self.processing)
        if began is None:
            return left_in_processing(entries, self._rules)
        return self._processing.take(entries, odd, began)

    @property
    def waiting_in_processing(self) -> tuple[str, ...]:
        return self._processing.waiting

    # ------------------------------------------------------------------ moves

    @staticmethod
    def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.lstat(_b(path))
            return True
        except FileNotFoundError:
            return False

    def _move(self, sftp: paramiko.SFTPClient, src: str, folder: str, name: str, operation: str) -> str:
        """Rename `src` into `folder` as `name` (a timestamped name if taken); FileNotFoundError if `src` is gone."""
        target = name
        for attempt in range(_MAX_NAME_ATTEMPTS):
            try:
                sftp.rename(_b(src), _b(posixpath.join(folder, target)))
                return target
            except OSError as exc:
                if not self.connected:
                    raise
                if not self._exists(sftp, src):
                    raise FileNotFoundError(errno.ENOENT, "gone", src) from exc
                if not self._exists(sftp, posixpath.join(folder, target)):
                    raise named_error(operation, f"{self._where}{posixpath.join(folder, target)}", exc) from exc
                target = stamped_name(name, attempt=attempt)
        raise InboxUnusable(f"cannot {operation}: {self._where}{display_name(posixpath.join(folder, name))}: "
                         f"no free name after {_MAX_NAME_ATTEMPTS} attempts")

    @property
    def _where(self) -> str:
        """`sftp://user@host:port` (paths follow)."""
        loc = self.location
        return f"sftp://{loc.user}@{loc.host}:{loc.port}"

    def claim(self, candidate: Candidate) -> Claimed | None:
        name = check_name(candidate.name)
        if candidate.marker is not None:
            check_name(candidate.marker)

        what = f"claim into {self.settings.processing_dir}/"

        def operation(sftp: paramiko.SFTPClient) -> Claimed | None:
            self._check_own(sftp, self.processing)
            try:
                target = self._move(sftp, posixpath.join(self.root, name), self.processing, name, what)
            except FileNotFoundError:
                log.info("%s: %s was claimed by another instance", self.location.display, display_name(name))
                return None
            attrs = sftp.stat(_b(posixpath.join(self.processing, target)))
            marker = None
            if candidate.marker is not None:
                marker_target = marker_name(target, name, candidate.marker)
                try:
                    sftp.rename(_b(posixpath.join(self.root, candidate.marker)),
                                _b(posixpath.join(self.processing, marker_target)))
                    marker = marker_target
                except OSError as exc:
                    if not self.connected:
                        raise
                    log.warning("%s: marker %s not moved with %s: %s", self.location.display,
                                display_name(candidate.marker), display_name(name), exc)
            return Claimed(target, display_name(name), int(attrs.st_size or 0), float(attrs.st_mtime or 0), marker)

        result = self._run(what, operation, posixpath.join(self.processing, name))
        self._readiness.forget(name)
        if result is not None:
            self._processing.claimed(result.name)
        return result

    def finish(self, claimed: Claimed, ok: bool) -> str:
        name = check_name(claimed.name)
        if claimed.marker is not None:
            check_name(claimed.marker)
        folder = self.archive if ok else self.error

        what = f"move to {self.settings.archive_dir if ok else self.settings.error_dir}/"

        def operation(sftp: paramiko.SFTPClient) -> str:
            self._check_own(sftp, self.processing, folder)
            target = self._move(sftp, posixpath.join(self.processing, name), folder, name, what)
            if claimed.marker is not None:
                try:
                    self._move(sftp, posixpath.join(self.processing, claimed.marker), folder,
                               marker_name(target, name, claimed.marker), what)
                except FileNotFoundError:
                    pass
            return target

        target = self._run(what, operation, posixpath.join(folder, name))
        self._processing.finished(name)
        return target

    # ------------------------------------------------------------------ content

    def open_local(self, claimed: Claimed, staging_dir: Path) -> Path:
        name = check_name(claimed.name)
        remote = posixpath.join(self.processing, name)
        what = "download to staging"
        prepare_staging(staging_dir, what)
        self._clean_staging(staging_dir)

        def download(sftp: paramiko.SFTPClient) -> None:
            size = int(sftp.stat(_b(remote)).st_size or 0)
            with staged_file(staging_dir, name, what) as staged:
                # getfo is what SFTPClient.get uses: prefetch (pipelined reads) on.
                written = sftp.getfo(_b(remote), staged, prefetch=True,  # type: ignore[arg-type]  # needs write()
                                     max_concurrent_prefetch_requests=self.settings.prefetch_max_requests)
                staged.flush()
                local_size = os.fstat(staged.fileno()).st_size
                if not written == local_size == size:
                    raise InboxUnusable(
                        f"download of {display_name(remote)} incomplete: {written} bytes received, {local_size} "
                        f"written, {size} expected"
                    )

        self._run(what, download, remote)
        return staging_dir / name

    # ------------------------------------------------------------------ the archive (read-only)

    def list_archive(self) -> list[FileStat]:
        def listing(sftp: paramiko.SFTPClient) -> list[FileStat]:
            try:
                return self._list(sftp, self.archive)
            except FileNotFoundError:
                return []  # removed since the connection made it: nothing archived

        return newest_first(self._run(f"list {self.settings.archive_dir}/", listing, self.archive), self._rules)

    def fetch_archived(self, name: str, staging_dir: Path, max_bytes: int,
                       on_data: Callable[[bytes], None] | None = None) -> Path:
        remote = posixpath.join(self.archive, name)
        where = f"{self._where}{remote}"
        archived_data_name(name, self._rules, where)
        what = f"fetch from {self.settings.archive_dir}/"
        prepare_staging(staging_dir, what)
        self._clean_staging(staging_dir)

        def fetch(sftp: paramiko.SFTPClient) -> None:
            self._check_own(sftp, self.archive)
            listed = sftp.lstat(_b(remote))  # lstat: a symlink is seen as one, never followed
            refuse_unless_regular(listed.st_mode or 0, where)
            size = int(listed.st_size or 0)
            if size > max_bytes:
                raise too_large(where, max_bytes, size)
            with sftp.open(_b(remote), "rb") as source:
                # SFTP opens follow symlinks and have no O_NOFOLLOW: what was opened (fstat) must be
                # the regular file just seen, or a link put in its place meanwhile could be read
                opened = source.stat()
                refuse_unless_regular(opened.st_mode or 0, where)
                if (opened.st_size, opened.st_mtime, opened.st_uid) != (listed.st_size, listed.st_mtime, listed.st_uid):
                    raise ArchivedFileRefused(f"cannot fetch {display_name(where)}: it changed while it was opened "
                                              "(replaced, or still being written); try again")
                source.prefetch(size, self.settings.prefetch_max_requests)  # pipelined reads, as getfo
                with staged_file(staging_dir, name, what) as out:
                    copy_bounded(source.read, out, max_bytes, on_data, lambda: too_large(where, max_bytes))

        self._run(what, fetch, remote)
        return staging_dir / name

    def put_receipt(self, local_path: Path, name: str) -> None:
        check_name(name)
        final = posixpath.join(self.outbox, name)
        tmp = posixpath.join(self.outbox, temporary_basename(name))

        def upload(sftp: paramiko.SFTPClient) -> None:
            self._check_own(sftp, self.outbox)
            try:
                try:
                    sftp.put(str(local_path), _b(tmp), confirm=True)  # confirm: stat and compare the size
                except OSError as exc:
                    raise _short_upload(exc) from exc
                try:
                    sftp.posix_rename(_b(tmp), _b(final))
                except OSError:
                    if not self.connected:
                        raise
                    # No posix-rename extension: the standard rename does not replace a target.
                    if self._exists(sftp, final):
                        sftp.remove(_b(final))
                    sftp.rename(_b(tmp), _b(final))
            except BaseException:
                if self.connected:
                    try:
                        sftp.remove(_b(tmp))
                    except OSError:
                        pass
                raise

        self._run("upload receipt", upload, final)

    def receipt_dir(self, staging_dir: Path) -> Path:
        return staging_dir / "receipts"  # uploaded from there (publish_receipt); see _clean_staging

    def publish_receipt(self, files: Sequence[Path], before: Callable[[Path], None] | None = None) -> list[str]:
        staged = [path for path in files if path.exists()]  # a retry after a failure: what is left
        for path in staged:
            if before is not None:
                before(path)
            self.put_receipt(path, path.name)
        for path in staged:  # kept until every file is up: a failed upload is redone from them
            path.unlink(missing_ok=True)
        return [f"{self._where}{posixpath.join(self.outbox, path.name)}" for path in files]

    def release_local(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # the download in the staging folder

    # ------------------------------------------------------------------ the lease marker

    @property
    def _marker(self) -> str:
        return posixpath.join(self.root, LEASE_MARKER_NAME)

    def read_lease_marker(self) -> LeaseMarker | None:
        def read(sftp: paramiko.SFTPClient) -> bytes | None:
            try:
                attrs = sftp.lstat(_b(self._marker))
            except FileNotFoundError:
                return None
            if attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
                raise InboxUnusable(f"lease marker {self._where}{self._marker} is not a regular file")
            with sftp.open(_b(self._marker), "rb") as handle:
                return bytes(handle.read(LEASE_MARKER_MAX_BYTES + 1))

        data = self._run("read the lease marker", read, self._marker)
        return None if data is None else LeaseMarker.from_bytes(data, f"{self._where}{self._marker}")

    def write_lease_marker(self, marker: LeaseMarker, *, replace: bool) -> bool:
        tmp = posixpath.join(self.root, temporary_basename(LEASE_MARKER_NAME))

        def write(sftp: paramiko.SFTPClient) -> bool:
            try:
                with sftp.open(_b(tmp), "wb") as handle:
                    handle.write(marker.to_bytes())
                if replace:
                    sftp.posix_rename(_b(tmp), _b(self._marker))
                    return True
                try:  # the standard SFTP rename never replaces a target (OpenSSH: link + unlink)
                    sftp.rename(_b(tmp), _b(self._marker))
                    return True
                except OSError:
                    if not self.connected or not self._exists(sftp, self._marker):
                        raise
                    return False
            finally:
                if self.connected:
                    try:
                        sftp.remove(_b(tmp))
                    except OSError:
                        pass

        return self._run("write the lease marker", write, self._marker)

    def remove_lease_marker(self) -> None:
        def remove(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(_b(self._marker))
            except FileNotFoundError:
                pass

        self._run("remove the lease marker", remove, self._marker)

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float | None = None) -> bool:
        self._closed.wait(self.settings.poll_interval_seconds if timeout is None else timeout)
        return False

    def close(self) -> None:
        self._closed.set()
        self._drop()
