"""Everything a loaded configuration needs at run time: journal, API client, feeds, processor.

The commands and the long-running service build the same Runtime, so `process` on the command
line does exactly what the service does with a dropped file.
"""

from __future__ import annotations

import fnmatch
import threading
from pathlib import Path

from batch.config.inbox import LocalLocation, parse_location
from batch.config.service import FeedNotFound, FeedSettings, LoadedService
from batch.delivery.ropo import RopoClient
from batch.fsutil import OwnFolderPath
from batch.pipeline import FeedRuntime, Processor
from batch.store.journals import open_journal


class Runtime:
    def __init__(self, loaded: LoadedService, stop: threading.Event | None = None):
        self.loaded = loaded
        self.config = loaded.config
        self.stop = stop or threading.Event()
        self.feeds: dict[str, FeedRuntime] = {
            feed.name: FeedRuntime.build(feed.name, loaded.mappings[feed.name], feed.receipt)
            for feed in self.config.feeds
        }
        journal = open_journal(self.config)
        assert journal is not None  # create=True: always a journal
        self.journal = journal
        try:
            self.client = RopoClient(
                self.config.api,
                pool_size=self.config.delivery.max_in_flight,
                transient_statuses=self.config.delivery.retry_statuses,
            )
        except BaseException:
            self.journal.close()
            raise
        self.processor = Processor(self.journal, self.client, self.config.delivery, stop=self.stop)
        self.processor.breaker.give_up_at_probe_max = True  # one-shot commands end in an outage

    def close(self) -> None:
        self.client.close()
        self.journal.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settings(self, name: str) -> FeedSettings:
        return self.config.feed(name)

    def feed_for(self, file_name: str, name: str | None = None) -> FeedSettings:
        """The feed named, or the one feed whose file patterns match the file name."""
        feeds = self.config.feeds
        if name is not None:
            return self.config.feed(name)
        if len(feeds) == 1:
            return feeds[0]
        matching = [feed for feed in feeds if any(fnmatch.fnmatch(file_name.lower(), p.lower()) for p in feed.patterns)]
        if len(matching) == 1:
            return matching[0]
        which = ", ".join(feed.name for feed in (matching or feeds))
        reason = "several feeds match" if matching else "no feed's patterns match"
        raise FeedNotFound(f"{file_name}: {reason} ({which}); choose one with --feed")

    @staticmethod
    def outbox(feed: FeedSettings) -> Path | None:
        """The feed's receipt folder when its inbox is a local folder (else None: receipts are uploaded)."""
        location = parse_location(feed.inbox)
        if not isinstance(location, LocalLocation):
            return None
        outbox = Path(feed.outbox_dir)
        # OwnFolderPath: receipts are never written through a symlink put in place of the outbox (D19)
        return OwnFolderPath(outbox if outbox.is_absolute() else location.path / outbox)
