"""Delivery against the sandbox on loopback: ordering, retries, limits, stopping."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import pytest

from batch.config.api import DeliverySettings
from batch.delivery.ropo import RopoClient
from batch.delivery.scheduler import (
    DeliveryReport,
    Outcome,
    Outgoing,
    State,
    TokenBucket,
    backoff_delay,
    deliver,
)
from batch.sandbox.server import DROP, DROP_AFTER, SLOW, Arrival, Sandbox
from tests.fixtures_clock import FakeClock
from tests.fixtures_http import settings_for

MakeClient = Callable[..., RopoClient]
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "backoff_jitter": 0.5}


def event(key: str, place: str | None) -> Outgoing:
    body = {"id": key, "status": "disconnected", "time": "2024-01-04 10:41:40"}
    if place is not None:
        body["usageplacecode"] = place
    return Outgoing(key, place, body)


class Recorder:
    """on_result that keeps every call and the thread it came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[Outgoing, Outcome]] = []
        self.threads: set[int] = set()

    def __call__(self, item: Outgoing, outcome: Outcome) -> None:
        self.calls.append((item, outcome))
        self.threads.add(threading.get_ident())

    def by_key(self) -> dict[object, Outcome]:
        outcomes = {item.key: outcome for item, outcome in self.calls}
        assert len(outcomes) == len(self.calls), "an item was reported twice"
        return outcomes


def run(items: Iterable[Outgoing], client: RopoClient, recorder: Recorder,
        **settings: object) -> DeliveryReport:
    return deliver(items, client, DeliverySettings(**{**FAST, **settings}), recorder)


def accepted_order(sb: Sandbox) -> dict[str, list[str]]:
    order: dict[str, list[str]] = defaultdict(list)
    for arrival in sb.arrivals:
        if arrival.status == 200:
            order[arrival.usageplacecode or ""].append(arrival.id or "")
    return order


def test_all_accepted_each_reported_once_in_caller_thread(
        sandbox: Sandbox, make_client: MakeClient) -> None:
    items = [event(f"e{n}", f"P{n % 7}") for n in range(50)]
    recorder = Recorder()
    report = run(items, make_client(pool_size=8), recorder, max_in_flight=8)
    outcomes = recorder.by_key()
    assert set(outcomes) == {item.key for item in items}
    assert {o.state for o in outcomes.values()} == {State.ACCEPTED}
    assert all(o.attempts == 1 and o.status == 200 for o in outcomes.values())
    assert recorder.threads == {threading.get_ident()}
    assert report.counts[State.ACCEPTED] == 50 and report.total == 50
    assert sorted(sandbox.accepted_ids) == sorted(item.key for item in items)


def test_per_place_order_under_concurrency(sandbox: Sandbox, make_client: MakeClient) -> None:
    rng = random.Random(7)
    places = [f"643007{n:012d}" for n in range(30)]
    per_place = {p: [f"{p}-{k}" for k in range(6)] for p in places}
    # Interleave the places randomly while keeping each place's own order.
    cursors = {p: 0 for p in places}
    items: list[Outgoing] = []
    while len(items) < 180:
        place = rng.choice([p for p in places if cursors[p] < 6])
        items.append(event(per_place[place][cursors[place]], place))
        cursors[place] += 1
    sandbox.set_faults(latency_ms=1, latency_jitter_ms=15, error_rate=0.15, drop_rate=0.03)
    recorder = Recorder()
    report = run(items, make_client(pool_size=16), recorder, max_in_flight=16, max_attempts=30)

    assert report.counts[State.ACCEPTED] == 180, recorder.calls
    assert accepted_order(sandbox) == per_place
    arrivals = sandbox.arrivals
    assert any(a.status != 200 for a in arrivals)  # the retries were exercised
    by_place = defaultdict(list)
    for arrival in arrivals:
        by_place[arrival.usageplacecode].append(arrival)
    for place_arrivals in by_place.values():  # never two of one place at the same time
        for before, after in zip(place_arrivals, place_arrivals[1:]):
            assert before.finished <= after.started
    overlapping = sum(1 for a, b in zip(arrivals, arrivals[1:]) if b.started < a.finished)
    assert overlapping > 10  # across places it did run concurrently


def test_transient_then_success(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(script=[503, DROP, 500])
    recorder = Recorder()
    run([event("e1", "P")], make_client(), recorder)
    outcome = recorder.by_key()["e1"]
    assert outcome == Outcome(State.ACCEPTED, 4, 200, "")
    assert [a.status for a in sandbox.arrivals] == [503, None, 500, 200]


def test_retry_after_is_honoured(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(script=[429], retry_after="1")
    recorder = Recorder()
    run([event("a1", "A"), event("b1", "B")], make_client(), recorder, max_in_flight=1)
    assert {o.state for o in recorder.by_key().values()} == {State.ACCEPTED}
    first, *later = sandbox.arrivals
    assert first.status == 429
    # Nothing at all (not even another place) is sent before the Retry-After has passed.
    assert all(a.started - first.finished >= 0.95 for a in later)


def test_budget_exhausted_fails_and_holds_back_the_place(
        sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(error_rate=1.0, error_status=503)
    recorder = Recorder()
    report = run([event("e1", "P"), event("e2", "P")], make_client(), recorder, max_attempts=3)
    outcomes = recorder.by_key()
    assert outcomes["e1"].state is State.FAILED and outcomes["e1"].attempts == 3
    assert outcomes["e1"].status == 503
    assert outcomes["e1"].message.startswith("gave up after 3 attempts: HTTP 503")
    assert outcomes["e2"] == Outcome(
        State.FAILED, 0, None, "not sent: an earlier event of usage place P failed")
    assert [a.id for a in sandbox.arrivals] == ["e1"] * 3
    assert report.counts[State.FAILED] == 2


def test_rejection_does_not_block_the_place(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(reject_ids=["e1"], reject_title="Bad event", reject_detail="no such place")
    recorder = Recorder()
    run([event("e1", "P"), event("e2", "P")], make_client(), recorder)
    outcomes = recorder.by_key()
    assert outcomes["e1"] == Outcome(State.REJECTED, 1, 422, "HTTP 422: Bad event: no such place",
                                     "Bad event", "no such place")  # the problem's title and detail apart
    assert outcomes["e2"].state is State.ACCEPTED


def test_deadline_fails_the_rest(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(latency_ms=200)
    recorder = Recorder()
    report = run([event(f"e{n}", "P") for n in range(10)], make_client(), recorder,
                 deadline_seconds=0.5)
    outcomes = recorder.by_key()
    states = [outcomes[f"e{n}"].state for n in range(10)]
    assert states[:2] == [State.ACCEPTED, State.ACCEPTED]
    assert states[3:] == [State.FAILED] * 7
    assert outcomes["e9"].message == "not sent: the file deadline was reached"
    assert report.deadline_hit


def test_retry_beyond_the_deadline_fails_at_once(sandbox: Sandbox,
                                                 make_client: MakeClient) -> None:
    sandbox.set_faults(error_rate=1.0)
    recorder = Recorder()
    started = time.monotonic()
    run([event("e1", "P")], make_client(), recorder, backoff_base=5, backoff_cap=5,
        deadline_seconds=1)
    assert time.monotonic() - started < 4  # it did not sit out the 5 s backoff first
    outcome = recorder.by_key()["e1"]
    assert outcome.state is State.FAILED and outcome.attempts == 1
    assert outcome.message.startswith("file deadline reached after 1 attempts")


def test_stop_finishes_in_flight_and_leaves_the_rest_pending(
        sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(latency_ms=100)
    stop = threading.Event()
    recorder = Recorder()

    def on_result(item: Outgoing, outcome: Outcome) -> None:
        recorder(item, outcome)
        if len(recorder.calls) == 6:
            stop.set()

    items = [event(f"e{n}", f"P{n}") for n in range(60)]
    report = deliver(items, make_client(pool_size=4), DeliverySettings(max_in_flight=4, **FAST),
                     on_result, stop=stop)
    time.sleep(0.15)  # anything still travelling would arrive now
    outcomes = recorder.by_key()
    assert len(outcomes) == 60 and report.stopped
    accepted = {k for k, o in outcomes.items() if o.state is State.ACCEPTED}
    pending = {k for k, o in outcomes.items() if o.state is State.PENDING}
    assert accepted | pending == set(outcomes)
    assert 6 <= len(accepted) <= 6 + 4 + 4
    assert set(sandbox.accepted_ids) == accepted  # in-flight ones finished; nothing else sent
    assert all(outcomes[k].message == "not sent: delivery stopped" for k in pending)


def test_rate_limit(sandbox: Sandbox, make_client: MakeClient, fake_clock: FakeClock) -> None:
    # The limiter's clock is a test clock: it paces without sleeping, however busy the machine.
    recorder = Recorder()
    report = deliver([event(f"e{n}", f"P{n}") for n in range(20)], make_client(),
                     DeliverySettings(**FAST, max_in_flight=8, rate_limit=40), recorder,
                     clock=fake_clock.clock)
    assert report.counts[State.ACCEPTED] == 20
    # 20 sends at 40/s with a burst of 1: the senders had to wait 19/40 s at least, in turn
    assert fake_clock.monotonic() >= 19 / 40 - 1e-9
    assert len(fake_clock.sleeps) >= 19 - 1  # nearly every send waited for its turn


def test_auth_failure_leaves_everything_pending(sandbox: Sandbox,
                                                make_client: MakeClient) -> None:
    client = make_client()
    client.authenticate()
    sandbox.apicode = "rotated-by-ropo-support"
    sandbox.revoke_tokens()  # next POST: 401, renewal with the old apicode: 400
    recorder = Recorder()
    report = run([event(f"e{n}", f"P{n % 3}") for n in range(12)], client, recorder,
                 max_in_flight=2)
    outcomes = recorder.by_key()
    assert len(outcomes) == 12
    assert {o.state for o in outcomes.values()} == {State.PENDING}
    assert report.auth_error is not None and "errorId 3" in report.auth_error
    assert sandbox.accepted == []
    assert len(sandbox.arrivals) <= 2  # the ones in flight when it happened


def test_drops_and_timeouts_are_retried(make_sandbox: Callable[..., Sandbox],
                                        make_client: MakeClient) -> None:
    sb = make_sandbox()
    client = make_client(settings_for(sb, read_timeout=0.2))
    sb.set_faults(script=[SLOW, DROP_AFTER, DROP], slow_ms=400)
    recorder = Recorder()
    report = run([event(f"e{n}", "P") for n in range(4)], client, recorder)
    assert report.counts[State.ACCEPTED] == 4
    assert recorder.by_key()["e0"].attempts == 4
    assert accepted_order(sb)["P"][-4:] == ["e0", "e1", "e2", "e3"]
    time.sleep(0.3)
    assert sb.duplicates.get("e0", 0) >= 1  # the slow and the dropped-after answers were kept


def test_events_without_place_run_concurrently(sandbox: Sandbox,
                                               make_client: MakeClient) -> None:
    sandbox.set_faults(latency_ms=150)
    recorder = Recorder()
    report = run([event(f"e{n}", None) for n in range(8)], make_client(pool_size=8), recorder,
                 max_in_flight=8)
    assert report.counts[State.ACCEPTED] == 8
    assert max_overlap(sandbox.arrivals) > 1  # not one after the other


def test_events_of_different_places_are_sent_concurrently(sandbox: Sandbox,
                                                          make_client: MakeClient) -> None:
    # Functional only: how fast is bench/bench_delivery.py's business (speed flakes on a busy machine).
    sandbox.set_faults(latency_ms=50)
    client = make_client(pool_size=16)
    client.authenticate()
    recorder = Recorder()
    report = run([event(f"e{n}", f"P{n}") for n in range(48)], client, recorder,
                 max_in_flight=16)
    assert report.counts[State.ACCEPTED] == 48
    assert 1 < max_overlap(sandbox.arrivals) <= 16


def max_overlap(arrivals: Iterable[Arrival]) -> int:
    """The most requests the server was answering at one moment."""
    marks = sorted([(a.started, 1) for a in arrivals] + [(a.finished, -1) for a in arrivals],
                   key=lambda mark: (mark[0], mark[1]))  # an end before a start at the same instant
    most = current = 0
    for _, step in marks:
        current += step
        most = max(most, current)
    return most


def test_on_result_failure_propagates(sandbox: Sandbox, make_client: MakeClient) -> None:
    calls = []

    def on_result(item: Outgoing, outcome: Outcome) -> None:
        calls.append(item.key)
        raise RuntimeError("journal is gone")

    # The bound under test: events sent but not yet reported never exceed max_in_flight,
    # however late the caller notices (e0 unreported + at most one more with 2 slots).
    with pytest.raises(RuntimeError, match="journal is gone"):
        deliver([event(f"e{n}", "P") for n in range(5)], make_client(),
                DeliverySettings(**FAST, max_in_flight=2), on_result)
    assert calls == ["e0"]
    sent = len(sandbox.arrivals)
    assert 1 <= sent <= 2
    time.sleep(0.2)
    assert len(sandbox.arrivals) == sent  # nothing leaves after deliver() has raised


def test_input_is_read_lazily(sandbox: Sandbox, make_client: MakeClient) -> None:
    read = []

    def items():
        for n in range(30):
            read.append(n)
            yield event(f"e{n}", "P")

    seen_when_reported = []
    deliver(items(), make_client(), DeliverySettings(**FAST),
            lambda item, outcome: seen_when_reported.append(len(read)), window=5)
    assert len(seen_when_reported) == 30
    assert seen_when_reported[0] <= 6  # the window bounds the read-ahead


def test_backoff_delay() -> None:
    settings = DeliverySettings(backoff_base=0.1, backoff_cap=0.3, backoff_jitter=0)
    assert [backoff_delay(n, settings) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert backoff_delay(1, settings, retry_after=2.0) == 2.0
    jittered = DeliverySettings(backoff_base=1, backoff_cap=10, backoff_jitter=0.5)
    delays = [backoff_delay(2, jittered, rng=random.Random(n)) for n in range(50)]
    assert all(1.0 <= d <= 2.0 for d in delays) and len(set(delays)) > 10


def test_token_bucket_rate(fake_clock: FakeClock) -> None:
    bucket = TokenBucket(rate=100, burst=1, clock=fake_clock.clock)
    for _ in range(21):
        assert bucket.acquire()
    assert fake_clock.monotonic() == pytest.approx(0.2)  # the first is free, then 1/100 s each
    assert fake_clock.sleeps == [pytest.approx(0.01)] * 20
    fake_clock.advance(1.0)
    burst = TokenBucket(rate=10, burst=3, clock=fake_clock.clock)
    assert all(burst.acquire() for _ in range(3)) and len(fake_clock.sleeps) == 20  # a burst waits not
    stop = threading.Event()
    stop.set()
    slow = TokenBucket(rate=1, burst=1)
    assert slow.acquire(stop)  # the first token is free
    assert not slow.acquire(stop)  # the second would wait: stop wins
