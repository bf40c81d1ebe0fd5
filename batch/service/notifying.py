"""Alerts of the service: a late feed, a file that finished with problems — said once.

Each alert is first recorded in the journal's ``notifications`` table under a unique key
(feed, kind, subject: the due time of a late file, the journal id of a file). Whoever records it
first says it — the WARNING in the log and, with a ``notify:`` webhook, one POST — and nobody
else: not the same instance after a restart, not another instance of the same journal. Only the
feed's lease holder records alerts (the supervisor checks lateness for the feeds this instance
works; a worker reports the files it finished). A webhook that fails is logged (never its URL)
and recorded as ``failed``; the feed goes on. A notification recorded but never sent (the
process died while sending) is sent again by the lease holder after ``STALE_SECONDS``.

POSTs go out on one background thread, so a slow webhook never holds up a feed or the service.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from batch.config.secrets import SecretResolutionError
from batch.config.service import FeedSettings, NotifySettings
from batch.delivery.notify import Webhook
from batch.service.lateness import Lateness, file_message, file_problems, iso_utc, late_message
from batch.store.journal import FileRecord, JournalError, JournalStore

log = logging.getLogger(__name__)

STALE_SECONDS = 600.0  # a notification pending this long lost its sender: send it again


@dataclass(frozen=True)
class _Send:
    feed: str
    kind: str
    subject: str
    payload: dict[str, Any]
    settings: NotifySettings


class Notifier:
    """Records alerts once in the journal and sends their webhooks on its own thread."""

    def __init__(self, journal: JournalStore, instance: str, stop: threading.Event) -> None:
        self.journal = journal
        self.instance = instance
        self._stop = stop
        self._queue: queue.Queue[_Send | None] = queue.Queue()
        self._queued: set[tuple[str, str, str]] = set()  # stale ones queued again, once
        self._still: set[tuple[str, str]] = set()  # (feed, due) this process has said is late
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after what is being sent (the queue's rest: resent later as stale)."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- alerts

    def late(self, feed: FeedSettings, notify: NotifySettings | None, state: Lateness, described: str) -> None:
        """The feed is late for `state.due`: said once per due time."""
        message = late_message(feed.name, state, described)
        subject = iso_utc(state.due) or ""  # the due time: one notification per missed due time
        said_here = (feed.name, subject) in self._still
        self._still.add((feed.name, subject))
        if said_here:
            return  # said already by this process (below, or as a WARNING when it recorded it)
        claimed = self._claim(feed.name, "late", subject, message, notify, "late")
        if claimed is None:
            self._still.discard((feed.name, subject))  # the journal failed: try again at the next check
            return
        if not claimed:  # recorded before this process started (a restart) or by another instance
            log.info("feed %s: still late for the due time %s (said and notified before)", feed.name, subject,
                     extra={"feed": feed.name})
            return
        log.warning("%s", message, extra={"feed": feed.name})
        if notify is not None and "late" in notify.when:
            payload = {"text": message, "feed": feed.name, "kind": "late", "expected": described,
                       "due": iso_utc(state.due), "deadline": iso_utc(state.deadline),
                       "last_arrival": iso_utc(state.last_arrival), "instance": self.instance}
            self._queue.put(_Send(feed.name, "late", subject, payload, notify))

    def file_finished(self, feed: str, notify: NotifySettings | None, file: FileRecord) -> None:
        """A finished file with failed, rejected or invalid records: said once per file."""
        problems = file_problems(dict(file.counts))
        if not problems or not file.id:
            return
        if notify is None or "problems" not in notify.when:
            return  # the file's own log line has said it
        message = file_message(feed, file.name, str(file.state), problems, dict(file.counts))
        subject = str(file.id)
        if not self._claim(feed, "problems", subject, message, notify, "problems"):
            return  # already sent (a file retried), or the journal failed (logged)
        payload = {"text": message, "feed": feed, "kind": "problems", "file": file.name, "file_id": file.id,
                   "state": str(file.state), "counts": dict(file.counts), "instance": self.instance}
        self._queue.put(_Send(feed, "problems", subject, payload, notify))

    def resend_stale(self, feed: str, notify: NotifySettings | None, now: datetime) -> None:
        """Send again what was recorded but never finished (its sender died), once per run."""
        if notify is None:
            return
        try:
            stale = self.journal.stale_notifications(feed, now - timedelta(seconds=STALE_SECONDS))
        except JournalError as exc:
            log.warning("feed %s: notifications: %s", feed, exc, extra={"feed": feed})
            return
        for kind, subject, message in stale:
            key = (feed, kind, subject)
            if key in self._queued:
                continue
            self._queued.add(key)
            log.info("feed %s: sending again a notification its sender did not finish: %s", feed, message,
                     extra={"feed": feed})
            payload = {"text": message, "feed": feed, "kind": kind, "instance": self.instance}
            self._queue.put(_Send(feed, kind, subject, payload, notify))

    def _claim(self, feed: str, kind: str, subject: str, message: str, notify: NotifySettings | None,
               on: str) -> bool | None:
        """True: recorded now (so this caller says it); False: recorded before; None: the journal failed."""
        state = "pending" if notify is not None and on in notify.when else "off"
        try:
            return self.journal.claim_notification(feed, kind, subject, message, state)
        except JournalError as exc:  # a late feed: tried again at the next check; a file's: logged, not sent
            log.warning("feed %s: cannot record the %s notification: %s", feed, kind, exc, extra={"feed": feed})
            return None

    # -- the sending thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._send(item)
            except Exception as exc:  # noqa: BLE001 - a notification never stops the service
                log.error("feed %s: the %s notification failed: %s", item.feed, item.kind, type(exc).__name__,
                          extra={"feed": item.feed})

    def _send(self, item: _Send) -> None:
        extra = {"feed": item.feed}
        try:
            url = item.settings.resolved_url()
        except SecretResolutionError as exc:
            self._finish(item, "failed", 0, str(exc))
            log.error("feed %s: the %s notification was not sent: %s", item.feed, item.kind, exc, extra=extra)
            return
        webhook = Webhook(url.get_secret_value(), timeout=item.settings.timeout_seconds,
                          attempts=item.settings.attempts, stop=self._stop)
        result = webhook.post(item.payload)
        if result.ok:
            self._finish(item, "sent", result.attempts, None)
            log.info("feed %s: notified the webhook (%s)", item.feed, item.kind, extra=extra)
        else:
            self._finish(item, "failed", result.attempts, result.problem)
            log.error("feed %s: the %s notification was not sent after %d attempt(s): %s; the feed goes on",
                      item.feed, item.kind, result.attempts, result.problem, extra=extra)

    def _finish(self, item: _Send, state: str, attempts: int, problem: str | None) -> None:
        try:
            self.journal.finish_notification(item.feed, item.kind, item.subject, state, attempts, problem)
        except JournalError as exc:
            log.warning("feed %s: cannot record the notification's result: %s", item.feed, exc,
                        extra={"feed": item.feed})
