"""Is a feed's file late? And which notifications are due? Pure decisions, no I/O.

Definitions (the README's "Late or missing files" says the same for administrators):

- A feed's schedule (``expected:``) gives due times D1 < D2 < ...; a due time's **deadline** is
  D + grace.
- A file **arrives** when the service records it in the journal (it takes it from the inbox;
  `status` shows it as the feed's last file) — also a file recognised as dropped before.
- The due time looked at, ``due``, is the latest one whose deadline has passed; ``previous`` is
  the one before it. ``due`` is **covered** when a file arrived after ``previous``'s deadline
  (previous + grace): a file counts for the first deadline that comes after it. Else the feed is
  **late** (for ``due``) until a file arrives; that late file also counts for the next due time,
  as files carry no date the service could use to tell a late export from the next one.
- ``next_due`` is the first due time after ``due``: the next deadline to watch (it may already be
  past, while its grace runs).

So with ``every: day, by: "03:00", grace: 30m`` a file that arrives between 03:30 yesterday and
03:30 today covers today's 03:00; at 03:30 today without one the feed is late, and stays late until
a file arrives (or, without one, is late for the next day from 03:30 tomorrow: a new missed due time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from batch.syntax.schedule import Schedule, describe_duration


@dataclass(frozen=True)
class Lateness:
    """A feed's lateness at one moment (see the module docstring)."""

    due: datetime               # the latest due time whose deadline has passed
    next_due: datetime          # the due time after it
    late: bool                  # `due` is not covered by a file
    last_arrival: datetime | None
    deadline: datetime          # due + grace

    def as_json(self, description: str) -> dict[str, Any]:
        """The ``expected`` of a `status --json` feed row (CONSOLE_CONTRACTS.md)."""
        return {"description": description, "due": iso_utc(self.due), "next_due": iso_utc(self.next_due),
                "late": self.late, "last_arrival": iso_utc(self.last_arrival)}


def lateness(schedule: Schedule, grace: timedelta, last_arrival: datetime | None, now: datetime) -> Lateness:
    """The feed's lateness at `now` given its last file's arrival (None: never). Aware datetimes."""
    due = schedule.latest_at_or_before(now - grace)
    next_due = schedule.next_after(due)
    previous = _before(schedule, due)
    covered = last_arrival is not None and last_arrival > previous + grace
    return Lateness(due, next_due, not covered, last_arrival, due + grace)


def _before(schedule: Schedule, due: datetime) -> datetime:
    return schedule.latest_at_or_before(due - timedelta(seconds=1))


def description(schedule: Schedule, grace: timedelta) -> str:
    """'every day by 03:00 Europe/Helsinki, grace 30m'."""
    return f"{schedule.description}, grace {describe_duration(grace)}"


def iso_utc(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def late_message(feed: str, state: Lateness, text: str) -> str:
    """The one sentence of a late feed: the WARNING line and the webhook's text."""
    since = f"the last file arrived {iso_utc(state.last_arrival)}" if state.last_arrival else "no file has arrived yet"
    return (f"feed {feed}: late: expected by {iso_utc(state.due)} (+ grace, deadline {iso_utc(state.deadline)}); "
            f"{since} ({text})")


# --------------------------------------------------------------------------- notifications

#: a finished file notifies when any of these outcomes counts more than 0
PROBLEM_OUTCOMES = ("failed", "rejected", "invalid")


def file_problems(counts: dict[str, int]) -> dict[str, int]:
    """The problem outcomes of a finished file's counts ({} when there are none)."""
    return {outcome: counts[outcome] for outcome in PROBLEM_OUTCOMES if counts.get(outcome)}


def file_message(feed: str, name: str, state: str, problems: dict[str, int], counts: dict[str, int]) -> str:
    shown = ", ".join(f"{number} {outcome}" for outcome, number in counts.items() if number)
    said = ", ".join(f"{number} {outcome}" for outcome, number in problems.items())
    return f"feed {feed}: {name}: {state} with {said} ({shown or 'no records'})"

