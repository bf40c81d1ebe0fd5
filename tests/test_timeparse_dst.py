"""Daylight saving in the source zone (issue 11, point 6): a skipped local time is invalid and
says so; the autumn hour that occurs twice is accepted as written."""

from __future__ import annotations

import pytest

from batch.config.mapping import load_mapping_text
from batch.syntax.timeparse import TimeConverter
from batch.transform.mapping import CompiledMapping
from batch.transform.records import Chunk

HEL = "Europe/Helsinki"
SKIPPED = (
    "2024-03-31 03:30:00 does not exist in Europe/Helsinki: the clocks move forward from 03:00 to 04:00 "
    "on 2024-03-31, skipping that time"
)


@pytest.mark.parametrize("output", [HEL, "UTC"])
@pytest.mark.parametrize("fmt, text", [
    ("%d.%m.%Y %H:%M", "31.3.2024 03:30"),  # the fast wall-clock path (same zone)
    ("%d.%m.%Y %H:%M:%S", "31.3.2024 3:30:00"),
    ("%Y%m%d%H%M%S", "20240331033000"),
    ("%m/%d/%Y %I:%M %p", "3/31/2024 3:30 AM"),  # the general path
])
def test_a_time_the_zone_skips_is_invalid_and_says_why(fmt, text, output):
    converter = TimeConverter([fmt], HEL, output)
    assert converter.convert(text) == (None, SKIPPED)
    assert converter.convert_text(text) is None
    assert converter.convert(text) == (None, SKIPPED)  # cached, same answer


@pytest.mark.parametrize("text, helsinki, utc", [
    ("31.3.2024 02:59:59", "2024-03-31 02:59:59", "2024-03-31 00:59:59"),  # last second before the change
    ("31.3.2024 04:00:00", "2024-03-31 04:00:00", "2024-03-31 01:00:00"),  # first second after it
    ("31.3.2024 12:00:00", "2024-03-31 12:00:00", "2024-03-31 09:00:00"),  # the rest of that day
    # the autumn hour that occurs twice: accepted as written, the first of the two in another zone
    ("27.10.2024 03:30:00", "2024-10-27 03:30:00", "2024-10-27 00:30:00"),
])
def test_times_around_the_changes_are_accepted(text, helsinki, utc):
    for output, expected in ((HEL, helsinki), ("UTC", utc)):
        converter = TimeConverter(["%d.%m.%Y %H:%M:%S"], HEL, output)
        assert converter.convert(text) == (expected, None)
        assert converter.convert_text(text) == expected


def test_an_offset_makes_any_wall_clock_time_real():
    converter = TimeConverter(["%Y-%m-%dT%H:%M:%S%z"], HEL, HEL)
    assert converter.convert("2024-03-31T03:30:00+02:00") == ("2024-03-31 04:30:00", None)


def test_other_zones_and_changes_of_half_an_hour():
    assert TimeConverter(["%d.%m.%Y %H:%M"], "America/New_York", "UTC").convert("10.3.2024 02:30") == (
        None, "2024-03-10 02:30:00 does not exist in America/New_York: the clocks move forward from 02:00 to 03:00 "
              "on 2024-03-10, skipping that time")
    assert TimeConverter(["%d.%m.%Y %H:%M"], "Australia/Lord_Howe", "UTC").convert("6.10.2024 02:10") == (
        None, "2024-10-06 02:10:00 does not exist in Australia/Lord_Howe: the clocks move forward from 02:00 to "
              "02:30 on 2024-10-06, skipping that time")
    assert TimeConverter(["%d.%m.%Y %H:%M"], "UTC", "UTC").convert("31.3.2024 03:30") == ("2024-03-31 03:30:00", None)


def test_a_record_with_a_skipped_time_is_invalid_with_field_source_and_value():
    compiled = CompiledMapping(load_mapping_text("""
format: csv
fields:
  usageplacecode: {column: Place}
  time: {column: When, formats: ["%d.%m.%Y %H:%M"]}
  status: {const: connected}
"""))
    run = compiled.start()
    chunk = Chunk(["Place", "When"], [2, 3], [["643007572062400001", "31.3.2024 03:30"],
                                             ["643007572062400001", "31.3.2024 04:30"]])
    first, second = run.map_chunk(chunk) + run.finish()
    assert [e.as_dict() for e in first.errors] == [
        {"field": "time", "source": "column 'When'", "value": "31.3.2024 03:30", "message": SKIPPED}
    ]
    assert second.event["time"] == "2024-03-31 04:30:00"
