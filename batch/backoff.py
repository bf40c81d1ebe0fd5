"""The one backoff of every retry loop: waits that double from a first wait up to a longest one.

Used by event delivery (with jitter and Retry-After), the circuit breaker's probes, SFTP
reconnects, a feed paused by a journal or disk fault, refused credentials, and a file that
failed and is tried again. One formula, so that "1 s doubling to 60 s" means the same
everywhere and a change to it is made once.
"""

from __future__ import annotations

import random


def doubling(attempt: int, first: float, longest: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): first, 2x, 4x, ... up to longest."""
    if attempt < 1:
        return 0.0
    return min(longest, first * 2.0 ** min(attempt - 1, 64))  # 2**64 x any wait is past any cap


def jittered(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    """``delay`` reduced by a random share of up to ``jitter`` (0..1), so that many waiters spread out."""
    return delay * (1.0 - jitter * (rng or random).random())


class Backoff:
    """Counts consecutive failures and says how long to wait after the latest one."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest, self.failures = first, longest, 0

    def next(self) -> float:
        """One more failure: the wait before the next attempt."""
        self.failures += 1
        return doubling(self.failures, self.first, self.longest)

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.failures = 0
