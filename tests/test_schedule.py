"""The schedule evaluator (batch.syntax.schedule) and the lateness decision (batch.service.lateness):
cron fields, every/by, DST gaps and folds in Europe/Helsinki, and when a feed is late."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from batch.service.lateness import description, file_problems, lateness
from batch.syntax.schedule import ScheduleError, every, parse_cron, parse_duration, parse_hhmm

UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def following(schedule, start: str, count: int) -> list[str]:
    moment, found = utc(start), []
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(iso(moment))
    return found


# --------------------------------------------------------------------------- cron fields


@pytest.mark.parametrize("expression, start, expected", [
    ("0 3 * * *", "2026-01-10 00:00", ["2026-01-10 03:00", "2026-01-11 03:00", "2026-01-12 03:00"]),
    ("*/20 * * * *", "2026-01-10 00:05", ["2026-01-10 00:20", "2026-01-10 00:40", "2026-01-10 01:00"]),
    ("5/20 8 * * *", "2026-01-10 00:00", ["2026-01-10 08:05", "2026-01-10 08:25", "2026-01-10 08:45"]),
    ("0 3 * * 1-5", "2026-01-09 04:00", ["2026-01-12 03:00", "2026-01-13 03:00", "2026-01-14 03:00"]),  # Fri -> Mon
    ("0 3 * * mon,fri", "2026-01-10 00:00", ["2026-01-12 03:00", "2026-01-16 03:00", "2026-01-19 03:00"]),
    ("0 3 * * 7", "2026-01-10 00:00", ["2026-01-11 03:00", "2026-01-18 03:00", "2026-01-25 03:00"]),  # 7 = Sunday
    ("0 3 * * 0", "2026-01-10 00:00", ["2026-01-11 03:00", "2026-01-18 03:00", "2026-01-25 03:00"]),
    ("30 2 1 * *", "2026-01-10 00:00", ["2026-02-01 02:30", "2026-03-01 02:30", "2026-04-01 02:30"]),
    ("0 0 31 * *", "2026-01-31 00:00", ["2026-03-31 00:00", "2026-05-31 00:00", "2026-07-31 00:00"]),
    ("0 0 29 feb *", "2026-01-01 00:00", ["2028-02-29 00:00", "2032-02-29 00:00", "2036-02-29 00:00"]),
    ("0 12 1-7 * mon", "2026-01-01 00:00",  # both day fields restricted: either (cron's OR)
     ["2026-01-01 12:00", "2026-01-02 12:00", "2026-01-03 12:00"]),
    ("0 12 */10 * mon", "2026-01-01 00:00",  # day-of-month starts with *: both (AND)
     ["2026-05-11 12:00", "2026-06-01 12:00", "2026-08-31 12:00"]),  # Mondays that are the 1st, 11th, 21st, 31st
    ("15 10 * jan-mar/2 *", "2026-01-31 11:00", ["2026-03-01 10:15", "2026-03-02 10:15", "2026-03-03 10:15"]),
])
def test_cron_next_due_times_in_utc(expression: str, start: str, expected: list[str]) -> None:
    assert following(parse_cron(expression, "UTC"), start, 3) == expected


def test_next_is_strictly_after_and_latest_is_at_or_before() -> None:
    schedule = parse_cron("0 3 * * *", "UTC")
    assert iso(schedule.next_after(utc("2026-01-10 03:00"))) == "2026-01-11 03:00"
    assert iso(schedule.latest_at_or_before(utc("2026-01-10 03:00"))) == "2026-01-10 03:00"
    assert iso(schedule.latest_at_or_before(utc("2026-01-10 02:59"))) == "2026-01-09 03:00"
    assert iso(parse_cron("0 0 29 2 *", "UTC").latest_at_or_before(utc("2026-01-01 00:00"))) == "2024-02-29 00:00"


@pytest.mark.parametrize("expression, message", [
    ("0 3 * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("0 3 * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("60 3 * * *", "the minute field (1st): 60 is out of range 0-59"),
    ("0 24 * * *", "the hour field (2nd): 24 is out of range 0-23"),
    ("0 3 0 * *", "the day-of-month field (3rd): 0 is out of range 1-31"),
    ("0 3 * 13 *", "the month field (4th): 13 is out of range 1-12"),
    ("0 3 * * 8", "the day-of-week field (5th): 8 is out of range 0-7"),
    ("0 3 * foo *", "the month field (4th): expected numbers 1-12 or names jan-dec, *, ranges a-b, lists a,b "
                    "and steps /n"),
    ("0 3 * * funday", "the day-of-week field (5th): expected numbers 0-7 or names sun-sat, *, ranges a-b, "
                       "lists a,b and steps /n"),
    ("x 3 * * *", "the minute field (1st): expected numbers 0-59, *, ranges a-b, lists a,b and steps /n"),
    ("0 5-3 * * *", "the hour field (2nd): the range 5-3 runs backwards"),
    ("*/0 3 * * *", "the minute field (1st): the step /0 must be 1-60"),
    ("0 3,,4 * * *", "the hour field (2nd): expected numbers, *, ranges a-b, lists a,b and steps /n"),
    ("0 0 30 2 *", "this schedule never matches a day (no month has that day)"),
    ("0 0 31 4,6,9,11 *", "this schedule never matches a day (no month has that day)"),
])
def test_cron_errors_say_which_field_and_why(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron(expression, "UTC")
    assert str(caught.value) == message


@pytest.mark.parametrize("zone", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "Europe/"])
def test_an_unknown_time_zone_is_refused_without_quoting_it(zone: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron("0 3 * * *", zone)
    assert str(caught.value) == "unknown time zone: give an IANA name such as Europe/Helsinki or UTC"


# --------------------------------------------------------------------------- every / by


def test_every_day_weekdays_and_a_list() -> None:
    assert following(every("day", "03:00", "UTC"), "2026-01-09 04:00", 3) == [
        "2026-01-10 03:00", "2026-01-11 03:00", "2026-01-12 03:00"]
    assert following(every("weekdays", "03:00", "UTC"), "2026-01-09 04:00", 2) == [  # Friday 04:00
        "2026-01-12 03:00", "2026-01-13 03:00"]
    assert following(every(["thu", "mon"], "23:59", "UTC"), "2026-01-10 00:00", 3) == [
        "2026-01-12 23:59", "2026-01-15 23:59", "2026-01-19 23:59"]
    assert every(["thu", "mon"], "7:05", "Europe/Helsinki").description == "every mon, thu by 07:05 Europe/Helsinki"
    assert every("weekdays", "03:00", "UTC").description == "every weekday by 03:00 UTC"


@pytest.mark.parametrize("days, by, message", [
    ("daily", "03:00", "expected day, weekdays or a list of days such as [mon, thu]"),
    ([], "03:00", "expected day, weekdays or a list of days such as [mon, thu]"),
    (["mon", "fry"], "03:00", "day 2 of the list is not a day: write mon, tue, wed, thu, fri, sat, sun"),
    ("day", "3am", 'expected a local time HH:MM, e.g. "03:00"'),
    ("day", "24:00", "24:00 is not a time of day (00:00 to 23:59)"),
    ("day", "03:60", "03:60 is not a time of day (00:00 to 23:59)"),
])
def test_every_errors(days, by: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        every(days, by, "UTC")
    assert str(caught.value) == message


def test_times_and_durations() -> None:
    assert parse_hhmm("03:00") == (3, 0) and parse_hhmm("7:30") == (7, 30)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration("45s") == timedelta(seconds=45)
    assert parse_duration(90) == timedelta(seconds=90)
    for bad in ("30 minutes", "", "m", "-5m"):
        with pytest.raises(ScheduleError, match="^expected a duration such as 30m, 2h, 1h30m or 45s$"):
            parse_duration(bad)


# --------------------------------------------------------------------------- DST in Europe/Helsinki
# 2026: summer time starts Sunday 29 March at 03:00 EET (-> 04:00 EEST, 01:00 UTC) and ends
# Sunday 25 October at 04:00 EEST (-> 03:00 EET, 01:00 UTC).


def test_a_normal_local_time_across_both_changes() -> None:
    schedule = every("day", "02:00", "Europe/Helsinki")
    assert following(schedule, "2026-03-27 12:00", 3) == [  # EET, EET (before the jump at 03:00), EEST
        "2026-03-28 00:00", "2026-03-29 00:00", "2026-03-29 23:00"]
    assert following(schedule, "2026-10-23 12:00", 3) == [  # EEST, EEST (before 04:00), EET
        "2026-10-23 23:00", "2026-10-24 23:00", "2026-10-26 00:00"]


@pytest.mark.parametrize("by, due", [
    ("03:00", "2026-03-29 01:00"),  # skipped: due when the clock jumps (04:00 EEST)
    ("03:30", "2026-03-29 01:00"),
    ("03:59", "2026-03-29 01:00"),
    ("04:00", "2026-03-29 01:00"),  # exists: the same instant
    ("04:30", "2026-03-29 01:30"),
    ("02:59", "2026-03-29 00:59"),
])
def test_spring_forward_gap_times_are_due_at_the_jump(by: str, due: str) -> None:
    schedule = every("day", by, "Europe/Helsinki")
    assert iso(schedule.next_after(utc("2026-03-28 12:00"))) == due
    assert iso(schedule.latest_at_or_before(utc(due))) == due


def test_spring_forward_with_cron_every_quarter_hour_counts_the_jump_once() -> None:
    schedule = parse_cron("*/15 2-4 29 3 *", "Europe/Helsinki")
    assert following(schedule, "2026-03-28 23:50", 8) == [
        "2026-03-29 00:00", "2026-03-29 00:15", "2026-03-29 00:30", "2026-03-29 00:45",  # 02:xx EET
        "2026-03-29 01:00",  # 03:00-03:45 (skipped) and 04:00: one due time at the jump
        "2026-03-29 01:15", "2026-03-29 01:30", "2026-03-29 01:45",  # 04:xx EEST
    ]


@pytest.mark.parametrize("by, due", [
    ("03:00", "2026-10-25 00:00"),  # shown twice: the first (EEST) occurrence
    ("03:30", "2026-10-25 00:30"),
    ("04:00", "2026-10-25 02:00"),  # after the change: EET
    ("02:30", "2026-10-24 23:30"),
])
def test_fall_back_fold_times_are_due_once_at_their_first_occurrence(by: str, due: str) -> None:
    schedule = every("day", by, "Europe/Helsinki")
    assert iso(schedule.next_after(utc("2026-10-24 12:00"))) == due
    after = schedule.next_after(utc(due))
    assert after - utc(due) > timedelta(hours=23), iso(after)  # never twice that night


def test_fall_back_with_cron_hourly_has_one_due_time_per_local_hour() -> None:
    schedule = parse_cron("0 * 25 10 *", "Europe/Helsinki")
    assert following(schedule, "2026-10-24 23:30", 4) == [
        "2026-10-25 00:00",  # 03:00 EEST (03:00 EET, an hour later, is the same local hour: not again)
        "2026-10-25 02:00",  # 04:00 EET
        "2026-10-25 03:00", "2026-10-25 04:00"]


def test_latest_before_walks_back_over_the_gap_and_the_fold() -> None:
    spring = every("day", "03:30", "Europe/Helsinki")
    assert iso(spring.latest_at_or_before(utc("2026-03-29 00:59"))) == "2026-03-28 01:30"
    autumn = every("day", "03:30", "Europe/Helsinki")
    assert iso(autumn.latest_at_or_before(utc("2026-10-25 01:29"))) == "2026-10-25 00:30"


# --------------------------------------------------------------------------- lateness


DAILY = every("day", "03:00", "Europe/Helsinki")  # 01:00 UTC in winter
GRACE = timedelta(minutes=30)


@pytest.mark.parametrize("arrival, now, due, late", [
    # before today's deadline (01:30 UTC): yesterday's due is the one looked at
    ("2026-01-09 00:50", "2026-01-10 01:20", "2026-01-09 01:00", False),
    ("2026-01-09 00:50", "2026-01-10 01:30", "2026-01-10 01:00", True),  # deadline passed, no file since
    ("2026-01-09 01:31", "2026-01-10 01:30", "2026-01-10 01:00", False),  # after yesterday's deadline: counts
    ("2026-01-09 01:30", "2026-01-10 01:30", "2026-01-10 01:00", True),   # at yesterday's deadline: yesterday's
    ("2026-01-10 01:25", "2026-01-10 02:00", "2026-01-10 01:00", False),  # within grace
    ("2026-01-10 05:00", "2026-01-10 06:00", "2026-01-10 01:00", False),  # late, but arrived: no longer late
    (None, "2026-01-10 06:00", "2026-01-10 01:00", True),                 # never a file
    ("2026-01-10 05:00", "2026-01-11 01:31", "2026-01-11 01:00", False),  # a late file counts for the next day
    ("2026-01-08 00:50", "2026-01-10 01:00", "2026-01-09 01:00", True),   # yesterday's missed, still late
])
def test_lateness(arrival: str | None, now: str, due: str, late: bool) -> None:
    state = lateness(DAILY, GRACE, utc(arrival) if arrival else None, utc(now))
    assert (iso(state.due), state.late) == (due, late)
    assert state.deadline == state.due + GRACE
    assert state.next_due == DAILY.next_after(state.due)


def test_lateness_as_json_is_the_contract_of_feed_rows() -> None:
    state = lateness(DAILY, GRACE, utc("2026-01-09 00:50"), utc("2026-01-10 02:00"))
    assert state.as_json(description(DAILY, GRACE)) == {
        "description": "every day by 03:00 Europe/Helsinki, grace 30m", "due": "2026-01-10T01:00:00Z",
        "next_due": "2026-01-11T01:00:00Z", "late": True, "last_arrival": "2026-01-09T00:50:00Z"}


def test_lateness_on_weekdays_skips_the_weekend() -> None:
    weekdays = parse_cron("0 3 * * 1-5", "Europe/Helsinki")
    # a file on Friday covers Monday's 03:00: nothing is due on Saturday and Sunday
    state = lateness(weekdays, GRACE, utc("2026-01-09 00:40"), utc("2026-01-11 23:00"))
    assert (iso(state.due), iso(state.next_due), state.late) == ("2026-01-09 01:00", "2026-01-12 01:00", False)
    # Monday's needs a file after Friday's deadline
    state = lateness(weekdays, GRACE, utc("2026-01-09 00:40"), utc("2026-01-12 01:31"))
    assert (iso(state.due), state.late) == ("2026-01-12 01:00", True)
    state = lateness(weekdays, GRACE, utc("2026-01-10 10:00"), utc("2026-01-12 01:31"))  # one on Saturday
    assert (iso(state.due), state.late) == ("2026-01-12 01:00", False)


def test_lateness_over_the_spring_gap() -> None:
    state = lateness(every("day", "03:30", "Europe/Helsinki"), GRACE, utc("2026-03-28 01:00"),
                     utc("2026-03-29 01:31"))
    assert (iso(state.due), state.late) == ("2026-03-29 01:00", True)  # due at the jump, deadline 04:30 EEST
    state = lateness(every("day", "03:30", "Europe/Helsinki"), GRACE, utc("2026-03-28 01:00"),
                     utc("2026-03-29 01:29"))
    assert (iso(state.due), state.late) == ("2026-03-28 01:30", False)


def test_file_problems() -> None:
    assert file_problems({"accepted": 3, "rejected": 0, "invalid": 2, "failed": 1}) == {"failed": 1, "invalid": 2}
    assert file_problems({"accepted": 3, "duplicate": 1}) == {}
