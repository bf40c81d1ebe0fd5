"""Defects of issue 11 (deliver 7), each pinned by a test that failed before its fix, with the exact text."""

from __future__ import annotations

import textwrap

import pytest

from batch.config.mapping import CrossFieldProblem, load_mapping_text, mapping_problems
from tests.fixtures_mapping import ROWS, ROWS_HEADER, map_bytes, mapping_problems as refused_with

# --- half an invoice ------------------------------------------------------------------------------


@pytest.mark.parametrize("general", [False, True])
def test_rows_mode_refuses_an_invoice_number_without_its_job_id_and_the_reverse(general):
    data = ROWS_HEADER + (
        "A,6,2024-02-05 06:30:00,disconnected,,100,\n"
        "B,7,2024-02-05 07:00:00,disconnected,,,12\n"
        "C,8,2024-02-05 08:00:00,connected,,,\n"  # no invoice at all: fine
    )
    assert map_bytes(ROWS, data, general=general) == [
        (2, None, [{"field": "invoices.jobid", "source": "column 'job'", "value": "",
                    "message": "is required but empty: an invoice needs both its invoicenumber and its jobid"}]),
        (3, None, [{"field": "invoices.invoicenumber", "source": "column 'inv'", "value": "",
                    "message": "is required but empty: an invoice needs both its invoicenumber and its jobid"}]),
        (4, {"id": "C", "usageplacecode": "8", "invoices": [], "time": "2024-02-05 08:00:00", "status": "connected"}, []),
    ]


def test_required_false_on_an_invoice_part_allows_half_an_invoice():
    mapping = ROWS.replace("jobid: {column: job}", "jobid: {column: job, required: false}")
    data = ROWS_HEADER + "A,6,2024-02-05 06:30:00,disconnected,,100,\n"
    assert map_bytes(mapping, data)[0][1]["invoices"] == [{"invoicenumber": "100"}]


XML_INVOICES = """\
format: xml
xml: {record_path: /Export/Event}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: Place}
  time: {xpath: Time}
  status: {xpath: Status}
invoices:
  mode: elements
  element: Invoice
  invoicenumber: {xpath: Number}
  jobid: {xpath: "@jobid"JOB_OPTIONS}
"""


def _xml(invoices: str) -> str:
    return ("<Export><Event id='E1'><Place>6</Place><Time>2024-02-05 06:30:00</Time><Status>connected</Status>"
            f"{invoices}</Event></Export>")


@pytest.mark.parametrize("options", ["", ", required: true"])
@pytest.mark.parametrize("general", [False, True])
def test_elements_mode_refuses_half_an_invoice_and_required_true_is_honoured(options, general):
    mapping = XML_INVOICES.replace("JOB_OPTIONS", options)
    data = _xml("<Invoice jobid='7'><Number>100</Number></Invoice><Invoice><Number>101</Number></Invoice>")
    assert map_bytes(mapping, data, general=general) == [
        (1, None, [{"field": "invoices[1].jobid", "source": "xpath '@jobid'", "value": None,
                    "message": "is required but empty: an invoice needs both its invoicenumber and its jobid"}]),
    ]
    assert map_bytes(mapping, _xml("<Invoice jobid='7'><Number>100</Number></Invoice>"), general=general)[0][1][
        "invoices"] == [{"invoicenumber": "100", "jobid": 7}]


def test_required_false_in_elements_mode():
    mapping = XML_INVOICES.replace("JOB_OPTIONS", ", required: false")
    event = map_bytes(mapping, _xml("<Invoice><Number>101</Number></Invoice>"))[0][1]
    assert event["invoices"] == [{"invoicenumber": "101"}]


# --- wrong values in messages ---------------------------------------------------------------------


def test_rows_mode_error_quotes_the_value_of_its_own_row():
    # B's missing reason used to be reported with A's description ('Mittari rikki')
    data = ROWS_HEADER + (
        "A,6,2024-02-05 06:30:00,not_disconnected,Mittari rikki,100,1\n"
        "B,7,2024-02-05 07:00:00,not_disconnected,,101,2\n"
    )
    assert map_bytes(ROWS, data)[1] == (
        3, None, [{"field": "description", "source": "column 'note'", "value": "",
                   "message": "is required for a not-disconnected event: say why the disconnection was not done"}])


def test_rows_of_one_event_that_disagree_name_the_row_that_differs():
    data = ROWS_HEADER + (
        "A,6,2024-02-05 06:30:00,disconnected,,100,1\n"
        "A,6,2024-02-05 06:30:00,disconnected,,101,2\n"
        "A,9,2024-02-05 06:30:00,disconnected,,102,3\n"
    )
    assert map_bytes(ROWS, data) == [
        (2, None, [{"field": "usageplacecode", "source": "column 'code'", "value": "9",
                    "message": "line 4 differs from line 2 of the same event id ('6')"}])
    ]


# --- template placeholders with a namespace prefix --------------------------------------------------------


def test_a_template_placeholder_with_a_namespace_prefix_is_that_xpath():
    mapping = """\
        format: xml
        xml: {record_path: /e:Export/e:Event, namespaces: {e: "urn:e"}}
        fields:
          usageplacecode: {template: "{e:Site}-{e:Meter}"}
          time: {xpath: "e:Time"}
          status: {const: connected}
        """
    data = ("<Export xmlns='urn:e'><Event><Site>64</Site><Meter>01</Meter><Time>2024-02-05 06:30:00</Time>"
            "</Event></Export>")
    for general in (False, True):
        assert map_bytes(textwrap.dedent(mapping), data, general=general)[0][1] == {
            "usageplacecode": "64-01", "time": "2024-02-05 06:30:00", "status": "connected"}


def test_a_template_placeholder_with_an_unknown_prefix_is_refused_at_load():
    assert refused_with("""\
        format: xml
        xml: {record_path: /Export/Event}
        fields:
          usageplacecode: {template: "{x:Site}"}
          time: {xpath: Time}
          status: {const: connected}
        """) == ["m.yaml:4:3: fields.usageplacecode: 'x:Site': namespace prefix 'x' is not declared "
                 "in xml.namespaces"]


def test_a_template_conversion_is_refused():
    assert refused_with("""\
        format: csv
        fields:
          usageplacecode: {template: "{code!r}"}
          time: {column: t}
          status: {column: s}
        """) == ["m.yaml:3:20: fields.usageplacecode.template: template '{code!r}': "
                 "'!r' in a placeholder is not supported"]


# --- default_by_status for not_disconnected ---------------------------------------------------------------


@pytest.mark.parametrize("statuses, key", [("", "not_disconnected"), ("statuses: {not_disconnected: EK}\n", "EK")])
def test_a_stock_description_for_not_disconnected_is_refused(statuses, key):
    assert refused_with(f"""\
format: csv
{statuses}fields:
  usageplacecode: {{column: code}}
  time: {{column: t}}
  status: {{column: s}}
  description:
    column: d
    default_by_status:
      disconnected: Katkaistu
      {key}: Ei katkaistu
""") == [
        f"m.yaml:{11 if statuses else 10}:7: fields.description.default_by_status.{key}: a not-disconnected event "
        "needs its own reason from the record (Ropo One requires it), so it gets no stock description: remove "
        "this entry and map description from the export"]


# --- cross-field problems are data ------------------------------------------------------------------------


def test_cross_field_problems_are_data_with_their_key_path():
    mapping = load_mapping_text(textwrap.dedent("""\
        format: csv
        fields:
          usageplacecode: {column: code}
          time: {column: t}
          status: {column: s}
        """))
    broken = mapping.model_copy(update={"format": "xml"})
    assert mapping_problems(broken) == [
        CrossFieldProblem(("xml",), "an XML feed needs an 'xml' section with record_path"),
        CrossFieldProblem(("csv",), "this is an XML feed (format: xml); remove the 'csv' section"),
        CrossFieldProblem(("fields", "usageplacecode"), "'column' is for CSV feeds; this feed is XML: use 'xpath'"),
        CrossFieldProblem(("fields", "time"), "'column' is for CSV feeds; this feed is XML: use 'xpath'"),
        CrossFieldProblem(("fields", "status"), "'column' is for CSV feeds; this feed is XML: use 'xpath'"),
    ]


def test_a_status_with_a_dot_is_located_at_its_own_key():
    # a path parsed back out of "path: message" text split such a key in two
    assert refused_with("""\
        format: csv
        statuses: {not_disconnected: ei.katkaistu}
        fields:
          usageplacecode: {column: code}
          time: {column: t}
          status: {column: s}
          description:
            column: d
            default_by_status:
              ei.katkaistu: Ei katkaistu
              k.x: Katkaistu
        """) == [
        "m.yaml:10:7: fields.description.default_by_status.ei.katkaistu: a not-disconnected event needs its own "
        "reason from the record (Ropo One requires it), so it gets no stock description: remove this entry and "
        "map description from the export",
        "m.yaml:11:7: fields.description.default_by_status.k.x: 'k.x' is not a status "
        "(connected, disconnected, ei.katkaistu)",
    ]
