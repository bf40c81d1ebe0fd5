"""Date/time parsing for feed formats, written out as Ropo's 'YYYY-MM-DD HH:MM:SS'.

A time without an offset is a wall-clock time in the source zone. One that the zone skips (in
Helsinki 2024-03-31 03:00-03:59: the clocks move from 03:00 to 04:00) never happened, so it is
invalid, with a message that says so. One that the zone has twice (2024-10-27 03:00-03:59) is
accepted as written: the contract's time has no offset either, so in the same zone it is sent
unchanged, and converted to another zone it is taken as the first of the two (fold 0).

Pure. Formats use strftime codes; each is compiled once into a regular expression, which is
about twice as fast as datetime.strptime and lets single-digit days and hours ('5.2.2024
6:30:00') through the way legacy exports write them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from batch.errors import ConfigurationError

# code -> (regex group, description for error messages)
_CODES = {
    "Y": (r"(?P<Y>\d{4})", "4-digit year"),
    "y": (r"(?P<y>\d{2})", "2-digit year"),
    "m": (r"(?P<m>\d{1,2})", "month"),
    "d": (r"(?P<d>\d{1,2})", "day"),
    "H": (r"(?P<H>\d{1,2})", "hour 0-23"),
    "I": (r"(?P<I>\d{1,2})", "hour 1-12"),
    "p": (r"(?P<p>[AaPp][Mm])", "AM/PM"),
    "M": (r"(?P<M>\d{2})", "minute"),
    "S": (r"(?P<S>\d{2})", "second"),
    "f": (r"(?P<f>\d{1,9})", "fraction of a second"),
    "z": (r"(?P<z>Z|z|[+-]\d{2}(?::?\d{2})?)", "UTC offset (Z, +02:00)"),
}


class FormatError(ValueError, ConfigurationError):
    """A format string that cannot be compiled (a mapping's time format)."""


def compile_format(fmt: str) -> re.Pattern[str]:
    pattern, seen = _translate(fmt)
    if not ({"Y", "y"} & seen) or "m" not in seen or "d" not in seen:
        raise FormatError("needs a year (%Y or %y), a month (%m) and a day (%d)")
    if "I" in seen and "p" not in seen:
        raise FormatError("%I (12-hour clock) needs %p (AM/PM)")
    return re.compile(pattern)


def _translate(fmt: str) -> tuple[str, set[str]]:
    """A format -> (regular expression, the codes it uses)."""
    parts: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(fmt):
        char = fmt[i]
        if char == "%":
            if i + 1 >= len(fmt):
                raise FormatError("ends with a lone '%'")
            code = fmt[i + 1]
            if code == "%":
                parts.append("%")
            elif code in _CODES:
                if code in seen:
                    raise FormatError(f"%{code} appears twice")
                seen.add(code)
                parts.append(_CODES[code][0])
            else:
                raise FormatError(f"%{code} is not supported (use {', '.join('%' + c for c in _CODES)})")
            i += 2
        elif char.isspace():
            # a run of blanks is one \s+: two in a row ('\s+\s+') split a run of spaces in the
            # value every possible way before failing, exponential in the run's length
            while i < len(fmt) and fmt[i].isspace():
                i += 1
            parts.append(r"\s+")
        else:
            parts.append(re.escape(char))
            i += 1
    return "".join(parts), seen


class TimeConverter:
    """Parses a value with the first matching format; returns (text, None) or (None, reason)."""

    _CACHE_LIMIT = 50_000

    def __init__(self, formats: list[str], source_zone: str, output_zone: str):
        self.formats = list(formats)
        self._patterns = [compile_format(fmt) for fmt in formats]
        self._source = ZoneInfo(source_zone)
        self._source_name = source_zone
        self._output = ZoneInfo(output_zone)
        self._same_zone = source_zone == output_zone
        self._cache: dict[str, tuple[str | None, str | None]] = {}
        # the leading formats that have a fast parser get it (see _wall_clock_parser, _iso_parser)
        self._fast = []
        for fmt, pattern in zip(self.formats, self._patterns):
            parser = _wall_clock_parser(pattern, fmt, self._source) if self._same_zone else None
            parser = parser or _iso_parser(fmt, pattern, self._output)
            if parser is None:
                break  # keep the formats' order: a later fast one must not win over this one
            self._fast.append(parser)

    def expected(self) -> str:
        return "a time as " + " or ".join(repr(f) for f in self.formats)

    def convert_text(self, text: str) -> str | None:
        """Just the result (None when the text is not a valid time): the mapper's fast path."""
        for fast in self._fast:
            result = fast(text)
            if result is _NOT_REAL:
                break  # the first format that matches decides, as in the general path
            if result is not None:
                return result
        return self.convert(text)[0]

    def convert(self, text: str) -> tuple[str | None, str | None]:
        for fast in self._fast:
            result = fast(text)
            if result is _NOT_REAL:
                break  # the first format that matches decides, as in the general path
            if result is not None:
                return result, None
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        converted = self._convert(text)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[text] = converted
        return converted

    def _convert(self, text: str) -> tuple[str | None, str | None]:
        for pattern in self._patterns:
            match = pattern.fullmatch(text)
            if match is not None:
                return self._from_parts(match.groupdict())
        return None, f"expected {self.expected()}"

    def _from_parts(self, parts: dict[str, str]) -> tuple[str | None, str | None]:
        try:
            year = int(parts["Y"]) if parts.get("Y") else 2000 + int(parts["y"])
            hour = int(parts.get("H") or 0)
            if parts.get("I"):
                hour = int(parts["I"]) % 12 + (12 if parts["p"].lower() == "pm" else 0)
            fraction = parts.get("f")
            micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
            moment = datetime(
                year, int(parts["m"]), int(parts["d"]), hour, int(parts.get("M") or 0), int(parts.get("S") or 0), micro
            )
        except ValueError as exc:  # e.g. 31.2.2024 or hour 25
            return None, f"not a real date/time ({exc})"
        offset = parts.get("z")
        if offset is None:
            skipped = skipped_time(moment, self._source, self._source_name)
            if skipped is not None:
                return None, skipped
        try:
            if offset is not None:
                moment = moment.replace(tzinfo=_parse_offset(offset)).astimezone(self._output)
            elif not self._same_zone:
                moment = moment.replace(tzinfo=self._source).astimezone(self._output)
        except (ValueError, OverflowError) as exc:  # offset +25:00; year 1 or 9999 pushed out of range
            return None, f"not a real date/time ({exc})"
        return _format(moment), None


def skipped_time(moment: datetime, zone: ZoneInfo, zone_name: str) -> str | None:
    """Why the naive wall-clock `moment` does not exist in `zone`, or None when it does.

    A skipped time does not survive the round trip through UTC: 03:30 read with the offset
    before the change (+02:00) is 01:30 UTC, which is 04:30 in summer time (+03:00).
    """
    local = moment.replace(tzinfo=zone)
    if local.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) == moment:
        return None
    before = local.utcoffset() or timedelta(0)
    after = local.replace(fold=1).utcoffset() or timedelta(0)
    # the change happens between these two instants (UTC): find it to the second
    low, high = moment - after, moment - before
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.replace(tzinfo=timezone.utc).astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return (
        f"{_format(moment)} does not exist in {zone_name}: the clocks move forward from "
        f"{_clock(high + before)} to {_clock(high + after)} on {moment.date().isoformat()}, skipping that time"
    )


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M") if moment.second == 0 else moment.strftime("%H:%M:%S")


def _has_skipped_times(year: int, month: int, day: int, zone: ZoneInfo) -> bool:
    """Does the zone skip wall-clock times on this date (a change to summer time)?"""
    start = datetime(year, month, day, tzinfo=zone)
    try:
        end = start + timedelta(days=1)
    except OverflowError:  # 9999-12-31
        end = start
    return (end.utcoffset() or timedelta(0)) > (start.utcoffset() or timedelta(0))


_NOT_REAL: Any = object()  # a wall-clock parser's "this format matched, but not a real date/time"
_SKIPS: Any = object()  # a date on which the zone skips wall-clock times: never cached as a real date
_WALL_CLOCK_CODES = {"Y", "y", "m", "d", "H", "M", "S"}


def _wall_clock_parser(
    pattern: re.Pattern[str], fmt: str, zone: ZoneInfo
) -> Callable[[str], str | None] | None:
    """For a format with no offset, no 12-hour clock and no fraction, in an unchanged zone:
    text -> 'YYYY-MM-DD HH:MM:SS' or _NOT_REAL (matched, but no real date/time) or None (no
    match; the general path then explains why). The date and the time of day are checked and
    written once each and remembered — an export has at most a few hundred distinct dates and
    86,400 times of day. A 'DATE TIME' format (one space between a date-only and a time-only
    half, the usual case) looks its two halves up before any regular expression runs. On a
    date when the zone skips times (the change to summer time) the general path decides.
    """
    names = set(pattern.groupindex)
    if not names <= _WALL_CLOCK_CODES:
        return None
    index = pattern.groupindex
    year_group, two_digit = (index["Y"], False) if "Y" in index else (index["y"], True)
    month_group, day_group = index["m"], index["d"]
    hour_group, minute_group, second_group = index.get("H"), index.get("M"), index.get("S")
    dates: dict[tuple[str, str, str], str | None] = {}
    times: dict[tuple, str | None] = {}

    def date_text(year: str, month: str, day: str) -> str | None:
        try:
            moment = datetime(int(year) + (2000 if two_digit else 0), int(month), int(day))
        except ValueError:
            return None
        if _has_skipped_times(moment.year, moment.month, moment.day, zone):
            return _SKIPS  # the general path checks each time of this date
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"

    def time_text(hour: str | None, minute: str | None, second: str | None) -> str | None:
        h, m, s = int(hour or 0), int(minute or 0), int(second or 0)
        if h > 23 or m > 59 or s > 59:
            return None
        return f"{h:02d}:{m:02d}:{s:02d}"

    def parse(text: str) -> str | None:
        match = pattern.fullmatch(text)
        if match is None:
            return None
        groups = match.groups()
        date_key = (groups[year_group - 1], groups[month_group - 1], groups[day_group - 1])
        date = dates.get(date_key, False)
        if date is False:
            date = date_text(*date_key)
            if len(dates) < 100_000:
                dates[date_key] = date
        time_key = (
            groups[hour_group - 1] if hour_group else None,
            groups[minute_group - 1] if minute_group else None,
            groups[second_group - 1] if second_group else None,
        )
        clock = times.get(time_key, False)
        if clock is False:
            clock = time_text(*time_key)
            if len(times) < 200_000:
                times[time_key] = clock
        if date is None or clock is None or date is _SKIPS:
            return _NOT_REAL  # matched, so no later format may: the general path says why
        return f"{date} {clock}"

    halves = _split_halves(fmt)
    if halves is None:
        return parse
    date_half, time_half = halves
    known_dates: dict[str, str] = {}  # a text that is exactly a real date of date_half -> its output
    known_times: dict[str, str] = {}  # likewise for time_half

    # the time half's groups, for time_text
    clock_groups = [name if name in time_half.groupindex else None for name in ("H", "M", "S")]

    def parse_halves(text: str) -> str | None:
        head, _, tail = text.partition(" ")
        date = known_dates.get(head)
        if date is not None:
            clock = known_times.get(tail)
            if clock is not None:
                return date + " " + clock
            # a known date and a time of day not seen yet (a year's export meets most of the
            # 86,400 times of day for the first time on a date it knows already):
            # the text is exactly date + ' ' + time, which the whole format matches with these
            # very groups, so the time half alone decides (a quarter of the cost of `parse`)
            found = time_half.fullmatch(tail)
            if found is not None:
                clock = time_text(*(found[name] if name else None for name in clock_groups))
                if clock is not None:
                    if len(known_times) < 200_000:
                        known_times[tail] = clock
                    return date + " " + clock
        result = parse(text)
        if result is not None and result is not _NOT_REAL:
            # remember each half only when it alone is exactly a date (a time), so that a
            # hit above means: the whole text matches the format, with this very result
            if head not in known_dates and len(known_dates) < 100_000 and date_half.fullmatch(head):
                known_dates[head] = result[:10]
            if tail not in known_times and len(known_times) < 200_000 and time_half.fullmatch(tail):
                known_times[tail] = result[11:]
        return result

    return parse_halves


def _split_halves(fmt: str) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    """'%d.%m.%Y %H:%M:%S' -> the patterns of its date half and its time half; None unless
    the format is one date-only part, one space, one time-only part."""
    date_fmt, space, time_fmt = fmt.partition(" ")
    if not space or " " in time_fmt:
        return None
    date_pattern, date_codes = _translate(date_fmt)
    time_pattern, time_codes = _translate(time_fmt)
    if not date_codes <= {"Y", "y", "m", "d"} or not time_codes <= {"H", "M", "S"}:
        return None
    return re.compile(date_pattern), re.compile(time_pattern)


_ISO_FORMATS = {"%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z"}


def _iso_parser(fmt: str, pattern: re.Pattern[str], output: ZoneInfo) -> Callable[[str], str | None] | None:
    """ISO 8601 times with an offset ('2024-01-04T10:41:40+02:00', '...Z'): the strict pattern
    decides what is accepted, then the C-implemented datetime.fromisoformat does the parsing —
    three times faster than assembling the parts by hand. None where it does not apply."""
    if fmt not in _ISO_FORMATS:
        return None
    try:
        datetime.fromisoformat("2024-01-04T10:41:40Z")
    except ValueError:  # Python 3.10 knows no 'Z': the general path handles these
        return None

    def exact(text: str, match: re.Match[str]) -> str | None:
        offset = match.group("z").replace(":", "")
        if len(offset) == 5 and offset[3:] > "59":
            return None  # fromisoformat would take +01:75; the general path refuses it
        try:
            moment = datetime.fromisoformat(text)
            return _format(moment.astimezone(output))
        except (ValueError, OverflowError):
            return None  # the general path says why

    # Most of a feed's times share their hour and offset with others: the text up to the hour
    # plus the offset ('2024-01-04T10' '+02:00') -> the output up to the hour ('2024-01-04 10'),
    # kept only for an hour that moves whole in the output zone (its first and last second keep
    # their minutes and seconds and land in the same output hour: no offset change inside it, no
    # offset of 30 or 45 minutes). Any minute and second of such an hour is the output hour
    # plus the text's own ':MM:SS' (~0.4 us instead of ~1.5).
    # Only texts of the usual layout are remembered ('YYYY-MM-DDTHH' is 13 characters, the
    # offset starts at 19), so a text whose first 13 characters and offset make a known key is
    # exactly a remembered text with another ':MM:SS': with ASCII digits there, the pattern
    # matches it too, and no regular expression needs to run.
    hours: dict[str, str] = {}

    def parse(text: str) -> str | None:
        known = hours.get(text[:13] + text[19:])
        if known is not None:
            clock = text[13:19]  # six characters: a known key is at least one longer than 13
            minute, second = clock[1:3], clock[4:6]
            if (clock[0] == ":" == clock[3] and clock.isascii() and (minute + second).isdigit()
                    and minute < "60" and second < "60"):
                return known + clock
        match = pattern.fullmatch(text)
        if match is None:
            return None
        result = exact(text, match)
        if (result is not None and match.end("H") == 13 and match.start("z") == 19 and len(hours) < 100_000
                and text[:13] + text[19:] not in hours):
            first = _whole(text[:13] + ":00:00" + text[19:])
            last = _whole(text[:13] + ":59:59" + text[19:])
            if first and last and first[13:] == ":00:00" and last[13:] == ":59:59" and first[:13] == last[:13]:
                hours[text[:13] + text[19:]] = first[:13]
        return result

    def _whole(text: str) -> str | None:
        match = pattern.fullmatch(text)
        return None if match is None else exact(text, match)

    return parse


def _format(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS' (the contract's time), through the C-implemented isoformat
    (0.8 us; strftime 1.5, an f-string 1.1)."""
    return moment.isoformat(" ", "seconds")[:19]


def _parse_offset(text: str) -> timezone:
    if text in ("Z", "z"):
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"UTC offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
