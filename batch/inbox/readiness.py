"""When is a file in the inbox finished? Pure: listings and events in, ready files out.

A file is ready when
- the feed uses markers (`.done`, `.ok`) and NAME + marker suffix exists (no age wait); or
- (no markers) its writer closed it or it was moved in (native local inboxes only), or
- (no markers) its size and mtime have not changed for `min_age_seconds`, measured with
  this process's own monotonic clock between observations: the file's mtime is compared
  with nothing but its previous value, so clock skew between writer and reader is harmless.

A file that is still growing changes size between observations and is never ready.
Dotfiles, temporary names (`*.part`, ...) and names outside the feed's patterns never are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from batch.inbox.base import Candidate, FileStat, NameRules


@dataclass
class _Seen:
    size: int
    mtime: float
    since: float  # monotonic time at which this (size, mtime) was first observed


class Readiness:
    """Tracks the files of one inbox across observations. Not thread-safe."""

    def __init__(
        self,
        rules: NameRules,
        min_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rules = rules
        self._min_age = min_age_seconds
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._closed: set[str] = set()

    def note_closed(self, name: str) -> None:
        """The writer closed the file after writing, or it was renamed into the inbox."""
        self._closed.add(name)

    def note_changed(self, name: str) -> None:
        """The file was created or written again: a close (or the age rule) must follow."""
        self._closed.discard(name)

    def observe(self, listing: Iterable[FileStat]) -> list[Candidate]:
        """Feed one listing of the inbox (regular files); returns the ready files, oldest first."""
        now = self._clock()
        entries = {entry.name: entry for entry in listing}
        for gone in set(self._seen) - set(entries):
            del self._seen[gone]
        self._closed &= set(entries)

        ready: list[Candidate] = []
        for name, entry in entries.items():
            if not self._rules.is_data(name):
                continue
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime) != (entry.size, entry.mtime):
                seen = self._seen[name] = _Seen(entry.size, entry.mtime, now)
            if self._rules.marker_suffixes:
                marker = next((m for m in self._rules.markers_for(name) if m in entries), None)
                if marker is not None:
                    ready.append(Candidate(name, entry.size, entry.mtime, marker))
            elif name in self._closed or now - seen.since >= self._min_age:
                ready.append(Candidate(name, entry.size, entry.mtime))
        ready.sort(key=lambda c: (c.mtime, c.name))
        return ready

    def forget(self, name: str) -> None:
        """The file was claimed (by us or another instance): start afresh if the name returns."""
        self._seen.pop(name, None)
        self._closed.discard(name)
