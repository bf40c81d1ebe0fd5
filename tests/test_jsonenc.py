"""One JSON encoder for events (issue 9, point 4): the bytes the journal stores, the bytes sent to
Ropo One, the bytes a generated id hashes and those a repeated id's content is compared by all come
from `jsonenc.event_bytes`, and they are the bytes the standard-library encoding made before, so
journals and generated ids written by earlier versions keep matching."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from batch.config.api import ApiSettings, DeliverySettings
from batch.config.mapping import load_mapping_text
from batch.delivery.ropo import RopoClient, encode_event
from batch.pipeline import FeedRuntime, Processor
from batch.sandbox.server import RawRequest, Sandbox
from batch.store import journal as journal_module
from batch.store.journal import Journal, NewEvent, Result, canonical_json, same_content
from batch.transform.jsonenc import event_bytes
from batch.transform.mapping import content_id

# --------------------------------------------------------------------------- the old encoding


def old_canonical_json(payload: Mapping[str, Any]) -> str:
    """journal.canonical_json as it was before event_bytes (two json.dumps, then sha256)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def old_payload_digest(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def old_content_id(event: dict[str, Any]) -> str:
    body = {key: value for key, value in event.items() if key != "id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


# What an event (or a partial one, of an invalid record) can hold: text with any character a
# decoded file can give (control characters, non-BMP, U+2028), whole numbers of any size.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
INVOICE = st.dictionaries(st.sampled_from(["invoicenumber", "jobid", "x"]),
                          st.one_of(TEXT, st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70)))
EVENT = st.dictionaries(
    st.one_of(st.sampled_from(["id", "usageplacecode", "time", "status", "description", "invoices"]), TEXT),
    st.one_of(st.none(), st.booleans(), TEXT, st.integers(), st.lists(INVOICE, max_size=3)),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(EVENT)
def test_event_bytes_are_the_bytes_the_old_encoding_made(event: dict[str, Any]) -> None:
    assert canonical_json(event) == old_canonical_json(event)
    assert content_id(event) == old_content_id(event)
    assert encode_event(event) == old_canonical_json(event).encode("utf-8")


def test_event_bytes_escape_control_characters_and_keep_non_ascii_like_before() -> None:
    event = {"id": "E1", "description": "a\x00b\x1f\x7f\u2028 é 😀 \"\\/\t\n",
             "invoices": [{"jobid": 2**64, "invoicenumber": "1"}]}  # 2**64: beyond orjson
    assert event_bytes(event) == (
        '{"id":"E1","description":"a\\u0000b\\u001f\x7f\u2028 é 😀 \\"\\\\/\\t\\n",'
        '"invoices":[{"jobid":18446744073709551616,"invoicenumber":"1"}]}').encode("utf-8")
    assert event_bytes({"b": 1, "a": {"z": 1, "é": 2, "Z": 0}}, sorted_keys=True) == \
        '{"a":{"Z":0,"z":1,"é":2},"b":1}'.encode()


# --------------------------------------------------------------------------- one encoder, end to end

GENERATED_ID_MAPPING = """\
name: generated
format: csv
csv: {encoding: utf-8, delimiter: ";"}
fields:
  id: {generate: true, prefix: "G-"}
  usageplacecode: {column: place}
  time: {column: time, formats: ["%Y-%m-%d %H:%M:%S"]}
  status: {column: status}
  description: {column: text}
invoices:
  mode: columns
  invoicenumber: {column: invoice, split: ","}
  jobid: {column: job, split: ","}
"""


def test_journaled_bytes_are_the_sent_bytes_and_the_hashed_bytes(
        tmp_path: Path, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[bytes] = []

    def keep(raw: RawRequest) -> None:
        if raw.path.endswith("/usageplace/event"):
            bodies.append(raw.body)

    sandbox: Sandbox = make_sandbox()
    sandbox.request_hook = _both(sandbox.request_hook, keep)
    monkeypatch.setenv("H7_APICODE", sandbox.apicode)
    data = tmp_path / "in.csv"
    data.write_text("place;time;status;text;invoice;job\n"
                    "643007572000000001;2024-01-02 03:04:05;disconnected;Äänekoski \"quoted\" 😀;1001,1003;7,9\n"
                    "643007572000000002;2024-01-02 03:04:06;connected;tab\there;1002;8\n", encoding="utf-8")
    feed = FeedRuntime.build("generated", load_mapping_text(textwrap.dedent(GENERATED_ID_MAPPING)))
    settings_ = ApiSettings(base_url=sandbox.base_url, cid=sandbox.cid, apicode="${H7_APICODE}")
    with Journal(tmp_path / "journal.sqlite3") as journal, RopoClient(settings_) as client:
        outcome = Processor(journal, client, DeliverySettings()).process(data, feed, tmp_path)
        assert outcome.status == "done", outcome.message
        events = list(journal.file_events(outcome.file.id))
    assert [event.state for event in events] == ["accepted", "accepted"]
    journaled = sorted(event.payload_json.encode("utf-8") for event in events)
    assert sorted(bodies) == journaled  # what the journal holds is what went out, byte for byte
    for event in events:
        payload = event.payload
        assert payload is not None
        assert event.payload_json.encode("utf-8") == event_bytes(payload)
        without_id = {key: value for key, value in payload.items() if key != "id"}
        assert payload["id"] == "G-" + hashlib.sha256(event_bytes(without_id, sorted_keys=True)).hexdigest()[:32]
        assert payload["id"] == "G-" + old_content_id(payload)  # the same id earlier versions generated


def _both(first: Any, second: Any) -> Any:
    def hook(raw: RawRequest) -> None:
        if first is not None:
            first(raw)
        second(raw)
    return hook


def test_a_journal_written_with_the_old_encoding_still_recognises_the_same_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"id": "E1", "usageplacecode": "643007572000000001", "time": "2024-01-02 03:04:05",
               "status": "disconnected", "description": "Äänekoski \x01 😀",
               "invoices": [{"invoicenumber": "1001", "jobid": 7}]}
    path = tmp_path / "journal.sqlite3"
    with monkeypatch.context() as old:  # an earlier version recorded and delivered monday.csv
        old.setattr(journal_module, "canonical_json", old_canonical_json)
        with Journal(path) as journal:
            first = journal.begin_file("monday.csv", "a" * 64, 1, "feed").file.id
            journal.record_events(first, [NewEvent.valid(1, payload)])
            journal.record_results([Result(first, 1, "accepted", http_status=200)])
            journal.finish_file(first, "done")
    with Journal(path) as journal:  # this version, the same event again in another file
        second = journal.begin_file("tuesday.csv", "b" * 64, 1, "feed").file.id
        reordered = dict(reversed(list(payload.items())))  # key order does not change the content
        changed = {**payload, "description": "other"}
        journal.record_events(second, [NewEvent.valid(1, reordered), NewEvent.valid(2, changed)])
        same, different = journal.file_events(second)
        [old_event] = journal.file_events(first)
    assert old_event.payload_json == canonical_json(payload)
    assert (same.state, same.message) == ("duplicate", "event id already accepted: file 'monday.csv', line 1")
    assert (different.state, different.message) == (
        "duplicate", "event id already accepted: file 'monday.csv', line 1, with different content")


@settings(max_examples=400, deadline=None)
@given(EVENT, EVENT)
def test_same_content_is_what_equal_old_digests_said(event: dict[str, Any], other: dict[str, Any]) -> None:
    """A repeat "with different content" means what it meant when journals kept digests."""
    reordered = dict(reversed(list(event.items())))
    assert same_content(canonical_json(event), canonical_json(reordered))
    assert same_content(canonical_json(event), canonical_json(other)) == (
        old_payload_digest(event) == old_payload_digest(other))
