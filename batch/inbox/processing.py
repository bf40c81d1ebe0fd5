"""What may be taken from processing/ when the worker resumes: the readiness rules there too.

processing/ holds the files this tool claimed (renamed there from the inbox) and did not finish
yet: a kill, a failure, a pause. Those are resumed at once. But a careless operator (or an
uploader that knows the folder) may also copy a file straight into processing/, and it may still
be growing when the worker looks. Such a file was never claimed, so it gets the rules of a new
arrival in the inbox: it is taken only once it is ready (its marker beside it in processing/, or
its size and mtime unchanged for `min_age_seconds`; at least PROCESSING_MIN_AGE when the feed's
is 0, since no close event is watched there). Until then it is left where it is and the log says
so. "Claimed by this tool" means: claimed by this inbox object in this process, or known to the
journal as begun (the caller's `began`, e.g. ``JournalStore.unfinished_named``).

Entries that are not regular files (symlinks, FIFOs, folders named like data files, devices)
are never taken or followed, and are named in one log line per change (a count and the first
few names, whatever their number).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from batch.fsutil import display_name
from batch.inbox.base import Claimed, FileStat, NameRules, left_in_processing
from batch.inbox.readiness import Readiness

log = logging.getLogger(__name__)

PROCESSING_MIN_AGE = 1.0  # seconds; the age rule in processing/ when the feed's min_age is 0
SHOWN_NAMES = 5           # names a log line lists before "and N more"


def some_names(names: Iterable[str]) -> str:
    """`a.csv, b.csv … and 3 more`: a bounded list for a log line."""
    listed = sorted(names)
    shown = ", ".join(display_name(name) for name in listed[:SHOWN_NAMES])
    return shown + (f" and {len(listed) - SHOWN_NAMES} more" if len(listed) > SHOWN_NAMES else "")


class ProcessingFolder:
    """The resume rules of one inbox's processing/ folder. Not thread-safe (one per inbox)."""

    def __init__(self, rules: NameRules, min_age_seconds: float, where: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rules = rules
        self.min_age = min_age_seconds if min_age_seconds > 0 else PROCESSING_MIN_AGE
        self._readiness = Readiness(rules, self.min_age, clock)
        self._where = where
        self._claimed: set[str] = set()       # claimed by this inbox object, still in processing/
        self._began: dict[str, bool] = {}     # the caller's answer per name, while the name is there
        self.waiting: tuple[str, ...] = ()    # not claimed by this tool, not ready yet
        self._said_waiting: frozenset[str] = frozenset()
        self._said_odd: frozenset[str] = frozenset()

    def claimed(self, name: str) -> None:
        """This inbox renamed `name` into processing/ (it is resumed without waiting)."""
        self._claimed.add(name)

    def finished(self, name: str) -> None:
        """`name` left processing/ (archive/ or error/)."""
        self._claimed.discard(name)
        self._began.pop(name, None)
        self._readiness.forget(name)

    def take(self, entries: list[FileStat], odd: list[str], began: Callable[[Claimed], bool]) -> list[Claimed]:
        """The files to resume now, oldest first; `odd`: names there that are not regular files."""
        present = {entry.name for entry in entries}
        self._claimed &= present
        self._began = {name: known for name, known in self._began.items() if name in present}
        self._say_odd(odd)
        ours: list[Claimed] = []
        foreign: dict[str, Claimed] = {}
        for claimed in left_in_processing(entries, self._rules):
            if claimed.name not in self._claimed and not self._known(claimed, began):
                foreign[claimed.name] = claimed
            else:
                ours.append(claimed)
        # markers stay in the listing: a marker feed's file is ready when its marker is there
        listing = [entry for entry in entries if entry.name in foreign or not self._rules.is_data(entry.name)]
        ready = {candidate.name for candidate in self._readiness.observe(listing)}
        for name in sorted(ready):
            if self._began.get(name) is False:
                self._began[name] = True  # said once; it is the worker's now, like a claimed file
                log.warning("%s: taking %s from processing/: this tool did not claim it, and it is ready now "
                            "(%s)", self._where, display_name(name), self._rule())
        self.waiting = tuple(sorted(set(foreign) - ready))
        self._say_waiting()
        found = ours + [foreign[name] for name in ready]
        found.sort(key=lambda claimed: (claimed.mtime, claimed.name))
        return found

    def _known(self, claimed: Claimed, began: Callable[[Claimed], bool]) -> bool:
        known = self._began.get(claimed.name)
        if known is None:  # asked once per name while it is there: 100,000 names are 100,000 queries once
            known = self._began[claimed.name] = began(claimed)
        return known

    def _rule(self) -> str:
        if self._rules.marker_suffixes:
            return f"its marker ({', '.join(self._rules.marker_suffixes)}) is beside it"
        return f"it has not changed for {self.min_age:g} s"

    def _say_waiting(self) -> None:
        waiting = frozenset(self.waiting)
        if waiting - self._said_waiting:
            log.warning("%s: processing/ holds %d file(s) this tool did not claim (%s): each is left where it "
                        "is until it is ready like a new arrival (%s); put files into the inbox folder, "
                        "never into processing/", self._where, len(waiting), some_names(waiting),
                        self._rule().replace("it has", "it has").replace("its marker", "its marker"))
        self._said_waiting = waiting

    def _say_odd(self, odd: list[str]) -> None:
        now = frozenset(odd)
        if now - self._said_odd:
            log.warning("%s: processing/ holds %d entr%s that %s not a regular file (a symbolic link, FIFO, "
                        "folder or device: %s); ignored, never read or followed: remove %s",
                        self._where, len(now), "y" if len(now) == 1 else "ies", "is" if len(now) == 1 else "are",
                        some_names(now), "it" if len(now) == 1 else "them")
        self._said_odd = now
