"""Issue 7, the readers/mapping side: hostile files and careless mappings (D1, D4, D8, D13, D20-D23).

Each test is named after the defect it pins; every one failed on the code before its fix.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batch.config.mapping import XmlOptions, load_mapping_text
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError, read_xml
from batch.transform.records import XmlPlan

ROOT = Path(__file__).resolve().parent.parent

XML_MAPPING = """\
format: xml
xml: {record_path: "%s"}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: Place}
  customernumber: {xpath: Customer}
  time: {xpath: Time}
  status: {xpath: Status, map: {D: disconnected}}
"""
EVENT = (
    '<Event id="{i}"><Place>643007572062440001</Place><Customer>C{i}</Customer>'
    "<Time>2024-02-05 06:30:00</Time><Status>D</Status></Event>"
)


def compile_mapping(text: str) -> CompiledMapping:
    return CompiledMapping(load_mapping_text(textwrap.dedent(text)))


def mapped(mapping: CompiledMapping | str, data: bytes) -> list:
    compiled = compile_mapping(mapping) if isinstance(mapping, str) else mapping
    return [record for records in mapped_chunks(compiled, io.BytesIO(data)) for record in records]


def file_error(mapping, data: bytes) -> FileError:
    with pytest.raises(FileError) as info:
        mapped(mapping, data)
    return info.value


# --- D1: XML memory bounded whatever the document holds around the records -------------------------

JUNK = "<j>x</j>" * 1_500_000  # 12 MB of elements that are not records


def _junk_documents() -> dict[str, str]:
    events = "".join(EVENT.format(i=i) for i in range(3))
    return {
        "before": f"<Export><Junk>{JUNK}</Junk><Events>{events}</Events></Export>",
        "between": f"<Export><Events>{EVENT.format(i=1)}<Junk>{JUNK}</Junk>{EVENT.format(i=2)}{EVENT.format(i=3)}</Events></Export>",
        "after": f"<Export><Events>{events}</Events><Junk>{JUNK}</Junk></Export>",
        "wide-siblings": f"<Export>{JUNK}<Events>{events}</Events></Export>",
        "deep": "<Export>" + "<a>" * 200 + JUNK + "</a>" * 200 + f"<Events>{events}</Events></Export>",
        "deep-and-wide": "<Export>" + "<a><b/>" * 200 + JUNK + "</a>" * 200 + f"<Events>{events}</Events></Export>",
    }


_MEASURE = """\
import io, json, re, sys
from batch.config.mapping import load_mapping_text
from batch.transform.extract import mapped_file
from batch.transform.mapping import CompiledMapping
compiled = CompiledMapping(load_mapping_text(sys.argv[1]))
counts = {}
for path in sys.argv[2:]:
    counts[path] = sum(1 for records in mapped_file(compiled, path) for record in records if record.ok)
# VmHWM, not ru_maxrss: Linux carries the parent's peak over a fork + exec into ru_maxrss
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"counts": counts, "peak_mb": peak_kb / 1024}))
"""


@pytest.mark.slow
def test_D1_xml_memory_stays_bounded_whatever_surrounds_the_records(tmp_path):
    paths = []
    for name, text in _junk_documents().items():
        path = tmp_path / f"{name}.xml"
        path.write_text(text)
        paths.append(str(path))
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, XML_MAPPING % "//Event", *paths],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )
    result = json.loads(child.stdout)
    assert result["counts"] == {path: 3 for path in paths}
    # before the fix: ~400 MB for 12 MB of junk; a bare interpreter with lxml takes ~35 MB
    assert result["peak_mb"] < 120, result


def test_D1_a_record_too_large_to_hold_is_refused_with_its_line():
    data = f"<Export>\n<Events>\n{EVENT.format(i=1)}\n<Event id='2'>{JUNK}</Event>\n</Events></Export>".encode()
    error = file_error(XML_MAPPING % "//Event", data)
    assert (error.line, error.message) == (
        4,
        "the record that starts here is larger than 1 MB; records that large are refused "
        "(is record_path the record element?)",
    )


def test_D1_released_elements_never_change_what_a_record_maps_to():
    """Records split over the parser's blocks, between junk, keep every child."""
    events = "".join(EVENT.format(i=i) + "<j>x</j>" * 50 for i in range(5000))
    records = mapped(XML_MAPPING % "/Export/Events/Event", f"<Export><Events>{events}</Events></Export>".encode())
    assert [r.event["customernumber"] for r in records] == [f"C{i}" for i in range(5000)]
    assert all(r.ok for r in records)


# --- D21: an Event inside an Event -----------------------------------------------------------------

NESTED = (
    b"<Export><Events>\n"
    b'<Event id="1"><Place>643007572062440001</Place><Customer>C1</Customer>\n'
    b'<Event id="2"><Place>643007572062440002</Place><Customer>C2</Customer><Time>2024-02-05 06:30:00</Time>'
    b"<Status>D</Status></Event>\n"
    b"<Time>2024-02-05 06:30:00</Time><Status>D</Status></Event>\n"
    b"</Events></Export>"
)
NESTED_MESSAGE = (
    "a <Event> record inside the <Event> record that starts on line 2: nested records are refused "
    "(neither could be mapped whole); give record_path as an absolute path such as /Export/Events/Event"
)


@pytest.mark.parametrize("record_path", ["//Event", "/Export//Event", "//Events//Event"])
def test_D21_nested_records_are_a_file_error(record_path):
    error = file_error(XML_MAPPING % record_path, NESTED)
    assert (error.line, error.message) == (3, NESTED_MESSAGE)


def test_D21_an_absolute_path_maps_the_outer_event_whole():
    records = mapped(XML_MAPPING % "/Export/Events/Event", NESTED)
    assert [(r.line, r.event) for r in records] == [
        (2, {"id": "1", "usageplacecode": "643007572062440001", "customernumber": "C1",
             "time": "2024-02-05 06:30:00", "status": "disconnected"}),
    ]


# --- DOCTYPE without records, and the line of an attribute too long --------------------------------

DOCTYPE_MESSAGE = (
    "the XML has a DOCTYPE; documents with DTDs or entity declarations are refused "
    "(they can expand to gigabytes or read local files). Export without a DOCTYPE."
)


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?>\n<!DOCTYPE Export>\n<Export/>',
        b'<?xml version="1.0"?>\n<!DOCTYPE Export [<!ENTITY a "b">]>\n<Export><Other/></Export>',
        b"<!--" + b"pad " * 20_000 + b'-->\n<!DOCTYPE Export SYSTEM "x.dtd">\n<Export><Events/></Export>',
    ],
    ids=["empty-root", "internal-subset", "behind-a-long-comment"],
)
def test_xml_with_a_doctype_but_no_record_is_refused(data):
    error = file_error(XML_MAPPING % "//Event", data)
    assert (error.line, error.message) == (1, DOCTYPE_MESSAGE)


@pytest.mark.parametrize("newlines", [False, True], ids=["one-line-value", "value-with-newlines"])
def test_a_50_mb_attribute_is_refused_on_its_own_line(newlines):
    filler = (b"x" * 999 + b"\n") if newlines else b"x" * 1000
    data = (
        b'<?xml version="1.0"?>\n<Export>\n<Events>\n' + EVENT.format(i=1).encode() + b"\n"
        b'<Event id="' + filler * 50_000 + b'"><Place>1</Place></Event>\n</Events>\n</Export>\n'
    )
    error = file_error(XML_MAPPING % "//Event", data)
    assert (error.line, error.message) == (
        5,
        "not well-formed XML: more than 10,000,000 characters without markup from this line on "
        "(an attribute value, text or tag longer than the XML parser accepts)",
    )


def test_xml_reader_still_refuses_what_it_refused():
    """The block-by-block parse keeps the hardened parser's limits (depth)."""
    opts = XmlOptions(record_path="//E")
    with pytest.raises(FileError) as info:
        list(read_xml(io.BytesIO(b"<r>" + b"<x>" * 300 + b"</x>" * 300 + b"</r>"), opts, XmlPlan(texts=["@id"])))
    assert info.value.message.startswith("not well-formed XML: Excessive depth in document: 256")


# --- D4: a pattern (or any regex built from the configuration) cannot hang the process -------------

CSV_MAPPING = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: place, pattern: "%s"}
  time: {column: time}
  status: {column: status, map: {D: disconnected}}
"""


# Backtracking would take minutes here; linear matching takes microseconds. The bound sits far
# from both, so a busy machine cannot fail it (speed itself is measured in bench/bench_hostile.py).
LINEAR_BOUND = 5.0


def _timed(fn):
    import time

    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


@pytest.mark.parametrize("value", ["a" * 35 + "!", "a" * 100_000 + "!"], ids=["35-chars", "100k-chars"])
def test_D4_a_catastrophic_pattern_costs_a_record_microseconds(value):
    data = f"id,place,time,status\n1,{value},2024-02-05 06:30:00,D\n2,aaa,2024-02-05 06:30:00,D\n".encode()
    records, seconds = _timed(lambda: mapped(CSV_MAPPING % "(a+)+$", data))
    assert seconds < LINEAR_BOUND
    assert [r.ok for r in records] == [False, True]
    assert records[0].errors[0].message == "does not match the pattern '(a+)+$'"


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"(\\d)\\1", r"invalid escape sequence: \1"),
        (r"(?=\\d)\\d+", "invalid perl operator: (?="),
        (r"(?!0)\\d+", "invalid perl operator: (?!"),
        (r"(?<=x)\\d+", "invalid perl operator: (?<="),
    ],
    ids=["backreference", "lookahead", "negative-lookahead", "lookbehind"],
)
def test_D4_a_pattern_re2_cannot_run_is_a_config_error_at_load(pattern, reason):
    from batch.config.yamlload import ConfigError

    with pytest.raises(ConfigError) as info:
        load_mapping_text(CSV_MAPPING % pattern, "m.yaml")
    assert [str(problem) for problem in info.value.problems] == [
        f"m.yaml:4:35: fields.usageplacecode.pattern: not a usable regular expression: {reason} (patterns run on "
        "RE2, which never backtracks: backreferences (\\1), lookahead (?=, ?!) and lookbehind (?<=, ?<!) are not "
        "available)"
    ]


def test_D4_a_time_format_with_a_run_of_blanks_does_not_backtrack():
    mapping = CSV_MAPPING.replace(', pattern: "%s"', "").replace(
        "time: {column: time}", 'time: {column: time, formats: ["%d.%m.%Y' + " " * 30 + '%H:%M"]}'
    )
    data = f"id,place,time,status\n1,643007572062440001,5.2.2024{' ' * 60}x,D\n".encode()
    records, seconds = _timed(lambda: mapped(mapping, data))
    assert seconds < LINEAR_BOUND
    assert not records[0].ok


def test_D4_a_record_path_with_many_descendant_steps_stays_linear():
    data = ("<r>" + "<a>" * 250 + '<b id="1"/>' + "</a>" * 250 + "</r>").encode()
    opts = XmlOptions(record_path="//a//a//a//a//c//b")  # with backtracking: minutes
    rows, seconds = _timed(lambda: list(read_xml(io.BytesIO(data), opts, XmlPlan(texts=["@id"]))))
    assert seconds < LINEAR_BOUND
    assert rows == []
    opts = XmlOptions(record_path="/r//a//a//a//b")
    assert [chunk.rows for chunk in read_xml(io.BytesIO(data), opts, XmlPlan(texts=["@id"]))] == [[["1"]]]


# --- D22: preview and process refuse what is not a regular file ------------------------------------

PREVIEW_MAPPING = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: code}
  time: {column: time}
  status: {column: status, map: {K: disconnected}}
  description: {column: note}
"""


def _cli(*args, cwd=ROOT):
    """`python -m batch ...` in a child, so that a blocking open cannot hang the test run."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "batch", *map(str, args)], capture_output=True, text=True, timeout=30, cwd=cwd, env=env
    )


@pytest.fixture
def specials(tmp_path):
    import os

    fifo = tmp_path / "export.csv"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(fifo)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    mapping = tmp_path / "m.yaml"
    mapping.write_text(PREVIEW_MAPPING)
    return {"fifo": (fifo, "a FIFO"), "symlink-to-fifo": (link, "a FIFO"),
            "device": (Path("/dev/zero"), "a character device"), "directory": (folder, "a directory")}, mapping


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "device", "directory"])
def test_D22_preview_refuses_what_is_not_a_regular_file(specials, kind):
    paths, mapping = specials
    path, described = paths[kind]
    child = _cli("preview", mapping, path)
    assert child.returncode == 2
    if kind == "directory":  # click's own check comes first
        assert "is a directory" in child.stderr
    else:
        assert child.stderr == f"error: {path}: not a regular file ({described}); give the path of a file\n"


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "device"])
def test_D22_process_and_a_fifo_mapping_are_refused_too(specials, kind, tmp_path):
    paths, mapping = specials
    path, described = paths[kind]
    child = _cli("process", path, "--config", tmp_path / "service.yaml")
    assert (child.returncode, child.stderr) == (2, f"error: {path}: not a regular file ({described}); give the path of a file\n")
    data = tmp_path / "data.csv"
    data.write_text("id,code,time,status,note\n")
    child = _cli("preview", path, data)
    assert (child.returncode, child.stderr) == (2, f"error: {path}: not a regular file ({described}); give the path of a file\n")
    child = _cli("validate", mapping, path)
    assert child.returncode == 1
    assert child.stderr.splitlines() == [
        f"{path}: not a regular file ({described}); give the path of a file", "1 of 2 mapping file(s) have problems"
    ]


# --- D20: nothing from a file reaches the terminal as a control sequence ---------------------------

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\x00\r"


def test_D20_preview_escapes_control_characters_in_every_output(tmp_path):
    from batch.cli.commands import terminal_safe

    mapping = tmp_path / "m.yaml"
    mapping.write_text(PREVIEW_MAPPING)
    data = tmp_path / "x\x1b[2Jy.csv"
    data.write_text(
        "id,code,time,status,note\n"
        f'E1,6430,2024-02-05 06:30:00,K,"{HOSTILE}"\n'
        f'"E2{HOSTILE}",6431,2024-02-05 07:00:00,X,\n',
        newline="",
    )
    for args in ([], ["--json"]):
        child = _cli("preview", mapping, data, *args)
        for stream in (child.stdout, child.stderr):
            assert not any(char in stream for char in "\x1b\x07\x9b\u202e\x00\r"), repr(stream)
        assert "\\x1b" in child.stdout or "\\u001b" in child.stdout
        assert f"{terminal_safe(data)}: 2 records" in child.stderr
    child = _cli("preview", mapping, data, "--json")
    first = [json.loads(line) for line in child.stdout.splitlines()][0]  # refused (D23), value kept exact in JSON
    assert first["errors"][0]["value"] == HOSTILE


def test_D20_one_escaping_function_for_the_whole_class():
    from batch.cli.commands import terminal_json, terminal_safe

    controls = [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    controls += ["\u2028", "\u2029", "\u200e", "\u202e", "\u2066", "\ufeff", "\U000e0001"]
    for char in controls:
        assert char not in terminal_safe(f"a{char}b"), repr(char)
        assert char not in terminal_json({"v": f"a{char}b"}), repr(char)
        assert json.loads(terminal_json({"v": f"a{char}b"})) == {"v": f"a{char}b"}
    assert terminal_safe("Käyttöpaikka\u00a01 € ok") == "Käyttöpaikka\u00a01 € ok"
    assert terminal_safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert terminal_safe("two\nlines", keep_newlines=True) == "two\nlines"


# --- D8: what one error (and one record) can say is bounded ----------------------------------------


def _message(record) -> str:
    """The receipt and journal message of an invalid record (as batch.pipeline builds it)."""
    return "; ".join(error.describe() for error in record.errors)


def test_D8_a_100000_column_header_over_short_rows_gives_short_errors():
    header = "id,place,time,status," + ",".join(f"c{i}" for i in range(100_000))
    rows = "".join(f"{i},643007572062440001,2024-02-05 06:30:00,D\n" for i in range(300))
    records = mapped(CSV_MAPPING.replace(', pattern: "%s"', ""), (header + "\n" + rows).encode())
    assert len(records) == 300 and not any(r.ok for r in records)
    assert _message(records[0]) == (
        "(record): the record has 4 fields but the header has 100004 "
        "(no value for 'c0', 'c1', 'c2', 'c3', 'c4' and 99,995 more)"
    )
    assert sum(len(_message(r)) for r in records) < 300 * 200


def test_D8_a_missing_column_error_names_a_few_columns_and_counts_the_rest():
    header = ",".join(f"c{i}" for i in range(100_000))
    error = file_error(CSV_MAPPING.replace(', pattern: "%s"', ""), (header + "\n1,2\n").encode())
    assert (error.line, error.message) == (
        1,
        "missing columns 'id', 'place', 'time', 'status': the header row (line 1) has 'c0', 'c1', 'c2', 'c3', "
        "'c4', 'c5', 'c6', 'c7', 'c8', 'c9' and 99,990 more. Check the delimiter, header_line and encoding in "
        "the mapping.",
    )


def test_D8_one_record_reports_at_most_ten_problems():
    mapping = CSV_MAPPING.replace(', pattern: "%s"', "") + (
        "invoices:\n  mode: columns\n  invoicenumber: {column: inv, split: '|'}\n  jobid: {column: job, split: '|'}\n"
    )
    items = 10_000
    data = (
        "id,place,time,status,inv,job\n"
        f"1,643007572062440001,2024-02-05 06:30:00,D,{'|'.join(['1'] * items)},{'|'.join(['x'] * items)}\n"
    )
    (record,) = mapped(mapping, data.encode())
    assert len(record.errors) == 10
    assert record.errors[-1].describe() == "(record): and 9,991 more problems in this record"
    assert len(_message(record)) < 2000


def test_D8_a_large_value_map_is_not_listed_whole_in_each_error():
    mapping = CSV_MAPPING.replace(', pattern: "%s"', "").replace(
        "map: {D: disconnected}", "map: {" + ", ".join(f"S{i}: disconnected" for i in range(10_000)) + "}"
    )
    (record,) = mapped(mapping, b"id,place,time,status\n1,643007572062440001,2024-02-05 06:30:00,X\n")
    assert _message(record) == (
        "status (column 'status' = 'X'): value is not in the map (expected one of 'S0', 'S1', 'S2', 'S3', 'S4', "
        "'S5', 'S6', 'S7', 'S8', 'S9' and 9,990 more)"
    )


# --- D23: control characters in values --------------------------------------------------------------

FULL_CSV_MAPPING = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: place}
  customernumber: {column: customer}
  time: {column: time}
  status: {column: status, map: {D: disconnected}}
  description: {column: descr}
"""
CONTROL_HEADER = "id,place,customer,time,status,descr\n"


def _one(row: str, mapping: str = FULL_CSV_MAPPING):
    (record,) = mapped(mapping, (CONTROL_HEADER + row + "\n").encode())
    return record


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x7f", "\x85", "\x9b"], ids=repr)
@pytest.mark.parametrize("column", ["id", "place", "customer", "descr"])
def test_D23_a_control_character_makes_the_record_invalid_naming_field_column_and_value(char, column):
    values = {"id": "E1", "place": "643007572062440001", "customer": "C1", "time": "2024-02-05 06:30:00",
              "status": "D", "descr": "Katkaistu"}
    values[column] = values[column][:1] + char + values[column][1:]
    record = _one(",".join(f'"{v}"' for v in values.values()))
    field = {"place": "usageplacecode", "customer": "customernumber", "descr": "description"}.get(column, column)
    assert not record.ok
    assert _message(record) == (
        f"{field} (column '{column}' = {values[column]!r}): contains the control character "
        f"\\x{ord(char):02x} at position 2; control characters are refused"
    )
    assert not any(c in _message(record) for c in "\x00\x1b\x07\x7f\x85\x9b")
    assert field not in record.partial


def test_D23_tabs_and_line_breaks_are_text_in_the_description_only():
    record = _one('E1,643007572062440001,C1,2024-02-05 06:30:00,D,"line one\r\nline\ttwo"')
    assert record.ok and record.event["description"] == "line one\r\nline\ttwo"
    record = _one('"E\t1",643007572062440001,C1,2024-02-05 06:30:00,D,x')
    assert _message(record) == (
        "id (column 'id' = 'E\\t1'): contains a tab or line break (\\x09 at position 2); only description may hold them"
    )
    record = _one('" E1\n",643007572062440001,C1,2024-02-05 06:30:00,D,x')  # trimmed at the ends: fine
    assert record.ok and record.event["id"] == "E1"


def test_D23_spaces_and_letters_that_are_not_ascii_stay_valid():
    record = _one("E1,643007572062440001,C\u00a01,2024-02-05 06:30:00,D,Käyttöpaikka € \u202fok")
    assert record.ok and record.event["customernumber"] == "C\u00a01"


def test_D23_xml_character_references_to_controls_are_refused_too():
    data = (
        b'<Export><Event id="E&#x9b;1"><Place>643007572062440001</Place><Time>2024-02-05 06:30:00</Time>'
        b"<Status>D</Status></Event></Export>"
    )
    (record,) = mapped(XML_MAPPING % "//Event", data)
    assert _message(record) == (
        "id (xpath '@id' = 'E\\x9b1'): contains the control character \\x9b at position 2; control characters are refused"
    )


def test_D23_a_receipt_never_holds_a_raw_control_character(tmp_path):
    from batch.store.receipts import ReceiptFormat, ReceiptRow, write_csv_rows

    out = io.BytesIO()
    row = ReceiptRow(3, "E\x001", "\x1b[2J", None, "rejected", 400, "server said \x00\x1b]0;x\x07\x9b",
                     None, None, "v\x00", "t\x1b", "d\x9b")
    write_csv_rows(out, [row], ReceiptFormat())
    text = out.getvalue().decode()
    assert not any(c in text for c in "\x00\x1b\x07\x9b")
    assert text.splitlines()[1] == ("3,E\\x001,\\x1b[2J,,rejected,400,server said \\x00\\x1b]0;x\\x07\\x9b,,,"
                                    "v\\x00,t\\x1b,d\\x9b")


# --- D13: an unclosed quote never swallows records without a word ----------------------------------


def _lines_and_messages(data: bytes, mapping: str = FULL_CSV_MAPPING) -> list[tuple[int, str]]:
    return [(r.line, "ok" if r.ok else _message(r)) for r in mapped(mapping, data)]


GOOD_ROW = "{i},643007572062440001,C1,2024-02-05 06:30:00,D,fine"


def test_D13_an_unclosed_quote_accounts_for_every_line_after_it():
    rows = [GOOD_ROW.format(i=i) for i in range(1, 4)] + ['4,643007572062440001,C1,2024-02-05 06:30:00,D,"never closed']
    rows += [GOOD_ROW.format(i=i) for i in range(5, 1005)]
    result = _lines_and_messages((CONTROL_HEADER + "\n".join(rows) + "\n").encode())
    assert len(result) == 1004  # as many records as lines after the header
    assert result[:4] == [(2, "ok"), (3, "ok"), (4, "ok"), (
        5, "(record): cannot split the record into fields: unexpected end of data; a quoted value on this line "
        "runs on to line 1005 (is a quote not closed?)",
    )]
    assert result[4:] == [
        (line, "(record): not read as a record: it is inside the quoted value of line 5 (is a quote on line 5 not closed?)")
        for line in range(6, 1006)
    ]


def test_D13_a_quote_closed_lines_later_accounts_for_the_lines_between():
    data = (
        CONTROL_HEADER + GOOD_ROW.format(i=1) + "\n"
        '2,643007572062440001,C1,2024-02-05 06:30:00,D,"opened\n'
        + GOOD_ROW.format(i=3) + "\n"
        '4,643007572062440001,C1,2024-02-05 06:30:00,D,"closed"here\n'
        + GOOD_ROW.format(i=5) + "\n"
    ).encode()
    assert [line for line, _ in _lines_and_messages(data)] == [2, 3, 4, 5, 6]
    assert _lines_and_messages(data)[4] == (6, "ok")


def test_D13_a_record_that_parses_over_several_lines_but_is_invalid_says_so():
    data = (CONTROL_HEADER + '1,"643007572062440001\n2,643007572062440002",C1,2024-02-05 06:30:00,D,x\n').encode()
    assert _lines_and_messages(data) == [(
        2, "usageplacecode (column 'place' = '643007572062440001\\n2,643007572062440002'): contains a tab or line "
        "break (\\x0a at position 19); only description may hold them; (record): the record runs over lines 2-3: "
        "is a quote not closed?",
    )]


def test_D13_neighbours_keep_working():
    # a quote left open in the last row: one line, one broken record
    data = (CONTROL_HEADER + GOOD_ROW.format(i=1) + '\n2,"643007572062440001,C1').encode()
    assert _lines_and_messages(data) == [
        (2, "ok"), (3, "(record): cannot split the record into fields: unexpected end of data")
    ]
    # quoted line breaks in a description are data
    data = (CONTROL_HEADER + '1,643007572062440001,C1,2024-02-05 06:30:00,D,"two\nlines"\n' + GOOD_ROW.format(i=2)).encode()
    assert _lines_and_messages(data) == [(2, "ok"), (4, "ok")]
    # the shipped sample with multi-line quoted values
    from batch.config.mapping import load_mapping

    compiled = CompiledMapping(load_mapping(ROOT / "config" / "mappings" / "utf8_iso.yaml"))
    records = mapped(compiled, (ROOT / "samples" / "utf8_iso.csv").read_bytes())
    assert records and all(r.ok for r in records)


@pytest.mark.parametrize(
    "xpath", ["../Header/@date", "/Export/Header/Date", "//Header", "concat(Place, /Export/@d)",
              "ancestor::Export/@date", "preceding-sibling::Event[1]/@id", "following::Event"],
)
def test_D1_an_xpath_that_looks_outside_the_record_is_refused_at_load(xpath):
    """What is outside the pending record is released as the file is read: such a path would
    map to nothing, or to whatever happened to be left, so it is a ConfigError."""
    from batch.config.yamlload import ConfigError

    text = (XML_MAPPING % "//Event").replace("customernumber: {xpath: Customer}", f"customernumber: {{xpath: {json.dumps(xpath)}}}")
    with pytest.raises(ConfigError) as info:
        load_mapping_text(text, "m.yaml")
    (problem,) = info.value.problems
    assert str(problem).endswith(
        f"fields.customernumber: {xpath!r}: looks outside the record ('..', a path from '/', or a parent, ancestor, "
        "preceding or following axis): records are streamed, and the rest of the document is released as it is read"
    )
    for fine in ("Customer", "Dates/Date[@type='done']", "normalize-space(concat(A, ' / ', B))", ".//Note"):
        load_mapping_text(text.replace(json.dumps(xpath), json.dumps(fine)), "m.yaml")


@pytest.mark.parametrize("command", [["status", "--config"], ["validate-config", "--config"], ["prune", "--config"]])
def test_D22_a_fifo_configuration_is_refused_rather_than_read(tmp_path, command):
    import os

    fifo = tmp_path / "service.yaml"
    os.mkfifo(fifo)
    child = _cli(*command, fifo)
    assert (child.returncode, child.stderr) == (2, f"error: {fifo}: not a regular file (a FIFO); give the path of a file\n")


def test_D1_a_prolog_without_an_element_is_not_held_whole():
    data = b'<?xml version="1.0"?>\n' + b"<!-- c -->\n" * 200_000 + b"<Export/>"
    error = file_error(XML_MAPPING % "//Event", data)
    assert (error.line, error.message) == (1, "the XML has no element in its first 1 MB")
