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


# --- a column at once (convert_column) agrees with convert_text, one text at a time ------------------
#
# Each converter lives for the whole run, so what its column form learned in one example is
# there in the next (as across a file's chunks); a fresh pair checks cold caches, in both orders.

_COLUMN_CONVERTERS = {
    # halves by minute (the time half ends with its seconds), with a second format after it
    "halves": (["%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"], HEL, HEL),
    "halves-compact": (["%Y%m%d %H%M%S"], HEL, HEL),  # by minute, no separator before the seconds
    "halves-no-seconds": (["%d.%m.%Y %H:%M"], HEL, HEL),  # by the whole time of day
    "halves-utc": (["%d.%m.%Y %H:%M:%S"], "UTC", "UTC"),
    "other-zone": (["%d.%m.%Y %H:%M:%S"], "UTC", HEL),  # no fast parser: one by one
    "iso": (["%Y-%m-%dT%H:%M:%S%z", "%d.%m.%Y %H:%M:%S"], HEL, HEL),
    "iso-space": (["%Y-%m-%d %H:%M:%S%z"], HEL, HEL),
    "iso-utc": (["%Y-%m-%dT%H:%M:%S%z"], HEL, "UTC"),
    "iso-lord-howe": (["%Y-%m-%dT%H:%M:%S%z"], HEL, "Australia/Lord_Howe"),  # half-hour summer time
    "iso-kathmandu": (["%Y-%m-%dT%H:%M:%S%z"], HEL, "Asia/Kathmandu"),  # +05:45
    "wall-clock": (["%Y%m%d%H%M%S", "%Y-%m-%dT%H:%M:%S%z"], HEL, HEL),  # a fast parser, no column form
}
_WARM_COLUMNS = {name: TimeConverter(*args) for name, args in _COLUMN_CONVERTERS.items()}

# days around the changes of summer time in Helsinki, New York and Lord Howe, and ordinary ones
_DAYS = st.sampled_from([(2024, 3, 31), (2024, 10, 27), (2024, 3, 10), (2024, 10, 6), (2024, 4, 7),
                         (2024, 1, 4), (2024, 2, 29), (2023, 2, 29), (2024, 12, 31), (9999, 12, 31), (1, 1, 1)])
_ODD_DIGITS = ["١", "٤", "²", "０"]  # non-ASCII digits: \d takes them, the remembered parts never do


@st.composite
def _clock(draw, seconds: bool = True) -> str:
    """'H:MM:SS' or 'HH:MM' (or both kinds), sometimes out of range, rarely with an odd digit."""
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 60)), draw(st.integers(0, 61))
    text = f"{hour}:{minute:02d}" if draw(st.booleans()) else f"{hour:02d}:{minute:02d}"
    if seconds:
        text += f":{second:02d}"
    if draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(_ODD_DIGITS)) + text[at + 1:]
    return text


@st.composite
def _halves_chunk(draw) -> list[str]:
    """A chunk of 'D.M.YYYY H:MM:SS' (the layouts the converters take) with odd values; or, as
    often, with odd texts and layouts among them."""
    mixed = draw(st.booleans())

    def one_text() -> str:
        year, month, day = draw(_DAYS)
        kind = draw(st.integers(0, 12)) if mixed else draw(st.integers(0, 7))
        clock = draw(_clock(seconds=kind != 1))
        if kind == 5:  # odd seconds, or a time shorter than seconds
            return f"{day}.{month}.{year:04d} " + draw(st.sampled_from([clock[:-2] + odd for odd in (
                "6٤", "٤6", "60", "70", "99", "0²", "1", "x0")] + ["6", "", "1:"]))
        if kind <= 7:
            return f"{day}.{month}.{year:04d} {clock}"
        if kind == 8:
            return f"{year:04d}{month:02d}{day:02d} {clock.replace(':', '')}"
        if kind == 9:  # extra, missing or other blanks
            return draw(st.sampled_from([f"{day}.{month}.{year}  {clock}", f"{day}.{month}.{year}\t{clock}",
                                         f"{day}.{month}.{year}{clock}", f" {day}.{month}.{year} {clock}",
                                         f"{day}.{month}.{year} {clock} ", f"{day}.{month}.{year} "]))
        if kind == 10:
            return draw(st.sampled_from(["", " ", "x", "x y", "1.1.2024 1", "1.1.2024 1:0", "1.1.2024 :00:00"]))
        return draw(st.text(alphabet="0123456789.: \t١", max_size=20))

    texts = [one_text() for _ in range(draw(st.integers(0, 40 if mixed else 12)))]
    if len(texts) > 1 and draw(st.integers(0, 3)) == 0:
        # as many spaces as texts, but one text without its time and the next with two: the
        # halves of all joined are the halves of the texts before, each text's own no more
        at = draw(st.integers(0, len(texts) - 2))
        head, _, tail = texts[at].partition(" ")
        texts[at:at + 2] = [head, tail + " " + texts[at + 1]]
    return texts


_OFFSETS = ["+02:00", "+03:00", "Z", "z", "-03:30", "+0545", "+14", "+01:75", "+24:00", "-00:00", "+5"]


@st.composite
def _iso_chunk(draw) -> list[str]:
    """A chunk of texts of one layout and one offset (as a feed's) with odd clocks and the odd
    offset of the same length; or, as often, with other texts among them."""
    mixed = draw(st.booleans())
    offset = draw(st.sampled_from(_OFFSETS))
    others = [other for other in _OFFSETS if len(other) == len(offset)]  # the same width
    separator = draw(st.sampled_from(["T", " "]))

    def one_text() -> str:
        year, month, day = draw(_DAYS)
        kind = draw(st.integers(0, 12)) if mixed else draw(st.integers(0, 11)) % 10
        hour, minute, second = draw(st.integers(0, 24)), draw(st.integers(0, 60)), draw(st.integers(0, 60))
        start = f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}"
        if kind <= 7:
            return f"{start}:{minute:02d}:{second:02d}{offset}"
        if kind == 8:  # another offset of the same length
            return f"{start}:{minute:02d}:{second:02d}{draw(st.sampled_from(others))}"
        if kind == 9:  # an odd clock of the same length
            clock = draw(st.sampled_from([":٤١:40", ":41:4²", ":41:4٤", ":4:400", "-41:40", ":41;40", ":5a:00", ":60:00",
                                          ":00:60", ":6١:00"]))
            return f"{start}{clock}{offset}"
        if kind == 10:  # another layout or length
            other = draw(st.sampled_from(["+02:00", "Z", "+0200", "-10:00", ".5+02:00"]))
            return f"{year:04d}-{month}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{other}"
        return draw(st.one_of(_ISO_TEXT, _NEAR_CHANGES, st.text(alphabet="0123456789-:+TZ ", max_size=28)))

    return [one_text() for _ in range(draw(st.integers(0, 40 if mixed else 12)))]


def _one_by_one(name: str, texts: list[str]) -> list[str | None]:
    reference = TimeConverter(*_COLUMN_CONVERTERS[name])
    return [reference.convert_text(text) for text in texts]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(_COLUMN_CONVERTERS)), st.data())
def test_a_column_converts_as_each_text_alone(name, data):
    texts = data.draw(_iso_chunk() if name.startswith("iso") else _halves_chunk())
    expected = _one_by_one(name, texts)
    # warm: what earlier examples (chunks) left remembered
    assert _WARM_COLUMNS[name].convert_column(texts) == expected
    assert _WARM_COLUMNS[name].convert_column(texts) == expected  # now remembered by this chunk too
    # cold, column first: then one by one from what the column remembered
    cold = TimeConverter(*_COLUMN_CONVERTERS[name])
    assert cold.convert_column(texts) == expected
    assert [cold.convert_text(text) for text in texts] == expected
    # cold, one by one first: then the column from what they remembered
    other = TimeConverter(*_COLUMN_CONVERTERS[name])
    assert [other.convert_text(text) for text in texts] == expected
    assert other.convert_column(texts) == expected
    assert other.convert_column(tuple(texts)) == expected  # the chunk mapper's columns may be tuples


@pytest.mark.parametrize("name, texts, expected", [
    ("halves", ["5.2.2024 6:30:00", "5.2.2024 6:30:59", "05.02.2024 23:59:01", "6.2.2024 6:30", "31.2.2024 6:30:00",
                "5.2.2024 6:30:60", "5.2.2024 24:00:00", "5.2.2024 6:30:0١", "5.2.2024  6:30:00", "x"],
     ["2024-02-05 06:30:00", "2024-02-05 06:30:59", "2024-02-05 23:59:01", "2024-02-06 06:30:00", None,
      None, None, "2024-02-05 06:30:01", "2024-02-05 06:30:00", None]),
    # the day summer time begins: its skipped hour is no time, the rest of the day is
    ("halves", ["31.3.2024 2:59:59", "31.3.2024 3:30:00", "31.3.2024 4:00:00", "27.10.2024 3:30:00"],
     ["2024-03-31 02:59:59", None, "2024-03-31 04:00:00", "2024-10-27 03:30:00"]),
    ("halves-compact", ["20240205 063000", "20240205 063059", "20240205 0630", "20240205 246000"],
     ["2024-02-05 06:30:00", "2024-02-05 06:30:59", None, None]),
    ("iso", ["2024-01-04T10:41:40+02:00", "2024-01-04T10:00:00+02:00", "2024-01-04T10:59:59+02:00",
             "2024-01-04T11:05:09+02:00", "2024-01-04T10:60:00+02:00", "2024-01-04T10:٤١:40+02:00", "5.2.2024 6:30:00"],
     # the pattern's \d takes any digit, and so does the general path: not the remembered hour's check
     ["2024-01-04 10:41:40", "2024-01-04 10:00:00", "2024-01-04 10:59:59", "2024-01-04 11:05:09", None,
      "2024-01-04 10:41:40", "2024-02-05 06:30:00"]),
    # summer time begins at 01:00 UTC; an offset of 75 minutes is none
    ("iso", ["2024-03-31T00:30:00Z", "2024-03-31T01:30:00Z", "2024-03-31T02:30:00+02:00", "2024-01-01T00:00:00+01:75"],
     ["2024-03-31 02:30:00", "2024-03-31 04:30:00", "2024-03-31 02:30:00", None]),
    ("iso-kathmandu", ["2024-01-04T10:41:40+02:00", "2024-01-04T10:41:40Z"], ["2024-01-04 14:26:40", "2024-01-04 16:26:40"]),
])
def test_a_column_exactly(name, texts, expected):
    for _ in range(2):  # then from what the first time remembered
        assert TimeConverter(*_COLUMN_CONVERTERS[name]).convert_column(texts) == expected
        assert _WARM_COLUMNS[name].convert_column(texts) == expected
    assert TimeConverter(*_COLUMN_CONVERTERS[name]).convert_column([]) == []


_REGULAR = {"iso": ["2024-01-04T10:41:40+02:00", "2024-01-04T10:00:00+02:00", "2024-01-04T11:59:59+02:00"],
            "halves": ["5.2.2024 6:30:00", "5.2.2024 6:31:59", "6.2.2024 23:00:01"]}


@pytest.mark.parametrize("name, odd, expected", [
    # each of the column-wide checks, failed by one text among texts of remembered hours
    ("iso", "2024-01-04T10:41:40+03:00", "2024-01-04 09:41:40"),  # another offset of the same length
    ("iso", "2024-01-04T10:60:00+02:00", None),
    ("iso", "2024-01-04T10:00:60+02:00", None),
    ("iso", "2024-01-04T10:41;40+02:00", None),
    ("iso", "2024-01-04T10-41:40+02:00", None),
    ("iso", "2024-01-04T10:41:4²+02:00", None),  # not a digit to \d
    ("iso", "2024-01-04T10:41:4٤+02:00", "2024-01-04 10:41:44"),  # a digit to \d: the general path's answer
    ("iso", "2024-01-04T10:4١:40+02:00", "2024-01-04 10:41:40"),
    ("iso", "2024-01-04T10:41:40+02:0", None),  # another length
    ("iso", "2024-01-04T10:41:40+02:00x", None),
    ("halves", "5.2.2024 6:30:70", None),
    ("halves", "5.2.2024 6:30:6٤", None),
    ("halves", "5.2.2024 6:30:0٤", "2024-02-05 06:30:04"),
    ("halves", "5.2.2024 6:30:0²", None),
    ("halves", "5.2.2024 6:30:5x", None),
    ("halves", "5.2.2024 6:3٤:00", "2024-02-05 06:34:00"),
    ("halves", "5.2.2024 6:60:00", None),  # a minute or an hour that is none, not learned
    ("halves", "5.2.2024 24:00:00", None),
    ("halves", "5.2.2024 6:30", "2024-02-05 06:30:00"),  # the second format
    ("halves", "5.2.2024 1", None),  # a time shorter than seconds
    ("halves", "5.2.2024  6:30:00", "2024-02-05 06:30:00"),  # two spaces
])
def test_one_odd_text_in_a_column_gets_its_own_answer(name, odd, expected):
    converter = TimeConverter(*_COLUMN_CONVERTERS[name])
    converter.convert_column(_REGULAR[name])
    regular = _REGULAR[name] * 2
    for at in (0, len(regular) // 2, len(regular)):  # first, among the others, last
        texts = regular[:at] + [odd] + regular[at:]
        assert converter.convert_column(texts) == _one_by_one(name, texts)
        assert converter.convert_column(texts)[at] == expected


@pytest.mark.parametrize("texts", [
    ["5.2.2024 1", "5.2.2024 6:30:70"],  # the short one shifts the seconds of the others by one
    ["5.2.2024", "6:30:00 5.2.2024 6:30:00"],  # two texts with two spaces, though not one each
])
def test_texts_that_look_like_a_column_of_halves_only_together(texts):
    converter = TimeConverter(*_COLUMN_CONVERTERS["halves"])
    converter.convert_column(_REGULAR["halves"])
    assert converter.convert_column(texts) == [None, None]


@pytest.mark.parametrize("name, first, second", [
    # the next chunk has new times of day (new hours), in the same layout: learned for all at once
    ("halves", ["5.2.2024 6:30:00", "6.2.2024 7:02:59"],
     ["6.2.2024 6:30:01", "5.2.2024 8:15:15", "6.2.2024 23:59:00", "5.2.2024 0:00:00"]),
    ("iso", ["2024-01-04T10:41:40+02:00", "2024-01-04T10:42:40+02:00", "2024-01-04T11:00:00+02:00"],
     ["2024-01-04T10:43:07+02:00", "2024-01-04T11:59:59+02:00", "2024-01-04T10:00:00+02:00"]),
])
def test_a_column_of_remembered_times_needs_no_text_alone(name, first, second):
    # the point of the column form: once a chunk has taught the converter a layout and its dates,
    # the next converts in the column loops, with no call for a text alone
    converter = TimeConverter(*_COLUMN_CONVERTERS[name])
    converter.convert_column(first)
    alone: list[str] = []
    convert_text = converter.convert_text

    def counted(text: str) -> str | None:
        alone.append(text)
        return convert_text(text)

    converter.convert_text = counted  # type: ignore[method-assign]  # counts the calls for one text
    assert converter.convert_column(second) == _one_by_one(name, second)
    assert alone == []
