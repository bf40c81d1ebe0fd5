"""batch.syntax.timeparse: feed time formats -> Ropo's 'YYYY-MM-DD HH:MM:SS' in the configured zone."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from batch.syntax.timeparse import FormatError, TimeConverter, compile_format

HEL = "Europe/Helsinki"
OUT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def convert(text: str, formats: list[str], source: str = HEL, output: str = HEL):
    return TimeConverter(formats, source, output).convert(text)


# --- formats the issue names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, formats, expected",
    [
        # two columns joined by a template: single-digit day, month and hour
        ("5.2.2024 6:30:00", ["%d.%m.%Y %H:%M:%S"], "2024-02-05 06:30:00"),
        ("05.02.2024 06:30:00", ["%d.%m.%Y %H:%M:%S"], "2024-02-05 06:30:00"),
        # an offset: winter time in Helsinki is +02:00
        ("2024-01-04T10:41:40+01:00", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 11:41:40"),
        ("2024-01-04T10:41:40+02:00", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 10:41:40"),
        # Z is UTC
        ("2024-01-04T08:41:40Z", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 10:41:40"),
        ("2024-01-04T08:41:40z", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 10:41:40"),
        # summer time is +03:00
        ("2024-07-15T20:30:00Z", ["%Y-%m-%dT%H:%M:%S%z"], "2024-07-15 23:30:00"),
        # offsets without a colon and hour-only offsets
        ("2024-01-04T10:41:40+0100", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 11:41:40"),
        ("2024-01-04T10:41:40+01", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 11:41:40"),
        ("2024-01-04T10:41:40-05:30", ["%Y-%m-%dT%H:%M:%S%z"], "2024-01-04 18:11:40"),
        # fractions of a second are dropped, not rounded
        ("2024-01-04T10:41:40.999999Z", ["%Y-%m-%dT%H:%M:%S.%f%z"], "2024-01-04 12:41:40"),
        ("2024-01-04T10:41:40.123456789Z", ["%Y-%m-%dT%H:%M:%S.%f%z"], "2024-01-04 12:41:40"),
        # two-digit years, 12-hour clocks, a literal percent sign
        ("05.02.24 06:30", ["%d.%m.%y %H:%M"], "2024-02-05 06:30:00"),
        ("2/5/2024 12:15 AM", ["%m/%d/%Y %I:%M %p"], "2024-02-05 00:15:00"),
        ("2/5/2024 12:15 pm", ["%m/%d/%Y %I:%M %p"], "2024-02-05 12:15:00"),
        ("2/5/2024 1:15 PM", ["%m/%d/%Y %I:%M %p"], "2024-02-05 13:15:00"),
        ("2024%02%05", ["%Y%%%m%%%d"], "2024-02-05 00:00:00"),
        # compact timestamps
        ("20240205063000", ["%Y%m%d%H%M%S"], "2024-02-05 06:30:00"),
        # a date without a time is midnight
        ("2024-02-05", ["%Y-%m-%d"], "2024-02-05 00:00:00"),
        # a space in the format takes any run of white space
        ("5.2.2024   6:30:00", ["%d.%m.%Y %H:%M:%S"], "2024-02-05 06:30:00"),
    ],
)
def test_formats(text, formats, expected):
    assert convert(text, formats) == (expected, None)


def test_several_formats_are_tried_in_order():
    formats = ["%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%Y-%m-%dT%H:%M:%S%z"]
    converter = TimeConverter(formats, HEL, HEL)
    assert converter.convert("5.2.2024 6:30:15") == ("2024-02-05 06:30:15", None)
    assert converter.convert("5.2.2024 6:30") == ("2024-02-05 06:30:00", None)
    assert converter.convert("2024-02-05T04:30:00Z") == ("2024-02-05 06:30:00", None)


def test_no_format_matches_names_every_format():
    value, reason = convert("5/2/2024", ["%d.%m.%Y %H:%M:%S", "%Y-%m-%d"])
    assert value is None
    assert reason == "expected a time as '%d.%m.%Y %H:%M:%S' or '%Y-%m-%d'"


def test_whole_value_must_match():
    assert convert("2024-02-05 06:30:00 extra", ["%Y-%m-%d %H:%M:%S"])[0] is None
    assert convert(" 2024-02-05 06:30:00", ["%Y-%m-%d %H:%M:%S"])[0] is None


# --- zones -------------------------------------------------------------------------------------


def test_times_without_offset_are_in_the_source_zone():
    # a UTC export written out in Helsinki time, across both daylight-saving changes of 2024
    c = TimeConverter(["%Y-%m-%d %H:%M:%S"], "UTC", HEL)
    assert c.convert("2024-03-31 00:59:59") == ("2024-03-31 02:59:59", None)
    assert c.convert("2024-03-31 01:00:00") == ("2024-03-31 04:00:00", None)
    assert c.convert("2024-10-27 00:30:00") == ("2024-10-27 03:30:00", None)
    assert c.convert("2024-10-27 01:30:00") == ("2024-10-27 03:30:00", None)


def test_output_zone_is_configurable():
    assert convert("2024-01-04T10:41:40+02:00", ["%Y-%m-%dT%H:%M:%S%z"], output="UTC") == ("2024-01-04 08:41:40", None)
    assert convert("2024-07-04 12:00:00", ["%Y-%m-%d %H:%M:%S"], source=HEL, output="UTC") == (
        "2024-07-04 09:00:00",
        None,
    )


def test_same_zone_is_written_unchanged():
    assert convert("2024-02-05 06:30:00", ["%Y-%m-%d %H:%M:%S"]) == ("2024-02-05 06:30:00", None)


def test_date_line_crossing():
    assert convert("2024-12-31T23:30:00-10:00", ["%Y-%m-%dT%H:%M:%S%z"]) == ("2025-01-01 11:30:00", None)


# --- values that are not real times ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fmt, reason",
    [
        ("31.2.2024 7:10:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (day is out of range for month)"),
        ("29.2.2023 7:10:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (day is out of range for month)"),
        ("12.3.2024 25:00:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (hour must be in 0..23)"),
        ("12.13.2024 7:00:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (month must be in 1..12)"),
        ("12.3.2024 7:60:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (minute must be in 0..59)"),
        ("0.3.2024 7:00:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (day is out of range for month)"),
        ("1.1.0000 7:00:00", "%d.%m.%Y %H:%M:%S", "not a real date/time (year 0 is out of range)"),
        # offsets beyond a day, minutes past 59, and conversions past the calendar's ends
        ("2024-01-01T00:00:00+25:00", "%Y-%m-%dT%H:%M:%S%z", "not a real date/time (UTC offset +25:00 is out of range)"),
        ("2024-01-01T00:00:00+23:99", "%Y-%m-%dT%H:%M:%S%z", "not a real date/time (UTC offset +23:99 is out of range)"),
        ("2024-01-01T00:00:00+01:75", "%Y-%m-%dT%H:%M:%S%z", "not a real date/time (UTC offset +01:75 is out of range)"),
        ("0001-01-01T00:00:00+01:00", "%Y-%m-%dT%H:%M:%S%z", "not a real date/time (date value out of range)"),
        ("9999-12-31T23:59:59-05:00", "%Y-%m-%dT%H:%M:%S%z", "not a real date/time (date value out of range)"),
    ],
)
def test_impossible_times_are_reasons_not_exceptions(text, fmt, reason):
    assert convert(text, [fmt]) == (None, reason)


def test_year_edge_in_another_zone_is_a_reason():
    assert convert("9999-12-31 23:59:59", ["%Y-%m-%d %H:%M:%S"], source="UTC") == (
        None,
        "not a real date/time (date value out of range)",
    )


def test_small_years_keep_four_digits():
    value, reason = convert("0999-06-01 12:00:00", ["%Y-%m-%d %H:%M:%S"])
    assert reason is None and value == "0999-06-01 12:00:00"


def test_repeated_values_come_from_the_cache_with_the_same_answer():
    c = TimeConverter(["%d.%m.%Y"], HEL, HEL)
    first = c.convert("5.2.2024")
    assert c.convert("5.2.2024") == first == ("2024-02-05 00:00:00", None)
    assert c.convert("31.2.2024")[0] is None and c.convert("31.2.2024")[0] is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_gives_a_time_or_a_reason(text):
    c = TimeConverter(["%Y-%m-%dT%H:%M:%S%z", "%d.%m.%Y %H:%M:%S", "%m/%d/%y %I:%M %p", "%Y%m%d%H%M%S.%f"], "UTC", HEL)
    value, reason = c.convert(text)
    assert (value is None) != (reason is None)
    if value is not None:
        assert OUT.fullmatch(value)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1)))
def test_round_trip_through_utc(moment):
    # any UTC time written with Z converts the same as zoneinfo does
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    expected = moment.replace(microsecond=0, tzinfo=timezone.utc).astimezone(ZoneInfo(HEL))
    assert convert(text, ["%Y-%m-%dT%H:%M:%S%z"]) == (expected.strftime("%Y-%m-%d %H:%M:%S"), None)


# --- format strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("%d.%m.%Y %Q", "%Q is not supported (use %Y, %y, %m, %d, %H, %I, %p, %M, %S, %f, %z)"),
        ("%d.%m.%Y %", "ends with a lone '%'"),
        ("%d.%m.%Y %d", "%d appears twice"),
        ("%H:%M", "needs a year (%Y or %y), a month (%m) and a day (%d)"),
        ("%Y-%m", "needs a year (%Y or %y), a month (%m) and a day (%d)"),
        ("%Y-%m-%d %I:%M", "%I (12-hour clock) needs %p (AM/PM)"),
    ],
)
def test_bad_formats(fmt, message):
    with pytest.raises(FormatError) as info:
        compile_format(fmt)
    assert str(info.value) == message


def test_literal_characters_are_not_regex():
    pattern = compile_format("%Y.%m.%d")
    assert pattern.fullmatch("2024.02.05")
    assert not pattern.fullmatch("2024x02x05")


# --- the wall-clock fast path agrees with the general parser --------------------------------------------


@pytest.mark.parametrize("source", [HEL, "UTC"])
def test_the_first_matching_format_decides_in_any_zone(source):
    # '13.12.2024' fits the pattern of '%m.%d.%Y' but is not a real date that way: an error, not a
    # silent reading with the next format -- and the same whether or not the zone changes
    c = TimeConverter(["%m.%d.%Y", "%d.%m.%Y"], source, HEL)
    assert c.convert("13.12.2024") == (None, "not a real date/time (month must be in 1..12)")
    assert c.convert_text("13.12.2024") is None
    assert c.convert("12.13.2024")[0] is not None


def _general(formats, source=HEL, output=HEL) -> TimeConverter:
    converter = TimeConverter(formats, source, output)
    converter._fast = []  # the general parser only
    return converter


WALL_CLOCK_FORMATS = [["%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"], ["%Y-%m-%d %H:%M:%S"], ["%m/%d/%y", "%d.%m.%Y %H:%M:%S"], ["%Y%m%d%H%M%S", "%Y-%m-%dT%H:%M:%S%z"]]
TIME_TEXT = st.one_of(
    st.text(alphabet="0123456789.:/- TZ+", max_size=22),
    st.builds(
        lambda d, m, y, h, mi, s, sep: f"{d}{sep}{m}{sep}{y} {h}:{mi}:{s}",
        st.integers(0, 32), st.integers(0, 13), st.integers(0, 10000), st.integers(0, 25), st.integers(0, 61).map(lambda v: f"{v:02d}"),
        st.integers(0, 61).map(lambda v: f"{v:02d}"), st.sampled_from([".", "/", "-"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(WALL_CLOCK_FORMATS), TIME_TEXT)
def test_fast_and_general_time_parsing_agree(formats, text):
    fast = TimeConverter(formats, HEL, HEL)
    general = _general(formats)
    assert fast.convert(text) == general.convert(text)
    assert fast.convert_text(text) == general.convert(text)[0]


_ISO_TEXT = st.builds(
    lambda y, mo, d, h, mi, s, sep, off: f"{y}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{off}",
    st.sampled_from(["0001", "1999", "2024", "9999"]),
    st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
    st.sampled_from(["T", " "]),
    st.sampled_from(["Z", "z", "+02:00", "-03:30", "+0200", "+14", "+01:75", "+24:00", "-00:00", "", "+5"]),
)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z"]),
    st.sampled_from(["Europe/Helsinki", "UTC", "America/St_Johns"]),
    _ISO_TEXT,
)
def test_iso_fast_path_agrees_with_the_general_path(fmt, zone, text):
    """The fromisoformat shortcut must accept and produce exactly what the general parser does."""
    fast = TimeConverter([fmt], "Europe/Helsinki", zone)
    general = TimeConverter([fmt], "Europe/Helsinki", zone)
    general._fast = []  # the general path only
    assert fast.convert_text(text) == general.convert(text)[0]


# One converter per format list for the whole run, so the remembered date and time halves
# are warm: a hit must give exactly what the general parser gives for the whole text.
_WARM = {tuple(f): TimeConverter(f, HEL, HEL) for f in WALL_CLOCK_FORMATS + [["%Y%m%d %H%M%S"], ["%d\t%m.%Y %H:%M"]]}
_HALVES_TEXT = st.builds(
    lambda date, gap, clock: f"{date}{gap}{clock}",
    st.sampled_from(["5.2.2024", "05.02.2024", "31.2.2024", "2024-02-05", "20240205", "2024125", "5\t2.2024", "5.2.2024\t", "x"]),
    st.sampled_from([" ", "  ", "\t", " \t", ""]),
    st.sampled_from(["6:30:00", "06:30", "25:00:00", "063000", "6:30:60", "6:30:00 ", "", " 6:30"]),
)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(_WARM)), st.one_of(_HALVES_TEXT, TIME_TEXT))
def test_remembered_date_and_time_halves_agree_with_the_general_path(formats, text):
    warm = _WARM[formats]
    expected = _general(list(formats)).convert(text)
    for _ in range(2):  # the second time from what the first one remembered
        assert warm.convert_text(text) == expected[0]
        assert warm.convert(text) == expected


# One converter per format and zone for the whole run, so that the remembered hours are warm: a
# time of a remembered hour must convert exactly as the general parser converts it.
_WARM_ISO = {(fmt, zone): TimeConverter([fmt], "Europe/Helsinki", zone)
             for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z")
             for zone in ("Europe/Helsinki", "UTC", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu")}
_NEAR_CHANGES = st.builds(
    lambda day, h, mi, s, off: f"2024-{day}T{h:02d}:{mi:02d}:{s:02d}{off}",
    st.sampled_from(["03-31", "10-27", "03-10", "11-03", "04-07", "10-06", "01-04"]),
    st.integers(0, 24), st.integers(0, 60), st.integers(0, 60),
    st.sampled_from(["Z", "+02:00", "+03:00", "-03:30", "+0545", "+10:30", "+11", "-00:00", "+01:75"]),
)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(sorted(_WARM_ISO)), st.one_of(_NEAR_CHANGES, _ISO_TEXT))
def test_remembered_iso_hours_agree_with_the_general_path(key, text):
    text = text.replace("T", " ") if key[0] == "%Y-%m-%d %H:%M:%S%z" else text
    general = TimeConverter([key[0]], "Europe/Helsinki", key[1])
    general._fast = []  # the general path only
    assert _WARM_ISO[key].convert_text(text) == general.convert(text)[0]
    assert _WARM_ISO[key].convert_text(text) == general.convert(text)[0]  # now remembered


@pytest.mark.parametrize("other", ["2024-01-04T10:٤١:40+02:00", "2024-01-04T10:41:4²+02:00", "2024-01-04T10:60:00+02:00",
                                   "2024-01-04T10:41:60+02:00", "2024-01-04T10-41:40+02:00", "2024-01-04T10:4:400+02:00",
                                   "2024-01-04T10:05:09+02:00"])
def test_a_remembered_iso_hour_takes_only_what_the_pattern_takes(other):
    warm = TimeConverter(["%Y-%m-%dT%H:%M:%S%z"], "Europe/Helsinki", "Europe/Helsinki")
    assert warm.convert_text("2024-01-04T10:41:40+02:00") == "2024-01-04 10:41:40"
    general = TimeConverter(["%Y-%m-%dT%H:%M:%S%z"], "Europe/Helsinki", "Europe/Helsinki")
    general._fast = []
    assert warm.convert(other) == general.convert(other)
