"""The inbox interface, its settings, and the pure pieces both inboxes share.

An inbox is where a legacy system drops export files: a local folder, or a folder on an
SFTP server. Both implementations offer the same life cycle for one file:

    scan() -> Candidate        finished files, oldest first
    claim(candidate) -> Claimed | None     rename into processing/ (None: someone else has it)
    open_local(claimed, staging) -> Path   a local path to read
    put_receipt(path, name)                atomic write into the outbox
    finish(claimed, ok)                    processing/ -> archive/ or error/

and `resume()` for what a previous run left in processing/.
"""

from __future__ import annotations

import abc
import fnmatch
import logging
import posixpath
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from batch.config.api import MAX_SECONDS
from batch.config.secrets import check_reference, resolve_secret
from batch.errors import AccessRefused, BatchError, ConfigurationError, InputFileError, TransientError
from batch.fsutil import display_name, fit_name

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


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class LocalLocation:
    path: Path


@dataclass(frozen=True)
class SftpLocation:
    user: str
    host: str
    port: int
    path: str  # absolute POSIX path on the server

    @property
    def display(self) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{self.path}"


def parse_location(inbox: str) -> LocalLocation | SftpLocation:
    """`/srv/drop/feed` (a local folder) or `sftp://user@host[:port]/path`."""
    if "://" not in inbox:
        return LocalLocation(Path(inbox).expanduser())
    parts = urlsplit(inbox)
    if parts.scheme != "sftp":
        raise ValueError(f"inbox: unsupported scheme {parts.scheme!r}: use a local folder or sftp://user@host:port/path")
    if parts.password is not None:
        raise ValueError("inbox: a password in the sftp:// URL is not accepted; use password: ${ENV} or password_file")
    if not parts.username or not parts.hostname:
        raise ValueError("inbox: an sftp:// URL needs a user and a host: sftp://user@host:port/path")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise ValueError(f"inbox: bad port in {inbox!r}") from exc
    path = unquote(parts.path)
    if not path.startswith("/") or path.rstrip("/") == "":
        raise ValueError("inbox: an sftp:// URL needs an absolute folder path after the host, e.g. sftp://u@h:22/drop")
    if parts.query or parts.fragment:
        raise ValueError("inbox: an sftp:// URL takes no query or fragment")
    return SftpLocation(unquote(parts.username), parts.hostname, port, posixpath.normpath(path))


SECRET_FILE_FIELDS = ("private_key_file", "key_passphrase_file", "password_file")


def missing_secret_file(field: str, path: Path) -> str:
    """The problem with a secret file that is not there; a secret's own file is not named (D17)."""
    if field == "private_key_file":
        return f"{path} is not a readable file"
    return "the file it names is not a readable file (the path is not shown: it may be a secret typed here)"


class InboxSettings(BaseModel):
    """The inbox of one feed: where files arrive, when they are ready, where they go."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    inbox: str = Field(description="A local folder, or sftp://user@host:port/absolute/path")

    # SFTP authentication: a private key (optionally with a passphrase) or a password.
    private_key_file: Path | None = None
    key_passphrase: SecretStr | None = Field(default=None, description="${ENV_NAME} only")
    key_passphrase_file: Path | None = None
    password: SecretStr | None = Field(default=None, description="${ENV_NAME} only")
    password_file: Path | None = None
    known_hosts: Path | None = Field(default=None, description="Required for sftp:// inboxes")
    accept_new_host_key: bool = Field(
        default=False, description="Trust an unknown host key on first use and record it in known_hosts"
    )
    connect_timeout_seconds: float = Field(default=20.0, gt=0, le=MAX_SECONDS)
    io_timeout_seconds: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    keepalive_seconds: int = Field(default=30, ge=0)
    reconnect_initial_seconds: float = Field(default=1.0, gt=0, le=MAX_SECONDS)
    reconnect_max_seconds: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    prefetch_max_requests: int | None = Field(
        default=None, ge=1, description="Cap on concurrent SFTP read requests per download (None: no cap)"
    )

    # Which files, and when they are ready.
    patterns: list[str] = Field(default_factory=lambda: ["*.csv", "*.xml"], min_length=1)
    ignore_patterns: list[str] = Field(default_factory=lambda: ["*.part", "*.tmp", "*.filepart"])
    min_age_seconds: float = Field(default=15.0, ge=0, le=MAX_SECONDS)
    marker_suffixes: list[str] = Field(default_factory=list)
    ready_on_close: bool = Field(
        default=True,
        description="Local native inbox: a file is ready when its writer closes it or it is moved in. "
        "Turn off when writers append to a file in several sessions.",
    )

    # Folders: relative to the inbox, or absolute (on the same file system / server).
    processing_dir: str = "processing"
    archive_dir: str = "archive"
    error_dir: str = "error"
    outbox_dir: str = "outbox"

    poll_interval_seconds: float = Field(default=10.0, gt=0, le=MAX_SECONDS)
    mode: Literal["native", "polling"] = Field(
        default="native", description="Local inboxes: inotify events (native) or a scan every poll interval "
        "(polling, for NFS/CIFS mounts). SFTP inboxes are always polled."
    )

    @field_validator("key_passphrase", "password", mode="before")
    @classmethod
    def _env_secret(cls, value: object, info: ValidationInfo) -> SecretStr | None:
        return check_reference(value, info.field_name or "")  # resolved when needed: resolved_*()

    @field_validator("private_key_file", "key_passphrase_file", "password_file", "known_hosts", mode="before")
    @classmethod
    def _expand_path(cls, value: object) -> object:
        from batch.config.envpath import expand_env_path

        return expand_env_path(value)  # e.g. ${CREDENTIALS_DIRECTORY}/sftp-key (systemd LoadCredential)

    @field_validator("marker_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        for suffix in value:
            if not re.fullmatch(r"\.[A-Za-z0-9_-]+", suffix):
                raise ValueError(f"marker suffix {suffix!r} must look like .done or .ok")
        return value

    @field_validator("processing_dir", "archive_dir", "error_dir", "outbox_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value or any(ord(c) < 32 for c in value):
            raise ValueError("folder must be a non-empty path without control characters")
        if not value.startswith("/") and ".." in Path(value).parts:
            raise ValueError("a relative folder must stay inside the inbox (no '..')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InboxSettings:
        location = parse_location(self.inbox)
        if self.key_passphrase is not None and self.key_passphrase_file is not None:
            raise ValueError("give key_passphrase or key_passphrase_file, not both")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        # a relative path means "beside the service configuration": the loader checks it once resolved
        for path_field in SECRET_FILE_FIELDS:
            path = getattr(self, path_field)
            if path is not None and path.is_absolute() and not path.is_file():
                raise ValueError(f"{path_field}: {missing_secret_file(path_field, path)}")
        if isinstance(location, SftpLocation):
            if self.known_hosts is None:
                raise ValueError("an sftp:// inbox needs known_hosts (the file that holds the server's host key)")
            has_password = self.password is not None or self.password_file is not None
            if self.private_key_file is None and not has_password:
                raise ValueError("an sftp:// inbox needs private_key_file or password / password_file")
        folders = {self.processing_dir, self.archive_dir, self.error_dir, self.outbox_dir}
        if len(folders) != 4 or "." in folders:
            raise ValueError("processing_dir, archive_dir, error_dir and outbox_dir must be four different folders")
        return self

    @property
    def location(self) -> LocalLocation | SftpLocation:
        return parse_location(self.inbox)

    def resolved_key_passphrase(self) -> SecretStr | None:
        """The key passphrase, by the rules of every secret (batch.config.secrets). Raises SecretResolutionError."""
        return resolve_secret(self.key_passphrase, self.key_passphrase_file, field="key_passphrase")

    def resolved_password(self) -> SecretStr | None:
        """The SFTP password, by the rules of every secret. Raises SecretResolutionError."""
        return resolve_secret(self.password, self.password_file, field="password")


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
    def finish(self, claimed: Claimed, ok: bool) -> str:
        """Move the file (and its marker) to archive/ (ok) or error/; returns the name it got there."""

    @abc.abstractmethod
    def resume(self) -> list[Claimed]:
        """Files a previous run left in processing/, oldest first."""

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
