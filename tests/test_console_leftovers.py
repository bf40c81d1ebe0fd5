"""The security review's leftovers in the console, over real HTTP against a live console where
there is a request to make: an upload's CSRF token, the checks as you type, the retry problems
kept."""

from __future__ import annotations

from batch.console.retries import Retries


def test_the_retry_problems_kept_are_bounded() -> None:
    retries = Retries(max_problems=3)
    for request_id in range(1, 6):
        retries.note_problem(request_id, f"problem {request_id}")
    assert retries.problems == {3: "problem 3", 4: "problem 4", 5: "problem 5"}
    retries.note_problem(3, "again")  # noted again: the newest
    retries.note_problem(6, "problem 6")
    assert retries.problems == {5: "problem 5", 3: "again", 6: "problem 6"}
