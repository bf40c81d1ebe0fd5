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
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko
from pydantic import SecretStr

from batch.config.secrets import SecretResolutionError
from batch.inbox.base import (
    name_is_safe,
    left_in_processing,
    Candidate,
    Claimed,
    FileStat,
    HostKeyError,
    Inbox,
    InboxError,
    InboxSettings,
    InboxUnavailable,
    NameRules,
    SftpLocation,
    check_name,
    folder_path,
    stamped_name,
)
from batch.inbox.readiness import Readiness

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_NAME_ATTEMPTS = 20

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
        return paramiko.PKey.from_path(path, None)
    except OSError as exc:
        raise InboxError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    except (TypeError, paramiko.PasswordRequiredException):
        pass  # encrypted (what paramiko 3+ says with a TypeError): decrypt it below
    except (ValueError, paramiko.SSHException) as exc:
        raise InboxError(f"cannot load private key {path}: not a private key in a format paramiko reads "
                         f"(OpenSSH, or PEM RSA/ECDSA): {type(exc).__name__}") from None
    if passphrase is None:
        raise InboxError(f"private key {path} is encrypted: set key_passphrase or key_passphrase_file")
    try:
        return paramiko.PKey.from_path(path, passphrase.get_secret_value().encode())
    except (TypeError, ValueError, paramiko.SSHException, OSError):
        raise InboxError(f"cannot decrypt private key {path} with the configured passphrase "
                         "(key_passphrase / key_passphrase_file): is it the right one?") from None


class SftpInbox(Inbox):
    def __init__(self, settings: InboxSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        location = settings.location
        if not isinstance(location, SftpLocation):
            raise InboxError(f"not an sftp:// inbox: {settings.inbox}")
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
        self._refused: set[str] = set()
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: InboxError | None = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._sftp is not None and self._transport is not None and self._transport.is_active()

    def connect(self) -> None:
        """Connect now (otherwise the first operation does). Raises like any operation."""
        self._session()

    def _session(self) -> paramiko.SFTPClient:
        if self._closed.is_set():
            raise InboxError(f"{self.location.display}: inbox is closed")
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
        delay = min(
            self.settings.reconnect_max_seconds,
            self.settings.reconnect_initial_seconds * 2 ** (self._failures - 1),
        )
        self._retry_at = self._clock() + delay
        self._last_error = error
        log.warning("%s: connection failed (%s); next attempt in %.1f s", self.location.display, error, delay)

    def _connect(self) -> paramiko.SFTPClient:
        s, loc = self.settings, self.location
        assert s.known_hosts is not None
        host_keys = paramiko.HostKeys()
        if s.known_hosts.exists():
            try:
                host_keys.load(str(s.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise InboxError(f"cannot read known_hosts {s.known_hosts}: {exc}") from exc
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
                preferred = [a for k in known.keys() for a in _KEY_TYPE_ALGORITHMS.get(k, [k])]
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
            sftp.get_channel().settimeout(s.io_timeout_seconds)
            self._transport = transport
            try:
                if not stat.S_ISDIR(sftp.stat(self.root).st_mode or 0):
                    raise InboxError(f"{loc.display} is not a folder")
            except FileNotFoundError as exc:
                raise InboxError(f"inbox folder {self.root} does not exist on {loc.host}") from exc
            for folder in (self.processing, self.archive, self.error, self.outbox):
                self._ensure_folder(sftp, folder)
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
            raise InboxError(f"cannot load private key {s.private_key_file}: {exc}") from None
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
                    raise InboxError(f"{loc.display}: {exc}") from None
                assert password is not None
                transport.auth_password(loc.user, password.get_secret_value())
        except paramiko.AuthenticationException as exc:
            how = f"key {s.private_key_file}" if pkey is not None else "password"
            raise InboxError(f"{loc.display}: authentication as {loc.user} with {how} failed: {exc}") from exc
        if not transport.is_authenticated():
            raise InboxError(f"{loc.display}: authentication as {loc.user} failed")

    @classmethod
    def _ensure_folder(cls, sftp: paramiko.SFTPClient, folder: str) -> None:
        """Create `folder` (and missing parents) unless it exists."""
        try:
            if stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
                return
            raise InboxError(f"{folder} exists on the server but is not a folder")
        except FileNotFoundError:
            pass
        parent = posixpath.dirname(folder)
        if parent != folder:
            cls._ensure_folder(sftp, parent)
        try:
            sftp.mkdir(folder)
        except OSError:
            if not stat.S_ISDIR(sftp.stat(folder).st_mode or 0):  # created meanwhile by another instance?
                raise

    def _drop(self) -> None:
        sftp, transport = self._sftp, self._transport
        self._sftp = self._transport = None
        for thing in (sftp, transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may fail in any way
                    pass

    def _run(self, what: str, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run one operation on the session; a dead connection becomes InboxUnavailable.

        SFTP status errors (no such file, permission denied) arrive as OSError on a live
        connection and are passed through unchanged."""
        sftp = self._session()
        try:
            return operation(sftp)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, (TimeoutError, EOFError, paramiko.SSHException)) or not self.connected:
                self._drop()
                raise InboxUnavailable(
                    f"{self.location.display}: connection lost during {what}: {type(exc).__name__}: {exc}"
                ) from exc
            raise

    # ------------------------------------------------------------------ scanning

    def _safe(self, name: str) -> bool:
        return name_is_safe(name, self._refused, self.location.display)

    def _list(self, sftp: paramiko.SFTPClient, folder: str) -> list[FileStat]:
        entries = []
        for attr in sftp.listdir_attr(folder):
            if not self._safe(attr.filename):
                continue
            # listdir reports lstat(): symlinks are not regular files and are never followed.
            if attr.st_mode is not None and stat.S_ISREG(attr.st_mode):
                entries.append(FileStat(attr.filename, int(attr.st_size or 0), float(attr.st_mtime or 0)))
        return entries

    def scan(self) -> list[Candidate]:
        listing = self._run("scan", lambda sftp: self._list(sftp, self.root))
        return self._readiness.observe(listing)

    def resume(self) -> list[Claimed]:
        return left_in_processing(self._run("resume", lambda sftp: self._list(sftp, self.processing)), self._rules)

    # ------------------------------------------------------------------ moves

    @staticmethod
    def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.lstat(path)
            return True
        except FileNotFoundError:
            return False

    def _move(self, sftp: paramiko.SFTPClient, src: str, folder: str, name: str) -> str:
        """Rename `src` into `folder` as `name` (a timestamped name if taken); FileNotFoundError if `src` is gone."""
        target = name
        for attempt in range(_MAX_NAME_ATTEMPTS):
            try:
                sftp.rename(src, posixpath.join(folder, target))
                return target
            except OSError as exc:
                if not self.connected:
                    raise
                if not self._exists(sftp, src):
                    raise FileNotFoundError(errno.ENOENT, "gone", src) from exc
                if not self._exists(sftp, posixpath.join(folder, target)):
                    raise InboxError(f"cannot move {src} to {folder}/{target}: {exc}") from exc
                target = stamped_name(name, attempt=attempt)
        raise InboxError(f"no free name for {name} in {folder} after {_MAX_NAME_ATTEMPTS} attempts")

    def claim(self, candidate: Candidate) -> Claimed | None:
        name = check_name(candidate.name)
        if candidate.marker is not None:
            check_name(candidate.marker)

        def operation(sftp: paramiko.SFTPClient) -> Claimed | None:
            try:
                target = self._move(sftp, posixpath.join(self.root, name), self.processing, name)
            except FileNotFoundError:
                log.info("%s: %s was claimed by another instance", self.location.display, name)
                return None
            attrs = sftp.stat(posixpath.join(self.processing, target))
            marker = None
            if candidate.marker is not None:
                marker_target = target + candidate.marker[len(name):]
                try:
                    sftp.rename(posixpath.join(self.root, candidate.marker), posixpath.join(self.processing, marker_target))
                    marker = marker_target
                except OSError as exc:
                    if not self.connected:
                        raise
                    log.warning("%s: marker %s not moved with %s: %s", self.location.display, candidate.marker, name, exc)
            return Claimed(target, name, int(attrs.st_size or 0), float(attrs.st_mtime or 0), marker)

        result = self._run(f"claim of {name}", operation)
        self._readiness.forget(name)
        return result

    def finish(self, claimed: Claimed, ok: bool) -> str:
        name = check_name(claimed.name)
        if claimed.marker is not None:
            check_name(claimed.marker)
        folder = self.archive if ok else self.error

        def operation(sftp: paramiko.SFTPClient) -> str:
            target = self._move(sftp, posixpath.join(self.processing, name), folder, name)
            if claimed.marker is not None:
                try:
                    self._move(sftp, posixpath.join(self.processing, claimed.marker), folder,
                               target + claimed.marker[len(name):])
                except FileNotFoundError:
                    pass
            return target

        return self._run(f"{'archive' if ok else 'error'} move of {name}", operation)

    # ------------------------------------------------------------------ content

    def open_local(self, claimed: Claimed, staging_dir: Path) -> Path:
        name = check_name(claimed.name)
        remote = posixpath.join(self.processing, name)
        staging_dir.mkdir(parents=True, exist_ok=True)
        final = staging_dir / name
        tmp = staging_dir / f".{name}.{secrets.token_hex(4)}.part"

        def download(sftp: paramiko.SFTPClient) -> None:
            size = int(sftp.stat(remote).st_size or 0)
            with open(tmp, "wb") as out:
                # getfo is what SFTPClient.get uses: prefetch (pipelined reads) on.
                written = sftp.getfo(
                    remote, out, prefetch=True, max_concurrent_prefetch_requests=self.settings.prefetch_max_requests
                )
                out.flush()
                local_size = os.fstat(out.fileno()).st_size
            if not written == local_size == size:
                raise InboxError(
                    f"download of {remote} incomplete: {written} bytes received, {local_size} written, "
                    f"{size} expected"
                )

        try:
            self._run(f"download of {name}", download)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def put_receipt(self, local_path: Path, name: str) -> None:
        check_name(name)
        final = posixpath.join(self.outbox, name)
        tmp = posixpath.join(self.outbox, f".{name}.{secrets.token_hex(4)}.tmp")

        def upload(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.put(str(local_path), tmp, confirm=True)  # confirm: stat and compare the size
                try:
                    sftp.posix_rename(tmp, final)
                except OSError:
                    if not self.connected:
                        raise
                    # No posix-rename extension: the standard rename does not replace a target.
                    if self._exists(sftp, final):
                        sftp.remove(final)
                    sftp.rename(tmp, final)
            except BaseException:
                if self.connected:
                    try:
                        sftp.remove(tmp)
                    except OSError:
                        pass
                raise

        self._run(f"receipt upload of {name}", upload)

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float | None = None) -> bool:
        self._closed.wait(self.settings.poll_interval_seconds if timeout is None else timeout)
        return False

    def close(self) -> None:
        self._closed.set()
        self._drop()
