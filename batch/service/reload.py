"""Configuration reload: watch the service file and its mappings, load a settled change in full.

A change that has stayed the same for a settle time is loaded and checked (the same checks as
`validate-config`, plus the credentials) before a worker uses it; see batch.service.supervisor."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batch.config.api import SecretResolutionError
from batch.config.service import (
    FeedSettings,
    LoadedService,
    ServiceConfig,
    load_service_config,
)
from batch.config.yamlload import ConfigError
from batch.delivery.ropo import RopoClient
from batch.fsutil import read_regular_file
from batch.inbox import InboxSettings
from batch.pipeline import (
    FeedRuntime,
)

log = logging.getLogger(__name__)

DEFAULT_RELOAD_INTERVAL = 2.0


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- configuration


def inbox_part(feed: FeedSettings) -> dict[str, Any]:
    return feed.model_dump(include=set(InboxSettings.model_fields))


def check_feed_secrets(loaded: LoadedService) -> None:
    """Resolve every feed's SFTP secrets once; SecretResolutionError names the feed and the key."""
    for feed in loaded.config.feeds:
        try:
            feed.resolved_key_passphrase()
            feed.resolved_password()
        except SecretResolutionError as exc:
            raise SecretResolutionError(f"feeds[{feed.name}]: {exc}") from None


class ConfigWatcher:
    """Notices changes to the service file and its mappings, and hands on a change only once
    it has settled.

    Every poll takes each file's content hash and mtime. A change is loaded only after the
    files have stayed exactly so for `settle_seconds` (an editor that saves in two steps, or
    a `cp` over the old file, shows a valid but incomplete prefix for a moment: that must
    never go live). `version` is a short hash of the contents in force, for the log."""

    def __init__(self, loaded: LoadedService, *, settle_seconds: float = 2 * DEFAULT_RELOAD_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = loaded.path
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._files = self._watched(loaded)
        self._seen = self._fingerprint(self._files)
        self._candidate: dict[Path, tuple[str, float] | None] | None = None
        self._candidate_since = 0.0
        self.version = self._version(self._seen)

    @staticmethod
    def _watched(loaded: LoadedService) -> list[Path]:
        return [loaded.path, *(feed.mapping for feed in loaded.config.feeds)]

    @staticmethod
    def _fingerprint(paths: list[Path]) -> dict[Path, tuple[str, float] | None]:
        prints: dict[Path, tuple[str, float] | None] = {}
        for path in paths:
            try:
                mtime = path.stat().st_mtime
                prints[path] = (hashlib.sha256(read_regular_file(path)).hexdigest(), mtime)
            except OSError:
                prints[path] = None
        return prints

    @staticmethod
    def _version(prints: dict[Path, tuple[str, float] | None]) -> str:
        digest = hashlib.sha256()
        for path in sorted(prints):
            found = prints[path]
            digest.update(f"{path}\0{found[0] if found else '-'}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:12]

    def poll(self) -> LoadedService | ConfigError | None:
        """None: nothing changed, or a change is still settling; a LoadedService: a checked
        new version; a ConfigError: refused."""
        now = self._fingerprint(self._files)
        if now == self._seen:
            self._candidate = None  # back as it was (or never changed)
            return None
        if now != self._candidate:
            if self._candidate is None:
                log.info("configuration: a change in %s; applied once it has not changed for %.1f s",
                         ", ".join(str(p) for p in self._files if now.get(p) != self._seen.get(p)),
                         self.settle_seconds)
            self._candidate, self._candidate_since = now, self._clock()
            return None
        if self._clock() - self._candidate_since < self.settle_seconds:
            return None
        self._seen, self._candidate = now, None  # an invalid version is reported once, not on every poll
        try:
            loaded = load_service_config(self.path)
        except ConfigError as exc:
            return exc
        files = self._watched(loaded)
        if files != self._files:  # mappings added or renamed: what is in force is what was just read
            self._files = files
            self._seen = self._fingerprint(files)
        self.version = self._version(self._seen)
        return loaded


@dataclass
class Generation:
    """One valid configuration with what was built from it."""

    number: int
    loaded: LoadedService
    client: RopoClient
    feeds: dict[str, FeedRuntime]

    @property
    def config(self) -> ServiceConfig:
        return self.loaded.config
