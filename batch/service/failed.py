"""Failed events sent again by the service itself, once they have been failed for
``delivery.retry_failed_after`` seconds: an idle feed's worker calls `FailedEvents.retry`,
which does what the `retry` command does (Processor.retry, the receipt rewritten and published
through the feed's inbox)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from batch.config.service import FeedSettings
from batch.inbox import Inbox
from batch.pipeline import FeedRuntime, FileStatus, Processor, failed_file_ids
from batch.store.journal import JournalStore
from batch.store.rejected import archived_original

log = logging.getLogger(__name__)

RETRY_FAILED_CHECK_SECONDS = 60.0  # how often an idle feed looks for failed events to send again


@dataclass
class FailedEvents:
    """One feed's retry of its failed events, and when it looks next."""

    feed: str
    next_check: float = 0.0  # time.monotonic() of the next look

    def retry(self, *, after: float | None, journal: JournalStore, processor: Processor, runtime: FeedRuntime,
              settings: FeedSettings, inbox: Inbox, staging: Path, stop: threading.Event,
              check: Callable[[], None]) -> None:
        """Send the feed's failed events again, file by file, when they have been failed for
        `after` seconds (None: never); `check` (the lease) before each receipt file is published."""
        now = time.monotonic()
        if after is None or now < self.next_check:
            return
        self.next_check = now + min(after, RETRY_FAILED_CHECK_SECONDS)
        failed_before = journal.clock() - timedelta(seconds=after)
        for file_id in failed_file_ids(journal, None):
            record = journal.get_file(file_id)
            if record.feed != self.feed or not record.finished or stop.is_set():
                continue  # another feed's, or a file still being worked (here or by another instance)
            if any(event.updated_at > failed_before for event in journal.failed_events(file_id)):
                continue  # failed too recently: next time
            extra = {"feed": self.feed, "file": record.name}
            log.info("feed %s: %s: sending its failed events again (delivery.retry_failed_after)",
                     self.feed, record.name, extra=extra)
            receipt_dir = inbox.receipt_dir(staging)
            receipt_dir.mkdir(parents=True, exist_ok=True)
            # the rejected-rows file is rewritten from the original in a local feed's archive/ (else None)
            source = archived_original(settings, record.name, record.size, record.sha256)
            outcome = processor.retry(file_id, runtime, receipt_dir, source=source)
            if outcome.receipt is not None:
                # check, then act (LeaseLost: the worker stops working the feed)
                inbox.publish_receipt(outcome.receipt.files, lambda path: check())
            counts = ", ".join(f"{n} {k}" for k, n in outcome.counts.items() if n and k != "invalid")
            log.info("feed %s: %s: retried: %s: %s", self.feed, record.name, outcome.status,
                     outcome.message or counts, extra=extra)
            if outcome.status != FileStatus.DONE:  # stopped, or credentials refused: try again later
                return
