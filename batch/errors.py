"""Every error usageplace-batch raises, grouped by what the caller must do about it.

The tree (the groups are the second level; the classes stay defined beside the code that
raises them and subclass their group here, so that this module imports nothing of ours)::

    BatchError                          every error of ours; .exit_status says how a command ends
    ├── ConfigurationError              configuration unusable: fix it, then run again   (exit 2)
    │   ├── ConfigError                     batch.config.yamlload: a file's problems, every one
    │   ├── SecretResolutionError           batch.config.secrets: ${ENV} or *_file not resolvable
    │   ├── FeedNotFound                    batch.service.runtime / config.service: no (or no one) feed
    │   ├── FormatError                     batch.syntax.timeparse: a time format that cannot compile
    │   ├── ScheduleError                   batch.syntax.schedule: a feed's expected: that cannot be read
    │   ├── SymlinkRefused                  batch.fsutil: a folder of ours is a symlink (an OSError)
    │   ├── InboxUnusable                   batch.inbox.base: folder, key, login as configured fail
    │   ├── JournalUnusable                 batch.store.journal: schema too new, no WAL on that disk
    │   ├── HandoverRefused                 batch.service.leasing: `handover` while the other lease lives
    │   ├── TemplateMismatch                batch.transform.samplefile: a template that cannot take a sample
    │   ├── LoginRequired                   batch.console.security: a console off loopback without a password
    │   ├── HostsRequired                   batch.console.security: a console off loopback without allowed_hosts
    │   └── PlaygroundError                 batch.console.mapping_store: what the playground cannot do
    │       ├── ArchiveNotAvailable             the feed's archive cannot be read now (server unreachable)
    │       ├── ConcurrentEdit                  the mapping changed since the editor loaded it
    │       ├── MappingRefused                  the edited text has problems: nothing was written
    │       ├── MappingSlotTaken                a save would move or write through a link/folder it did not make
    │       └── UnsafeFileName                  a requested archive name that is not a plain file there
    ├── InputFileError                  input file unusable: fix or replace the file     (exit 2)
    │   ├── FileError                       batch.transform.readers: encoding, header, XML, structure
    │   ├── UnsafeNameError                 batch.inbox.base: a name that would leave the inbox
    │   ├── ArchivedFileRefused             batch.inbox.base: an archived file too large, a symlink, not data
    │   └── Refused                         batch.console.security: a download outside the feed's folders
    ├── (record invalid)                data, not an exception: batch.transform.mapping.RecordError is
    │                                   kept with the record, journaled ``invalid``, reported
    │                                   in the receipt; the file goes on                 (exit 1)
    ├── AccessRefused                   the API refused our credentials, or trust failed:
    │   │                               fix credentials / TLS / known_hosts              (exit 2)
    │   ├── AuthError                       batch.delivery.ropo: /token refused the credentials
    │   ├── OffOriginRequest                batch.delivery.ropo: a request would leave the configured origin
    │   └── HostKeyError                    batch.inbox.base: SFTP host key unknown or changed
    ├── TransientError                  not now: keep the file, retry later (the service
    │   │                               does so itself with backoff)                    (exit 2)
    │   ├── InboxUnavailable                batch.inbox.base: connection refused or dropped
    │   ├── JournalUnavailable              batch.store.journal: SQLite cannot read/write now
    │   ├── FileInProgress                  batch.store.journal: another live process has the file
    │   ├── TokenUnavailable                batch.delivery.ropo: /token unreachable or 5xx/408/429
    │   ├── LeaseLost                       batch.store.leases: another instance took the feed: stop, record nothing
    │   ├── FeedBusy                        batch.service.holding: a command meets a live instance working the feed
    │   └── StorageFault                    batch.pipeline: a folder of ours refused a step
    │       └── ReceiptNotWritten               the file is finished, its receipt is not
    └── InternalError                   a bug: report it                                (exit 3)
        └── JournalMisuse                   batch.store.journal: a call the journal's state forbids

Two *families* cut across the groups for callers that handle everything one part raises:
``InboxError`` (batch.inbox.base: InboxUnusable, UnsafeNameError, ArchivedFileRefused,
HostKeyError, InboxUnavailable) and ``JournalError`` (batch.store.journal: JournalUnusable, JournalMisuse,
JournalUnavailable, FileInProgress). A family is never raised itself; each of its members
belongs to exactly one group.

Anything else that reaches the command line's boundary (batch.cli.commands) is an internal error:
``internal error: ...; please report it`` and ``ExitStatus.INTERNAL``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """How a command (or ``run --once``) ends: the one list of exit codes."""

    OK = 0          # all good: every record accepted
    PROBLEMS = 1    # it ran, but found problems (invalid records or mappings, events not accepted)
    UNUSABLE = 2    # it could not run (configuration, file, credentials, inbox, storage)
    INTERNAL = 3    # an internal error (a bug): please report it


class BatchError(Exception):
    """The base of every error usageplace-batch raises on purpose."""

    exit_status: ExitStatus = ExitStatus.UNUSABLE


class ConfigurationError(BatchError):
    """A configuration (service file, mapping, secret, feed name) that cannot be used."""


class InputFileError(BatchError):
    """An input file that cannot be used as a whole (its records are not even read)."""


class AccessRefused(BatchError):
    """The API refused our credentials, or the peer could not be trusted (TLS, host key, origin)."""


class TransientError(BatchError):
    """A resource that is unavailable now; what was asked did nothing irreversible: try again later."""


class InternalError(BatchError):
    """A state that correct code never reaches: a bug."""

    exit_status = ExitStatus.INTERNAL


#: The groups, in the order of the tree above.
GROUPS: tuple[type[BatchError], ...] = (
    ConfigurationError, InputFileError, AccessRefused, TransientError, InternalError,
)
