"""Everything a loaded configuration needs at run time: journal, API client, feeds, processor.

The one builder of run-time state: the commands use a Runtime, and the long-running service
builds its API client and its feeds (each configuration generation, batch.service.reload) with
the same `build_client` and `build_feeds`, so `process` on the command line does exactly what
the service does with a dropped file.
"""

from __future__ import annotations

import fnmatch
import threading

from batch.config.service import FeedNotFound, FeedSettings, LoadedService, ServiceConfig
from batch.delivery.ropo import RopoClient
from batch.pipeline import FeedRuntime, Processor
from batch.store.journals import open_journal


def build_client(config: ServiceConfig, feeds_at_once: int = 1) -> RopoClient:
    """The API client; its connection pool holds max_in_flight requests per feed sent at once."""
    return RopoClient(config.api, pool_size=config.delivery.max_in_flight * feeds_at_once,
                      transient_statuses=config.delivery.retry_statuses)


def build_feeds(loaded: LoadedService) -> dict[str, FeedRuntime]:
    """Every feed's compiled mapping and receipt format, by feed name."""
    return {feed.name: FeedRuntime.build(feed.name, loaded.mappings[feed.name], feed.receipt)
            for feed in loaded.config.feeds}


class Runtime:
    def __init__(self, loaded: LoadedService, stop: threading.Event | None = None):
        self.loaded = loaded
        self.config = loaded.config
        self.stop = stop or threading.Event()
        self.feeds = build_feeds(loaded)
        journal = open_journal(self.config)
        assert journal is not None  # create=True: always a journal
        self.journal = journal
        try:
            self.client = build_client(self.config)  # a command sends one file at a time
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
