"""A command's hold on a feed: the feed's lease, taken by `process`, `retry` (or the console) for
the time of its work, exactly as a service instance holds it.

A feed is worked by one instance at a time (batch.service.leasing). A command that sends for a
feed is such an instance while it works: it takes the feed's lease under a name of its own
(``retry:HOST:PID``, ``process:HOST:PID``) with a new epoch, writes the inbox's lease marker,
renews both by heartbeat (its instance row too, so that a service on this host takes the feed
over at once if the command is killed), fences every journal write of its thread with the
lease, checks it before every receipt and stops sending when it lapses; at the end it releases
the lease and marks itself stopped. While a live instance holds the feed, the command is
refused (`FeedBusy`): it must not send beside it.

    leases = CommandLeases(runtime, "retry")
    try:
        with leases.hold("local") as held:     # FeedBusy: a live instance holds the feed
            held.processor.retry(...)          # fenced by the lease, stops when it lapses
    finally:
        leases.close()

A command counts as a live instance of the journal while it holds a feed (`status` lists it;
the services' fair share of feeds counts it for that time).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from batch.config.service import FeedSettings
from batch.errors import TransientError
from batch.pipeline import Processor
from batch.service.leasing import LeaseKeeper, LeaseStop, Refusal
from batch.service.runtime import Runtime
from batch.service.states import WorkerState
from batch.store.journals import journal_display
from batch.store.leases import Lease, LeaseStore, open_lease_store


class FeedBusy(TransientError):
    """Another instance works the feed now (it holds the feed's lease, or another journal's
    instance its inbox's lease marker): a command must not send for it beside that instance."""

    def __init__(self, feed: str, refusal: Refusal) -> None:
        super().__init__(f"feed {feed}: {refusal.message}")
        self.feed = feed
        self.refusal = refusal

    @property
    def holder(self) -> str | None:
        """The instance of this journal that holds the feed's lease; None when the feed is left
        to another journal's instance (its marker) or waits for a handover."""
        return self.refusal.holder if self.refusal.state == WorkerState.STANDBY else None


@dataclass(frozen=True)
class HeldFeed:
    """A feed while a command holds its lease."""

    settings: FeedSettings
    lease: Lease
    processor: Processor  # fenced by the lease; its deliveries stop when the lease lapses
    keeper: LeaseKeeper

    @property
    def holder(self) -> str:
        return self.lease.holder

    def check(self) -> None:
        """LeaseLost unless the lease is still this command's (check, then act)."""
        self.keeper.check(self.lease)


def command_name(kind: str) -> str:
    """The lease holder's name of a command: ``KIND:HOST:PID``."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


class CommandLeases:
    """The feed leases one command takes, one feed at a time (`hold`). Not thread-safe: one
    thread holds (its journal writes are the fenced ones)."""

    def __init__(self, runtime: Runtime, kind: str) -> None:
        config = runtime.config
        self.runtime = runtime
        self.name = command_name(kind)
        self.store: LeaseStore = open_lease_store(config.journal, config.journal_password_file)
        # feed_count 1: a command is never refused for its share (it holds one feed at a time)
        self.keeper = LeaseKeeper(self.store, name=self.name, journal_path=journal_display(config.journal),
                                  lease_seconds=config.lease_seconds, feed_count=lambda: 1)
        self._started = False

    def live_holder(self, feed: str) -> Lease | None:
        """The feed's lease if another instance holds it now (a read only)."""
        lease = next((row for row in self.store.leases() if row.feed == feed), None)
        return lease if lease is not None and lease.live() and lease.holder != self.name else None

    @contextmanager
    def hold(self, feed: str) -> Iterator[HeldFeed]:
        """Hold the feed's lease for the block (FeedBusy if another instance works the feed)."""
        runtime = self.runtime
        settings = runtime.settings(feed)
        result = self.keeper.acquire(feed, settings)
        if isinstance(result, Refusal):
            raise FeedBusy(feed, result)
        try:
            if not self._started:  # the heartbeat renews the lease (and this instance's row) from now on
                self.keeper.start()
                self._started = True
            runtime.journal.set_fence(self.store.fence(result))
            lease = result
            processor = Processor(runtime.journal, runtime.client, runtime.config.delivery,
                                  stop=LeaseStop(runtime.stop, lambda: self.keeper.valid(lease)),
                                  fence=lambda: self.keeper.check(lease))
            processor.breaker.give_up_at_probe_max = True  # a command ends in an outage
            yield HeldFeed(settings, lease, processor, self.keeper)
        finally:
            runtime.journal.set_fence(None)
            self.keeper.release(feed)

    def close(self) -> None:
        """Release what is held, stop the heartbeat, mark the command's instance stopped."""
        try:
            self.keeper.close()
        finally:
            self.store.close()
