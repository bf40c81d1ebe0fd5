"""Fixed-length records (issue 11, point 4): record_length for files without line separators,
EBCDIC code pages with both layouts, and nothing cut without a word; `trim: false` keeps the
padding of a fixed-width column."""

from __future__ import annotations

import io

import pytest

from batch.config.mapping import load_mapping_text
from batch.transform import fixed
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError
from tests.fixtures_mapping import mapping_problems

LAYOUT = """
format: fixed
fixed:
  encoding: {encoding}
  {extra}
  columns:
    - {{name: Id, start: 1, width: 4}}
    - {{name: Place, start: 5, width: 18}}
    - {{name: When, start: 23, width: 14}}
    - {{name: S, start: 37, width: 1}}
    - {{name: Note, start: 38, width: 12}}
fields:
  id: {{column: Id, required: true}}
  usageplacecode: {{column: Place}}
  time: {{column: When, formats: ["%Y%m%d%H%M%S"]}}
  status: {{column: S, map: {{D: disconnected, R: connected, N: not_disconnected}}}}
  description: {{column: Note{trim}}}
"""
WIDTH = 49  # the layout's last character


def record(ident: str, when: str, status: str, note: str = "") -> str:
    return (ident.ljust(4) + "6430075720624000" + ident[-2:].rjust(2, "0") + when + status + note).ljust(WIDTH)


RECORDS = [record("A01", "20240306071500", "D", "Päätetty"), record("A02", "20240306093015", "R"),
           record("A03", "20240306110000", "N", "Gate locked")]


def mapped(data: bytes, encoding: str = "cp037", extra: str = "", trim: str = "") -> list:
    compiled = CompiledMapping(load_mapping_text(LAYOUT.format(encoding=encoding, extra=extra, trim=trim)))
    found = []
    for chunk in mapped_chunks(compiled, io.BytesIO(data), chunk_size=2):
        for r in chunk:
            found.append((r.line, r.event and (r.event["id"], r.event["status"], r.event.get("description")),
                          [e.message for e in r.errors]))
    return found


EXPECTED: list = [(1, ("A01", "disconnected", "Päätetty"), []), (2, ("A02", "connected", None), []),
            (3, ("A03", "not_disconnected", "Gate locked"), [])]


@pytest.mark.parametrize("encoding", ["cp037", "cp500", "cp1140"])
def test_ebcdic_records_without_line_separators(encoding):
    data = "".join(RECORDS).encode(encoding)
    assert mapped(data, encoding, "record_length: 49") == EXPECTED


@pytest.mark.parametrize("encoding", ["cp037", "cp500", "cp1140"])
@pytest.mark.parametrize("separator", ["\x85", "\n", "\r\n"])  # EBCDIC NL (0x15), LF (0x25), CR LF
def test_ebcdic_records_one_a_line(encoding, separator):
    data = (separator.join(RECORDS) + separator).encode(encoding)
    assert mapped(data, encoding) == EXPECTED


def test_record_length_longer_than_the_layout_takes_blank_padding():
    padded = [text.ljust(60) for text in RECORDS]
    assert mapped("".join(padded).encode("cp037"), extra="record_length: 60") == EXPECTED


def test_the_issue_case_no_longer_drops_the_rest_of_the_file():
    # before: the first record was mapped and the other two dropped without a word (exit 0)
    data = "".join(RECORDS).encode("cp037")
    assert mapped(data) == [(1, None, [
        "the line has 147 characters and holds data past the layout's last column ('Note' ends at character 49); "
        "nothing is cut without a word (a file without line separators? then give fixed.record_length)"])]


def test_with_a_banner_to_skip_the_whole_file_is_not_skipped_as_its_first_line():
    data = ("HDR".ljust(WIDTH) + "".join(RECORDS)).encode("cp037")
    with pytest.raises(FileError) as info:
        mapped(data, extra="skip_lines: 1")
    assert str(info.value) == (
        "line 1: the line skipped by skip_lines has 196 characters, more than twice the layout's 49: is this a file "
        "without line separators? then give fixed.record_length (the record's length in bytes)"
    )
    assert mapped(data, extra="{record_length: 49, skip_lines: 1}".strip("{}").replace(", ", "\n  ")) == [
        (2, ("A01", "disconnected", "Päätetty"), []), (3, ("A02", "connected", None), []),
        (4, ("A03", "not_disconnected", "Gate locked"), [])]


def test_a_line_longer_than_its_layout_is_an_invalid_record_with_its_line():
    lines = [RECORDS[0], RECORDS[1] + "  EXTRA", RECORDS[2] + "   \x00 "]  # blanks and NULs are padding
    assert mapped("\r\n".join(lines).encode("cp1252"), "cp1252") == [
        EXPECTED[0],
        (2, None, ["the line has 56 characters and holds data past the layout's last column ('Note' ends at "
                   "character 49); nothing is cut without a word (is a column missing from fixed.columns?)"]),
        EXPECTED[2],
    ]


def test_a_trailing_partial_record_is_an_invalid_record_with_its_position():
    data = ("".join(RECORDS) + RECORDS[0][:20]).encode("cp037")
    assert mapped(data, extra="record_length: 49") == EXPECTED + [(4, None, [
        "the file ends inside this record: it has 20 of record_length 49 bytes (from byte 148); was the transfer "
        "cut short, or is record_length wrong?"])]


def test_record_length_on_a_file_with_line_separators_says_so():
    data = "\n".join(RECORDS).encode("cp037")
    found = mapped(data, extra="record_length: 49")
    assert found[1] == (2, None, [
        "the record holds a line break at character 1: the file has line separators, so remove record_length "
        "(records are then read one a line)"])


def test_skip_lines_and_footer_count_records_with_record_length():
    data = ("HDR".ljust(49) + "".join(RECORDS) + "TRL 3".ljust(49)).encode("cp500")
    assert mapped(data, "cp500", "record_length: 49\n  skip_lines: 1\n  skip_footer: 1") == [
        (2, ("A01", "disconnected", "Päätetty"), []), (3, ("A02", "connected", None), []),
        (4, ("A03", "not_disconnected", "Gate locked"), [])]


def test_blank_records_are_skipped():
    data = (RECORDS[0] + " " * 49 + RECORDS[1]).encode("cp037")
    assert [line for line, _, _ in mapped(data, extra="record_length: 49")] == [1, 3]


def test_lines_split_across_read_blocks(monkeypatch):
    monkeypatch.setattr(fixed, "_BLOCK", 7)  # every separator, CR LF pairs included, falls on some boundary
    data = ("\r\n".join(RECORDS) + "\r\n").encode("cp1252")
    assert mapped(data, "cp1252") == EXPECTED
    overlong = (RECORDS[0] + "X" * 100 + "\r\n" + RECORDS[1]).encode("cp1252")
    assert [(line, errors) for line, _, errors in mapped(overlong, "cp1252")] == [
        (1, ["the line has 149 characters and holds data past the layout's last column ('Note' ends at character "
             "49); nothing is cut without a word (a file without line separators? then give fixed.record_length)"]),
        (2, []),
    ]


def test_trim_false_keeps_the_padding():
    data = "\n".join(RECORDS).encode("cp1252")
    assert mapped(data, "cp1252", trim=", trim: false")[0] == (1, ("A01", "disconnected", "Päätetty    "), [])
    assert mapped(data, "cp1252")[0] == (1, ("A01", "disconnected", "Päätetty"), [])


def test_a_long_line_is_not_held_whole():
    options = load_mapping_text(LAYOUT.format(encoding="ascii", extra="", trim="")).fixed
    assert options is not None
    lines = fixed._lines(io.TextIOWrapper(io.BytesIO(b"x" * 5_000_000 + b"\nabc"), "ascii"), options)
    first = next(lines)
    assert (first[0], len(first[1]), first[2], first[3]) == (1, WIDTH, 5_000_000, True)
    assert next(lines) == (2, "abc", 3, False)


def test_record_length_mistakes_are_refused_at_load():
    assert mapping_problems(LAYOUT.format(encoding="cp037", extra="record_length: 40", trim="")) == [
        "m.yaml:3:1: fixed: record_length 40 is shorter than the layout: column 'Note' ends at character 49"
    ]
    assert mapping_problems(LAYOUT.format(encoding="utf-8", extra="record_length: 49", trim="")) == [
        "m.yaml:3:1: fixed: record_length counts bytes, and utf-8 writes some characters in several: give a "
        "single-byte encoding (cp037, cp500, cp1140, cp1252, iso-8859-1...)"
    ]
