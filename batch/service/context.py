"""What a feed worker needs of the service, and nothing more: a small, explicit context.

The worker used to hold the whole `Service` and reach into it; now the service hands each
worker one `WorkerContext` (batch.service.supervisor builds it) and the worker sees only this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from batch.service.leasing import LeaseKeeper
from batch.service.metrics import Metrics
from batch.service.notifying import Notifier
from batch.service.reload import Generation
from batch.store.journal import JournalStore


@dataclass(frozen=True)
class WorkerContext:
    """The service's shared parts, as a feed worker uses them (all thread-safe)."""

    journal: JournalStore  # every write of a worker's thread is fenced by its feed's lease
    leases: LeaseKeeper    # this instance's feed leases: acquire, check, release, surplus
    metrics: Metrics
    stop: threading.Event  # a stop request: the file in flight finishes or stays to resume
    generation: Callable[[], Generation]  # the configuration in force now (a reload swaps it)
    once: bool = False     # `run --once`: do what is ready, then end with an exit status (cron)
    notifier: Notifier | None = None  # alerts said once: a finished file with problems (batch.service.notifying)
