"""Deliver events: bounded concurrency, per-usage-place order, rate limit, retries.

Ordering rule: events with the same ``usageplacecode`` are sent one after another in
input order, never concurrently — the next one leaves only when the previous one is
final (accepted or rejected). A transient failure keeps the place blocked while the
event waits for its retry. If an event of a place ends ``failed``, the later events of
that place are not sent in this run (they would overtake it) and end ``failed`` too.
Events without a usageplacecode have no ordering constraint.

Outages: a transient error is the event's own only while Ropo One answers other events. When
``breaker_threshold`` different events in a row fail transiently (connection refused or reset,
timeouts, DNS, 5xx or 429 on everything), a :class:`CircuitBreaker` opens: the run holds every
event and sends one probe at a time with backoff; attempts made while it is open are not
charged to any event's ``max_attempts``, and the hold does not run down the file's deadline.
The first answer that is not transient closes it and delivery resumes. The breaker outlives
one run: a feed's Processor keeps one, so the next file does not start by failing either.
One-shot runs (``run --once``, ``process``, ``retry``) hold only until the waits between probes
have reached ``breaker_probe_max`` and one more probe fails; then the run ends like refused
credentials (everything left pending, ``auth_error`` set), for the next run to resume.

Threads: ``max_in_flight`` worker threads send; the thread that calls :func:`deliver`
reads ``items`` lazily, schedules retries, and calls ``on_result`` — so a journal can
use its own SQLite connection in the callback. Delivery keeps no state of its own.

In flight: an event counts against ``max_in_flight`` from the moment it is sent until its
final outcome has been reported (``on_result``, then ``on_batch_done``, have returned) — not
merely until the answer arrives. So at any moment at most ``max_in_flight`` events can have
reached Ropo One without their result being recorded by the caller: that bounds what a
crash (SIGKILL) can make a rerun send twice, however far recording lags behind sending.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from batch.backoff import Backoff, doubling, jittered
from batch.clock import SYSTEM_CLOCK, Clock
from batch.config.api import DeliverySettings
from batch.delivery.ropo import SendKind, SendResult

log = logging.getLogger(__name__)


class State(str, Enum):
    ACCEPTED = "accepted"  # 2xx: final
    REJECTED = "rejected"  # permanent 4xx: final
    FAILED = "failed"      # transient errors outlasted the attempt budget or the deadline
    PENDING = "pending"    # not finished because delivery stopped (stop event, auth failure)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to send. ``key`` is opaque here (the journal's row id)."""

    key: Any
    usageplacecode: str | None
    body: bytes | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    attempts: int           # POSTs made for this event in this run
    status: int | None      # last HTTP status, None if there was no answer
    message: str = ""
    title: str | None = None   # the last answer's problem title and detail (a rejection's)
    detail: str | None = None


@dataclass
class DeliveryReport:
    counts: dict[State, int] = field(default_factory=lambda: {s: 0 for s in State})
    elapsed: float = 0.0
    stopped: bool = False         # the stop event ended the run early
    deadline_hit: bool = False
    auth_error: str | None = None  # credentials refused: everything left is pending

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Sender(Protocol):
    def send_event(self, event: bytes | Mapping[str, Any]) -> SendResult: ...


OnResult = Callable[[Outgoing, Outcome], None]
OnBatchDone = Callable[[], None]


def backoff_delay(attempt: int, settings: DeliverySettings,
                  retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    delay = jittered(doubling(attempt, settings.backoff_base, settings.backoff_cap), settings.backoff_jitter, rng)
    return max(delay, retry_after or 0.0)


class CircuitBreaker:
    """Is Ropo One reachable at all? Shared by the runs of one feed; thread-safe.

    Closed: events go as usual. Opens when ``threshold`` different events in a row met a
    transient error with no other answer in between. Open: nothing goes but one probe at a
    time, ``probe_initial`` seconds after opening, the wait doubling up to ``probe_max``.
    Any answer that is not transient closes it.
    """

    def __init__(self, settings: DeliverySettings | None = None) -> None:
        self._lock = threading.Lock()
        self._streak: set[int] = set()  # ids of the tasks that failed in a row
        self.open_since: float | None = None  # time.time() when it opened; None: closed
        self.reason = ""                # the last error that kept it open
        self._opened = 0.0              # time.monotonic() when it opened
        self._next_probe = 0.0
        self._probe_wait = 0.0
        self._waits = Backoff(1.0, 1.0)  # the waits between probes; configure() sets them
        self._probing = False
        # One-shot runs (`run --once`, `process`, `retry`) must end: they give up once a probe
        # fails after the waits between probes have reached probe_max (the service holds on).
        self.give_up_at_probe_max = False
        self.exhausted = False
        self.configure(settings or DeliverySettings())

    def configure(self, settings: DeliverySettings) -> None:
        self.threshold = settings.breaker_threshold
        self.probe_initial = settings.breaker_probe_initial
        self.probe_max = settings.breaker_probe_max
        self._waits.first, self._waits.longest = self.probe_initial, self.probe_max

    @property
    def is_open(self) -> bool:
        return self.open_since is not None

    def admit(self, now: float) -> bool | float:
        """May a send go now? False: yes; True: yes, as the probe; a float: wait that long."""
        if self.open_since is None:  # unlocked read: the hot path stays cheap
            return False
        with self._lock:
            if self.open_since is None:
                return False
            if self._probing:
                return max(0.05, self._probe_wait)
            if now < self._next_probe:
                return self._next_probe - now
            self._probing = True
            return True

    def cancel_probe(self) -> None:
        with self._lock:
            self._probing = False

    def failed(self, task: object, message: str, now: float, probe: bool) -> bool:
        """A transient failure; True when it belongs to the outage (charge no event for it)."""
        with self._lock:
            if probe:
                self._probing = False
            if self.open_since is not None:
                if probe:
                    self.reason = message
                    self.exhausted = self.give_up_at_probe_max and self._probe_wait >= self.probe_max
                    self._probe_wait = self._waits.next()
                    self._next_probe = now + self._probe_wait
                    log.info("Ropo One is still unreachable (%s); next probe in %.0f s",
                             message, self._probe_wait)
                return True
            if self.threshold is None:
                return False
            self._streak.add(id(task))
            if len(self._streak) < self.threshold:
                return False
            self._streak.clear()
            self.open_since, self._opened, self.reason = time.time(), now, message
            self._waits.reset()
            self._probe_wait = self._waits.next()
            self._next_probe = now + self._probe_wait
        log.warning("Ropo One is unreachable (%d events in a row: %s); delivery holds every "
                    "event and probes, the first time in %.0f s", self.threshold, message,
                    self.probe_initial)
        return True

    def answered(self, now: float, probe: bool) -> bool:
        """Ropo One answered (not transiently): close. True if it was open."""
        if not probe and self.open_since is None and not self._streak:
            return False  # the hot path: nothing to change
        with self._lock:
            if probe:
                self._probing = False
            self._streak.clear()
            if self.open_since is None:
                return False
            held = now - self._opened
            self.open_since = None
            self._probing = False
            self.exhausted = False
        log.info("Ropo One answers again; delivery resumes after holding %.1f s", held)
        return True


class TokenBucket:
    """A thread-safe token bucket: ``rate`` per second, up to ``burst`` at once.
    ``clock``: what it measures and waits with (tests pass one they move on by hand)."""

    def __init__(self, rate: float, burst: int = 1, clock: Clock = SYSTEM_CLOCK) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Take one token, waiting as needed. False if ``stop`` was set while waiting."""
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0  # a reservation: later callers queue behind this one
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait <= 0:
            return True
        if stop is None:
            self._clock.sleep(wait)
            return True
        return not self._clock.wait(stop, wait)


@dataclass(eq=False)
class _Task:
    item: Outgoing
    place: Hashable
    attempts: int = 0
    status: int | None = None
    message: str = ""
    title: str | None = None
    detail: str | None = None
    holds_slot: bool = False  # sent, final, and not yet reported: still counts as in flight
    free: int = 0             # attempts the outage took, not charged to max_attempts
    probe: bool = False       # the attempt in flight is the breaker's probe

    @property
    def charged(self) -> int:
        return self.attempts - self.free

    def outcome(self, state: State, message: str | None = None) -> Outcome:
        return Outcome(state, self.attempts, self.status,
                       self.message if message is None else message, self.title, self.detail)

    def cut_short(self, state: State, reason: str) -> Outcome:
        """The outcome of a task the run ended before it was final."""
        if self.attempts == 0:
            return self.outcome(state, f"not sent: {reason}")
        return self.outcome(state, f"{reason} after {self.attempts} attempt(s); "
                                   f"last: {self.message}")


_END = object()
STOP_POLL = 0.1  # seconds: how soon the caller notices a set stop event


class _Run:
    """The scheduler of one deliver() call. All fields are guarded by ``lock``."""

    def __init__(self, client: Sender, settings: DeliverySettings, stop: threading.Event,
                 deadline: float | None, window: int, breaker: CircuitBreaker,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.client = client
        self.settings = settings
        self.breaker = breaker
        self.held_since: float | None = None  # the breaker is open: the deadline is paused
        self.stop = stop
        self.deadline = deadline
        self.window = window
        self.limiter = (TokenBucket(settings.rate_limit, settings.rate_burst, clock)
                        if settings.rate_limit else None)
        self.rng = random.Random()
        self.lock = threading.Lock()
        self.work_cv = threading.Condition(self.lock)  # workers wait here for a ready place
        self.main_cv = threading.Condition(self.lock)  # the caller waits here for news
        self.queues: dict[Hashable, deque[_Task]] = {}
        self.ready: deque[Hashable] = deque()  # places whose head task may be sent now
        self.delayed: list[tuple[float, int, Hashable]] = []  # (due, seq, place) retries
        self.seq = itertools.count()
        self.done: list[tuple[_Task, Outcome]] = []
        self.in_flight = 0
        self.unreported = 0      # sent tasks that are final but not yet reported (hold a slot)
        self.buffered = 0        # tasks read from input and not yet reported
        self.hold_until = 0.0    # after a 429 with Retry-After nobody sends before this
        self.slots = settings.max_in_flight
        self.closing = False
        self.halt: State | None = None  # set when the run ends early: what the rest become
        self.halt_reason = ""
        self.auth_error: str | None = None
        self.deadline_hit = False

    # ---- caller side (all under lock unless noted) ----------------------------------

    def add(self, item: Outgoing) -> None:
        place: Hashable = item.usageplacecode or ("no place", next(self.seq))
        task = _Task(item, place)
        self.buffered += 1
        if self.halt is not None:
            self.done.append((task, task.cut_short(self.halt, self.halt_reason)))
            return
        queue = self.queues.get(place)
        if queue is None:
            self.queues[place] = deque((task,))
            self.ready.append(place)
            self.work_cv.notify()
        else:
            queue.append(task)

    def promote_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, place = heapq.heappop(self.delayed)
            self.ready.append(place)
            self.work_cv.notify()

    def halt_now(self, state: State, reason: str) -> None:
        """End the run early: every task not in flight becomes ``state``."""
        if self.halt is None:
            self.halt, self.halt_reason = state, reason
        # A queued place is either ready, waiting for a retry, or has its head in flight;
        # an in-flight head is finished (and its place dropped) by its worker.
        waiting = set(self.ready).union(place for _, _, place in self.delayed)
        self.ready.clear()
        self.delayed.clear()
        for place in waiting:
            self._drop_place(place, self.halt, self.halt_reason)

    def wait_timeout(self, now: float) -> float | None:
        due = [self.delayed[0][0]] if self.delayed else []
        if self.deadline is not None and self.halt is None:
            due.append(self.deadline)
        return max(0.0, min(due) - now) if due else None

    # ---- worker side -------------------------------------------------------------------

    def take(self) -> _Task | None:
        with self.lock:
            while True:
                if self.closing and (not self.ready or self.halt is not None):
                    return None
                if self.ready and self.in_flight + self.unreported < self.slots:
                    now = time.monotonic()
                    pause = self.hold_until - now
                    if pause <= 0:
                        gate = self.breaker.admit(now)
                        if gate is not True and gate is not False:
                            self.work_cv.wait(gate)  # held for an outage: wait for the probe
                            continue
                        place = self.ready.popleft()
                        task = self.queues[place][0]
                        task.attempts += 1
                        task.probe = gate
                        self.in_flight += 1
                        return task
                    self.work_cv.wait(pause)
                else:
                    self.work_cv.wait()

    def reported(self, tasks: list[_Task]) -> None:
        """The caller has reported (recorded) these outcomes: free the slots they held."""
        freed = 0
        for task in tasks:
            if task.holds_slot:
                task.holds_slot = False
                freed += 1
        if freed:
            with self.lock:
                self.unreported -= freed
                self.work_cv.notify(freed)

    def finish(self, task: _Task, result: SendResult | None) -> None:
        """Record the result of one attempt (None: not sent because of the stop event)."""
        with self.lock:
            self.in_flight -= 1
            probe, task.probe = task.probe, False
            if result is None:
                if probe:
                    self.breaker.cancel_probe()
                task.attempts -= 1
                if self.halt is None:
                    self.halt_now(State.PENDING, "delivery stopped")
                halt = self.halt
                assert halt is not None  # halt_now set it
                self._final(task, halt, task.cut_short(halt, self.halt_reason).message)
            else:
                task.status, task.message = result.status, result.message
                task.title, task.detail = result.title, result.detail
                reported_before = len(self.done)
                self._settle(task, result, probe)
                if any(done is task for done, _ in self.done[reported_before:]):
                    task.holds_slot = True  # sent and final: in flight until reported
                    self.unreported += 1
            self.main_cv.notify()

    def _settle(self, task: _Task, result: SendResult, probe: bool) -> None:
        now = time.monotonic()
        if result.kind is not SendKind.TRANSIENT:
            if self.breaker.answered(now, probe):
                self.work_cv.notify_all()
        elif self.breaker.failed(task, result.message, now, probe) and self.halt is None:
            if self.breaker.exhausted:  # a one-shot run ends: the next run resumes the file
                self.auth_error = (f"Ropo One is unreachable ({result.message}); gave up after holding "
                                   f"{time.time() - (self.breaker.open_since or time.time()):.0f} s")
                self.halt_now(State.PENDING, self.auth_error)
                self._final(task, State.PENDING)
                return
            task.free += 1  # the outage's, not the event's: back in line for after the hold
            self.ready.append(task.place)
            self.work_cv.notify()
            return
        if result.kind is SendKind.ACCEPTED:
            self._final(task, State.ACCEPTED, "")
        elif result.kind is SendKind.REJECTED:
            self._final(task, State.REJECTED)
        elif result.kind is SendKind.AUTH:
            self.auth_error = result.message
            self.halt_now(State.PENDING, result.message)
            self._final(task, State.PENDING)
        elif self.halt is not None:
            self._final(task, self.halt, task.cut_short(self.halt, self.halt_reason).message)
        else:
            self._retry_or_fail(task, result)

    def _retry_or_fail(self, task: _Task, result: SendResult) -> None:
        now = time.monotonic()
        if task.charged >= self.settings.max_attempts:
            self._fail_place(task, f"gave up after {task.attempts} attempts: {result.message}")
            return
        delay = backoff_delay(task.charged, self.settings, result.retry_after, self.rng)
        if self.deadline is not None and now + delay >= self.deadline:
            self._fail_place(task, f"file deadline reached after {task.attempts} attempts: "
                                   f"{result.message}")
            return
        if result.status == 429 and result.retry_after:
            self.hold_until = max(self.hold_until, now + result.retry_after)
        log.debug("event %s: %s, retry %d in %.2f s", task.item.key, result.message,
                  task.attempts + 1, delay)
        heapq.heappush(self.delayed, (now + delay, next(self.seq), task.place))

    def _fail_place(self, task: _Task, message: str) -> None:
        """The head failed: it and the rest of its place (which must not overtake) fail."""
        queue = self.queues.pop(task.place)
        queue.popleft()  # the head is ``task``
        self.done.append((task, task.outcome(State.FAILED, message)))
        held = f"an earlier event of usage place {task.item.usageplacecode} failed"
        for rest in queue:
            self.done.append((rest, rest.cut_short(State.FAILED, held)))

    def _final(self, task: _Task, state: State, message: str | None = None) -> None:
        """Report the head task of its place and let the next one of the place go."""
        queue = self.queues[task.place]
        queue.popleft()
        self.done.append((task, task.outcome(state, message)))
        if not queue:
            del self.queues[task.place]
        elif self.halt is None:
            self.ready.append(task.place)
            self.work_cv.notify()
        else:
            self._drop_place(task.place, self.halt, self.halt_reason)

    def _drop_place(self, place: Hashable, state: State, reason: str) -> None:
        for task in self.queues.pop(place, ()):
            self.done.append((task, task.cut_short(state, reason)))


def _worker(run: _Run) -> None:
    while True:
        task = run.take()
        if task is None:
            return
        try:
            if run.limiter is not None and not run.limiter.acquire(run.stop):
                run.finish(task, None)
                continue
            if run.halt is not None or run.stop.is_set():  # unlocked read of a flag
                run.finish(task, None)
                continue
            result = run.client.send_event(task.item.body)
        except Exception as exc:  # a bug in a sender must not lose the item
            log.exception("sending event %s failed unexpectedly", task.item.key)
            result = SendResult(SendKind.TRANSIENT, None, f"internal error: {type(exc).__name__}")
        run.finish(task, result)


def deliver(
    items: Iterable[Outgoing],
    client: Sender,
    settings: DeliverySettings,
    on_result: OnResult,
    *,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    window: int | None = None,
    on_batch_done: OnBatchDone | None = None,
    breaker: CircuitBreaker | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> DeliveryReport:
    """Send every item and call ``on_result(item, outcome)`` exactly once per item.

    ``on_result`` runs in the calling thread. ``stop``: when set, no new attempt starts,
    in-flight ones finish, and every unfinished item (including unread input) is
    reported ``pending``. ``deadline``: a ``time.monotonic()`` instant; default
    now + ``settings.deadline_seconds``; after it, unfinished items are ``failed``.
    ``window``: how many items are read ahead of the ones finished (default
    max(1000, 100 * max_in_flight)). ``on_batch_done``: called (in the calling thread)
    after each batch of ``on_result`` calls, e.g. to record the batch in one transaction;
    an event's slot is freed only after it returns (see the module's note on in flight).
    ``breaker``: the feed's :class:`CircuitBreaker` (configured from ``settings`` here);
    default: one for this run only. ``clock``: what the rate limit measures and waits with.
    If ``on_result`` or ``on_batch_done`` raises, delivery stops, in-flight requests
    finish unreported, and the exception propagates (those events may be sent again by a
    later run: at-least-once).
    """
    started = time.monotonic()
    if deadline is None and settings.deadline_seconds is not None:
        deadline = started + settings.deadline_seconds
    stop = stop or threading.Event()
    if breaker is None:
        breaker = CircuitBreaker(settings)
    else:
        breaker.configure(settings)
    run = _Run(client, settings, stop, deadline,
               window or max(1000, 100 * settings.max_in_flight), breaker, clock)
    report = DeliveryReport()
    workers = [threading.Thread(target=_worker, args=(run,), daemon=True,
                                name=f"deliver-{i}") for i in range(settings.max_in_flight)]
    for thread in workers:
        thread.start()
    try:
        _dispatch(run, iter(items), on_result, on_batch_done, report)
    finally:
        with run.lock:
            run.closing = True
            if run.halt is None and run.queues:  # only after an exception in on_result
                run.halt_now(State.PENDING, "delivery aborted")
            run.work_cv.notify_all()
        for thread in workers:
            thread.join()
    report.elapsed = time.monotonic() - started
    # a stop may read clear again by now (the service's LeaseStop, once the lease is renewed): the
    # events it left pending say that it stopped the run all the same
    report.stopped = stop.is_set() or report.counts[State.PENDING] > 0
    report.deadline_hit = run.deadline_hit
    report.auth_error = run.auth_error
    return report


def _dispatch(run: _Run, items: Iterator[Outgoing], on_result: OnResult,
              on_batch_done: OnBatchDone | None, report: DeliveryReport) -> None:
    exhausted = False
    while True:
        exhausted = _feed(run, items, exhausted)
        with run.lock:
            now = time.monotonic()
            _check_halt(run, now)
            run.promote_due(now)
            if not run.done:
                if exhausted and run.buffered == 0:
                    return
                if not exhausted and (run.buffered < run.window or run.halt is not None):
                    continue  # read more input
                timeout = run.wait_timeout(now)
                # Poll the stop event too: it has no way to wake this condition.
                run.main_cv.wait(STOP_POLL if timeout is None else min(timeout, STOP_POLL))
            finished, run.done = run.done, []
            run.buffered -= len(finished)
        for task, outcome in finished:
            report.counts[outcome.state] += 1
            on_result(task.item, outcome)
        if on_batch_done is not None:
            on_batch_done()
        run.reported([task for task, _ in finished])


def _feed(run: _Run, items: Iterator[Outgoing], exhausted: bool) -> bool:
    """Read input while the window has room; True when the input is used up."""
    if exhausted:
        return True
    while True:
        with run.lock:
            if run.buffered >= run.window and run.halt is None:
                return False
        item = next(items, _END)
        if item is _END:
            return True
        with run.lock:
            run.add(item)  # type: ignore[arg-type]  # not _END: checked above
            if run.done and run.halt is None:
                return False  # report as we go


def _check_halt(run: _Run, now: float) -> None:
    if run.halt is not None:
        return
    if run.stop.is_set():
        run.halt_now(State.PENDING, "delivery stopped")
        return
    if run.breaker.is_open:  # holding for an outage does not run down the file's deadline
        if run.held_since is None:
            run.held_since = now
        return
    if run.held_since is not None:
        if run.deadline is not None:
            run.deadline += now - run.held_since
        run.held_since = None
    if run.deadline is not None and now >= run.deadline:
        run.deadline_hit = True
        run.halt_now(State.FAILED, "the file deadline was reached")
