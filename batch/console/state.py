"""What the console reads: the service's configuration (reloaded when its file or a mapping
changes, as the service does), its journal and its lease store, opened once and shared by the
request threads (both are thread-safe).

The journal is opened as the commands that write it do (never created: a missing SQLite file
means nothing was processed yet, and the page says so); the console only reads it, except for
a retry request. A configuration that becomes unusable while the console runs keeps the last
good one in force, and every page shows the problem.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from batch.config.service import LoadedService, load_service_config
from batch.config.yamlload import ConfigError
from batch.service.logs import redact_config_secrets
from batch.store.journal import JournalError, JournalStore
from batch.store.journals import journal_display, open_journal
from batch.store.leases import LeaseStore, open_lease_store

log = logging.getLogger("batch.console")


@dataclass(frozen=True)
class Snapshot:
    """The files' identities (mtime, size) the configuration in force was loaded from."""

    stamps: tuple[tuple[str, int, int], ...]


def _stamps(paths: list[Path]) -> Snapshot:
    found = []
    for path in paths:
        try:
            info = path.stat()
            found.append((str(path), info.st_mtime_ns, info.st_size))
        except OSError:
            found.append((str(path), -1, -1))
    return Snapshot(tuple(found))


def _watched(config_path: Path, loaded: LoadedService | None) -> list[Path]:
    return [config_path] + ([feed.mapping for feed in loaded.config.feeds] if loaded is not None else [])


class ConsoleState:
    """The configuration in force, the journal and the lease store, for every request."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path.resolve()
        self._lock = threading.RLock()
        self._loaded = self._load()  # the first load's problem is the caller's (a clear exit)
        self._snapshot = _stamps(_watched(self.config_path, self._loaded))
        self.config_problem: str | None = None  # a reload that failed: the last good one stays
        self._journal: JournalStore | None = None
        self._journal_location: object = None
        self._leases: LeaseStore | None = None

    def _load(self) -> LoadedService:
        loaded = load_service_config(self.config_path)
        redact_config_secrets(loaded.config)
        return loaded

    @property
    def loaded(self) -> LoadedService:
        """The configuration in force, reloaded first if its file or a mapping changed."""
        with self._lock:
            now = _stamps(_watched(self.config_path, self._loaded))
            if now != self._snapshot:
                self._snapshot = now
                try:
                    self._loaded = self._load()
                    self._snapshot = _stamps(_watched(self.config_path, self._loaded))
                    self.config_problem = None
                    log.info("configuration reloaded: %s", self.config_path)
                except (ConfigError, OSError) as exc:
                    self.config_problem = f"{self.config_path} was changed and cannot be used; the last good " \
                                          f"configuration stays in force: {exc}"
                    log.warning("%s", self.config_problem)
            return self._loaded

    def journal(self) -> JournalStore | None:
        """The configuration's journal; None while a SQLite journal does not exist yet. Raises
        JournalUnavailable / JournalUnusable (the page says so)."""
        loaded = self.loaded
        with self._lock:
            location = loaded.config.journal
            if self._journal is not None and self._journal_location != location:
                self._close_stores()
            if self._journal is None:
                self._journal = open_journal(loaded.config, create=False)
                self._journal_location = location
            return self._journal

    def leases(self) -> LeaseStore | None:
        """The lease store in the journal (None while there is no journal, or it cannot be opened)."""
        journal = self.journal()
        if journal is None:
            return None
        with self._lock:
            if self._leases is None:
                config = self.loaded.config
                try:
                    self._leases = open_lease_store(config.journal, config.journal_password_file)
                except JournalError as exc:
                    log.warning("leases not shown: %s", exc)
                    return None
            return self._leases

    @property
    def journal_display(self) -> str:
        return journal_display(self.loaded.config.journal)

    def _close_stores(self) -> None:
        for store in (self._leases, self._journal):
            if store is not None:
                try:
                    store.close()
                except Exception:  # noqa: BLE001 - closing what may already be broken
                    log.debug("closing a store failed", exc_info=True)
        self._journal = self._leases = None

    def forget_stores(self) -> None:
        """Close the journal and the lease store (one that failed): the next request opens them again."""
        with self._lock:
            self._close_stores()

    def close(self) -> None:
        with self._lock:
            self._close_stores()
