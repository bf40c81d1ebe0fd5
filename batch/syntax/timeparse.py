"""Date/time parsing for feed formats, written out as Ropo's 'YYYY-MM-DD HH:MM:SS'.

A time without an offset is a wall-clock time in the source zone. One that the zone skips (in
Helsinki 2024-03-31 03:00-03:59: the clocks move from 03:00 to 04:00) never happened, so it is
invalid, with a message that says so. One that the zone has twice (2024-10-27 03:00-03:59) is
accepted as written: the contract's time has no offset either, so in the same zone it is sent
unchanged, and converted to another zone it is taken as the first of the two (fold 0).

Pure. Formats use strftime codes; each is compiled once into a regular expression, which is
about twice as fast as datetime.strptime and lets single-digit days and hours ('5.2.2024
6:30:00') through the way legacy exports write them.

A whole column of a chunk converts at once (`TimeConverter.convert_column`): the texts that the
first format's remembered parts already cover are looked up with loops that run in C (`map` over
a dict's `get`, `str.join` and `split`, extended slices of the joined texts) instead of one
Python call a value; the rest go one by one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from itertools import chain, compress, repeat
from operator import add, attrgetter, contains, itemgetter, le, not_
from typing import Any, NamedTuple
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
        self._fast: list[Callable[[str], str | None]] = []
        # the first format's column form, if it has one: only the first, since the first format
        # that matches decides (a text it takes must get its result, whatever a later one says)
        self._column: _Column | None = None
        for fmt, pattern in zip(self.formats, self._patterns):
            parser = _wall_clock_parser(pattern, fmt, self._source) if self._same_zone else None
            parser = parser or _iso_parser(fmt, pattern, self._output)
            if parser is None:
                break  # keep the formats' order: a later fast one must not win over this one
            if not self._fast:
                self._column = parser.column
            self._fast.append(parser.parse)

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

    def convert_column(self, texts: Sequence[str]) -> list[str | None]:
        """`[convert_text(text) for text in texts]`, a chunk's column at once: the mapper's
        column-by-column fast path.

        Why: for nearly every text of a column, the first format's parser has remembered what
        it needs (the date and the minute; the hour and the offset), or learns it for the
        column at once; the column form then looks all texts up in loops that run in C, with no
        Python call a text. The same answer: it takes a text only where that parser, called
        alone, returns a result built the same way from parts it checks the same way (see the
        column forms in _wall_clock_parser and _iso_parser); every other text (an invalid one,
        or anything in doubt) goes through convert_text alone.
        """
        if self._column is None:
            return list(map(self.convert_text, texts))
        return self._column(texts, self.convert_text)

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

# texts, and convert_text for one text -> each text's convert_text, done for a column at once
_Column = Callable[[Sequence[str], Callable[[str], "str | None"]], "list[str | None]"]
# for the column forms: parts of each text, and checks of all of them: ASCII digits 0-5 (0-9)
_HEAD = itemgetter(slice(0, 13))  # an ISO text up to its hour
_CLOCK = itemgetter(slice(13, 19))  # its ':MM:SS'
_LAST_TWO = itemgetter(slice(-2, None))
_BUT_LAST_TWO = itemgetter(slice(0, -2))
_TENS = re.compile("[0-5]*").fullmatch
_DIGITS = re.compile("[0-9]*").fullmatch


class _FastParser(NamedTuple):
    parse: Callable[[str], str | None]  # text -> result, _NOT_REAL, or None (see _wall_clock_parser)
    column: _Column | None  # its column form, for when it is the first format


def _first_of_each_new(keys: list[str], known: dict[str, Any], texts: Sequence[str],
                       one: Callable[[str], str | None]) -> None:
    """one(text) for the first text of each key that `known` lacks, so that `one` remembers it
    (where it can) before the column's lookups look again: in a feed sorted by time, a day's
    first chunk meets its date, and its other texts then find it.

    The keys come from a set difference and their first positions from list.index, in C: a
    Python call for each new key, not for each text."""
    for i in sorted(map(keys.index, set(keys).difference(known))):
        one(texts[i])


def _redo(results: list[str | None], texts: Sequence[str], one: Callable[[str], str | None],
          *lookups: list[str]) -> None:
    """results[i] = one(texts[i]) wherever a lookup found nothing ('') for text i.

    The positions come from `compress`, in C; only the misses cost a Python call."""
    positions = range(len(texts))
    for i in sorted(set(chain.from_iterable(compress(positions, map(not_, found)) for found in lookups))):
        results[i] = one(texts[i])


def _wall_clock_parser(pattern: re.Pattern[str], fmt: str, zone: ZoneInfo) -> _FastParser | None:
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
        return _FastParser(parse, None)
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

    # The column form's own table of times of day, filled by learn_clocks: a tail -> ' HH:MM:SS'.
    # When the time half ends with its seconds (the usual '%H:%M:%S'), a tail without them
    # -> ' HH:MM:' instead: a day's 1,440 minutes then cover all 86,400 times of day, learned in
    # a feed's first day and looked up in a small table (a large one costs cache misses).
    by_minute = time_half.pattern.endswith(r"(?P<S>\d{2})")
    column_clocks: dict[str, str] = {}
    clock_numbers = [itemgetter(name) if name else None for name in clock_groups]

    def column(texts: Sequence[str], one: Callable[[str], str | None]) -> list[str | None]:
        """parse_halves for a column, where each text has exactly one space.

        Then the texts joined by spaces split on spaces into exactly each text's two halves, in
        order: the very head and tail that parse_halves' partition gives. A text whose head is a
        remembered date and whose tail a learned time of day gets date + ' ' + clock: what
        parse_halves returns for a known date and a tail that time_half matches. By minute, the
        tail's last two characters are checked for all texts at once (ASCII digits 00-59): then
        time_half matches the tail exactly as it matches the minute's tail with '00' (its
        seconds group is its last two characters; the rest matches the same text before them)
        and time_text's clock is the minute's with these seconds. The other texts (a '' from a
        lookup: no remembered value is empty) go through `one`; with any text of another shape,
        or seconds out of the check, every text does.
        """
        count = len(texts)
        joined = " ".join(texts)
        # exactly one each: at least one in each text, and as many as texts (plus the joins)
        if joined.count(" ") != 2 * count - 1 or not all(map(contains, texts, repeat(" "))):
            return list(map(one, texts))
        halves = joined.split(" ")
        heads, keys = halves[0::2], halves[1::2]
        seconds: list[str] = []
        if by_minute:
            seconds = list(map(_LAST_TWO, keys))
            digits = "".join(seconds)  # shorter than two a text when any tail is shorter than two
            if len(digits) != 2 * count or not _TENS(digits[0::2]) or not _DIGITS(digits[1::2]):
                return list(map(one, texts))
            keys = list(map(_BUT_LAST_TWO, keys))
        dates = list(map(known_dates.get, heads, repeat("")))
        if "" in dates:  # a new date: remembered from its first text, then looked up again
            _first_of_each_new(heads, known_dates, texts, one)
            dates = list(map(known_dates.get, heads, repeat("")))
        clocks = list(map(column_clocks.get, keys, repeat("")))
        if "" in clocks:
            learn_clocks(sorted(set(keys).difference(column_clocks)))
            clocks = list(map(column_clocks.get, keys, repeat("")))
        results: list[str | None] = list(map(add, map(add, dates, clocks), seconds) if by_minute
                                         else map(add, dates, clocks))
        if "" in dates or "" in clocks:
            _redo(results, texts, one, dates, clocks)
        return results

    def learn_clocks(keys: list[str]) -> None:
        """column_clocks for these keys (none of them known yet): time_half's match of each tail
        (by minute, of the key + '00') and time_text's clock, for all keys at once; a key that
        does not match, or whose clock is not a time of day, is left out.

        Why: a year's export meets most of the 86,400 times of day for the first time in its
        first months, and parse_halves' known-date branch costs ~3 us a new one through
        convert_text; here the match, the numbers, their check and the clock each run as one
        loop in C. The same clock: int() of the same groups, the same limits, the same
        zero-padded digits.
        """
        keys = keys[:max(200_000 - len(column_clocks), 0)]
        found = list(filter(None, map(time_half.fullmatch, map(add, keys, repeat("00")) if by_minute else keys)))
        if not found:
            return
        numbers = [list(map(int, map(group, found))) if group else [0] * len(found) for group in clock_numbers]
        hours_, minutes, seconds = numbers
        if max(hours_) > 23 or max(minutes) > 59 or max(seconds) > 59:
            real = list(map(all, zip(map(le, hours_, repeat(23)), map(le, minutes, repeat(59)),
                                     map(le, seconds, repeat(59)))))
            found = list(compress(found, real))
            hours_, minutes, seconds = (list(compress(number, real)) for number in numbers)
        tails = map(attrgetter("string"), found)
        clocks = map(" {:02d}:{:02d}:{:02d}".format, hours_, minutes, seconds)
        if by_minute:
            column_clocks.update(zip(map(_BUT_LAST_TWO, tails), map(_BUT_LAST_TWO, clocks)))
        else:
            column_clocks.update(zip(tails, clocks))

    return _FastParser(parse_halves, column)


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
_HOUR_BUT_A_SECOND = timedelta(minutes=59, seconds=59)


def _iso_parser(fmt: str, pattern: re.Pattern[str], output: ZoneInfo) -> _FastParser | None:
    """ISO 8601 times with an offset ('2024-01-04T10:41:40+02:00', '...Z'): the strict pattern
    decides what is accepted, then the C-implemented datetime.fromisoformat does the parsing —
    three times faster than assembling the parts by hand. None where it does not apply."""
    if fmt not in _ISO_FORMATS:
        return None
    try:
        datetime.fromisoformat("2024-01-04T10:41:40Z")
    except ValueError:  # Python 3.10 knows no 'Z': the general path handles these
        return None

    def aware(text: str, match: re.Match[str]) -> datetime | None:
        offset = match.group("z").replace(":", "")
        if len(offset) == 5 and offset[3:] > "59":
            return None  # fromisoformat would take +01:75; the general path refuses it
        try:
            return datetime.fromisoformat(text)
        except (ValueError, OverflowError):
            return None  # the general path says why

    def exact(text: str, match: re.Match[str]) -> str | None:
        moment = aware(text, match)
        if moment is None:
            return None
        try:
            return _format(moment.astimezone(output))
        except (ValueError, OverflowError):
            return None  # the general path says why

    # Most of a feed's times share their hour and offset with others: the offset, then the text up
    # to the hour ('+02:00' -> '2024-01-04T10') -> the output up to the hour ('2024-01-04 10'),
    # kept only for an hour that moves whole in the output zone (its first and last second keep
    # their minutes and seconds and land in the same output hour: no offset change inside it, no
    # offset of 30 or 45 minutes). Any minute and second of such an hour is the output hour
    # plus the text's own ':MM:SS' (~0.4 us instead of ~1.5).
    # Only texts of the usual layout are remembered ('YYYY-MM-DDTHH' is 13 characters, the
    # offset starts at 19), so a text whose offset from 19 on and first 13 characters are known
    # is exactly a remembered text with another ':MM:SS': with ASCII digits there, the pattern
    # matches it too, and no regular expression needs to run.
    hours: dict[str, dict[str, str]] = {}
    remembered = 0

    def parse(text: str) -> str | None:
        by_head = hours.get(text[19:])  # never '': an offset has at least one character
        known = None if by_head is None else by_head.get(text[:13])
        if known is not None:
            clock = text[13:19]  # six characters: the text goes on after 19
            minute, second = clock[1:3], clock[4:6]
            if (clock[0] == ":" == clock[3] and clock.isascii() and (minute + second).isdigit()
                    and minute < "60" and second < "60"):
                return known + clock
        match = pattern.fullmatch(text)
        if match is None:
            return None
        result = exact(text, match)
        if (result is not None and match.end("H") == 13 and match.start("z") == 19
                and text[:13] not in hours.get(text[19:], {})):
            remember(text[:13], text[19:])
        return result

    def remember(head: str, offset: str) -> None:
        """hours[offset][head] = the output up to the hour, when the hour moves whole: its first
        second is a text of the usual layout, and it and the hour's last second convert with
        their minutes and seconds into one output hour. (Then so does any text with this head
        and offset and a real ':MM:SS'.) The last second is the first's moment 59:59 later:
        exactly what its own text reads as (the same offset, the same date and hour)."""
        nonlocal remembered
        if remembered >= 100_000:
            return
        text = head + ":00:00" + offset
        match = pattern.fullmatch(text)
        if match is None or match.end("H") != 13 or match.start("z") != 19:
            return
        moment = aware(text, match)
        if moment is None:
            return
        try:
            first = moment.astimezone(output)
            last = (moment + _HOUR_BUT_A_SECOND).astimezone(output)
        except (ValueError, OverflowError):
            return
        if (first.minute == first.second == 0 and last.minute == last.second == 59
                and (first.year, first.month, first.day, first.hour) == (last.year, last.month, last.day, last.hour)):
            hours.setdefault(offset, {})[head] = _format(first)[:13]
            remembered += 1

    def column(texts: Sequence[str], one: Callable[[str], str | None]) -> list[str | None]:
        """parse for a column whose texts all have one length and the first text's offset (the
        usual case: one feed, one zone, one season).

        Then the texts joined end to end hold each text's character k at k, k + width, ...: the
        extended slice joined[k::width] is column k of all texts, so one comparison for each
        character of the offset checks that every text has it, and three checks cover every
        clock ':MM:SS' as parse checks one (':' at 0 and 3, ASCII digits, minute and second
        below 60: a first digit 0-5). A text whose hour is remembered for that offset gets
        known + clock, as from parse; the others (a '' from the lookup: no remembered value is
        empty) go through `one`. When any text differs in length or offset, or any clock fails
        the check, every text goes through `one`.
        """
        if not texts:
            return []
        width = len(texts[0])
        offset = texts[0][19:]
        count = len(texts)
        if not offset or set(map(len, texts)) != {width}:
            return list(map(one, texts))
        joined = "".join(texts)
        if (any(joined[k::width] != char * count for k, char in enumerate(offset, 19))
                or joined[13::width] + joined[16::width] != ":" * (2 * count)
                or not _TENS(joined[14::width] + joined[17::width])
                or not _DIGITS(joined[15::width] + joined[18::width])):
            return list(map(one, texts))
        heads = list(map(_HEAD, texts))
        knowns = list(map(hours.get(offset, {}).get, heads, repeat("")))
        if "" in knowns:
            # hours not remembered yet (in a feed sorted by time, most of a chunk's hours are
            # new): each remembered once here, then looked up again, instead of by its first text
            for head in sorted(set(heads).difference(hours.get(offset, {}))):
                remember(head, offset)
            knowns = list(map(hours.get(offset, {}).get, heads, repeat("")))
        results: list[str | None] = list(map(add, knowns, map(_CLOCK, texts)))
        if "" in knowns:
            _redo(results, texts, one, knowns)
        return results

    return _FastParser(parse, column)


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
