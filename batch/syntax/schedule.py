"""When a feed's file is due: a small, exact schedule language and its evaluator (pure).

Two ways to write a schedule (the feed's ``expected:``, batch.config.service):

- ``every: day | weekdays | [mon, wed, ...]`` with ``by: "HH:MM"`` (local time);
- ``cron: "M H DOM MON DOW"``, the five standard fields: ``*``, numbers, ranges ``a-b``, lists
  ``a,b``, steps ``*/n`` and ``a-b/n``, month names ``jan``..``dec``, day names ``sun``..``sat``
  (0 and 7 are Sunday). As in Vixie cron and cronie: when both day fields are restricted (neither
  starts with ``*``) a day matches if *either* matches; otherwise both must.

Both become the same :class:`Schedule` (``every`` is a cron expression written for people).
Due times are local wall-clock times in the schedule's IANA time zone, turned into instants:

- a local time the clock skips (spring forward: Europe/Helsinki goes from 03:00 to 04:00 on the
  last Sunday of March) is due at the instant of the jump (04:00 EEST, 01:00 UTC): "by 03:30" on
  that night means "by the time the clock shows anything after 03:00";
- a local time the clock shows twice (fall back: 03:00-04:00 on the last Sunday of October)
  is due at its first occurrence (EEST), once: a deadline is never put off by an hour.

:meth:`Schedule.next_after` and :meth:`Schedule.latest_at_or_before` give the due instants
around a moment, as aware UTC datetimes.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
ORDINALS = ("1st", "2nd", "3rd", "4th", "5th")
RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # the order of `every: [...]`
# how far the evaluator looks for a matching day: a 29 February on a Monday comes round in 28 years
SEARCH_DAYS = 366 * 29
_TOKEN = re.compile(r"^(?P<start>\*|[0-9a-z]+)(?:-(?P<end>[0-9a-z]+))?(?:/(?P<step>[0-9]+))?$")
_HHMM = re.compile(r"^(?P<h>[0-9]{1,2}):(?P<m>[0-9]{2})$")


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message says which part and why (never the whole text)."""


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ScheduleError (without the name) if there is none."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError("unknown time zone: give an IANA name such as Europe/Helsinki or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError("unknown time zone: give an IANA name such as Europe/Helsinki or UTC") from None


def parse_hhmm(text: str) -> tuple[int, int]:
    """'03:00' -> (3, 0); ScheduleError for anything else."""
    match = _HHMM.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ScheduleError('expected a local time HH:MM, e.g. "03:00"')
    hour, minute = int(match["h"]), int(match["m"])
    if hour > 23 or minute > 59:
        raise ScheduleError(f"{hour:02d}:{minute:02d} is not a time of day (00:00 to 23:59)")
    return hour, minute


def _field_values(text: str, index: int) -> frozenset[int]:
    """One cron field's values; ScheduleError names the field (the token is quoted only if numeric)."""
    low, high = RANGES[index]
    where = f"the {FIELDS[index]} field ({ORDINALS[index]})"
    names = MONTH_NAMES if index == 3 else DAY_NAMES if index == 4 else ()
    offset = 1 if index == 3 else 0

    def number(token: str) -> int:
        if token.isdigit():
            value = int(token)
            if not low <= value <= high:
                raise ScheduleError(f"{where}: {value} is out of range {low}-{high}")
            return value
        if token in names:
            return names.index(token) + offset
        allowed = f"numbers {low}-{high}" + (f" or names {names[0]}-{names[-1]}" if names else "")
        raise ScheduleError(f"{where}: expected {allowed}, *, ranges a-b, lists a,b and steps /n")

    values: set[int] = set()
    for part in text.lower().split(","):
        match = _TOKEN.match(part)
        if match is None:
            raise ScheduleError(f"{where}: expected numbers, *, ranges a-b, lists a,b and steps /n")
        if match["start"] == "*":
            if match["end"] is not None:
                raise ScheduleError(f"{where}: * cannot start a range")
            start, end = low, high
        else:
            start = number(match["start"])
            end = number(match["end"]) if match["end"] is not None else start
            if match["step"] is not None and match["end"] is None:
                end = high  # "5/15" is "5-max/15", as cronie reads it
        if end < start:
            raise ScheduleError(f"{where}: the range {start}-{end} runs backwards")
        step = int(match["step"]) if match["step"] is not None else 1
        if step < 1 or step > high - low + 1:
            raise ScheduleError(f"{where}: the step /{step} must be 1-{high - low + 1}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """Due times: the cron fields, in a time zone. Build with :func:`parse_cron` or :func:`every`."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]       # of the month, 1-31
    months: frozenset[int]     # 1-12
    weekdays: frozenset[int]   # cron's: 0 = Sunday .. 6 = Saturday
    days_any: bool             # the day-of-month field starts with * (see the module docstring)
    weekdays_any: bool
    zone: ZoneInfo
    description: str
    _times: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times = tuple(sorted((h, m) for h in self.hours for m in self.minutes))
        object.__setattr__(self, "_times", times)
        if not self._possible():
            raise ScheduleError("this schedule never matches a day (no month has that day)")

    def _possible(self) -> bool:
        if not self.days_any and not self.weekdays_any:
            return True  # either day field: some weekday comes every week
        if not self.days_any:
            return any(day <= (29 if month == 2 else calendar.monthrange(2001, month)[1])
                       for month in self.months for day in self.days)
        return bool(self.weekdays)

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.days_any or self.weekdays_any:
            return in_month and in_week
        return in_month or in_week

    def _instant(self, day: date, hour: int, minute: int) -> datetime:
        """The UTC instant of a local wall-clock time (gaps and folds: see the module docstring)."""
        naive = datetime.combine(day, time(hour, minute))
        first = naive.replace(tzinfo=self.zone, fold=0).astimezone(timezone.utc)
        if first.astimezone(self.zone).replace(tzinfo=None) == naive:
            return first  # exists (in a fold, fold=0 is its first occurrence)
        # in a gap: fold=0 read it with the offset before the jump, which lands after the jump;
        # the jump itself is the first instant whose local time is past `naive`
        low = naive.replace(tzinfo=self.zone, fold=1).astimezone(timezone.utc)  # before the jump
        high = first
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            middle = middle.replace(microsecond=0)
            if middle.astimezone(self.zone).replace(tzinfo=None) > naive:
                high = middle
            else:
                low = middle
        return high

    def next_after(self, moment: datetime) -> datetime:
        """The first due instant strictly after `moment` (an aware datetime), in UTC."""
        day = moment.astimezone(self.zone).date() - timedelta(days=1)  # a gap can move a time past midnight
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                for hour, minute in self._times:
                    instant = self._instant(day, hour, minute)
                    if instant > moment:
                        return instant
            day += timedelta(days=1)
        raise ScheduleError("this schedule has no due time in the next 29 years")  # _possible prevents it

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last due instant at or before `moment` (an aware datetime), in UTC."""
        day = moment.astimezone(self.zone).date() + timedelta(days=1)
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                for hour, minute in reversed(self._times):
                    instant = self._instant(day, hour, minute)
                    if instant <= moment:
                        return instant
            day -= timedelta(days=1)
        raise ScheduleError("this schedule has no due time in the last 29 years")


def parse_cron(expression: str, zone_name: str) -> Schedule:
    """A standard five-field cron expression in the time zone `zone_name`."""
    zone = time_zone(zone_name)
    parts = expression.split() if isinstance(expression, str) else []
    if len(parts) != 5:
        raise ScheduleError(f"expected 5 fields ({' '.join(FIELDS)}), got {len(parts)}")
    values = [_field_values(part, index) for index, part in enumerate(parts)]
    return Schedule(values[0], values[1], values[2], values[3], values[4],
                    days_any=parts[2].startswith("*"), weekdays_any=parts[4].startswith("*"), zone=zone,
                    description=f"cron {' '.join(parts)} {zone_name}")


def every(days: str | list[str], by: str, zone_name: str) -> Schedule:
    """``every: day | weekdays | [mon, ...]`` by ``HH:MM`` in the time zone `zone_name`."""
    zone = time_zone(zone_name)
    hour, minute = parse_hhmm(by)
    if days == "day":
        weekdays, said = frozenset(range(7)), "every day"
    elif days == "weekdays":
        weekdays, said = frozenset(range(1, 6)), "every weekday"
    elif isinstance(days, list) and days:
        chosen = [str(day).lower() for day in days]
        for number, day in enumerate(chosen, 1):
            if day not in WEEKDAYS:
                raise ScheduleError(f"day {number} of the list is not a day: write {', '.join(WEEKDAYS)}")
        ordered = sorted(set(chosen), key=WEEKDAYS.index)
        weekdays, said = frozenset(DAY_NAMES.index(day) for day in ordered), f"every {', '.join(ordered)}"
    else:
        raise ScheduleError("expected day, weekdays or a list of days such as [mon, thu]")
    return Schedule(frozenset({minute}), frozenset({hour}), frozenset(range(1, 32)), frozenset(range(1, 13)),
                    weekdays, days_any=True, weekdays_any=days in ("day",), zone=zone,
                    description=f"{said} by {hour:02d}:{minute:02d} {zone_name}")


_DURATION = re.compile(r"^(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?$")


def parse_duration(text: str | int | float) -> timedelta:
    """'30m', '2h', '1h30m', '45s', '1d' (or a number of seconds) -> timedelta."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ScheduleError("must not be negative")
        return timedelta(seconds=text)
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("expected a duration such as 30m, 2h, 1h30m or 45s")
    match = _DURATION.match(text.strip())
    if match is None:
        raise ScheduleError("expected a duration such as 30m, 2h, 1h30m or 45s")
    parts = {key: int(value) for key, value in match.groupdict().items() if value}
    return timedelta(days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0),
                     seconds=parts.get("s", 0))


def describe_duration(span: timedelta) -> str:
    """timedelta -> '30m', '1h30m', '0m'."""
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0m"
