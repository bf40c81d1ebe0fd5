"""Failed events sent again by the service itself, once they have been failed for
``delivery.retry_failed_after`` seconds: an idle feed's worker calls `FailedEvents.retry`,
which does what a retry request does (batch.service.retrying.retry_file: Processor.retry, the
receipt rewritten and published through the feed's inbox). It runs in the feed worker's thread
under the feed's lease, as the worker's retry requests do, so the two never run at once."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from batch.pipeline import FileStatus, failed_file_ids
from batch.service.retrying import FeedWork, retry_file

log = logging.getLogger(__name__)

RETRY_FAILED_CHECK_SECONDS = 60.0  # how often an idle feed looks for failed events to send again


@dataclass
class FailedEvents:
    """One feed's retry of its failed events, and when it looks next."""

    feed: str
    next_check: float = 0.0  # time.monotonic() of the next look

    def retry(self, work: FeedWork, *, after: float | None, stop: threading.Event) -> None:
        """Send the feed's failed events again, file by file, when they have been failed for
        `after` seconds (None: never); the lease (`work.check`) before each receipt file is published."""
        now = time.monotonic()
        if after is None or now < self.next_check:
            return
        self.next_check = now + min(after, RETRY_FAILED_CHECK_SECONDS)
        journal = work.journal
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
            result = retry_file(work, file_id)
            for note in result.notes:
                log.warning("feed %s: %s", self.feed, note, extra=extra)
            counts = ", ".join(f"{n} {k}" for k, n in result.counts.items() if n and k not in ("invalid", "filtered"))
            log.info("feed %s: %s: retried: %s: %s", self.feed, record.name, result.status,
                     result.message or counts, extra=extra)
            if result.status != FileStatus.DONE:  # stopped, or credentials refused: try again later
                return
