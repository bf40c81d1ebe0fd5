"""A clock that tests move on by hand: token expiry and rate limits without sleeping."""

from __future__ import annotations

import threading
import time

import pytest

from batch.clock import Clock


class FakeClock:
    """Time that passes only when something sleeps or the test calls :meth:`advance`.

    ``monotonic`` starts at 0; ``wall`` starts at the real time (a JWT's ``exp`` is compared
    with it) and moves with ``monotonic``. Every sleep is recorded in ``sleeps``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0.0
        self._wall_start = time.time()
        self.sleeps: list[float] = []
        self.clock = Clock(monotonic=self.monotonic, wall=self.wall, sleep=self.sleep, wait=self.wait)

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def wall(self) -> float:
        with self._lock:
            return self._wall_start + self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
