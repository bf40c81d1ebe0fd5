"""Where a feed's files arrive and what to do with them: the inbox settings of one feed.

Settings only (pydantic models and the location parser); the inboxes that act on them live in
:mod:`batch.inbox`. Kept in `config/` so that configuration never imports an inbox.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from batch.config.api import MAX_SECONDS
from batch.config.secrets import check_reference, resolve_secret


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
