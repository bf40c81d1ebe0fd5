"""The clock that token expiry and rate limiting read: the system's, or a test's.

`RopoClient` (token renewal) and `TokenBucket` (the delivery rate limit) take a
:class:`Clock` so that tests can move time on instead of sleeping through it: a test clock
whose ``sleep`` advances its own time makes a two-hour token lifetime or a one-per-second
rate a matter of microseconds, and independent of how busy the machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def _wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


@dataclass(frozen=True)
class Clock:
    """``monotonic`` for intervals, ``wall`` for absolute instants (a JWT's ``exp``),
    ``sleep`` to wait, ``wait(event, seconds)`` to wait unless ``event`` is set (True if it was)."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    wait: Callable[[threading.Event, float], bool] = _wait


SYSTEM_CLOCK = Clock()
