"""One file end to end through Processor.process (what `process` and the service call), against
the sandbox on loopback: token expiry, 401, 429, 5xx bursts, dropped connections, timeouts,
permanent rejections, per-usage-place ordering, file-level faults, stop and resume.

The shared helpers (a workspace with a service.yaml and a simple CSV mapping, feed files,
receipts) live in tests/fixtures_pipeline.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.pipeline import FileOutcome, Progress
from batch.sandbox.server import DROP, DROP_AFTER, SLOW, Faults, Sandbox
from batch.service.runtime import Runtime
from tests.fixtures_pipeline import (
    FEED,
    SIMPLE_MAPPING,
    Workspace,
    assert_all_accepted,
    by_place,
    dedupe_consecutive,
    journal_events,
    make_rows,
    read_receipt,
    write_feed,
)

# --------------------------------------------------------------------------- the happy path


def test_every_record_accepted_and_journal_receipt_sandbox_agree(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome], contract_check: Any) -> None:
    sandbox = make_sandbox()
    ws = workspace_for(sandbox)
    rows = make_rows(200, 40)
    path = write_feed(ws.inbox / "night.csv", rows)
    outcome = process_file(ws, path)
    assert_all_accepted(ws, outcome, sandbox, rows, "night.csv")
    assert sorted(sandbox.accepted_ids) == sorted(r["id"] for r in rows)
    assert sandbox.duplicates == {}
    assert len(sandbox.arrivals) == 200
    assert sandbox.tokens_issued == 1
    assert contract_check.checked == 201  # one token request, 200 events
    # the event sent is the mapped one
    sent = {event["id"]: event for event in sandbox.accepted}
    assert sent["E000007"] == {
        "id": "E000007", "usageplacecode": "643007572000000007", "customernumber": "C7",
        "time": "2024-01-08 10:07:00", "status": "connected", "description": "event 7",
    }


# --------------------------------------------------------------------------- tokens


def test_token_expiring_mid_file_is_renewed_after_a_401(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # No exp claim: the client cannot foresee the expiry and must react to the 401. The
    # sandbox expires every token at these arrivals (no sleeping: it holds on a busy machine).
    sandbox = make_sandbox(token_exp_claim=False, faults=Faults(revoke_at_arrivals=[40, 150, 260]))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 4}, api={"token_renew_margin": 0})
    rows = make_rows(300, 60)
    outcome = process_file(ws, write_feed(ws.inbox / "long.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "long.csv")
    refused = [a for a in sandbox.arrivals if a.status == 401]
    assert refused, "the token never expired during the file"
    assert sandbox.tokens_issued >= 4  # the first, and one after each expiry
    # one renewal per expiry, not one per refused request: concurrent 401s share it
    assert sandbox.tokens_issued <= len(refused) + 1
    assert sandbox.duplicates == {}
    assert len(sandbox.accepted_ids) == 300


def test_token_with_exp_claim_is_renewed_before_it_expires(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox(token_ttl=0.6, faults=Faults(latency_ms=5))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 4}, api={"token_renew_margin": 0.3})
    rows = make_rows(300, 60)
    outcome = process_file(ws, write_feed(ws.inbox / "long.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "long.csv")
    assert sandbox.tokens_issued >= 2


def test_a_single_401_renews_the_token_once_and_the_event_is_accepted(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox(faults=Faults(script=["ok"] * 10 + [401]))
    ws = workspace_for(sandbox)
    rows = make_rows(40, 40)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    assert [a.status for a in sandbox.arrivals].count(401) == 1
    assert sandbox.tokens_issued == 2
    assert len(sandbox.arrivals) == 41 and sandbox.duplicates == {}


def test_refused_credentials_stop_the_file_and_a_rerun_continues(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # the token endpoint refuses (400) after the tenth event: everything left stays pending
    sandbox = make_sandbox(faults=Faults(script=["ok"] * 10 + [401], token_script=["ok", 400]))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 1})
    rows = make_rows(30, 30)
    path = write_feed(ws.inbox / "a.csv", rows)
    outcome = process_file(ws, path)
    assert outcome.status == "auth_failed"
    assert outcome.receipt is None
    assert outcome.counts["accepted"] == 10 and outcome.counts["pending"] == 20
    # fixed: the same content resumes where it stopped and sends only the rest
    outcome = process_file(ws, path)
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    assert sandbox.duplicates == {}


# --------------------------------------------------------------------------- transient faults


def test_429_with_retry_after_holds_every_sender_then_succeeds(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox(faults=Faults(script=["ok"] * 20 + [429], retry_after="1"))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 4})
    rows = make_rows(60, 60)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    arrivals = sandbox.arrivals
    limited = [a for a in arrivals if a.status == 429]
    assert len(limited) == 1
    answered = limited[0].finished
    again = [a for a in arrivals if a.id == limited[0].id and a.seq > limited[0].seq]
    assert [a.status for a in again] == [200]
    assert again[0].started >= answered + 0.95
    # nobody started a request while the Retry-After was running (only those already on their way)
    assert not [a for a in arrivals if answered + 0.5 < a.started < answered + 0.95]
    attempts = {e.event_id: e.attempts for e in journal_events(ws)}
    assert attempts[limited[0].id] == 2


def test_5xx_bursts_are_retried_until_accepted(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    script: list[int | str] = [503] * 12 + ["ok"] * 40 + [500] * 6 + ["ok"] * 20 + [502, 504] * 3
    sandbox = make_sandbox(faults=Faults(script=script))
    ws = workspace_for(sandbox, delivery={"max_attempts": 12})
    rows = make_rows(150, 50)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    receipt = assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    errors = [a for a in sandbox.arrivals if a.status is not None and a.status >= 500]
    assert len(errors) == 24
    assert sandbox.duplicates == {}
    events = journal_events(ws)
    assert sum(e.attempts for e in events) == 150 + 24
    assert {e.http_status for e in events} == {200} and {r["message"] for r in receipt} == {""}


def test_dropped_connections_are_retried(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # DROP: hung up before keeping the event; DROP_AFTER: kept, but the answer was lost
    script = ["ok"] * 5 + [DROP] * 3 + ["ok"] * 10 + [DROP_AFTER] * 2 + ["ok", DROP]
    sandbox = make_sandbox(faults=Faults(script=script))
    ws = workspace_for(sandbox)
    rows = make_rows(80, 20)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    assert [a.status for a in sandbox.arrivals].count(None) == 6
    # the lost answers are the one unavoidable repeat (no idempotency key): exactly those two
    assert sum(sandbox.duplicates.values()) == 2
    assert len(sandbox.accepted_ids) == 80


def test_read_timeouts_are_retried(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox(faults=Faults(script=["ok"] * 3 + [SLOW, SLOW], slow_ms=1500))
    ws = workspace_for(sandbox, api={"read_timeout": 0.3}, delivery={"max_in_flight": 4})
    rows = make_rows(30, 30)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    retried = [e for e in journal_events(ws) if e.attempts > 1]
    assert len(retried) == 2 and all(e.attempts == 2 for e in retried)


def test_transient_errors_outlasting_the_budget_fail_the_event_and_its_later_place_events(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # one usage place: its POSTs go one after another; the 3rd and 4th are the 3rd event's two
    sandbox = make_sandbox(faults=Faults(script=["ok", "ok", 503, 503]))
    ws = workspace_for(sandbox, delivery={"max_attempts": 2})
    rows = make_rows(6, 1)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert outcome.status == "done" and not outcome.all_accepted
    assert outcome.counts["failed"] == 4 and outcome.counts["accepted"] == 2
    receipt = read_receipt(ws.receipt("a.csv"))
    assert [r["outcome"] for r in receipt] == ["accepted"] * 2 + ["failed"] * 4
    assert receipt[2]["http_status"] == "503"
    assert "gave up after 2 attempts" in receipt[2]["message"]
    for later in receipt[3:]:  # they must not overtake the failed one: not sent at all
        assert "earlier event of usage place" in later["message"]
    assert [a.id for a in sandbox.arrivals] == [r["id"] for r in rows[:3]] + [rows[2]["id"]]


def test_the_configured_retry_statuses_are_the_transient_ones(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    # 409 retried because the configuration says so; 429 is then a permanent refusal
    sandbox = make_sandbox(faults=Faults(script=[409, 429]))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 1, "retry_statuses": [409, 503]})
    rows = make_rows(3, 3)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    receipt = read_receipt(ws.receipt("a.csv"))
    assert [(r["outcome"], r["http_status"]) for r in receipt] == [
        ("accepted", "200"), ("rejected", "429"), ("accepted", "200")]
    assert outcome.counts["rejected"] == 1
    assert [a.status for a in sandbox.arrivals] == [409, 429, 200, 200]


# --------------------------------------------------------------------------- permanent rejections


def test_permanent_4xx_is_rejected_with_the_problem_title_and_detail(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    rows = make_rows(20, 5)
    rejected_id = rows[3]["id"]
    sandbox = make_sandbox(faults=Faults(
        reject_ids=[rejected_id], reject_status=422, reject_title="Unknown usage place",
        reject_detail="Usage place 643007572000000003 is not in Ropo One"))
    ws = workspace_for(sandbox)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert outcome.status == "done" and not outcome.all_accepted
    assert outcome.counts["rejected"] == 1 and outcome.counts["accepted"] == 19
    message = "HTTP 422: Unknown usage place: Usage place 643007572000000003 is not in Ropo One"
    receipt = {r["event_id"]: r for r in read_receipt(ws.receipt("a.csv"))}
    assert receipt[rejected_id]["outcome"] == "rejected"
    assert receipt[rejected_id]["http_status"] == "422"
    assert receipt[rejected_id]["message"] == message
    journaled = {e.event_id: e for e in journal_events(ws)}[rejected_id]
    assert (journaled.state, journaled.http_status, journaled.message, journaled.attempts) == (
        "rejected", 422, message, 1)
    # a rejection is final: the place's later events were sent, and nothing was retried
    assert [a.id for a in sandbox.arrivals].count(rejected_id) == 1
    assert rows[8]["id"] in sandbox.accepted_ids  # same place (3), later in the file
    assert ws.summary("a.csv")["counts"]["rejected"] == 1


def test_a_rejection_without_a_problem_body_keeps_the_start_of_the_text(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    rows = make_rows(5, 5)
    sandbox = make_sandbox(faults=Faults(reject_ids=[rows[0]["id"]], reject_status=409,
                                         reject_raw_body="conflict:\n  event\tseen before"))
    ws = workspace_for(sandbox)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    row = read_receipt(ws.receipt("a.csv"))[0]
    assert outcome.counts["rejected"] == 1
    assert (row["outcome"], row["http_status"]) == ("rejected", "409")
    assert row["message"] == "HTTP 409 Conflict: conflict: event seen before"


# --------------------------------------------------------------------------- ordering


def test_events_of_a_place_arrive_one_at_a_time_in_file_order_under_concurrency(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox(faults=Faults(latency_ms=0.5, latency_jitter_ms=4, error_rate=0.1))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 8, "max_attempts": 30})
    rows = make_rows(360, 30, shuffle_seed=7)  # places interleaved at random, 12 events each
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", rows))
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    arrivals = sandbox.arrivals
    file_order: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        file_order[row["place"]].append(row["id"])
    places = by_place(arrivals)
    assert set(places) == set(file_order)
    for place, sent in places.items():
        # never two requests of one place at once ...
        for before, after in itertools.pairwise(sent):
            assert before.finished <= after.started, (place, before, after)
        # ... and in file order, retries included (a retry repeats the head, never skips it)
        assert dedupe_consecutive([a.id for a in sent]) == file_order[place]
        assert [a.id for a in sent if a.status == 200] == file_order[place]
    # the test means something only if requests did overlap
    events = sorted([(a.started, 1) for a in arrivals] + [(a.finished, -1) for a in arrivals])
    assert max(itertools.accumulate(step for _, step in events)) > 1
    assert [a.status for a in arrivals].count(503) > 0


# --------------------------------------------------------------------------- file-level faults


def test_a_fault_half_way_through_the_file_sends_nothing(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        runtimes: list[Runtime]) -> None:
    sandbox = make_sandbox()
    ws = workspace_for(sandbox)
    path = write_feed(ws.inbox / "bad.csv", make_rows(200, 20))
    with open(path, "ab") as stream:  # not UTF-8, after ten chunks of good records
        stream.write("E999999,P,C,2024-01-01 10:00:00,K,K\u00e4ytt\u00f6paikka\r\n".encode("cp1252"))
    runtime = ws.runtime()
    runtimes.append(runtime)
    runtime.processor.journal_batch = 20
    recorded: list[int] = []
    ws.outbox.mkdir()
    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox,
                                        progress=Progress(on_recorded=recorded.append))
    assert outcome.status == "error"
    assert recorded and recorded[-1] >= 100  # it did get half-way
    assert sandbox.arrivals == [] and sandbox.tokens_issued == 0
    rows = read_receipt(ws.receipt("bad.csv"))
    assert len(rows) == 1 and rows[0]["outcome"] == "file_error"
    assert "\n" not in rows[0]["message"] and rows[0]["message"]
    assert outcome.file is not None and outcome.file.state == "error"


# --------------------------------------------------------------------------- stop and resume


def _feed_of_300(make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
                 runtimes: list[Runtime]) -> tuple[Sandbox, Workspace, list[dict[str, str]], Path, Runtime]:
    """A 300-record file (50 usage places) to deliver 4 at a time, 2 ms an answer: long enough
    to stop half-way. (sandbox, workspace, rows, the file, the runtime)"""
    sandbox = make_sandbox(faults=Faults(latency_ms=2))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 4})
    rows = make_rows(300, 50)
    path = write_feed(ws.inbox / "a.csv", rows)
    ws.outbox.mkdir()
    runtime = ws.runtime()
    runtimes.append(runtime)
    return sandbox, ws, rows, path, runtime


def test_a_stopped_file_is_interrupted_and_resumed_without_resending(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        runtimes: list[Runtime]) -> None:
    sandbox, ws, rows, path, runtime = _feed_of_300(make_sandbox, workspace_for, runtimes)
    seen = itertools.count(1)

    def on_result(_: Any) -> None:
        if next(seen) == 50:
            runtime.stop.set()

    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox,
                                        progress=Progress(on_result=on_result))
    assert outcome.status == "interrupted" and outcome.receipt is None
    assert 50 <= outcome.counts["accepted"] < 300
    assert outcome.counts["pending"] == 300 - outcome.counts["accepted"]
    sent_before = len(sandbox.arrivals)
    runtime.stop.clear()
    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox)
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    # a graceful stop finishes the requests in flight and journals them: nothing is sent twice
    assert sandbox.duplicates == {}
    assert len(sandbox.arrivals) == 300 and sent_before < 300


def test_a_stop_that_is_clear_again_when_delivery_ends_still_leaves_the_file_interrupted(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        runtimes: list[Runtime]) -> None:
    """The service's stop is also set while the feed's lease is not known to be valid (LeaseStop):
    a heartbeat late for a moment halts the delivery, and the stop reads clear again once the
    lease is renewed. The file must end interrupted (resumed later), not 'done' with pending
    events (the journal refused that: JournalMisuse, seen in the chaos test)."""

    class Blink(threading.Event):
        """Reads set once, when armed; clear before and after."""

        armed = False

        def is_set(self) -> bool:
            if self.armed:
                self.armed = False
                return True
            return False

    sandbox, ws, rows, path, runtime = _feed_of_300(make_sandbox, workspace_for, runtimes)
    blink = Blink()
    runtime.processor.stop = blink
    seen = itertools.count(1)

    def on_result(_: Any) -> None:
        if next(seen) == 50:
            blink.armed = True

    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox,
                                        progress=Progress(on_result=on_result))
    assert outcome.status == "interrupted" and outcome.receipt is None, outcome.message
    assert outcome.counts["pending"] == 300 - outcome.counts["accepted"] > 0
    assert outcome.delivery is not None and outcome.delivery.stopped  # the delivery report says so too
    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox)
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    assert sandbox.duplicates == {}


# --------------------------------------------------------------------------- sent but not journaled


def test_at_most_max_in_flight_events_are_sent_without_their_result_being_journaled(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        runtimes: list[Runtime]) -> None:
    """What a SIGKILL can make a rerun send twice is bounded by max_in_flight, even when the
    journal is slower than Ropo One: senders wait for results to be journaled."""
    sandbox = make_sandbox(faults=Faults(latency_ms=1))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 4})
    rows = make_rows(200, 50)
    path = write_feed(ws.inbox / "a.csv", rows)
    ws.outbox.mkdir()
    runtime = ws.runtime()
    runtimes.append(runtime)
    journal = runtime.journal
    record_results = journal.record_results
    committed = 0
    gaps: list[int] = []

    def slow_record_results(results: Any) -> int:
        nonlocal committed
        # every event that reached Ropo One is journaled, or one of the 4 in flight
        gaps.append(sum(1 for a in sandbox.arrivals if a.status == 200) - committed)
        time.sleep(0.01)  # a slow disk
        applied = record_results(results)
        committed += applied
        return applied

    journal.record_results = slow_record_results  # type: ignore[method-assign]  # a slow disk
    outcome = runtime.processor.process(path, runtime.feeds[FEED], ws.outbox)
    assert_all_accepted(ws, outcome, sandbox, rows, "a.csv")
    assert committed == 200
    assert max(gaps) <= 4, gaps
    assert len(gaps) < 200  # results are journaled in batches


# --------------------------------------------------------------------------- F8: one mapping per file


class _Killed(BaseException):
    """Stands for a SIGKILL at that moment: whatever the journal committed stays."""


def _kill_after(count: int, what: str) -> Progress:
    def hit(done: Any) -> None:
        seen[0] = done if isinstance(done, int) else seen[0] + 1
        if seen[0] >= count:
            raise _Killed(what)

    seen = [0]
    return Progress(on_recorded=hit) if what == "recorded" else Progress(on_result=hit)


@pytest.mark.parametrize("killed", ["while journaling", "after sending"])
def test_F8_file_is_delivered_under_one_mapping_when_the_mapping_changes(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        caplog: pytest.LogCaptureFixture, killed: str) -> None:
    sandbox = make_sandbox()
    ws = workspace_for(sandbox)
    rows = make_rows(600, 7)
    path = write_feed(ws.inbox / "f8.csv", rows)
    ws.outbox.mkdir()
    with ws.runtime() as runtime:
        feed = runtime.feeds[FEED]
        first_version = feed.mapping_version
        runtime.processor.journal_batch = 100
        progress = _kill_after(200, "recorded") if killed == "while journaling" else _kill_after(50, "result")
        with pytest.raises(_Killed):
            runtime.processor.process(path, feed, ws.outbox, progress=progress)
    mapping = ws.root / "mappings" / f"{FEED}.yaml"
    mapping.write_text(SIMPLE_MAPPING.replace("description: {column: description}",
                                              "description: {const: mapping-v2}"), encoding="utf-8")
    with ws.runtime() as runtime, caplog.at_level("INFO"):
        feed = runtime.feeds[FEED]
        assert feed.mapping_version != first_version
        outcome = runtime.processor.process(path, feed, ws.outbox, resumed=True)
    assert outcome.status == "done" and outcome.counts["accepted"] == 600
    descriptions = {event["description"] for event in sandbox.accepted}
    summary = ws.summary("f8.csv")
    if killed == "while journaling":  # nothing was sent: recorded anew, all with the new version
        assert descriptions == {"mapping-v2"}
        assert summary["mapping_version"] == feed.mapping_version
        assert summary["note"] == (f"The mapping changed (version {first_version} -> {feed.mapping_version}) "
                                   f"before any event was sent; the file was recorded over with version "
                                   f"{feed.mapping_version}.")
        assert (f"f8.csv: recorded with mapping version {first_version}, now {feed.mapping_version}, and "
                f"nothing was sent yet: recording the file over with {feed.mapping_version}") in caplog.text
    else:  # events went out: every one as recorded with the first version, never a mix
        assert "mapping-v2" not in descriptions and len(descriptions) == 600
        assert summary["mapping_version"] == first_version
        assert summary["note"].endswith(f"every event went out as recorded with version {first_version}.")
        assert "events were sent already: delivering the rest as recorded with" in caplog.text
    assert sorted(sandbox.accepted_ids) == sorted(r["id"] for r in rows)
