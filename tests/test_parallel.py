"""Parallel mapping of large CSV files gives exactly what the sequential mapper gives.

Segments are made tiny here (a few KiB) so that a small file is cut in many places, including
inside the records that are hardest to cut around: quoted fields holding line breaks, quotes
and delimiters.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from batch.config.mapping import load_mapping_text
from batch.extract import mapped_chunks
from batch.mapping import CompiledMapping
from batch.parallel import parallel_mapped_chunks, plan_segments, why_sequential
from batch.readers import FileError

MAPPING = """
format: csv
csv: {encoding: cp1252, delimiter: ";", header_line: 3, skip_footer: 2}
fields:
  id: {column: Id, required: true}
  usageplacecode: {column: Place, pattern: '\\d{18}'}
  time: {column: Time, formats: ["%d.%m.%Y %H:%M:%S"]}
  status:
    column: State
    map: {K: disconnected, KY: connected, EK: not_disconnected}
  description: {column: Note}
invoices:
  mode: columns
  invoicenumber: {column: Invoices, split: ","}
  jobid: {column: Jobs, split: ","}
"""

NOTES = ["", "plain", "with; delimiter", 'with "quotes"', "two\r\nlines", "three\nline\nbreaks", "Käyttöpaikka; \"x\"\n"]


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ';"\r\n') else text


def write_export(path: Path, records: int, seed: int, newline: str = "\r\n") -> None:
    rng = random.Random(seed)
    rows = ["BANNER;\"quoted banner\"", "generated", "Id;Place;Time;State;Invoices;Jobs;Note"]
    for i in range(records):
        event_id = f"E{rng.randrange(records * 4)}"  # repeats happen, near and far apart
        place = f"6430075720{i:08d}" if rng.random() > 0.03 else "bad-place"
        state = rng.choice(["K", "KY", "EK", "K", "X"])
        invoices, jobs = ("1,2", "7,8") if rng.random() > 0.05 else ("1,2", "7")
        note = rng.choice(NOTES)
        row = f"{event_id};{place};{1 + i % 28}.{1 + i % 12}.2024 {i % 24}:{i % 60:02d}:00;{state};{invoices};{jobs};{_quoted(note)}"
        if rng.random() < 0.01:
            row = f'{event_id};"broken"quote;x;K;;;'
        rows.append(row)
    rows += ["TOTAL;" + str(records), "END"]
    path.write_bytes((newline.join(rows) + newline).encode("cp1252"))


def results(chunks) -> list[tuple]:
    return [(r.line, r.event, [str(e) for e in r.errors], dict(r.partial)) for chunk in chunks for r in chunk]


def sequential(compiled: CompiledMapping, path: Path) -> list[tuple]:
    with open(path, "rb") as stream:
        return results(mapped_chunks(compiled, stream))


@pytest.fixture(scope="module")
def compiled() -> CompiledMapping:
    return CompiledMapping(load_mapping_text(MAPPING))


@pytest.mark.parametrize("seed, newline", [(1, "\r\n"), (2, "\n"), (3, "\r\n")])
def test_parallel_equals_sequential(tmp_path, compiled, seed, newline):
    path = tmp_path / "export.csv"
    write_export(path, 3000, seed, newline)
    segments = plan_segments(path, compiled.mapping, workers=2, segment_bytes=4096, min_bytes=0)
    assert segments is not None and len(segments) > 20
    expected = sequential(compiled, path)
    assert any(errors for _, _, errors, _ in expected)  # the file has invalid records ...
    assert any("used again" in " ".join(errors) for _, _, errors, _ in expected)  # ... and repeated ids
    assert results(parallel_mapped_chunks(compiled, path, segments, workers=2)) == expected


def test_segments_start_where_records_start(tmp_path, compiled):
    path = tmp_path / "export.csv"
    write_export(path, 2000, 7)
    segments = plan_segments(path, compiled.mapping, workers=2, segment_bytes=2048, min_bytes=0)
    record_lines = {line for line, *_ in sequential(compiled, path)}
    data = path.read_bytes()
    for segment in segments[1:]:
        assert data[segment.start - 1 : segment.start] == b"\n"
        assert data.count(b"\n", 0, segment.start) + 1 == segment.first_line
        assert segment.first_line in record_lines  # never inside a quoted multi-line field


def test_a_bad_byte_deep_in_the_file_names_the_same_line(tmp_path, compiled):
    path = tmp_path / "export.csv"
    write_export(path, 3000, 4)
    data = bytearray(path.read_bytes())
    position = data.index(b"\n", len(data) * 3 // 4) + 1
    data[position : position + 1] = b"\x81"  # undefined in cp1252
    path.write_bytes(bytes(data))
    with pytest.raises(FileError) as expected:
        sequential(compiled, path)
    segments = plan_segments(path, compiled.mapping, workers=2, segment_bytes=4096, min_bytes=0)
    with pytest.raises(FileError) as found:
        results(parallel_mapped_chunks(compiled, path, segments, workers=2))
    assert (found.value.line, found.value.message) == (expected.value.line, expected.value.message)


def test_files_that_cannot_be_cut_are_read_in_one_piece(tmp_path, compiled):
    path = tmp_path / "old-mac.csv"
    write_export(path, 500, 5, newline="\r")  # lone CR line ends
    assert plan_segments(path, compiled.mapping, workers=2, segment_bytes=1024, min_bytes=0) is None
    small = tmp_path / "small.csv"
    write_export(small, 50, 5)
    assert plan_segments(small, compiled.mapping, workers=2) is None  # below the size worth it
    assert plan_segments(small, compiled.mapping, workers=1, min_bytes=0) is None


@pytest.mark.parametrize(
    "change, reason",
    [
        ("csv: {encoding: utf-16}", "neither UTF-8 nor single-byte"),
        ("csv: {escapechar: '/'}", "escape character"),
    ],
)
def test_dialects_that_break_cutting_are_named(change, reason):
    text = MAPPING.replace("csv: {encoding: cp1252, delimiter: \";\", header_line: 3, skip_footer: 2}", change)
    assert reason in why_sequential(load_mapping_text(text))
