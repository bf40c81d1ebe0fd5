"""Record filters (issue 11, deliver 1): a mapping's `keep` rule maps only the records that match.

The others are left out wherever they are in the file, whatever their number of fields, and
counted as filtered: never invalid, never events.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from batch.cli import commands as cli
from batch.pipeline import FileOutcome
from batch.sandbox.server import Sandbox
from batch.transform.extract import mapped_chunks
from tests.fixtures_mapping import compile_mapping, map_bytes, mapping_problems as refused_with
from tests.fixtures_pipeline import Workspace, read_receipt

BILLING = """\
format: csv
csv:
  delimiter: ";"
  header_line: null
  columns: [Type, EventId, Place, Date, Code, Note]
keep: {column: Type, equals: D}
fields:
  id: {column: EventId}
  usageplacecode: {column: Place}
  time: {column: Date, formats: ["%d.%m.%Y %H:%M"]}
  status: {column: Code, map: {K: disconnected, KY: connected}}
  description: {column: Note}
"""
BILLING_FILE = (
    "H;BILLING;2024-03-01\n"
    "D;E1;643007572062440001;01.03.2024 07:45;K;\n"
    "C;a comment; with; more; fields; than; any; record\n"
    "D;E2;643007572062440002;01.03.2024 08:00;KY;ok\n"
    "C\n"
    "D;E3;643007572062440003;01.03.2024 09:00;X;\n"
    "D;E4;643007572062440004\n"
    "T;4\n"
)


def _filtered(mapping: str, data: str, chunk_size: int = 5000) -> tuple[list, int]:
    compiled = compile_mapping(mapping)
    run = compiled.start()
    out = []
    for records in mapped_chunks(compiled, io.BytesIO(data.encode()), chunk_size, run):
        out += [(r.line, r.event, [e.as_dict() for e in r.errors]) for r in records]
    return out, run.filtered


@pytest.mark.parametrize("chunk_size", [1, 3, 5000])
def test_only_detail_records_are_mapped_and_the_rest_counted(chunk_size):
    records, filtered = _filtered(BILLING, BILLING_FILE, chunk_size)
    assert records == [
        (2, {"id": "E1", "usageplacecode": "643007572062440001", "time": "2024-03-01 07:45:00",
             "status": "disconnected"}, []),
        (4, {"id": "E2", "usageplacecode": "643007572062440002", "time": "2024-03-01 08:00:00",
             "status": "connected", "description": "ok"}, []),
        # a kept record is checked as always: a bad value, too few fields
        (6, None, [{"field": "status", "source": "column 'Code'", "value": "X",
                    "message": "value is not in the map (expected one of 'K', 'KY')"}]),
        (7, None, [{"field": "(record)", "source": None, "value": None,
                    "message": "the record has 3 fields but the header has 6 (no value for 'Date', 'Code', 'Note')"}]),
    ]
    assert filtered == 4  # H, two C (one with 8 fields, one with 1), T


def test_the_general_path_filters_alike():
    assert map_bytes(BILLING, BILLING_FILE, general=True) == map_bytes(BILLING, BILLING_FILE)


def test_filtering_happens_before_the_fast_path_which_still_maps_the_kept_records():
    run = compile_mapping(BILLING).start()
    assert run._bind(["Type", "EventId", "Place", "Date", "Code", "Note"]).fast is not None


@pytest.mark.parametrize(
    "rule, kept",
    [
        ("{column: Type, one_of: [D, d]}", [1, 2, 4]),
        ("{column: Type, pattern: 'D\\d?'}", [1, 3, 4]),
        ("{column: Type, equals: D, trim: false}", [1]),
        ("{column: Type, pattern: '(a+)+$'}", []),  # RE2: no catastrophic backtracking
    ],
)
def test_one_of_pattern_and_trim(rule, kept):
    mapping = BILLING.replace("keep: {column: Type, equals: D}", f"keep: {rule}")
    data = ("D;E1;6;01.03.2024 07:45;K;\n"
            "d;E2;6;01.03.2024 07:45;K;\n"
            "D1;E3;6;01.03.2024 07:45;K;\n"
            " D ;E4;6;01.03.2024 07:45;K;\n")
    records, _ = _filtered(mapping, data)
    assert [line for line, _, _ in records] == kept


def test_numeric_record_types_are_compared_as_text():
    mapping = BILLING.replace("keep: {column: Type, equals: D}", "keep: {column: Type, one_of: [10, 20]}")
    records, filtered = _filtered(mapping, "10;E1;6;01.03.2024 07:45;K;\n99;x\n20;E2;6;01.03.2024 07:45;K;\n")
    assert ([line for line, _, _ in records], filtered) == ([1, 3], 1)


def test_rows_mode_ignores_comment_lines_between_the_rows_of_one_event():
    mapping = textwrap.dedent("""\
        format: csv
        csv: {delimiter: ";", header_line: null, columns: [Type, EventId, Place, Date, Code, Inv, Job]}
        keep: {column: Type, equals: D}
        fields:
          id: {column: EventId}
          usageplacecode: {column: Place}
          time: {column: Date, formats: ["%d.%m.%Y %H:%M"]}
          status: {column: Code, map: {K: disconnected}}
        invoices: {mode: rows, invoicenumber: {column: Inv}, jobid: {column: Job}}
        """)
    data = ("D;E1;6;01.03.2024 07:45;K;100;1\n"
            "C;the second invoice follows\n"
            "D;E1;6;01.03.2024 07:45;K;101;2\n")
    records, filtered = _filtered(mapping, data)
    assert records == [(1, {"id": "E1", "usageplacecode": "6",
                            "invoices": [{"invoicenumber": "100", "jobid": 1}, {"invoicenumber": "101", "jobid": 2}],
                            "time": "2024-03-01 07:45:00", "status": "disconnected"}, [])]
    assert filtered == 1


def test_a_line_with_broken_quoting_is_still_reported():
    records, filtered = _filtered(BILLING, 'C;"abc"def\nD;E1;6;01.03.2024 07:45;K;\n')
    assert records[0] == (1, None, [{"field": "(record)", "source": None, "value": None,
                                     "message": "cannot split the record into fields: ';' expected after '\"'"}])
    assert filtered == 0


def test_xml_records_kept_by_xpath():
    mapping = textwrap.dedent("""\
        format: xml
        xml: {record_path: /Export/Row}
        keep: {xpath: "@kind", one_of: [event]}
        fields:
          usageplacecode: {xpath: Place}
          time: {xpath: Time}
          status: {const: connected}
        """)
    data = ("<Export><Row kind='header'><Count>2</Count></Row>"
            "<Row kind='event'><Place>6</Place><Time>2024-02-05 06:30:00</Time></Row>"
            "<Row><Note>no kind at all</Note></Row>"
            "<Row kind='event'><Place>7</Place><Time>2024-02-05 07:30:00</Time></Row></Export>")
    records, filtered = _filtered(mapping, data)
    assert [event["usageplacecode"] for _, event, _ in records] == ["6", "7"]
    assert filtered == 2


def test_fixed_width_records_kept_by_a_column():
    mapping = textwrap.dedent("""\
        format: fixed
        fixed:
          columns:
            - {name: Type, start: 1, width: 1}
            - {name: Place, start: 2, width: 4}
            - {name: Date, start: 6, width: 8}
        keep: {column: Type, equals: D}
        fields:
          usageplacecode: {column: Place}
          time: {column: Date, formats: ["%Y%m%d"]}
          status: {const: connected}
        """)
    records, filtered = _filtered(mapping, "H20240301 export of the night\nD643020240301\nT000001\n")
    assert [(line, event["usageplacecode"]) for line, event, _ in records] == [(2, "6430")]
    assert filtered == 2


# --- refused at load --------------------------------------------------------------------------------------

MINIMAL = """\
format: FORMAT
SECTION
keep: RULE
fields:
  usageplacecode: {SOURCE: code}
  time: {SOURCE: t}
  status: {SOURCE: s}
"""


def _mapping(rule: str, fmt: str = "csv", section: str = "csv: {}") -> str:
    source = "xpath" if fmt == "xml" else "column"
    return (MINIMAL.replace("FORMAT", fmt).replace("SECTION", section).replace("RULE", rule)
            .replace("SOURCE", source))


@pytest.mark.parametrize(
    "rule, problem",
    [
        ("{column: Type}", "m.yaml:3:1: keep: give exactly one of equals, one_of, pattern"),
        ("{column: Type, equals: D, pattern: D}", "m.yaml:3:1: keep: give exactly one of equals, one_of, pattern "
                                                  "(got equals, pattern)"),
        ("{equals: D}", "m.yaml:3:1: keep: say which value the rule looks at: give exactly one of column, xpath"),
        ("{column: Type, one_of: []}", "m.yaml:3:22: keep.one_of: List should have at least 1 item after "
                                       "validation, not 0"),
        ("{column: Type, pattern: '(D)\\1'}",
         "m.yaml:3:22: keep.pattern: not a usable regular expression: invalid escape sequence: \\1 (patterns run on "
         "RE2, which never backtracks: backreferences (\\1), lookahead (?=, ?!) and lookbehind (?<=, ?<!) are not "
         "available)"),
        ("{xpath: Type, equals: D}", "m.yaml:3:1: keep: 'xpath' is for XML feeds; this feed is CSV: use 'column'"),
        ("{column: Type, equals: D, sheet: 1}", "m.yaml:3:33: keep.sheet: unknown key (allowed here: column, equals, one_of, pattern, trim, xpath)"),
    ],
)
def test_a_wrong_rule_is_refused_with_its_place(rule, problem):
    assert refused_with(_mapping(rule)) == [problem]


def test_a_rule_on_xml_needs_an_xpath_it_can_evaluate():
    assert refused_with(_mapping("{column: Type, equals: D}", "xml", "xml: {record_path: //E}")) == [
        "m.yaml:3:1: keep: 'column' is for CSV and fixed-width feeds; this feed is XML: use 'xpath'"]
    assert refused_with(_mapping("{xpath: '../@kind', equals: D}", "xml", "xml: {record_path: //E}")) == [
        "m.yaml:3:8: keep.xpath: '../@kind': looks outside the record ('..', a path from '/', or a parent, ancestor, "
        "preceding or following axis): records are streamed, and the rest of the document is released as it is read"]


def test_a_rule_on_a_fixed_width_column_that_is_not_in_the_layout():
    section = "fixed: {columns: [{name: code, start: 1, width: 2}, {name: t, start: 3, width: 2}, " \
              "{name: s, start: 5, width: 1}]}"
    assert refused_with(_mapping("{column: Type, equals: D}", "fixed", section)) == [
        "m.yaml:3:1: keep: column 'Type' is not in fixed.columns (code, t, s)"]


def test_a_csv_file_without_the_rules_column_is_refused_whole(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(BILLING.replace("Type, EventId", "Kind, EventId"))
    data = tmp_path / "x.csv"
    data.write_text(BILLING_FILE)
    assert cli.run(["preview", str(mapping), str(data)]) == 2
    assert "missing column 'Type': the configured columns has 'Kind', 'EventId'" in capsys.readouterr().err


# --- counted in preview and in the receipt summary --------------------------------------------------------


def test_preview_counts_the_filtered_records(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(BILLING)
    data = tmp_path / "x.csv"
    data.write_text(BILLING_FILE)
    assert cli.run(["preview", "--json", str(mapping), str(data)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"{data}: 4 records, 2 valid, 2 invalid, 4 filtered out (keep)"


def test_the_receipt_summary_says_how_many_records_were_filtered(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox()
    ws = workspace_for(sandbox, mapping_text=BILLING, mapping_name="billing")
    path = ws.inbox / "night.csv"
    path.write_text(BILLING_FILE)
    outcome = process_file(ws, path)
    assert outcome.counts["accepted"] == 2 and outcome.counts["invalid"] == 2
    assert [row["line"] for row in read_receipt(ws.receipt("night.csv"), delimiter=";")] == ["2", "4", "6", "7"]
    summary: dict[str, Any] = ws.summary("night.csv")
    assert summary["records"] == 4
    assert summary["counts"]["filtered"] == 4  # a number of its own, not in "records"
    assert "note" not in summary
    assert outcome.file is not None and outcome.file.filtered == 4  # the journal keeps it
    # the rejected-rows file: the invalid D lines (E3, E4) as they were, no H/C/T lines (no header: none kept)
    rejected = ws.outbox / "night.csv.rejected.csv"
    assert rejected.read_text() == ("D;E3;643007572062440003;01.03.2024 09:00;X;\n"
                                    "D;E4;643007572062440004\n")
    assert summary["rejected_rows"] == "night.csv.rejected.csv"


def test_a_kept_fixed_width_line_longer_than_its_layout_is_still_reported():
    mapping = textwrap.dedent("""\
        format: fixed
        fixed:
          columns:
            - {name: Type, start: 1, width: 1}
            - {name: Place, start: 2, width: 4}
            - {name: Date, start: 6, width: 8}
        keep: {column: Type, equals: D}
        fields:
          usageplacecode: {column: Place}
          time: {column: Date, formats: ["%Y%m%d"]}
          status: {const: connected}
        """)
    records, filtered = _filtered(mapping, "H20240301 export of the night\nD643020240301 and more\nD643120240301\n")
    assert records == [
        (2, None, [{"field": "(record)", "source": None, "value": None,
                    "message": "the line has 22 characters and holds data past the layout's last column ('Date' "
                               "ends at character 13); nothing is cut without a word (is a column missing from "
                               "fixed.columns?)"}]),
        (3, {"usageplacecode": "6431", "time": "2024-03-01 00:00:00", "status": "connected"}, []),
    ]
    assert filtered == 1
