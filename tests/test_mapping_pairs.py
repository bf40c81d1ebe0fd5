"""Invoice pairs in one cell (issue 11, deliver 3): `594294:1234,594295:1235` -> two invoices."""

from __future__ import annotations

import textwrap

import pytest

from tests.fixtures_mapping import compile_mapping, map_bytes, mapping_problems as refused_with

PAIRS = """\
format: csv
csv: {delimiter: ";"}
fields:
  id: {column: Id}
  usageplacecode: {column: Place}
  time: {column: Time}
  status: {const: disconnected}
invoices:
  mode: pairs
  pairs: PAIRS
"""
HEADER = "Id;Place;Time;Invoices\n"


def _mapped(pairs: str, cells: list[str]) -> list:
    data = HEADER + "".join(f"E{i};6;2024-02-05 06:30:00;{cell}\n" for i, cell in enumerate(cells))
    return [(line, event["invoices"] if event else None, errors)
            for line, event, errors in map_bytes(PAIRS.replace("PAIRS", pairs), data)]


def test_separator_splits_items_into_number_and_job_id():
    assert _mapped("{column: Invoices, separator: ':'}", ["594294:1234, 594295:1235", "", " 594296 : 7 "]) == [
        (2, [{"invoicenumber": "594294", "jobid": 1234}, {"invoicenumber": "594295", "jobid": 1235}], []),
        (3, [], []),
        (4, [{"invoicenumber": "594296", "jobid": 7}], []),
    ]


def test_job_id_first_and_another_split():
    assert _mapped("{column: Invoices, split: '|', separator: '/', first: jobid}", ["1234/594294|1235/594295"]) == [
        (2, [{"invoicenumber": "594294", "jobid": 1234}, {"invoicenumber": "594295", "jobid": 1235}], []),
    ]


def test_a_pattern_with_named_groups():
    pairs = "{column: Invoices, pattern: 'INV(?P<invoicenumber>\\d{6}) \\(job (?P<jobid>\\d+)\\)'}"
    assert _mapped(pairs, ["INV594294 (job 1234),INV594295 (job 1235)", "INV5942 (job 1)"]) == [
        (2, [{"invoicenumber": "594294", "jobid": 1234}, {"invoicenumber": "594295", "jobid": 1235}], []),
        (3, None, [{"field": "invoices[0]", "source": "column 'Invoices'", "value": "INV5942 (job 1)",
                    "message": "does not match the pattern 'INV(?P<invoicenumber>\\\\d{6}) \\\\(job (?P<jobid>\\\\d+)\\\\)'"}]),
    ]


@pytest.mark.parametrize(
    "cell, errors",
    [
        ("594294", [{"field": "invoices[0]", "source": "column 'Invoices'", "value": "594294",
                     "message": "is not invoicenumber:jobid (an invoice number and a job id separated by ':')"}]),
        ("1:2:3", [{"field": "invoices[0]", "source": "column 'Invoices'", "value": "1:2:3",
                    "message": "is not invoicenumber:jobid (an invoice number and a job id separated by ':')"}]),
        ("594294:12x", [{"field": "invoices[0].jobid", "source": "column 'Invoices'", "value": "12x",
                         "message": "expected a whole number"}]),
        (":5", [{"field": "invoices[0].invoicenumber", "source": "column 'Invoices'", "value": "",
                 "message": "is required but empty: an invoice needs both its invoicenumber and its jobid"}]),
        ("1:2,,3:4", [{"field": "invoices", "source": "column 'Invoices'", "value": "1:2,,3:4",
                       "message": "has an empty item between ',' separators"}]),
    ],
)
def test_items_that_are_not_pairs_make_the_record_invalid(cell, errors):
    assert _mapped("{column: Invoices, separator: ':'}", [cell]) == [(2, None, errors)]


def test_pairs_from_an_xml_text():
    mapping = textwrap.dedent("""\
        format: xml
        xml: {record_path: /Export/Event}
        fields:
          usageplacecode: {xpath: Place}
          time: {xpath: Time}
          status: {const: connected}
        invoices: {mode: pairs, pairs: {xpath: Invoices, separator: ":"}}
        """)
    data = ("<Export><Event><Place>6</Place><Time>2024-02-05 06:30:00</Time><Invoices>1:2,3:4</Invoices></Event>"
            "<Event><Place>7</Place><Time>2024-02-05 06:30:00</Time></Event></Export>")
    assert [event["invoices"] for _, event, _ in map_bytes(mapping, data)] == [
        [{"invoicenumber": "1", "jobid": 2}, {"invoicenumber": "3", "jobid": 4}], []]


def test_the_general_path_maps_pair_cells():
    # the fast path does not split pairs: a mapping with them goes the general way, record by record
    compiled = compile_mapping(PAIRS.replace("PAIRS", "{column: Invoices, separator: ':'}"))
    run = compiled.start()
    assert run._bind(["Id", "Place", "Time", "Invoices"]).fast is None
    assert compile_mapping(PAIRS.replace("invoices:\n  mode: pairs\n  pairs: PAIRS\n", "")).start()._bind(
        ["Id", "Place", "Time"]).fast is not None


@pytest.mark.parametrize(
    "pairs, problem",
    [
        ("{column: Invoices}", "m.yaml:10:3: invoices.pairs: say how an item splits into number and job id: give "
                               "exactly one of separator, pattern"),
        ("{separator: ':'}", "m.yaml:10:3: invoices.pairs: say where the invoices are: give exactly one of column, "
                             "xpath"),
        ("{column: Invoices, separator: ','}", "m.yaml:10:3: invoices.pairs: separator and split must differ"),
        ("{column: Invoices, pattern: '(?P<invoicenumber>\\d+)'}",
         "m.yaml:10:29: invoices.pairs.pattern: the pattern needs the named group (?P<jobid>...)"),
        ("{column: Invoices, pattern: '(?P<invoicenumber>\\d+)(?=x)'}",
         "m.yaml:10:29: invoices.pairs.pattern: not a usable regular expression: invalid perl operator: (?= "
         "(patterns run on RE2, which never backtracks: backreferences (\\1), lookahead (?=, ?!) and lookbehind "
         "(?<=, ?<!) are not available)"),
        ("{xpath: Invoices, separator: ':'}",
         "m.yaml:10:3: invoices.pairs: 'xpath' is for XML feeds; this feed is CSV: use 'column'"),
    ],
)
def test_a_wrong_pairs_section_is_refused_with_its_place(pairs, problem):
    assert refused_with(PAIRS.replace("PAIRS", pairs)) == [problem]


def test_pairs_mode_needs_pairs_and_takes_no_parts():
    assert refused_with(PAIRS.replace("  pairs: PAIRS\n", "  invoicenumber: {column: Invoices}\n")) == [
        "m.yaml:8:1: invoices.pairs: mode 'pairs' needs 'pairs' (the cell and how it splits)",
        "m.yaml:10:3: invoices.invoicenumber: mode 'pairs' reads number and job id from the one cell under 'pairs': "
        "remove this",
    ]
    assert refused_with(PAIRS.replace("mode: pairs", "mode: columns").replace(
        "PAIRS", "{column: Invoices, separator: ':'}")) == [
        "m.yaml:8:1: invoices.invoicenumber: required key is missing",
        "m.yaml:10:3: invoices.pairs: 'pairs' is only for mode 'pairs' (mode is 'columns')",
    ]
