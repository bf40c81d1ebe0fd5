"""The inbox layer: from "a file appears in a folder or on an SFTP server" to "a local
path to read, a place for the receipt, and the original archived or errored"."""

from __future__ import annotations

import time
from collections.abc import Callable

from batch.config.inbox import InboxSettings, LocalLocation, SftpLocation, parse_location
from batch.inbox.base import (
    ArchivedFileRefused,
    Candidate,
    Claimed,
    FileStat,
    HostKeyError,
    Inbox,
    InboxError,
    InboxUnavailable,
    InboxUnusable,
    NameRules,
    UnsafeNameError,
    check_name,
    stamped_name,
)
from batch.inbox.readiness import Readiness


def open_inbox(settings: InboxSettings, *, clock: Callable[[], float] = time.monotonic) -> Inbox:
    """The inbox for these settings: a LocalInbox for a folder, an SftpInbox for sftp://.

    An SFTP inbox connects on first use, so this never blocks on the network."""
    if isinstance(settings.location, SftpLocation):
        from batch.inbox.sftp import SftpInbox

        return SftpInbox(settings, clock=clock)
    from batch.inbox.local import LocalInbox

    return LocalInbox(settings, clock=clock)


__all__ = [
    "ArchivedFileRefused",
    "Candidate",
    "Claimed",
    "FileStat",
    "HostKeyError",
    "Inbox",
    "InboxError",
    "InboxUnusable",
    "InboxSettings",
    "InboxUnavailable",
    "LocalLocation",
    "NameRules",
    "Readiness",
    "SftpLocation",
    "UnsafeNameError",
    "check_name",
    "open_inbox",
    "parse_location",
    "stamped_name",
]
