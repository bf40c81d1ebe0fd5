"""The one backoff: waits double from the first up to the longest, and restart after a success."""

from __future__ import annotations

import random

from batch.backoff import Backoff, doubling, jittered


def test_waits_double_up_to_the_longest():
    assert [doubling(n, 1.0, 60.0) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert doubling(0, 1.0, 60.0) == 0.0
    assert doubling(10_000, 0.5, 300.0) == 300.0  # no overflow after a long outage


def test_a_backoff_counts_failures_and_restarts_after_a_success():
    waits = Backoff(7.5, 60.0)
    assert [waits.next() for _ in range(5)] == [7.5, 15.0, 30.0, 60.0, 60.0]
    waits.reset()
    assert waits.next() == 7.5


def test_jitter_only_shortens_and_by_at_most_its_share():
    rng = random.Random(5)
    shortened = [jittered(10.0, 0.5, rng) for _ in range(1000)]
    assert all(5.0 <= wait <= 10.0 for wait in shortened)
    assert min(shortened) < 5.5 and max(shortened) > 9.5
    assert jittered(10.0, 0.0) == 10.0
