"""Fixed-width exports (mainframe / COBOL record layouts) -> chunks of records.

Two layouts: one record a line (CR, LF or CRLF; EBCDIC's NL too), or records of `record_length`
bytes one after the other with no separators (a dataset transferred in binary, RECFM=F/FB). Any
encoding Python knows decodes them, EBCDIC code pages (cp037, cp500, cp1140) included.

Nothing is cut without a word: a record with data past the last column of the layout, and a
file that ends inside a record, are invalid records with their position (blanks and NULs past
the layout are padding, not data). A banner or trailer line far longer than the layout is a
file-level error: that is a file without line separators read one line at a time, where
skipping "the first line" would skip every record.

Values are handed on exactly as the layout cuts them, padding included: `trim` in the mapping
(on by default) decides whether it is stripped. Memory stays bounded whatever a line holds:
only the layout's width of a line is kept.
"""

from __future__ import annotations

import codecs
import io
import re
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from batch.config.mapping import FixedOptions
from batch.transform.readers import DEFAULT_CHUNK_SIZE, FileError, decoded
from batch.transform.records import Chunk

_BLOCK = 1 << 16
_PADDING = " \t\x00"  # what may follow the layout's last column: blanks and low-values
_LINES = re.compile(r"\r\n|\r|\n")
_EBCDIC_LINES = re.compile(r"\r\n|\r|\n|\x85")  # cp037 & co. decode NL (0x15) to U+0085


def is_ebcdic(encoding: str) -> bool:
    try:
        return "A".encode(encoding) == b"\xc1"
    except (LookupError, UnicodeError):
        return False


def read_fixed(
    stream: BinaryIO, options: FixedOptions, required_columns: list[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Chunk]:
    """The records of a fixed-width file, in chunks; `required_columns` are all declared (checked at load)."""
    if options.record_length is not None:
        return _chunks(_records(stream, options), options, chunk_size)
    return decoded(stream, options, lambda text: _chunks(_lines(text, options), options, chunk_size))


# One record as read: (position, the layout's width of its text, its length, data past the layout?)
_Raw = tuple[int, str, int, bool]


class _Line:
    """The line being read: its first `keep` characters, its length, and whether data follows them."""

    def __init__(self, keep: int):
        self.keep = keep
        self.head: list[str] = []
        self.kept = self.length = 0
        self.extra = False

    def add(self, piece: str) -> None:
        self.length += len(piece)
        if self.kept < self.keep:
            taken = piece[: self.keep - self.kept]
            self.head.append(taken)
            self.kept += len(taken)
            piece = piece[len(taken) :]
        if not self.extra and piece.strip(_PADDING):
            self.extra = True

    def text(self) -> str:
        return "".join(self.head)


def _lines(text: io.TextIOWrapper, options: FixedOptions) -> Iterator[_Raw]:
    """Every line of the text (1-based line numbers), keeping only the layout's width of each."""
    keep = options.layout_end()
    separators = _EBCDIC_LINES if is_ebcdic(text.encoding) else _LINES
    number = 0
    line = _Line(keep)
    after_cr = False  # the last block ended with CR: an LF that starts the next one belongs to it
    while True:
        block = text.read(_BLOCK)
        if not block:
            break
        position = 1 if after_cr and block.startswith("\n") else 0
        after_cr = block.endswith("\r")
        for match in separators.finditer(block, position):
            line.add(block[position : match.start()])
            number += 1
            yield number, line.text(), line.length, line.extra
            line = _Line(keep)
            position = match.end()
        line.add(block[position:])
    if line.length:
        yield number + 1, line.text(), line.length, line.extra


def _records(stream: BinaryIO, options: FixedOptions) -> Iterator[_Raw]:
    """Records of record_length bytes (numbered from 1); the last one may be partial."""
    size = options.record_length
    assert size is not None
    decode = codecs.getdecoder(options.encoding)
    keep = options.layout_end()
    number = 0
    while True:
        data = read_exactly(stream, size)
        if not data:
            return
        number += 1
        try:
            text = decode(data)[0]
        except UnicodeDecodeError as exc:
            raise FileError(
                f"record {number} (byte {(number - 1) * size + exc.start + 1:,}): cannot decode as {options.encoding}: "
                f"bytes {data[exc.start : exc.start + 4].hex(' ')} are not valid",
                number,
            ) from None
        yield number, text[:keep], len(text), bool(text[keep:].strip(_PADDING))


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes of `stream`, fewer only at its end (a pipe or an inflating stream may give less a call)."""
    data = stream.read(size)
    while data and len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _chunks(raws: Iterator[_Raw], options: FixedOptions, chunk_size: int) -> Iterator[Chunk]:
    columns = [(column.name, column.start - 1, column.start - 1 + column.width) for column in options.columns]
    header = [name for name, _, _ in columns]
    keep = options.layout_end()
    by_length = options.record_length is not None
    unit = "record" if by_length else "line"
    held: deque[_Raw] = deque()  # the last skip_footer records
    chunk = Chunk(header)
    skipped = 0
    for raw in raws:
        if skipped < options.skip_lines:
            skipped += 1
            _check_skipped(raw, keep, unit, "skip_lines")
            continue
        held.append(raw)
        if len(held) <= options.skip_footer:
            continue
        position, text, length, extra = held.popleft()
        problem = _problem(position, text, length, extra, options)
        if problem is None and options.skip_blank_lines and not text.strip(_PADDING):
            continue
        chunk.lines.append(position)
        # A record with a problem keeps its fields too: a mapping's `keep` rule may still read its
        # record type and leave it out (a long header line is not an invalid detail record).
        chunk.rows.append([text[start:end] for _, start, end in columns])
        if problem is not None:
            chunk.broken[position] = problem
        if len(chunk.lines) >= chunk_size:
            yield chunk
            chunk = Chunk(header)
    for raw in held:
        _check_skipped(raw, keep, unit, "skip_footer")
    if chunk.lines:
        yield chunk


def _problem(position: int, text: str, length: int, extra: bool, options: FixedOptions) -> str | None:
    size = options.record_length
    if size is not None and length < size and (length or text):
        # only the file's last record can be short
        return (
            f"the file ends inside this record: it has {length} of record_length {size} bytes "
            f"(from byte {(position - 1) * size + 1:,}); was the transfer cut short, or is record_length wrong?"
        )
    if size is not None and ("\n" in text or "\r" in text):
        at = min(i for i in (text.find("\n"), text.find("\r")) if i >= 0) + 1
        return (
            f"the record holds a line break at character {at}: the file has line separators, so remove "
            "record_length (records are then read one a line)"
        )
    if extra:
        end = options.layout_end()
        last = max(options.columns, key=lambda column: column.start + column.width).name
        what = "record" if size is not None else "line"
        hint = (
            " (a file without line separators? then give fixed.record_length)" if size is None and length > 2 * end
            else " (is a column missing from fixed.columns?)"
        )
        return (
            f"the {what} has {length:,} characters and holds data past the layout's last column "
            f"({last!r} ends at character {end}); nothing is cut without a word{hint}"
        )
    return None


def _check_skipped(raw: _Raw, keep: int, unit: str, option: str) -> None:
    position, _, length, extra = raw
    if extra and length > 2 * keep:
        raise FileError(
            f"the {unit} skipped by {option} has {length:,} characters, more than twice the layout's {keep}: "
            "is this a file without line separators? then give fixed.record_length (the record's length in bytes)",
            position,
        )
