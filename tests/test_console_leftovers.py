"""The security review's leftovers in the console, over real HTTP against a live console where
there is a request to make: an upload's CSRF token, the checks as you type, the retry problems
kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from batch.console import playground
from batch.console.retries import Retries
from tests.fixtures_browser import LiveConsole
from tests.service_helpers import write_config
from tests.test_console_hostile import token


@pytest.fixture
def open_config(tmp_path: Path, sandbox) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])


def test_checks_as_you_type_run_one_at_a_time_per_session_and_a_few_in_all(open_config: Path,
                                                                           live_console) -> None:
    console = live_console(open_config)
    text = (open_config.parent / "mapping.yaml").read_text()
    csrf = token(console, "/playground/feed/local")

    def check(who: LiveConsole, key: str) -> requests.Response:
        return who.post("/playground/feed/local/validate", json={"text": text}, headers={"X-CSRF-Token": key})

    assert check(console, csrf).json()["ok"] is True
    assert playground._CHECKS.enter(csrf) is None  # a check of this session runs (a slow one)
    try:
        busy = check(console, csrf)
        assert (busy.status_code, busy.json()) == (429, {"error": (
            "a check of this session's mapping is running already: its answer comes first, then check again")})
        other = console.other_session()
        other_csrf = token(other, "/playground/feed/local")
        assert check(other, other_csrf).status_code == 200  # another session is not held up
        others = [f"session-{number}" for number in range(playground._CHECKS.most - 1)]
        assert [playground._CHECKS.enter(one) for one in others] == [None] * len(others)
        full = check(other, other_csrf)
        assert (full.status_code, full.json()) == (429, {
            "error": "the console is checking other mappings now: try again in a moment"})
        for one in others:
            playground._CHECKS.leave(one)
    finally:
        playground._CHECKS.leave(csrf)
    assert check(console, csrf).status_code == 200


def test_the_retry_problems_kept_are_bounded() -> None:
    retries = Retries(max_problems=3)
    for request_id in range(1, 6):
        retries.note_problem(request_id, f"problem {request_id}")
    assert retries.problems == {3: "problem 3", 4: "problem 4", 5: "problem 5"}
    retries.note_problem(3, "again")  # noted again: the newest
    retries.note_problem(6, "problem 6")
    assert retries.problems == {5: "problem 5", 3: "again", 6: "problem 6"}
