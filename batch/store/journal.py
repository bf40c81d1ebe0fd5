"""The journal: the state of files and events, behind one interface, and its SQLite backend.

Every event of a file is recorded here before anything is sent, and every delivery
result is recorded as soon as it is known, so that a restart after a crash or a kill
continues where the work stopped and never re-sends an event Ropo One accepted.

``JournalStore`` is the interface every caller uses; it has two implementations that pass
one test suite (tests/test_journal.py, parametrised over both): ``Journal`` here, one SQLite
file (the embedded default, for one host), and ``PgJournal`` (batch.store.journal_pg), a
PostgreSQL database that instances on several hosts share. ``batch.store.journals.open_journal``
opens the one a configuration names. The rows, states, errors and the pure helpers below
(parameters of an event, counts, row conversions) are shared by both, and so is ``SqlJournal``,
their base: every method's steps and statements, written once; each backend adds its connection,
how it stores a time and the few steps its database does its own way.

SQLite: one file (path given by the caller), WAL mode, schema created on first use and
versioned with ``PRAGMA user_version``.

Concurrency
    One connection per ``Journal``, shared by the threads of the process behind a lock
    (delivery reports results from worker threads); every write is one ``BEGIN IMMEDIATE``
    transaction. Several processes may open the same file: SQLite's file locks serialise
    their writers and ``busy_timeout`` makes a writer wait instead of failing.

Durability (what "recorded" means)
    ``synchronous=NORMAL`` (the default): when a write method returns, its transaction is
    committed to the WAL file through the OS, so it survives a crash or SIGKILL of the
    process at any later moment. It does not yet survive a power loss or OS crash: that
    takes an fsync, which costs milliseconds; doing one per result would cap recording
    at a few hundred results per second on ordinary disks. ``flush()`` is the barrier that
    makes every change committed so far survive power loss too; ``finish_file`` calls
    it, and a caller must call it before acknowledging anything outside (receipt,
    archive move). Open with ``synchronous="FULL"`` to fsync every commit instead.
    The database is consistent after any crash in either mode (SQLite's WAL guarantee).

What it cannot prevent
    A crash between Ropo One's 2xx and ``record_results`` leaves the event pending, so it
    is sent again after the restart: the window is one HTTP response, and it is inherent
    to an API without an idempotency key.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, cast

from batch.errors import BatchError, ConfigurationError, InternalError, TransientError
from batch.strenum import StrEnum
from batch.transform.jsonenc import each_event_bytes, event_bytes

# --------------------------------------------------------------------------- states

class EventState(StrEnum):
    """An event's state in the journal (the stored word; also its receipt outcome)."""

    PENDING = "pending"        # recorded, not yet sent (or sending stopped)
    ACCEPTED = "accepted"      # Ropo One answered 2xx
    REJECTED = "rejected"      # Ropo One refused it for good (4xx)
    INVALID = "invalid"        # the mapping refused the record: never sent
    FAILED = "failed"          # transient errors outlasted the retries: `retry` sends it again
    DUPLICATE = "duplicate"    # its id was accepted before (another file or an earlier line)
    NOT_SENT = "not_sent"      # the file ended in error before it was sent (it never will be)


class FileState(StrEnum):
    """A file's state in the journal."""

    PROCESSING = "processing"  # begun, not finished: a restart resumes it
    DONE = "done"              # every event has its final state
    ERROR = "error"            # the file as a whole could not be used
    SKIPPED = "skipped"        # the same content was processed before: nothing sent


ResultOutcome = Literal["accepted", "rejected", "failed"]

#: Every event state, in the order receipts and summaries list them. Plain words (the enum's
#: values), as the keys of every ``counts`` mapping: any JSON encoder takes them as keys.
OUTCOMES: tuple[str, ...] = tuple(state.value for state in (
    EventState.ACCEPTED, EventState.REJECTED, EventState.INVALID, EventState.FAILED, EventState.DUPLICATE,
    EventState.NOT_SENT, EventState.PENDING))
RESULT_OUTCOMES: frozenset[str] = frozenset({EventState.ACCEPTED, EventState.REJECTED, EventState.FAILED})
#: States from which an event may still be (re)sent and may take a delivery result.
SENDABLE_STATES: tuple[EventState, ...] = (EventState.PENDING, EventState.FAILED)
FILE_FINAL_STATES: frozenset[FileState] = frozenset({FileState.DONE, FileState.ERROR, FileState.SKIPPED})

PAGE_SIZE = 5000


class JournalError(BatchError):
    """The family of everything the journal raises (never raised itself; see batch.errors)."""


class JournalUnusable(JournalError, ConfigurationError):
    """The journal's file cannot be used by this version or on this disk (schema too new, no WAL)."""


class JournalMisuse(JournalError, InternalError):
    """A call the journal's state forbids (finishing a file with pending events, an unknown file
    id, an inconsistent state): a bug in the caller."""


class FileInProgress(JournalError, TransientError):
    """The same file content is being processed right now by another live process."""


class JournalUnavailable(JournalError, TransientError):
    """The journal cannot be read or written now: its SQLite file (disk I/O error, read-only
    or full file system, locked longer than the busy timeout) or its PostgreSQL server
    (connection refused or lost, server shutting down, disk full). Not the input file's fault:
    the caller keeps the file and tries again later. The message names the journal (its path,
    or its URI without the password), the operation and the database's error."""

    def __init__(self, path: Path | str, operation: str, error: BaseException | str) -> None:
        super().__init__(f"journal {path}: cannot {operation}: {error}")
        self.path, self.operation, self.error = path, operation, error


# --------------------------------------------------------------------------- rows


class NewEvent(NamedTuple):
    """One mapped record, to be recorded before sending; made by ``valid`` or ``invalid``.

    ``error`` set means the record is invalid (mapping or validation failed): it is stored
    with state ``invalid`` and that message, and never sent. ``errors``: the same problems as
    data, each a mapping of ``field``, ``source``, ``value`` and ``message`` (stored as a JSON
    list; without it the message alone is stored as one error).

    It holds the payload as the journal stores it — its JSON text (``canonical_json``), made
    right away — not the payload dict. The pipeline makes
    NewEvents chunk by chunk as records are mapped (a chunk whose records are all valid: one
    ``ValidEvents``, the same rows by columns) and records them thousands at a time:
    serialised while the event is still in the CPU's cache, with the dict freed there and then,
    a record costs a third less than when the batch's dicts are serialised and freed at the end
    (bench/bench_mapping.py). A NamedTuple rather than a frozen dataclass: as immutable, and made
    four times faster (a frozen dataclass sets each field through object.__setattr__).
    """

    line: int
    event_id: str | None
    usageplacecode: str | None
    status: str | None
    payload_json: str | None  # None: nothing of the record could be mapped
    error: str | None = None
    errors: Sequence[Mapping[str, Any]] | None = None

    @classmethod
    def valid(cls, line: int, payload: Mapping[str, Any]) -> NewEvent:
        return cls(line, _opt_str(payload.get("id")), _opt_str(payload.get("usageplacecode")),
                   _opt_str(payload.get("status")), canonical_json(payload))

    @classmethod
    def invalid(cls, line: int, error: str, payload: Mapping[str, Any] | None = None,
                errors: Sequence[Mapping[str, Any]] | None = None) -> NewEvent:
        """An invalid record; ``payload`` is whatever part of the event could be mapped."""
        if payload is None:
            return cls(line, None, None, None, None, error, errors)
        return cls(line, _opt_str(payload.get("id")), _opt_str(payload.get("usageplacecode")),
                   _opt_str(payload.get("status")), canonical_json(payload), error, errors)

    @property
    def payload(self) -> dict[str, Any] | None:
        """The payload, read back from its JSON text."""
        return None if self.payload_json is None else json.loads(self.payload_json)


class ValidEvents:
    """The valid records of one chunk, column by column: what ``NewEvent.valid`` makes of each
    (the same row in the journal), without a Python object per event.

    The mapper's chunk path hands over a chunk whose records are all valid as lists (lines,
    ids, payloads); the payloads' JSON texts are made here with a loop that runs in C
    (``jsonenc.each_event_bytes``), while the chunk is in the CPU's cache, and ``insert_params``
    zips the columns into the journal's rows. Per record that saves a MappedRecord, a NewEvent,
    a function call of serialising and a row built in Python (bench/bench_mapping.py).
    """

    __slots__ = ("lines", "event_ids", "usageplacecodes", "statuses", "payload_jsons")

    def __init__(self, lines: Sequence[int], payloads: Sequence[dict[str, Any]]) -> None:
        self.lines = lines
        self.event_ids = _text_column(payloads, "id")
        self.usageplacecodes = _text_column(payloads, "usageplacecode")
        self.statuses = _text_column(payloads, "status")
        self.payload_jsons = list(map(bytes.decode, each_event_bytes(payloads)))

    def __len__(self) -> int:
        return len(self.lines)

    def insert_params(self, file_id: int, now: str) -> list[tuple[Any, ...]]:
        """The SQL_INSERT_EVENT parameters of each event, as event_insert_params makes them."""
        return list(zip(repeat(file_id), self.lines, self.event_ids, self.usageplacecodes, self.statuses,
                        self.payload_jsons, repeat(EventState.PENDING), repeat(None),
                        repeat(None), repeat(now)))


def _text_column(payloads: Sequence[dict[str, Any]], key: str) -> list[str | None]:
    """``_opt_str(payload.get(key))`` of each payload (the mapped values are text already)."""
    values = list(map(dict.get, payloads, repeat(key)))
    if set(map(type, values)) <= {str}:
        return values
    return list(map(_opt_str, values))


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of delivering one event (accepted only after a 2xx)."""

    file_id: int
    line: int
    outcome: ResultOutcome
    http_status: int | None = None
    message: str | None = None
    attempts: int = 1  # HTTP attempts this result took; added to the stored count
    title: str | None = None  # a rejection's problem document (HttpApiProblem): title and detail
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    file_id: int
    line: int
    event_id: str | None
    usageplacecode: str | None
    status: str | None
    state: EventState
    attempts: int
    http_status: int | None
    message: str | None
    payload_json: str | None
    updated_at: datetime
    errors_json: str | None = None  # an invalid record's problems (a JSON list; see ``errors``)
    title: str | None = None  # a rejected event's problem title and detail, as Ropo One sent them
    detail: str | None = None

    @property
    def errors(self) -> list[dict[str, Any]]:
        """An invalid record's problems, each ``{field, source, value, message}`` (field, source
        and value None where unknown, e.g. a record journaled before errors were data)."""
        return [] if self.errors_json is None else list(json.loads(self.errors_json))

    @property
    def outcome(self) -> str:
        """The receipt's name for the state (they are the same words)."""
        return self.state

    @property
    def payload(self) -> dict[str, Any] | None:
        return None if self.payload_json is None else json.loads(self.payload_json)


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: int
    name: str
    sha256: str
    size: int
    feed: str
    state: FileState
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    counts: dict[str, int]
    recorded: bool  # all events of the file are in the journal (mark_recorded was called)
    original_id: int | None  # for a skipped file: the completed file with the same content
    owner: str
    mapping_version: str | None = None  # the mapping its events were recorded with (a hash)
    finish_problem: str | None = None  # finished, but its receipt / archive move is still to do
    note: str | None = None  # what a reader of the receipt should know (e.g. the mapping changed)
    filtered: int = 0  # records the mapping's `keep` rule left out (not events: not in counts)

    @property
    def finished(self) -> bool:
        return self.state in FILE_FINAL_STATES


@dataclass(frozen=True, slots=True)
class BeginResult:
    """What ``begin_file`` found: ``new`` -> process; ``resumed`` -> continue the unfinished
    file (events may already be recorded, some sent); ``already_processed`` -> send nothing,
    write the file-level receipt of ``file`` (state ``skipped``, its ``error`` says why)."""

    file: FileRecord
    outcome: Literal["new", "resumed", "already_processed"]
    original: FileRecord | None = None


class RetryState(StrEnum):
    """A retry request's state (batch.service.retrying): the stored word."""

    WAITING = "waiting"  # recorded; the feed's lease holder has not taken it yet
    RUNNING = "running"  # taken by ``taken_by`` (the feed's lease holder), which sends now
    DONE = "done"        # carried out: ``counts`` and ``files`` say what came of it
    FAILED = "failed"    # could not be carried out (``message`` says why)


RETRY_FINAL_STATES: frozenset[RetryState] = frozenset({RetryState.DONE, RetryState.FAILED})


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A request to send a feed's failed events again (``file_id`` None: every file of the feed
    with failed events), as the journal keeps it: who asked and when, who carried it out, and
    what came of it (``counts`` per outcome over its files; ``files``: one result per file, as
    batch.service.retrying.FileResult writes them)."""

    id: int
    feed: str
    file_id: int | None
    requested_by: str
    requested_at: datetime
    state: RetryState
    taken_by: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in RETRY_FINAL_STATES


# --------------------------------------------------------------------------- the interface


class JournalStore(ABC):
    """What every journal backend does; callers (pipeline, service, commands) use only this.

    Semantics (the same for every backend; tests/test_journal.py holds them):
    - a write method's changes are committed when it returns (they survive a kill of the
      process); ``flush`` makes them survive a power loss too;
    - a fault of the storage itself (disk, lock, lost connection) raises ``JournalUnavailable``
      naming the operation: the caller keeps its file, pauses, calls ``reopen`` and tries again;
    - one object is shared by the threads of a process.
    """

    #: the clock the journal stamps its rows with (tests move it)
    clock: Callable[[], datetime]

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the journal is, for messages: a path, or a URI without its password."""

    # -- lifecycle

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> JournalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def reopen(self) -> None:
        """Connect again after JournalUnavailable (a remounted disk, a restarted server); raises
        JournalUnavailable while the journal still cannot be reached."""

    @abstractmethod
    def flush(self) -> None:
        """Durability barrier: every change committed so far survives power loss after this."""

    def set_fence(self, fence: Callable[[Any], None] | None) -> None:
        """Fencing (feed leases, batch.store.leases): every later write transaction of the
        calling thread first runs ``fence(connection)`` inside the transaction, on the backend's
        own connection; it raises (LeaseLost) to refuse the write, which is then rolled back.
        None removes it. With a fence set, ``begin_file`` leaves it to the feed's lease who
        works a file (no FileInProgress)."""
        raise NotImplementedError(f"{type(self).__name__} has no fencing")

    # -- files

    @abstractmethod
    def begin_file(self, name: str, sha256: str, size: int, feed: str, force: bool = False) -> BeginResult:
        """Register a file before processing it (see ``Journal.begin_file``)."""

    @abstractmethod
    def mark_recorded(self, file_id: int) -> None: ...

    @abstractmethod
    def finish_file(self, file_id: int, state: Literal[FileState.DONE, FileState.ERROR, "done", "error"],
                    error: str | None = None) -> FileRecord: ...

    @abstractmethod
    def refresh_counts(self, file_id: int) -> FileRecord: ...

    @abstractmethod
    def finished_as(self, feed: str, sha256: str, name: str) -> FileRecord | None: ...

    @abstractmethod
    def unfinished_named(self, feed: str, name: str) -> FileRecord | None: ...

    @abstractmethod
    def set_mapping_version(self, file_id: int, version: str) -> None: ...

    @abstractmethod
    def sent_any(self, file_id: int) -> bool: ...

    @abstractmethod
    def restart_recording(self, file_id: int, version: str) -> None: ...

    @abstractmethod
    def add_note(self, file_id: int, note: str) -> None: ...

    @abstractmethod
    def set_finish_problem(self, file_id: int, problem: str | None) -> None: ...

    @abstractmethod
    def set_filtered(self, file_id: int, filtered: int) -> None:
        """Store how many records the mapping's `keep` rule left out of the file."""

    @abstractmethod
    def count_file_attempt(self, feed: str, name: str, error: str) -> int: ...

    @abstractmethod
    def clear_file_attempts(self, feed: str, name: str) -> None: ...

    @abstractmethod
    def prune(self, finished_before: datetime, batch_rows: int = 20_000) -> tuple[int, int]: ...

    @abstractmethod
    def get_file(self, file_id: int) -> FileRecord: ...

    @abstractmethod
    def recent_files(self, limit: int = 20, feed: str | None = None) -> list[FileRecord]: ...

    @abstractmethod
    def file_counts(self, file_id: int) -> dict[str, int]: ...

    # -- events

    @abstractmethod
    def record_events(self, file_id: int, events: Iterable[NewEvent | ValidEvents]) -> int: ...

    @abstractmethod
    def mark_duplicates(self, file_id: int) -> int: ...

    @abstractmethod
    def to_send(self, file_id: int, include_failed: bool = False) -> Iterator[EventRecord]: ...

    @abstractmethod
    def file_events(self, file_id: int) -> Iterator[EventRecord]: ...

    @abstractmethod
    def failed_events(self, file_id: int | None = None) -> list[EventRecord]: ...

    @abstractmethod
    def record_results(self, results: Iterable[Result]) -> int: ...

    # -- queries of the console (a page of a file's events; what waits for a retry)

    @abstractmethod
    def events_page(self, file_id: int, *, states: Sequence[str] = (), search: str | None = None,
                    offset: int = 0, limit: int = 100) -> list[EventRecord]:
        """One page of a file's events in record order: the `limit` events from the `offset`-th
        on, of those in `states` (all when empty) whose event id or usage place code is `search`
        (exactly). The start is found on the (file_id, line) key and the page read from there
        (keyset), so the last page of 100,000 records costs about what the first does."""

    @abstractmethod
    def count_events(self, file_id: int, *, states: Sequence[str] = (), search: str | None = None) -> int:
        """How many events of the file `events_page` pages through with these filters."""

    @abstractmethod
    def failed_by_feed(self) -> dict[str, int]:
        """The events waiting for a retry (state failed), per feed."""

    @abstractmethod
    def files_since(self, since: datetime, limit: int = 500) -> list[FileRecord]:
        """The files started at `since` or later, newest first, at most `limit` (one query, and
        one count per file still processing)."""

    # -- retry requests (batch.service.retrying): who asked to send which failed events again

    @abstractmethod
    def add_retry_request(self, feed: str, file_id: int | None, requested_by: str) -> RetryRequest:
        """Record a request (state ``waiting``) to send the failed events of file ``file_id``
        (None: of every file of ``feed`` with failed events) again; ``requested_by`` says who."""

    @abstractmethod
    def take_retry_request(self, feed: str, taken_by: str) -> RetryRequest | None:
        """The feed's oldest ``waiting`` request, now ``running`` (``taken_by``, ``started_at``
        set), or None. Atomic: two callers never take the same request. Called by the feed's
        lease holder, whose fence refuses the write once the lease is lost."""

    @abstractmethod
    def requeue_retry_requests(self, feed: str, message: str | None = None) -> int:
        """Put the feed's ``running`` requests back to ``waiting`` (``message`` says why); returns
        how many. The lease holder calls it before it takes requests (a request still running
        then was left by a holder that stopped or lost the lease) and when it stops in one."""

    @abstractmethod
    def finish_retry_request(self, request_id: int, state: Literal[RetryState.DONE, RetryState.FAILED],
                             counts: Mapping[str, int] | None = None,
                             files: Sequence[Mapping[str, Any]] | None = None,
                             message: str | None = None) -> RetryRequest:
        """Close a ``running`` request as ``done`` or ``failed``, with its counts per outcome,
        its per-file results and a message; JournalMisuse unless it is running."""

    @abstractmethod
    def get_retry_request(self, request_id: int) -> RetryRequest:
        """One request by id; JournalMisuse if there is none."""

    @abstractmethod
    def retry_requests(self, *, feed: str | None = None, file_id: int | None = None,
                       states: Iterable[RetryState | str] | None = None, limit: int = 20) -> list[RetryRequest]:
        """Requests newest first, at most ``limit``: of one feed, of one file (``file_id``: the
        requests for that file, not the feed-wide ones), in some states, or all."""

    # -- notifications (batch.service.notifying): each sent once, whatever instance fires it

    @abstractmethod
    def claim_notification(self, feed: str, kind: str, subject: str, message: str, state: str) -> bool:
        """Record the notification (`feed`, `kind`, `subject`) in `state` ('pending': to send;
        'off': no webhook, recorded so the alert is said once); True when this call recorded it,
        False when it was there already (another instance, or before a restart)."""

    @abstractmethod
    def finish_notification(self, feed: str, kind: str, subject: str, state: str, attempts: int,
                            error: str | None) -> None:
        """A pending notification's end: 'sent' or 'failed' (with why, never the URL)."""

    @abstractmethod
    def stale_notifications(self, feed: str, claimed_before: datetime) -> list[tuple[str, str, str]]:
        """(kind, subject, message) of the feed's notifications still pending since before
        `claimed_before`: their sender stopped before it was done (a crash); sent again."""


# --------------------------------------------------------------------------- schema

SCHEMA_VERSION = 6

_SCHEMA_V1: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id            INTEGER PRIMARY KEY,
        name          TEXT    NOT NULL,
        sha256        TEXT    NOT NULL,
        size          INTEGER NOT NULL,
        feed          TEXT    NOT NULL,
        state         TEXT    NOT NULL
                      CHECK (state IN ('processing', 'done', 'error', 'skipped')),
        started_at    TEXT    NOT NULL,
        finished_at   TEXT,
        recorded_at   TEXT,
        error         TEXT,
        original_id   INTEGER REFERENCES files(id),
        owner         TEXT    NOT NULL,
        n_accepted    INTEGER NOT NULL DEFAULT 0,
        n_rejected    INTEGER NOT NULL DEFAULT 0,
        n_invalid     INTEGER NOT NULL DEFAULT 0,
        n_failed      INTEGER NOT NULL DEFAULT 0,
        n_duplicate   INTEGER NOT NULL DEFAULT 0,
        n_pending     INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX files_by_content ON files (feed, sha256, state)",
    """
    CREATE TABLE events (
        file_id         INTEGER NOT NULL REFERENCES files(id),
        line            INTEGER NOT NULL,
        event_id        TEXT,
        usageplacecode  TEXT,
        status          TEXT,
        payload         TEXT,
        payload_sha256  TEXT,
        state           TEXT    NOT NULL
                        CHECK (state IN ('pending', 'accepted', 'rejected', 'invalid',
                                         'failed', 'duplicate')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        http_status     INTEGER,
        message         TEXT,
        updated_at      TEXT    NOT NULL,
        PRIMARY KEY (file_id, line)
    )
    """,
    # A full (not partial) index: event_id never changes, so recording a result does not
    # touch it, and it serves both the cross-file and the within-file duplicate checks.
    "CREATE INDEX events_by_event_id ON events (event_id)",
    "CREATE INDEX events_failed ON events (file_id, line) WHERE state = 'failed'",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_EVENTS_TABLE_V2 = """
    CREATE TABLE events_v2 (
        file_id         INTEGER NOT NULL REFERENCES files(id),
        line            INTEGER NOT NULL,
        event_id        TEXT,
        usageplacecode  TEXT,
        status          TEXT,
        payload         TEXT,
        payload_sha256  TEXT,
        state           TEXT    NOT NULL
                        CHECK (state IN ('pending', 'accepted', 'rejected', 'invalid',
                                         'failed', 'duplicate', 'not_sent')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        http_status     INTEGER,
        message         TEXT,
        updated_at      TEXT    NOT NULL,
        PRIMARY KEY (file_id, line)
    )
"""

# Version 2: the event state ``not_sent`` (a file that ended in error leaves none pending;
# SQLite cannot change a CHECK, so the events table is rebuilt), the mapping version a file
# was recorded with, a finished file's outstanding receipt/archive step, and the attempts
# on each file still in a feed's processing/ (they survive a restart).
_SCHEMA_V2: tuple[str, ...] = (
    "ALTER TABLE files ADD COLUMN n_not_sent INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE files ADD COLUMN mapping_version TEXT",
    "ALTER TABLE files ADD COLUMN finish_problem TEXT",
    "ALTER TABLE files ADD COLUMN note TEXT",
    _EVENTS_TABLE_V2,
    "INSERT INTO events_v2 (file_id, line, event_id, usageplacecode, status, payload, payload_sha256,"
    " state, attempts, http_status, message, updated_at) SELECT file_id, line, event_id, usageplacecode,"
    " status, payload, payload_sha256, state, attempts, http_status, message, updated_at FROM events",
    "DROP TABLE events",
    "ALTER TABLE events_v2 RENAME TO events",
    "CREATE INDEX events_by_event_id ON events (event_id)",
    "CREATE INDEX events_failed ON events (file_id, line) WHERE state = 'failed'",
    """
    CREATE TABLE file_attempts (
        feed        TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        attempts    INTEGER NOT NULL,
        last_error  TEXT,
        updated_at  TEXT    NOT NULL,
        PRIMARY KEY (feed, name)
    )
    """,
)

# Version 3: errors as data. An invalid record's problems as a JSON list of {field, source,
# value, message} (``message`` keeps the joined text); a rejection's problem title and detail
# apart; the count of records the mapping's keep rule filtered out. An invalid event recorded
# before holds one string: it becomes one error with only its message.
_SCHEMA_V3: tuple[str, ...] = (
    "ALTER TABLE files ADD COLUMN n_filtered INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE events ADD COLUMN errors TEXT",
    "ALTER TABLE events ADD COLUMN problem_title TEXT",
    "ALTER TABLE events ADD COLUMN problem_detail TEXT",
    "UPDATE events SET errors = json_array(json_object('field', NULL, 'source', NULL, 'value', NULL,"
    " 'message', message)) WHERE state = 'invalid' AND message IS NOT NULL",
)

# Version 4: retry requests (batch.service.retrying). ``file_id`` is not a foreign key: prune
# forgets old files, and a request names the file it was about whatever became of it (NULL
# means every file of the feed with failed events). ``counts`` and ``files`` are JSON texts.
_SCHEMA_V4: tuple[str, ...] = (
    """
    CREATE TABLE retry_requests (
        id            INTEGER PRIMARY KEY,
        feed          TEXT    NOT NULL,
        file_id       INTEGER,
        requested_by  TEXT    NOT NULL,
        requested_at  TEXT    NOT NULL,
        state         TEXT    NOT NULL CHECK (state IN ('waiting', 'running', 'done', 'failed')),
        taken_by      TEXT,
        started_at    TEXT,
        finished_at   TEXT,
        counts        TEXT,
        files         TEXT,
        message       TEXT
    )
    """,
    "CREATE INDEX retry_requests_by_feed ON retry_requests (feed, state, id)",
    "CREATE INDEX retry_requests_by_file ON retry_requests (file_id, id)",
)

# Version 5: notifications (late files, files with problems), each recorded before it is sent;
# the primary key is what makes one notification fire once across restarts and instances.
_SCHEMA_V5: tuple[str, ...] = (
    """
    CREATE TABLE notifications (
        feed        TEXT    NOT NULL,
        kind        TEXT    NOT NULL,
        subject     TEXT    NOT NULL,
        message     TEXT    NOT NULL,
        state       TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'failed', 'off')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  TEXT    NOT NULL,
        updated_at  TEXT    NOT NULL,
        PRIMARY KEY (feed, kind, subject)
    )
    """,
)

# Version 6: no digest of each payload. It served only to tell a duplicate "with different
# content", which same_content now answers from the two payloads when an id comes again; making
# one for every event cost a third of the serialising (bench/bench_mapping.py). Dropping the
# column rewrites the events table once. SQLite before 3.35 (Debian 11's 3.34) cannot drop a
# column: there it stays, NULL in every row written since and read by nothing (every statement
# names its columns).
_SCHEMA_V6: tuple[str, ...] = (
    ("ALTER TABLE events DROP COLUMN payload_sha256",) if sqlite3.sqlite_version_info >= (3, 35) else ()
)

#: MIGRATIONS[i] takes the schema from version i to version i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5, _SCHEMA_V6)

# --------------------------------------------------------------------------- SQL (pure)

_COUNT_COLUMNS = ", ".join(f"n_{outcome}" for outcome in OUTCOMES)
_SET_COUNTS = ", ".join(f"n_{outcome} = ?" for outcome in OUTCOMES)
_FILE_COLUMNS = (
    "id, name, sha256, size, feed, state, started_at, finished_at, error, recorded_at,"
    f" original_id, owner, mapping_version, finish_problem, note, n_filtered, {_COUNT_COLUMNS}"
)
_EVENT_COLUMNS = (
    "file_id, line, event_id, usageplacecode, status, state, attempts, http_status, message,"
    " payload, updated_at, errors, problem_title, problem_detail"
)

SQL_INSERT_EVENT = """
    INSERT OR IGNORE INTO events
        (file_id, line, event_id, usageplacecode, status, payload, state, message, errors, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

SQL_RECORD_RESULT = """
    UPDATE events
       SET state = ?, http_status = ?, message = ?, problem_title = ?, problem_detail = ?,
           attempts = attempts + ?, updated_at = ?
     WHERE file_id = ? AND line = ? AND state IN ('pending', 'failed')
"""

# An event whose id some other event already got accepted with (any file, including an
# earlier line of this one) is a duplicate and is never sent. A backend fills the holes (see
# ``duplicate_marks``): {by_event_id} after each lookup of an event by its id, {quoted_name} the
# file's name in quotes, {same_content} whether the two payloads hold the same event.
_MARK_ALREADY_ACCEPTED = """
    UPDATE events
       SET state = 'duplicate', updated_at = :now,
           message = (SELECT 'event id already accepted: file ' || {quoted_name}
                             || ', line ' || a.line
                             || CASE WHEN {same_content}
                                     THEN '' ELSE ', with different content' END
                        FROM events AS a{by_event_id} JOIN files AS f ON f.id = a.file_id
                       WHERE a.event_id = events.event_id AND a.state = 'accepted'
                       ORDER BY a.file_id, a.line LIMIT 1)
     WHERE file_id = :file_id AND line BETWEEN :first AND :last
       AND state IN ('pending', 'failed') AND event_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM events AS a{by_event_id}
                    WHERE a.event_id = events.event_id AND a.state = 'accepted')
"""

# A later line repeating an event id of an earlier valid line of the same file would send
# the id twice; it is marked duplicate of that line.
_MARK_REPEATED_IN_FILE = """
    UPDATE events
       SET state = 'duplicate', updated_at = :now,
           message = 'same event id as line ' ||
                     (SELECT min(b.line) FROM events AS b{by_event_id}
                       WHERE b.event_id = events.event_id AND b.file_id = events.file_id
                         AND b.line < events.line AND b.state <> 'invalid')
     WHERE file_id = :file_id AND line BETWEEN :first AND :last
       AND state IN ('pending', 'failed') AND event_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM events AS b{by_event_id}
                    WHERE b.event_id = events.event_id AND b.file_id = events.file_id
                      AND b.line < events.line AND b.state <> 'invalid')
"""


def duplicate_marks(by_event_id: str, quoted_name: str, same_content: str) -> tuple[str, str]:
    """(SQL_MARK_ALREADY_ACCEPTED, SQL_MARK_REPEATED_IN_FILE) in a backend's dialect."""
    holes = {"by_event_id": by_event_id, "quoted_name": quoted_name, "same_content": same_content}
    return _MARK_ALREADY_ACCEPTED.format(**holes), _MARK_REPEATED_IN_FILE.format(**holes)


# SQLite: INDEXED BY, because without statistics the planner would walk the primary key over
# all earlier lines (quadratic in the file); same_content is a function of the connection.
SQL_MARK_ALREADY_ACCEPTED, SQL_MARK_REPEATED_IN_FILE = duplicate_marks(
    " INDEXED BY events_by_event_id", "quote(f.name)", "same_content(a.payload, events.payload)")

# Finished files with nothing left to send or retry (the stored counts are final once a
# file is finished; retry refreshes them).
SQL_PRUNABLE_FILES = """
    SELECT id FROM files
     WHERE state IN ('done', 'error', 'skipped') AND finished_at < ?
       AND n_pending = 0 AND n_failed = 0
     ORDER BY id
"""

SQL_DELETE_EVENTS_OF_FILE = """
    DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE file_id = :file_id LIMIT :rows)
"""

SQL_COUNT_BY_STATE = "SELECT state, count(*) FROM events WHERE file_id = ? GROUP BY state"

SQL_SENT_ANY = ("SELECT 1 FROM events WHERE file_id = ? AND (attempts > 0 OR state IN"
                " ('accepted', 'rejected', 'failed')) LIMIT 1")

SQL_FAILED_BY_FEED = ("SELECT f.feed, count(*) FROM events AS e JOIN files AS f ON f.id = e.file_id"
                      " WHERE e.state = 'failed' GROUP BY f.feed")


def events_filter(states: Sequence[str], search: str | None) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause after ``file_id = ?`` of ``events_page`` and ``count_events``, and its
    parameters."""
    unknown = sorted(set(states) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"not an outcome: {', '.join(unknown)}")
    sql = ""
    params: tuple[Any, ...] = ()
    if states:
        sql += f" AND state IN ({', '.join('?' for _ in states)})"
        params += tuple(states)
    if search:
        sql += " AND (event_id = ? OR usageplacecode = ?)"
        params += (search, search)
    return sql, params


def events_page_sql(states: Sequence[str], search: str | None) -> tuple[str, str, tuple[Any, ...]]:
    """(the query of the page's first line, the query of the page, the filter's parameters) of
    ``events_page``: the first takes (file_id, *filter, offset), the second (file_id, *filter,
    first line, limit). The first reads only the (file_id, line) key when nothing filters."""
    where, params = events_filter(states, search)
    first = f"SELECT line FROM events WHERE file_id = ?{where} ORDER BY line LIMIT 1 OFFSET ?"
    page = f"SELECT {_EVENT_COLUMNS} FROM events WHERE file_id = ?{where} AND line >= ? ORDER BY line LIMIT ?"
    return first, page, params


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def from_text(text: str | datetime | None) -> datetime | None:
    """A stored time: ISO text (SQLite) or already a datetime (PostgreSQL's timestamptz)."""
    return None if text is None else from_required_text(text)


def from_required_text(text: str | datetime) -> datetime:
    """A time from a NOT NULL column."""
    return text.astimezone(timezone.utc) if isinstance(text, datetime) else datetime.fromisoformat(text)


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The JSON text stored, whose UTF-8 bytes are sent: ``jsonenc.event_bytes``, keys in mapping order."""
    return event_bytes(payload).decode("utf-8")


def same_content(payload_json: str | None, other_json: str | None) -> bool:
    """Do two stored payloads hold the same event, whatever the order of their keys?

    What tells a duplicate "with different content" from a plain one: the two payloads'
    ``jsonenc.event_bytes`` with sorted keys are equal (the bytes journals before schema 6 kept a
    sha256 of, for every event; asked only when an id comes again, it costs nothing the rest of
    the time). A text that is not JSON (never written by us) is compared as it is."""
    if payload_json == other_json:
        return True
    if payload_json is None or other_json is None:
        return False
    try:
        return (event_bytes(json.loads(payload_json), sorted_keys=True)
                == event_bytes(json.loads(other_json), sorted_keys=True))
    except (ValueError, TypeError):
        return False


def event_insert_params(file_id: int, event: NewEvent, now: str) -> tuple[Any, ...]:
    """The SQL_INSERT_EVENT parameters for one mapped record."""
    if event.error is not None:
        state = EventState.INVALID
    elif event.payload_json is None:
        raise ValueError(f"line {event.line}: a valid event needs a payload")
    else:
        state = EventState.PENDING
    return (file_id, event.line, event.event_id, event.usageplacecode, event.status,
            event.payload_json, state, event.error,
            None if event.error is None else errors_json(event), now)


#: The keys of one error of an invalid record, in the order receipts show them.
ERROR_KEYS: tuple[str, ...] = ("field", "source", "value", "message")


def errors_json(event: NewEvent) -> str | None:
    """The JSON list of an invalid record's problems (None for a valid one)."""
    if event.error is None:
        return None
    errors = event.errors or ({"field": None, "source": None, "value": None, "message": event.error},)
    return json.dumps([{key: error.get(key) for key in ERROR_KEYS} for error in errors], ensure_ascii=False)


def events_insert_params(file_id: int, events: Iterable[NewEvent | ValidEvents], now: str) -> list[tuple[Any, ...]]:
    """Everything ``Journal.record_events`` does before SQLite: each event's row (a ValidEvents
    block gives the rows of its events, in order); ``bench/bench_mapping.py`` times production up
    to here."""
    params: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, ValidEvents):
            params += event.insert_params(file_id, now)
        else:
            params.append(event_insert_params(file_id, event, now))
    return params


def result_params(result: Result, now: str) -> tuple[Any, ...]:
    """The SQL_RECORD_RESULT parameters for one delivery result."""
    if result.outcome not in RESULT_OUTCOMES:
        raise ValueError(f"not a delivery outcome: {result.outcome!r}")
    if result.attempts < 0:
        raise ValueError("attempts cannot be negative")
    return (result.outcome, result.http_status, result.message, result.title, result.detail,
            result.attempts, now, result.file_id, result.line)


def counts_from_rows(rows: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for state, number in rows:
        counts[state] = number
    return counts


def file_from_row(row: Sequence[Any]) -> FileRecord:
    (id_, name, sha256, size, feed, state, started, finished, error, recorded, original,
     owner, mapping_version, finish_problem, note, filtered, *numbers) = row
    return FileRecord(
        id=id_, name=name, sha256=sha256, size=size, feed=feed, state=FileState(state),
        started_at=from_required_text(started), finished_at=from_text(finished), error=error,
        counts=dict(zip(OUTCOMES, numbers)), recorded=recorded is not None,
        original_id=original, owner=owner, mapping_version=mapping_version,
        finish_problem=finish_problem, note=note, filtered=filtered or 0,
    )


def event_from_row(row: Sequence[Any]) -> EventRecord:
    (file_id, line, event_id, code, status, state, attempts, http_status, message, payload,
     updated, errors, title, detail) = row
    return EventRecord(file_id, line, event_id, code, status, EventState(state), attempts, http_status,
                       message, payload, from_required_text(updated), errors, title, detail)


RETRY_COLUMNS = ("id, feed, file_id, requested_by, requested_at, state, taken_by, started_at, finished_at,"
                  " counts, files, message")


def retry_request_from_row(row: Sequence[Any]) -> RetryRequest:
    (id_, feed, file_id, requested_by, requested_at, state, taken_by, started, finished, counts, files,
     message) = row
    return RetryRequest(id_, feed, file_id, requested_by, from_required_text(requested_at), RetryState(state),
                        taken_by, from_text(started), from_text(finished),
                        json.loads(counts) if counts else {}, json.loads(files) if files else [], message)


def retry_states(states: Iterable[RetryState | str] | None) -> list[str] | None:
    """The words of `states` (each checked: a misspelt state is a bug, not an empty answer)."""
    return None if states is None else [RetryState(state).value for state in states]


def retry_result_json(counts: Mapping[str, int] | None, files: Sequence[Mapping[str, Any]] | None) -> tuple[str, str]:
    """The stored JSON texts of a finished request's counts and per-file results."""
    return (json.dumps(dict(counts or {}), ensure_ascii=False),
            json.dumps([dict(one) for one in files or ()], ensure_ascii=False))


def already_processed_message(original: FileRecord) -> str:
    when = original.finished_at.strftime("%Y-%m-%d %H:%M:%S UTC") if original.finished_at else "?"
    return (f"Already processed: this file has the same content as {original.name!r}, "
            f"finished {when}; nothing was sent again.")


def not_sent_message(error: str | None) -> str:
    """Why an event of a file that ended in error was never sent."""
    return f"file error: {error or 'unknown'}"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_other_live_process(owner: str) -> bool:
    """True if ``owner`` names another process on this host that is still running."""
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host cannot share a SQLite WAL file; treat as gone
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def migrate(execute: Callable[[str], object], location: str | Path, version: int, newest: int,
            migrations: Sequence[Sequence[str]]) -> None:
    """Take a journal's schema from ``version`` to ``newest`` (``migrations[i]`` goes from
    version i to i + 1), running each statement with ``execute``, inside the caller's
    transaction; JournalUnusable for a schema newer than this program's."""
    if version > newest:
        raise JournalUnusable(f"{location}: journal schema version {version} is newer "
                              f"than this program supports ({newest})")
    for steps in migrations[version:newest]:
        for statement in steps:
            execute(statement)


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One SQLite write transaction on ``conn`` (the journal's, the lease store's): BEGIN IMMEDIATE
    takes the file's write lock at once (waiting up to the busy timeout), so the transaction never
    fails half-way for a lock; committed when the block ends, rolled back on an exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the file is broken; SQLite rolls back when it can read it again
        raise


def is_unavailable(error: sqlite3.Error) -> bool:
    """A fault of the database file or its disk (not of the SQL or the data)."""
    return isinstance(error, sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- the SQL backends' shared steps


class SqlCursor(Protocol):
    """What a statement gives back, in sqlite3 and psycopg alike."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConnection(Protocol):
    """A connection that runs ``SqlJournal``'s statements, written with SQLite's parameter marks
    (``?``, ``:name``): the sqlite3 connection itself, or PostgreSQL's, which translates them
    (batch.store.journal_pg.PgStatements). ``executemany``'s rowcount is the sum of its rows'."""

    def execute(self, sql: str, parameters: Any = ..., /) -> SqlCursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> SqlCursor: ...


class SqlJournal(JournalStore):
    """What both SQL backends do alike: every method's steps and statements, written once.

    ``Journal`` (SQLite) and ``PgJournal`` (PostgreSQL, batch.store.journal_pg) supply the
    connection (``_write``: one write transaction; ``_reading``: a connection to read with), how
    a time is stored (``_time``: ISO text, or timestamptz) and a text (``_text``: PostgreSQL's
    cannot hold a NUL), and the few steps their databases do differently: the abstract hooks
    and dialect attributes below, each saying in the backend why it differs there.
    """

    _fences: threading.local  # set_fence: a check per thread, run in every write

    #: The duplicate marking statements (``duplicate_marks`` filled in the backend's dialect),
    #: with SQLite's parameter marks.
    SQL_MARK_ALREADY_ACCEPTED: str
    SQL_MARK_REPEATED_IN_FILE: str
    #: Delete up to ``:rows`` events of file ``:file_id`` (prune, a batch at a time).
    SQL_DELETE_EVENTS_OF_FILE: str
    #: What ``take_retry_request``'s SELECT of the oldest waiting request ends with.
    SQL_TAKE_LOCK: str

    # -- what a backend supplies

    @abstractmethod
    def _write(self, operation: str = "write to it") -> AbstractContextManager[SqlConnection]:
        """One write transaction, committed when the block ends (rolled back on an exception);
        a fence set by this thread runs first, inside it. A fault of the storage raises
        JournalUnavailable naming ``operation``."""

    @abstractmethod
    def _reading(self, operation: str) -> AbstractContextManager[SqlConnection]:
        """A connection to read with (faults: JournalUnavailable naming ``operation``)."""

    @abstractmethod
    def _time(self, moment: datetime) -> Any:
        """A timezone-aware time as the backend stores it (ValueError for a naive one)."""

    @staticmethod
    def _text(value: str | None) -> str | None:
        """A text from outside (an error, a server's answer, a note) as the backend stores it."""
        return value

    @staticmethod
    def _texts(rows: list[tuple[Any, ...]], columns: tuple[int, ...]) -> list[tuple[Any, ...]]:
        """``_text`` of the given columns of each row."""
        return rows

    @abstractmethod
    def _lock_content(self, conn: SqlConnection, feed: str, sha256: str) -> None:
        """Make ``begin_file``'s registrations of one content wait for each other."""

    @abstractmethod
    def _lock_file(self, conn: SqlConnection, file_id: int) -> None:
        """Make two restarts of one file's recording take turns. (What keeps another instance's
        results out meanwhile is the feed's lease: its fence refuses their write.)"""

    @abstractmethod
    def _insert_id(self, conn: SqlConnection, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row that has an ``id`` column; the new row's id."""

    @abstractmethod
    def _insert_events(self, conn: SqlConnection, file_id: int, params: list[tuple[Any, ...]], now: Any) -> int:
        """Insert the rows of ``events_insert_params`` (a line already there is left as it is);
        returns how many were inserted."""

    def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (),
              operation: str = "read it") -> list[Any]:
        with self._reading(operation) as conn:
            return conn.execute(sql, params).fetchall()

    def _now(self) -> Any:
        """Now, by the journal's clock, as the backend stores a time."""
        return self._time(self.clock())

    def set_fence(self, fence: Callable[[Any], None] | None) -> None:
        """See ``JournalStore.set_fence``: ``fence`` gets the backend's own connection (sqlite3's,
        psycopg's). A feed's worker thread makes all of its feed's journal writes (delivery
        records results in the calling thread). On PostgreSQL the lease store's fence reads the
        lease row ``FOR SHARE``: a takeover's UPDATE of that row then waits for this write's
        COMMIT, so a write is either committed under the current epoch or refused."""
        self._fences.fence = fence

    def _fence(self) -> Callable[[Any], None] | None:
        fence: Callable[[Any], None] | None = getattr(self._fences, "fence", None)
        return fence

    # -- files

    def begin_file(self, name: str, sha256: str, size: int, feed: str,
                   force: bool = False) -> BeginResult:
        """Register a file before processing it; see ``BeginResult`` for the three outcomes.

        Same content = same ``sha256`` in the same ``feed``. A completed (``done``) file with
        that content makes this one ``already_processed`` (recorded as ``skipped``) unless
        ``force``; an unfinished one (crash, kill, resume after an exception) is returned to
        be resumed, whatever ``force`` says; ``error`` files do not count (the content is
        processed anew once the cause is fixed). Raises ``FileInProgress`` if the unfinished
        file belongs to another live process. Forcing does not send an event twice: ids
        already accepted become ``duplicate`` when the events are recorded.
        """
        now = self._now()
        with self._write("register the file") as conn:
            self._lock_content(conn, feed, sha256)
            unfinished = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE feed = ? AND sha256 = ?"
                " AND state = 'processing' ORDER BY id LIMIT 1", (feed, sha256)).fetchone()
            if unfinished is not None:
                record = file_from_row(unfinished)
                # with a fence set (batch.store.leases) the feed's lease decides who works it
                if self._fence() is None and owner_is_other_live_process(record.owner):
                    raise FileInProgress(f"{name}: the same content ({record.name!r}, file "
                                         f"#{record.id}) is being processed by {record.owner}")
                conn.execute("UPDATE files SET owner = ? WHERE id = ?", (this_process(), record.id))
                return BeginResult(self._file(conn, record.id), "resumed")

            done = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE feed = ? AND sha256 = ?"
                " AND state = 'done' ORDER BY id LIMIT 1", (feed, sha256)).fetchone()
            if done is not None and not force:
                original = file_from_row(done)
                file_id = self._insert_id(conn, (
                    "INSERT INTO files (name, sha256, size, feed, state, started_at, finished_at,"
                    " error, original_id, owner) VALUES (?, ?, ?, ?, 'skipped', ?, ?, ?, ?, ?)"),
                    (name, sha256, size, feed, now, now, already_processed_message(original),
                     original.id, this_process()))
                return BeginResult(self._file(conn, file_id), "already_processed", original)

            file_id = self._insert_id(conn, (
                "INSERT INTO files (name, sha256, size, feed, state, started_at, owner)"
                " VALUES (?, ?, ?, ?, 'processing', ?, ?)"),
                (name, sha256, size, feed, now, this_process()))
            return BeginResult(self._file(conn, file_id), "new")

    def mark_recorded(self, file_id: int) -> None:
        """Say that every record of the file is now in the journal (a resume may skip reading)."""
        with self._write("mark the file recorded") as conn:
            conn.execute("UPDATE files SET recorded_at = coalesce(recorded_at, ?) WHERE id = ?",
                         (self._now(), file_id))

    def finish_file(self, file_id: int, state: Literal[FileState.DONE, FileState.ERROR, "done", "error"],
                    error: str | None = None) -> FileRecord:
        """Close the file: state, finish time, counts per outcome from its events; then flush().

        ``done`` is refused while events are still pending (they would never be sent).
        ``error`` gives the events still pending their final outcome ``not_sent``, with the
        message "file error: <error>" (they will never be sent; prune may forget the file).
        """
        if state not in (FileState.DONE, FileState.ERROR):
            raise ValueError(f"a file finishes as done or error, not {str(state)!r}")
        now = self._now()
        with self._write("finish the file") as conn:
            if state == FileState.ERROR:
                conn.execute("UPDATE events SET state = 'not_sent', message = ?, updated_at = ?"
                             " WHERE file_id = ? AND state = 'pending'",
                             (self._text(not_sent_message(error)), now, file_id))
            counts = counts_from_rows(conn.execute(SQL_COUNT_BY_STATE, (file_id,)).fetchall())
            if state == FileState.DONE and counts[EventState.PENDING]:
                raise JournalMisuse(f"file #{file_id}: {counts['pending']} events still pending")
            changed = conn.execute(
                f"UPDATE files SET state = ?, finished_at = ?, error = ?, {_SET_COUNTS} WHERE id = ?",
                (str(state), now, self._text(error), *(counts[o] for o in OUTCOMES), file_id)).rowcount
            if not changed:
                raise JournalMisuse(f"no file #{file_id}")
        self.flush()
        return self.get_file(file_id)

    def refresh_counts(self, file_id: int) -> FileRecord:
        """Recompute a finished file's counts (after ``retry`` delivered some failed events)."""
        with self._write("update the file's counts") as conn:
            counts = counts_from_rows(conn.execute(SQL_COUNT_BY_STATE, (file_id,)).fetchall())
            conn.execute(f"UPDATE files SET {_SET_COUNTS} WHERE id = ?",
                         (*(counts[o] for o in OUTCOMES), file_id))
        return self.get_file(file_id)

    def finished_as(self, feed: str, sha256: str, name: str) -> FileRecord | None:
        """The file of this feed with this name and content, if its latest record is finished.

        A file resumed from processing/ that the journal already finished was killed (or
        failed) between finishing and its archive move: its receipt is this record's."""
        rows = self._read("SELECT id, state FROM files WHERE feed = ? AND sha256 = ? AND name = ?"
                          " ORDER BY id DESC LIMIT 1", (feed, sha256, name), "look the file up")
        return self.get_file(rows[0][0]) if rows and rows[0][1] in FILE_FINAL_STATES else None

    def unfinished_named(self, feed: str, name: str) -> FileRecord | None:
        """The latest unfinished (processing) file of this feed with this name, if any."""
        rows = self._read("SELECT id FROM files WHERE feed = ? AND name = ? AND state = 'processing'"
                          " ORDER BY id DESC LIMIT 1", (feed, name), "look the file up")
        return self.get_file(rows[0][0]) if rows else None

    def set_mapping_version(self, file_id: int, version: str) -> None:
        """Say which mapping version (a hash) the file's events are recorded with."""
        with self._write("note the mapping version") as conn:
            conn.execute("UPDATE files SET mapping_version = ? WHERE id = ?", (version, file_id))

    def sent_any(self, file_id: int) -> bool:
        """True once any event of the file went to Ropo One (or got a delivery result)."""
        return bool(self._read(SQL_SENT_ANY, (file_id,), "read the events"))

    def restart_recording(self, file_id: int, version: str) -> None:
        """Forget what was recorded of an unfinished file that sent nothing, to record it
        anew with mapping ``version``. Refused (JournalError) once an event was sent: a
        file is never delivered under two mappings."""
        with self._write("start the file's recording over") as conn:
            self._lock_file(conn, file_id)
            if conn.execute(SQL_SENT_ANY, (file_id,)).fetchone() is not None:
                raise JournalMisuse(f"file #{file_id}: events were sent already; its recording stays")
            conn.execute("DELETE FROM events WHERE file_id = ?", (file_id,))
            conn.execute("UPDATE files SET recorded_at = NULL, mapping_version = ? WHERE id = ?",
                         (version, file_id))

    def add_note(self, file_id: int, note: str) -> None:
        """Add a sentence to the file's note (shown in its receipt summary)."""
        with self._write("note on the file") as conn:
            conn.execute("UPDATE files SET note = CASE WHEN note IS NULL THEN ? ELSE note || ' ' || ? END"
                         " WHERE id = ?", (self._text(note), self._text(note), file_id))

    def set_finish_problem(self, file_id: int, problem: str | None) -> None:
        """Note (or clear, None) why a finished file's receipt / archive move is still to do."""
        with self._write("note the finishing problem") as conn:
            conn.execute("UPDATE files SET finish_problem = ? WHERE id = ?", (self._text(problem), file_id))

    def set_filtered(self, file_id: int, filtered: int) -> None:
        with self._write("note the filtered records") as conn:
            conn.execute("UPDATE files SET n_filtered = ? WHERE id = ?", (filtered, file_id))

    # -- attempts on a file in processing/ (by feed and name: it may have no file row yet)

    def count_file_attempt(self, feed: str, name: str, error: str) -> int:
        """One more failed attempt on the file ``name`` in the feed's processing/; returns the
        count so far (kept across restarts until ``clear_file_attempts``)."""
        with self._write("count the file's attempt") as conn:
            conn.execute(
                "INSERT INTO file_attempts (feed, name, attempts, last_error, updated_at)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT (feed, name) DO UPDATE SET"
                " attempts = file_attempts.attempts + 1, last_error = excluded.last_error,"
                " updated_at = excluded.updated_at",
                (feed, name, self._text(error), self._now()))
            return int(conn.execute("SELECT attempts FROM file_attempts WHERE feed = ? AND name = ?",
                                    (feed, name)).fetchone()[0])

    def clear_file_attempts(self, feed: str, name: str) -> None:
        with self._write("clear the file's attempts") as conn:
            conn.execute("DELETE FROM file_attempts WHERE feed = ? AND name = ?", (feed, name))

    def prune(self, finished_before: datetime, batch_rows: int = 20_000) -> tuple[int, int]:
        """Forget the files that finished before ``finished_before`` with nothing left to send
        or retry (no pending, no failed events), and their events, and the retry requests that
        finished before then; returns (files, events).

        What is forgotten is no longer recognised: the same content dropped again is processed
        anew, and its event ids are no longer duplicates. Events go in transactions of
        ``batch_rows`` so that the writers of other threads and processes wait briefly.
        """
        before = self._time(finished_before)
        file_ids = [row[0] for row in self._read(SQL_PRUNABLE_FILES, (before,), "prune it")]
        events = 0
        for file_id in file_ids:
            while True:
                with self._write("prune it") as conn:
                    deleted = conn.execute(self.SQL_DELETE_EVENTS_OF_FILE,
                                           {"file_id": file_id, "rows": batch_rows}).rowcount
                    events += deleted
                    if deleted < batch_rows:
                        conn.execute("UPDATE files SET original_id = NULL WHERE original_id = ?", (file_id,))
                        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
                        break
        with self._write("prune it") as conn:  # finished retry requests and notifications: as long as files
            conn.execute("DELETE FROM retry_requests WHERE state IN ('done', 'failed') AND finished_at < ?",
                         (before,))
            # a notification said long ago is not said again: its due time or file is long gone
            conn.execute("DELETE FROM notifications WHERE state <> 'pending' AND updated_at < ?", (before,))
        return len(file_ids), events

    def get_file(self, file_id: int) -> FileRecord:
        with self._reading("read the file's record") as conn:
            return self._file(conn, file_id)

    def _file(self, conn: SqlConnection, file_id: int) -> FileRecord:
        row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise JournalMisuse(f"no file #{file_id}")
        return self._live(conn, file_from_row(row))

    @staticmethod
    def _live(conn: SqlConnection, record: FileRecord) -> FileRecord:
        if record.state == FileState.PROCESSING:  # stored counts are set at finish; show live ones
            live = counts_from_rows(conn.execute(SQL_COUNT_BY_STATE, (record.id,)).fetchall())
            record = replace(record, counts=live)
        return record

    def recent_files(self, limit: int = 20, feed: str | None = None) -> list[FileRecord]:
        """The latest files, newest first, optionally of one feed."""
        where, params = ("WHERE feed = ?", (feed, limit)) if feed is not None else ("", (limit,))
        with self._reading("read the recent files") as conn:
            ids = [row[0] for row in conn.execute(
                f"SELECT id FROM files {where} ORDER BY id DESC LIMIT ?", params).fetchall()]
            return [self._file(conn, file_id) for file_id in ids]

    def file_counts(self, file_id: int) -> dict[str, int]:
        """Live counts per outcome from the events table."""
        return counts_from_rows(self._read(SQL_COUNT_BY_STATE, (file_id,)))

    # -- events

    def record_events(self, file_id: int, events: Iterable[NewEvent | ValidEvents]) -> int:
        """Record mapped events (one transaction), before anything is sent.

        Idempotent on (file, line): a resumed run recording the same lines again changes
        nothing. Events whose id was already accepted (or repeats an earlier line of this
        file) become ``duplicate``. Returns the number of rows newly inserted.
        """
        now = self._now()
        params = events_insert_params(file_id, events, now)
        if not params:
            return 0
        lines = [p[1] for p in params]
        with self._write("record events") as conn:
            inserted = self._insert_events(conn, file_id, params, now)
            self._mark_duplicates(conn, file_id, min(lines), max(lines), now)
        return inserted

    def mark_duplicates(self, file_id: int) -> int:
        """Mark the file's unsent events whose id was accepted meanwhile; returns how many."""
        with self._write("mark duplicate events") as conn:
            return self._mark_duplicates(conn, file_id, None, None, self._now())

    def _mark_duplicates(self, conn: SqlConnection, file_id: int, first: int | None, last: int | None,
                         now: Any) -> int:
        bounds = {"file_id": file_id, "now": now,
                  "first": -(2**63) if first is None else first,
                  "last": 2**63 - 1 if last is None else last}
        marked = conn.execute(self.SQL_MARK_ALREADY_ACCEPTED, bounds).rowcount
        return marked + conn.execute(self.SQL_MARK_REPEATED_IN_FILE, bounds).rowcount

    def to_send(self, file_id: int, include_failed: bool = False) -> Iterator[EventRecord]:
        """The events still to deliver (pending; and failed, for a retry), in record order.

        First marks as duplicate those whose id got accepted meanwhile (e.g. by another file),
        so a retry never re-sends an accepted id. Read lazily in pages; results recorded
        while iterating do not disturb it.
        """
        self.mark_duplicates(file_id)
        states = [str(state) for state in (SENDABLE_STATES if include_failed else (EventState.PENDING,))]
        marks = ", ".join("?" for _ in states)
        return self._paged_events(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE file_id = ? AND state IN ({marks})"
            " AND line > ? ORDER BY line LIMIT ?", (file_id, *states))

    def file_events(self, file_id: int) -> Iterator[EventRecord]:
        """Every event of the file in record order (for the receipt), read lazily in pages."""
        return self._paged_events(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE file_id = ? AND line > ?"
            " ORDER BY line LIMIT ?", (file_id,))

    def _paged_events(self, sql: str, params: tuple[Any, ...]) -> Iterator[EventRecord]:
        # Keyset pagination on line, a page per read (SQLite: the lock held per page only;
        # PostgreSQL: a pooled connection per page), so worker threads can record results
        # while a caller walks a large file.
        after = -(2**63)
        while True:
            rows = self._read(sql, (*params, after, PAGE_SIZE), "read the events")
            yield from (event_from_row(row) for row in rows)
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][1]

    def failed_events(self, file_id: int | None = None) -> list[EventRecord]:
        """Events whose delivery failed (transient errors outlasted retries), by file and line."""
        where, params = ("AND file_id = ?", (file_id,)) if file_id is not None else ("", ())
        rows = self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE state = 'failed' {where}"
                          " ORDER BY file_id, line", params, "read the failed events")
        return [event_from_row(row) for row in rows]

    # -- queries of the console

    def events_page(self, file_id: int, *, states: Sequence[str] = (), search: str | None = None,
                    offset: int = 0, limit: int = 100) -> list[EventRecord]:
        first, page, params = events_page_sql(states, search)
        with self._reading("read a page of the file's events") as conn:
            start = conn.execute(first, (file_id, *params, max(0, offset))).fetchone()
            if start is None:
                return []
            rows = conn.execute(page, (file_id, *params, start[0], limit)).fetchall()
        return [event_from_row(row) for row in rows]

    def count_events(self, file_id: int, *, states: Sequence[str] = (), search: str | None = None) -> int:
        where, params = events_filter(states, search)
        rows = self._read(f"SELECT count(*) FROM events WHERE file_id = ?{where}", (file_id, *params),
                          "count the file's events")
        return int(rows[0][0])

    def failed_by_feed(self) -> dict[str, int]:
        return {feed: number for feed, number in self._read(SQL_FAILED_BY_FEED, (), "count the failed events")}

    def files_since(self, since: datetime, limit: int = 500) -> list[FileRecord]:
        with self._reading("read the recent files") as conn:
            rows = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE started_at >= ? ORDER BY id DESC"
                                " LIMIT ?", (self._time(since), limit)).fetchall()
            return [self._live(conn, file_from_row(row)) for row in rows]

    # -- results

    def record_results(self, results: Iterable[Result]) -> int:
        """Record delivery results in one transaction; committed when this returns (survives
        SIGKILL). A result applies only to an event still pending or failed, so a late or
        repeated result never overwrites ``accepted``; results apply in order (a later result
        for a line an earlier one finished does not apply); returns how many applied."""
        now = self._now()
        params = [result_params(result, now) for result in results]
        if not params:
            return 0
        params = self._texts(params, (2, 3, 4))  # message, problem title and detail: from the server
        with self._write("record delivery results") as conn:
            return conn.executemany(SQL_RECORD_RESULT, params).rowcount

    # -- retry requests

    def add_retry_request(self, feed: str, file_id: int | None, requested_by: str) -> RetryRequest:
        with self._write("record the retry request") as conn:
            request_id = self._insert_id(
                conn, "INSERT INTO retry_requests (feed, file_id, requested_by, requested_at, state)"
                " VALUES (?, ?, ?, ?, 'waiting')", (feed, file_id, self._text(requested_by), self._now()))
            return self._retry_request(conn, request_id)

    def take_retry_request(self, feed: str, taken_by: str) -> RetryRequest | None:
        with self._write("take a retry request") as conn:
            row = conn.execute("SELECT id FROM retry_requests WHERE feed = ? AND state = 'waiting'"
                               f" ORDER BY id LIMIT 1{self.SQL_TAKE_LOCK}", (feed,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE retry_requests SET state = 'running', taken_by = ?, started_at = ?, message = NULL"
                         " WHERE id = ?", (self._text(taken_by), self._now(), row[0]))
            return self._retry_request(conn, row[0])

    def requeue_retry_requests(self, feed: str, message: str | None = None) -> int:
        with self._write("put retry requests back") as conn:
            return conn.execute("UPDATE retry_requests SET state = 'waiting', taken_by = NULL, started_at = NULL,"
                                " message = ? WHERE feed = ? AND state = 'running'",
                                (self._text(message), feed)).rowcount

    def finish_retry_request(self, request_id: int, state: Literal[RetryState.DONE, RetryState.FAILED],
                             counts: Mapping[str, int] | None = None,
                             files: Sequence[Mapping[str, Any]] | None = None,
                             message: str | None = None) -> RetryRequest:
        if state not in RETRY_FINAL_STATES:
            raise ValueError(f"a retry request finishes as done or failed, not {str(state)!r}")
        counts_json, files_json = retry_result_json(counts, files)
        with self._write("finish the retry request") as conn:
            changed = conn.execute(
                "UPDATE retry_requests SET state = ?, finished_at = ?, counts = ?, files = ?, message = ?"
                " WHERE id = ? AND state = 'running'",
                (RetryState(state).value, self._now(), counts_json, self._text(files_json), self._text(message),
                 request_id)).rowcount
            if not changed:
                raise JournalMisuse(f"retry request #{request_id} is not running")
            return self._retry_request(conn, request_id)

    def get_retry_request(self, request_id: int) -> RetryRequest:
        with self._reading("read the retry request") as conn:
            return self._retry_request(conn, request_id)

    @staticmethod
    def _retry_request(conn: SqlConnection, request_id: int) -> RetryRequest:
        row = conn.execute(f"SELECT {RETRY_COLUMNS} FROM retry_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise JournalMisuse(f"no retry request #{request_id}")
        return retry_request_from_row(row)

    def retry_requests(self, *, feed: str | None = None, file_id: int | None = None,
                       states: Iterable[RetryState | str] | None = None, limit: int = 20) -> list[RetryRequest]:
        where: list[str] = []
        params: list[Any] = []
        if feed is not None:
            where.append("feed = ?")
            params.append(feed)
        if file_id is not None:
            where.append("file_id = ?")
            params.append(file_id)
        words = retry_states(states)
        if words is not None:
            where.append(f"state IN ({', '.join('?' for _ in words)})" if words else "FALSE")
            params += words
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT {RETRY_COLUMNS} FROM retry_requests {clause} ORDER BY id DESC LIMIT ?",
                          (*params, limit), "read the retry requests")
        return [retry_request_from_row(row) for row in rows]

    # -- notifications

    def claim_notification(self, feed: str, kind: str, subject: str, message: str, state: str) -> bool:
        now = self._now()
        with self._write("record a notification") as conn:
            return conn.execute(
                "INSERT INTO notifications (feed, kind, subject, message, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (feed, kind, subject) DO NOTHING",
                (feed, kind, subject, self._text(message), state, now, now)).rowcount == 1

    def finish_notification(self, feed: str, kind: str, subject: str, state: str, attempts: int,
                            error: str | None) -> None:
        with self._write("record a notification's result") as conn:
            conn.execute("UPDATE notifications SET state = ?, attempts = attempts + ?, last_error = ?, updated_at = ?"
                         " WHERE feed = ? AND kind = ? AND subject = ?",
                         (state, attempts, self._text(error), self._now(), feed, kind, subject))

    def stale_notifications(self, feed: str, claimed_before: datetime) -> list[tuple[str, str, str]]:
        rows = self._read("SELECT kind, subject, message FROM notifications WHERE feed = ? AND state = 'pending'"
                          " AND updated_at < ? ORDER BY created_at", (feed, self._time(claimed_before)))
        return [(str(kind), str(subject), str(message)) for kind, subject, message in rows]


# --------------------------------------------------------------------------- connection


class Journal(SqlJournal):
    """The journal in one SQLite file; safe to share between the threads of a process."""

    def __init__(self, path: str | os.PathLike[str], *,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
                 busy_timeout_s: float = 30.0, clock: Callable[[], datetime] = utc_now,
                 read_only: bool = False) -> None:
        """Open (create, migrate) the journal at `path`. `read_only`: for commands that only read
        (`status`): see ``_open_read_only``."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        self.read_only = read_only
        self._lock = threading.RLock()
        self._closed_by_fault = False
        self._fences = threading.local()  # set_fence: a check per thread, run in every write
        if read_only:
            self._conn = self._open_read_only()
            return
        try:
            self._conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:  # name the journal: "unable to open database file" alone does not
            raise JournalUnavailable(self.path, "open it", error) from error
        try:
            self._configure()
            self._migrate()
        except sqlite3.OperationalError as error:
            self._conn.close()
            raise JournalUnavailable(self.path, "open it", error) from error
        except sqlite3.DatabaseError as error:  # not a database at all, or damaged: waiting will not help
            self._conn.close()
            raise JournalUnusable(f"{self.path}: the journal cannot be read: {error} (a damaged file, or another "
                                  "file at its path): restore it from a backup, or move it away to start a new "
                                  "journal") from None
        except BaseException:
            self._conn.close()
            raise

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that never writes: no WAL switch, no schema creation or migration.

        `mode=ro` reads a journal another process is writing (its WAL included) as long as
        SQLite can use the WAL's shared-memory file beside it. On a read-only disk (or folder)
        where that file is not there, the journal cannot change under us either, so it is
        opened `immutable=1` (no locks, no shared memory). A schema older than this program's
        is refused with what to do (only a writer migrates it), a newer one too."""
        uri = self.path.resolve().as_uri()
        if self.path.exists() and not self.path.is_file():  # SQLite would say "disk I/O error"
            raise JournalUnavailable(self.path, "open it", "unable to open database file (not a regular file)")
        try:
            conn = self._read_only_connection(f"{uri}?mode=ro")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.OperationalError as first:  # a WAL journal on a read-only disk without its -shm
                conn.close()
                try:
                    conn = self._read_only_connection(f"{uri}?mode=ro&immutable=1")
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                except sqlite3.Error:
                    raise first from None  # not that: the first error says what is wrong
        except sqlite3.Error as error:
            raise JournalUnavailable(self.path, "open it", error) from error
        if version != SCHEMA_VERSION:
            conn.close()
            if version > SCHEMA_VERSION:
                raise JournalUnusable(f"{self.path}: journal schema version {version} is newer "
                                      f"than this program supports ({SCHEMA_VERSION})")
            raise JournalUnusable(
                f"{self.path}: journal schema version {version} is older than this program's "
                f"({SCHEMA_VERSION}) and must be migrated before it can be read: start the service "
                "(`usageplace-batch run`) once with write access to the journal; this command only "
                "reads it and never migrates")
        return conn

    def _read_only_connection(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")  # belt and braces: no statement of ours writes
        return conn

    # -- lifecycle

    def reopen(self) -> None:
        """Open a fresh connection to the same path (after JournalUnavailable: a file system
        that was remounted or repaired is only seen by a new connection). Raises
        JournalUnavailable while the file still cannot be opened."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._closed_by_fault = True  # until a new connection works: every call tries again
            self._reconnect()

    def _reconnect(self) -> None:
        try:
            # mode=rw: a missing file (its disk not mounted yet) is an error, not a new journal
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True,
                                   timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as error:
            raise JournalUnavailable(self.path, "open it again", error) from error
        self._conn = conn
        try:
            self._configure()
        except sqlite3.Error as error:
            conn.close()
            raise JournalUnavailable(self.path, "open it again", error) from error
        self._closed_by_fault = False

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def _configure(self) -> None:
        self._enable_wal()
        self._conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # SQL_MARK_ALREADY_ACCEPTED asks it of each duplicate (only: a write connection's need)
        self._conn.create_function("same_content", 2, same_content, deterministic=True)

    def _enable_wal(self) -> None:
        # Switching a new database to WAL can fail with "database is locked" without the
        # busy handler being called (two processes creating the file at once), so retry.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            raise JournalUnusable(f"{self.path}: cannot use WAL mode (got {mode!r})")

    def _migrate(self) -> None:
        if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._write() as conn:  # IMMEDIATE: two processes never create it twice
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            migrate(conn.execute, self.path, version, SCHEMA_VERSION, MIGRATIONS)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _write(self, operation: str = "write to it") -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success (see the module's durability note).

        A fault of the file itself (I/O error, read-only or full disk, locked too long)
        raises JournalUnavailable naming the operation; the transaction is rolled back.
        A fence set by this thread (``set_fence``) runs first, inside the transaction."""
        fence = self._fence()
        with self._lock, self._unavailable_as(operation), immediate_transaction(self._conn) as conn:
            if fence is not None:
                fence(conn)
            yield conn

    @contextmanager
    def _reading(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._unavailable_as(operation):
            yield self._conn

    @contextmanager
    def _unavailable_as(self, operation: str) -> Iterator[None]:
        if self._closed_by_fault:
            self._reconnect()
        try:
            yield
        except sqlite3.Error as error:
            if is_unavailable(error):
                raise JournalUnavailable(self.path, operation, error) from error
            raise

    _time = staticmethod(to_text)  # ISO text in UTC: SQLite has no time type

    # -- what SQLite does its own way

    SQL_MARK_ALREADY_ACCEPTED = SQL_MARK_ALREADY_ACCEPTED
    SQL_MARK_REPEATED_IN_FILE = SQL_MARK_REPEATED_IN_FILE
    SQL_DELETE_EVENTS_OF_FILE = SQL_DELETE_EVENTS_OF_FILE
    SQL_TAKE_LOCK = ""  # a write transaction (BEGIN IMMEDIATE) is the one writer of the file: one taker at a time

    def _lock_content(self, conn: SqlConnection, feed: str, sha256: str) -> None:
        """Nothing to do: a write transaction (BEGIN IMMEDIATE) is the file's one writer."""

    def _lock_file(self, conn: SqlConnection, file_id: int) -> None:
        """Nothing to do: a write transaction (BEGIN IMMEDIATE) is the file's one writer."""

    def _insert_id(self, conn: SqlConnection, sql: str, params: Sequence[Any]) -> int:
        # sqlite3's lastrowid (INSERT ... RETURNING needs SQLite 3.35)
        row_id = cast(sqlite3.Connection, conn).execute(sql, params).lastrowid
        assert row_id is not None  # set by every INSERT
        return row_id

    def _insert_events(self, conn: SqlConnection, file_id: int, params: list[tuple[Any, ...]], now: Any) -> int:
        return conn.executemany(SQL_INSERT_EVENT, params).rowcount

    # -- durability

    def flush(self) -> None:
        """Durability barrier: every change committed so far survives power loss after this.

        Commits a tiny write with ``synchronous=FULL``, which fsyncs the WAL file and with
        it every frame committed before (by any connection).
        """
        with self._lock, self._unavailable_as("flush it (make the changes durable)"):
            self._conn.execute("PRAGMA synchronous=FULL")
            try:
                with self._write("flush it (make the changes durable)") as conn:
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('flushed_at', ?)",
                                 (self._now(),))
            finally:
                self._conn.execute(f"PRAGMA synchronous={self.synchronous}")
