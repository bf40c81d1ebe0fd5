"""batch.transform.mapping: records -> UsageplaceEvent dicts, or errors naming line, field, source, value, expectation."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from batch.contract import component_schema
from batch.transform.mapping import MappedRecord, MappingRun, content_id
from batch.transform.records import Chunk
from tests.fixtures_mapping import ROWS, ROWS_HEADER, compile_mapping, map_bytes

EVENT_SCHEMA = component_schema("UsageplaceEvent")
EVENT_VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA)
EVENT_PROPERTIES = set(EVENT_SCHEMA["properties"])

BASE = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: code}
  time: {column: time}
  status: {column: status}
  description: {column: note}
"""
HEADER = "id,code,time,status,note\n"



def map_all(run: MappingRun, chunks: Iterable[Chunk]) -> list[MappedRecord]:
    """Every record of a file's chunks, as extract.mapped_chunks yields them."""
    out = [record for chunk in chunks for record in run.map_chunk(chunk)]
    return out + run.finish()

def only_event(mapping, data):
    [(line, event, errors)] = map_bytes(mapping, data)
    assert errors == []
    return event


def only_errors(mapping, data):
    [(line, event, errors)] = map_bytes(mapping, data)
    assert event is None
    return line, errors


def assert_contract(event: dict) -> None:
    EVENT_VALIDATOR.validate(event)
    assert set(event) <= EVENT_PROPERTIES
    for invoice in event.get("invoices", []):
        assert set(invoice) <= {"invoicenumber", "jobid"}


# --- one record, one event -------------------------------------------------------------------------------


def test_a_record_becomes_an_event_in_contract_order():
    event = only_event(BASE, HEADER + "E1, 6430 ,2024-02-05 06:30:00,connected,Back on\n")
    assert event == {
        "id": "E1",
        "usageplacecode": "6430",
        "time": "2024-02-05 06:30:00",
        "status": "connected",
        "description": "Back on",
    }
    assert list(event) == ["id", "usageplacecode", "time", "status", "description"]
    assert_contract(event)


def test_empty_optional_fields_are_left_out():
    event = only_event(BASE, HEADER + "E1,6430,2024-02-05 06:30:00,connected,\n")
    assert "description" not in event


def test_trim_can_be_turned_off():
    mapping = BASE.replace("note}", "note, trim: false}")
    assert only_event(mapping, HEADER + "E1,6430,2024-02-05 06:30:00,connected,  two spaces \n")["description"] == (
        "  two spaces "
    )


def test_const_and_template_sources():
    mapping = """\
    format: csv
    fields:
      id: {template: "{prefix}-{num}"}
      usageplacecode: {column: code}
      customernumber: {const: 12345}
      contract_no: {template: "K/{num}"}
      time: {template: "{Pvm} {Klo}", formats: ["%d.%m.%Y %H:%M:%S"]}
      status: {const: disconnected}
    """
    event = only_event(mapping, "prefix,num,code,Pvm,Klo\nKT,7,6430,5.2.2024,6:30:00\n")
    assert event == {
        "id": "KT-7",
        "usageplacecode": "6430",
        "customernumber": "12345",
        "contract_no": "K/7",
        "time": "2024-02-05 06:30:00",
        "status": "disconnected",
    }


def test_value_map_is_exact_by_default():
    mapping = BASE.replace("status: {column: status}", "status: {column: status, map: {K: disconnected, KY: connected}}")
    assert only_event(mapping, HEADER + "E1,6430,2024-02-05 06:30:00,KY,\n")["status"] == "connected"
    line, errors = only_errors(mapping, HEADER + "E1,6430,2024-02-05 06:30:00,ky,\n")
    assert line == 2
    assert errors == [
        {
            "field": "status",
            "source": "column 'status'",
            "value": "ky",
            "message": "value is not in the map (expected one of 'K', 'KY')",
        }
    ]


def test_value_map_ignoring_case_and_with_a_default():
    mapping = BASE.replace(
        "status: {column: status}",
        "status: {column: status, map: {K: disconnected, KY: connected}, map_ignore_case: true, map_default: connected}",
    )
    results = map_bytes(mapping, HEADER + "1,6,2024-02-05 06:30:00,k,\n2,6,2024-02-05 06:30:00,Zz,\n")
    assert [event["status"] for _, event, _ in results] == ["disconnected", "connected"]


def test_value_map_ignoring_case_handles_non_ascii_folding():
    mapping = BASE.replace("status: {column: status}", "status: {column: status, map: {KATKAISTU: disconnected, STRASSE: connected}, map_ignore_case: true}")
    results = map_bytes(mapping, HEADER + "1,6,2024-02-05 06:30:00,katkaistu,\n2,6,2024-02-05 06:30:00,straße,\n")
    assert [event["status"] for _, event, _ in results] == ["disconnected", "connected"]


def test_defaults_fill_empty_values():
    mapping = BASE.replace("code}", "code, default: '000'}").replace("note}", "note, default: none given}")
    event = only_event(mapping, HEADER + "E1,  ,2024-02-05 06:30:00,connected,\n")
    assert event["usageplacecode"] == "000" and event["description"] == "none given"


def test_default_description_per_status():
    mapping = BASE.replace(
        "description: {column: note}",
        "description: {column: note, default_by_status: {disconnected: Katkaistu, connected: Kytketty}}",
    )
    data = HEADER + "1,6,2024-02-05 06:30:00,disconnected,\n2,6,2024-02-05 06:30:00,connected,own text\n"
    assert [event["description"] for _, event, _ in map_bytes(mapping, data)] == ["Katkaistu", "own text"]


def test_required_fields_and_the_required_option():
    line, errors = only_errors(BASE, HEADER + "E1,,2024-02-05 06:30:00,connected,\n")
    assert errors == [{"field": "usageplacecode", "source": "column 'code'", "value": "", "message": "is required but empty"}]
    # an optional field made required
    mapping = BASE.replace("id: {column: id}", "id: {column: id, required: true}")
    assert only_errors(mapping, HEADER + " ,6,2024-02-05 06:30:00,connected,\n")[1] == [
        {"field": "id", "source": "column 'id'", "value": " ", "message": "is required but empty"}
    ]
    # a required field made optional: the event simply lacks it
    mapping = BASE.replace("code}", "code, required: false}")
    assert "usageplacecode" not in only_event(mapping, HEADER + "E1,,2024-02-05 06:30:00,connected,\n")


def test_pattern():
    mapping = BASE.replace("code}", "code, pattern: '\\d{18}'}")
    assert only_event(mapping, HEADER + "1,643007572062443672,2024-02-05 06:30:00,connected,\n")
    assert only_errors(mapping, HEADER + "1,64300757206244367,2024-02-05 06:30:00,connected,\n")[1] == [
        {
            "field": "usageplacecode",
            "source": "column 'code'",
            "value": "64300757206244367",
            "message": "does not match the pattern '\\\\d{18}'",
        }
    ]


def test_time_zone_conversion_and_source_zone():
    mapping = "time_zone: UTC\n" + BASE.replace("time: {column: time}", "time: {column: time, source_time_zone: Europe/Helsinki}")
    assert only_event(mapping, HEADER + "1,6,2024-07-01 12:00:00,connected,\n")["time"] == "2024-07-01 09:00:00"


def test_time_errors_say_what_was_expected():
    mapping = BASE.replace("time: {column: time}", 'time: {column: time, formats: ["%d.%m.%Y %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]}')
    assert only_errors(mapping, HEADER + "1,6,5/2/2024,connected,\n")[1] == [
        {
            "field": "time",
            "source": "column 'time'",
            "value": "5/2/2024",
            "message": "expected a time as '%d.%m.%Y %H:%M:%S' or '%Y-%m-%dT%H:%M:%S%z'",
        }
    ]


def test_status_vocabulary_and_the_not_disconnected_rule():
    assert only_errors(BASE, HEADER + "1,6,2024-02-05 06:30:00,cut,\n")[1] == [
        {
            "field": "status",
            "source": "column 'status'",
            "value": "cut",
            "message": "must be one of connected, disconnected, not_disconnected",
        }
    ]
    assert only_errors(BASE, HEADER + "1,6,2024-02-05 06:30:00,not_disconnected, \n")[1] == [
        {
            "field": "description",
            "source": "column 'note'",
            "value": " ",
            "message": "is required for a not-disconnected event: say why the disconnection was not done",
        }
    ]
    assert only_event(BASE, HEADER + "1,6,2024-02-05 06:30:00,not_disconnected,Dog\n")["description"] == "Dog"


def test_not_disconnected_without_any_description_field():
    mapping = BASE.replace("  description: {column: note}\n", "")
    [(_, event, errors)] = map_bytes(mapping, HEADER + "1,6,2024-02-05 06:30:00,not_disconnected,x\n")
    assert event is None
    assert [e["field"] for e in errors] == ["description"]


def test_overridden_status_vocabulary():
    mapping = "statuses: {not_disconnected: ei_katkaistu}\n" + BASE
    assert only_errors(mapping, HEADER + "1,6,2024-02-05 06:30:00,ei_katkaistu,\n")[1][0]["field"] == "description"
    assert only_event(mapping, HEADER + "1,6,2024-02-05 06:30:00,ei_katkaistu,Lukittu\n")["status"] == "ei_katkaistu"
    assert only_errors(mapping, HEADER + "1,6,2024-02-05 06:30:00,not_disconnected,x\n")[1][0]["field"] == "status"


def test_every_problem_of_a_record_is_reported():
    mapping = BASE.replace("status: {column: status}", "status: {column: status, map: {K: disconnected}}")
    line, errors = only_errors(mapping, HEADER + "1,,31.2.2024,X,\n")
    assert line == 2
    assert [(e["field"], e["value"]) for e in errors] == [("usageplacecode", ""), ("time", "31.2.2024"), ("status", "X")]


def test_short_and_long_records():
    results = map_bytes(BASE, HEADER + "1,6\n2,6,2024-02-05 06:30:00,connected,x,extra\n3,6,2024-02-05 06:30:00,connected,x,,\n")
    assert results[0] == (
        2,
        None,
        [
            {
                "field": "(record)",
                "source": None,
                "value": None,
                "message": "the record has 2 fields but the header has 5 (no value for 'time', 'status', 'note')",
            }
        ],
    )
    assert results[1][2] == [
        {
            "field": "(record)",
            "source": None,
            "value": None,
            "message": "the record has 6 fields but the header has 5: is a delimiter inside an unquoted value?",
        }
    ]
    # trailing empty fields are harmless
    assert results[2][1]["id"] == "3"


def test_broken_quoting_is_a_record_error():
    results = map_bytes(BASE, HEADER + '1,6,2024-02-05 06:30:00,connected,"open\n')
    assert results == [
        (2, None, [{"field": "(record)", "source": None, "value": None, "message": "cannot split the record into fields: unexpected end of data"}])
    ]


# --- invoices ------------------------------------------------------------------------------------------

INVOICE_COLUMNS = BASE + """\
invoices:
  mode: columns
  invoicenumber: {column: numbers, split: "|"}
  jobid: {column: jobs, split: "|"}
"""
INVOICE_HEADER = "id,code,time,status,note,numbers,jobs\n"


def test_invoices_from_paired_columns():
    event = only_event(INVOICE_COLUMNS, INVOICE_HEADER + "1,6,2024-02-05 06:30:00,connected,,1001|1002,71| 72\n")
    assert event["invoices"] == [{"invoicenumber": "1001", "jobid": 71}, {"invoicenumber": "1002", "jobid": 72}]
    assert list(event) == ["id", "usageplacecode", "invoices", "time", "status"]
    assert_contract(event)


def test_empty_invoice_columns_give_an_empty_list():
    assert only_event(INVOICE_COLUMNS, INVOICE_HEADER + "1,6,2024-02-05 06:30:00,connected,,,\n")["invoices"] == []


def test_invoice_number_without_a_job_id():
    mapping = INVOICE_COLUMNS.replace('  jobid: {column: jobs, split: "|"}\n', "")
    event = only_event(mapping, INVOICE_HEADER + "1,6,2024-02-05 06:30:00,connected,,1001|1002,\n")
    assert event["invoices"] == [{"invoicenumber": "1001"}, {"invoicenumber": "1002"}]


@pytest.mark.parametrize(
    "numbers, jobs, errors",
    [
        (
            "1001|1002",
            "71",
            [{"field": "invoices", "source": "column 'numbers' + column 'jobs'", "value": None,
              "message": "paired invoice columns differ in length (invoices.invoicenumber has 2, invoices.jobid has 1)"}],
        ),
        (
            "1001||1002",
            "71|72|73",
            [{"field": "invoices.invoicenumber", "source": "column 'numbers'", "value": "1001||1002",
              "message": "has an empty item between '|' separators"}],
        ),
        (
            "1001|1002",
            "71|7x",
            [{"field": "invoices[1].jobid", "source": "column 'jobs'", "value": "7x", "message": "expected a whole number"}],
        ),
        (
            "1001",
            "1" + "0" * 5000,
            [{"field": "invoices[0].jobid", "source": "column 'jobs'", "value": "1" + "0" * 5000,
              "message": "expected a whole number (this one has too many digits)"}],
        ),
        (
            "1001",
            "٣",  # a digit, but not an ASCII one
            [{"field": "invoices[0].jobid", "source": "column 'jobs'", "value": "٣", "message": "expected a whole number"}],
        ),
    ],
)
def test_invoice_errors(numbers, jobs, errors):
    assert only_errors(INVOICE_COLUMNS, INVOICE_HEADER + f"1,6,2024-02-05 06:30:00,connected,,{numbers},{jobs}\n")[1] == errors


def test_jobid_spellings():
    event = only_event(INVOICE_COLUMNS, INVOICE_HEADER + "1,6,2024-02-05 06:30:00,connected,,a|b|c,+7|1 234|0042\n")
    assert [i["jobid"] for i in event["invoices"]] == [7, 1234, 42]
    assert all(type(i["jobid"]) is int for i in event["invoices"])


def test_rows_sharing_an_event_id_are_merged():
    data = ROWS_HEADER + (
        "A,6,2024-02-05 06:30:00,disconnected,,100,1\n"
        "A,6,2024-02-05 06:30:00,disconnected,,101,2\n"
        "B,7,2024-02-05 07:00:00,connected,,,\n"
        "C,8,2024-02-05 08:00:00,disconnected,,102,3\n"  # half an invoice: tests/test_mapping_defects.py
    )
    for chunk_size in (1, 2, 5000):
        assert map_bytes(ROWS, data, chunk_size=chunk_size) == [
            (2, {"id": "A", "usageplacecode": "6", "invoices": [{"invoicenumber": "100", "jobid": 1}, {"invoicenumber": "101", "jobid": 2}],
                 "time": "2024-02-05 06:30:00", "status": "disconnected", "description": "Katkaistu"}, []),
            (4, {"id": "B", "usageplacecode": "7", "invoices": [], "time": "2024-02-05 07:00:00", "status": "connected"}, []),
            (5, {"id": "C", "usageplacecode": "8", "invoices": [{"invoicenumber": "102", "jobid": 3}], "time": "2024-02-05 08:00:00",
                 "status": "disconnected", "description": "Katkaistu"}, []),
        ], chunk_size


def test_rows_of_one_event_that_disagree():
    data = ROWS_HEADER + "A,6,2024-02-05 06:30:00,disconnected,,100,1\nA,9,2024-02-05 06:30:00,disconnected,,101,2\n"
    assert map_bytes(ROWS, data) == [
        (2, None, [{"field": "usageplacecode", "source": "column 'code'", "value": "9",
                    "message": "line 3 differs from line 2 of the same event id ('6')"}])
    ]


def test_rows_of_one_event_that_are_not_adjacent_are_a_duplicate():
    data = ROWS_HEADER + (
        "A,6,2024-02-05 06:30:00,disconnected,,100,1\n"
        "B,7,2024-02-05 07:00:00,connected,,,\n"
        "A,6,2024-02-05 06:30:00,disconnected,,101,2\n"
    )
    results = map_bytes(ROWS, data)
    assert [line for line, _, _ in results] == [2, 3, 4]
    assert results[2][2] == [{"field": "id", "source": "column 'id'", "value": "A", "message": "event id is used again (first on line 2)"}]


def test_a_bad_row_inside_a_group_makes_the_event_invalid():
    data = ROWS_HEADER + "A,6,2024-02-05 06:30:00,disconnected,,100,1\nA,6,2024-02-05 06:30:00,disconnected,,101,x\n"
    assert map_bytes(ROWS, data) == [
        (2, None, [{"field": "invoices.jobid", "source": "column 'job'", "value": "x", "message": "expected a whole number"}])
    ]


XML_MAPPING = """\
format: xml
xml:
  record_path: /Export/Events/Event
  namespaces: {"": "urn:u", u: "urn:u", inv: "urn:i"}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: "Place/@code"}
  customernumber: {xpath: "normalize-space(u:Customer)"}  # full XPath: the default namespace needs a prefix
  time: {xpath: Time, formats: ["%Y-%m-%dT%H:%M:%S%z"]}
  status: {xpath: Status}
  description: {xpath: Note}
invoices:
  mode: elements
  element: inv:Invoices/inv:Invoice
  invoicenumber: {xpath: "inv:Number"}
  jobid: {xpath: "@jobid"}
"""


def xml_doc(*events: str) -> str:
    return '<?xml version="1.0"?>\n<Export xmlns="urn:u" xmlns:inv="urn:i"><Events>\n' + "\n".join(events) + "\n</Events></Export>\n"


def test_xml_records_with_repeated_invoice_elements_and_empty_lists():
    data = xml_doc(
        '<Event id="X1"><Place code="6"/><Customer>  A  B </Customer><Time>2024-02-05T04:30:00Z</Time><Status>disconnected</Status>'
        '<inv:Invoices><inv:Invoice jobid="7"><inv:Number>100</inv:Number></inv:Invoice><inv:Invoice jobid="8"><inv:Number>101</inv:Number></inv:Invoice></inv:Invoices></Event>',
        '<Event id="X2"><Place code="7"/><Time>2024-02-05T04:30:00Z</Time><Status>connected</Status><inv:Invoices/></Event>',
        '<Event id="X3"><Place code="8"/><Time>2024-02-05T04:30:00Z</Time><Status>connected</Status></Event>',
    )
    results = map_bytes(XML_MAPPING, data)
    assert results == [
        (3, {"id": "X1", "usageplacecode": "6", "customernumber": "A B",
             "invoices": [{"invoicenumber": "100", "jobid": 7}, {"invoicenumber": "101", "jobid": 8}],
             "time": "2024-02-05 06:30:00", "status": "disconnected"}, []),
        (4, {"id": "X2", "usageplacecode": "7", "invoices": [], "time": "2024-02-05 06:30:00", "status": "connected"}, []),
        (5, {"id": "X3", "usageplacecode": "8", "invoices": [], "time": "2024-02-05 06:30:00", "status": "connected"}, []),
    ]
    for _, event, _ in results:
        assert_contract(event)


def test_xml_errors_name_the_xpath():
    data = xml_doc(
        '<Event id="X1"><Time>yesterday</Time><Status>connected</Status>'
        '<inv:Invoices><inv:Invoice jobid="seven"><inv:Number>100</inv:Number></inv:Invoice></inv:Invoices></Event>'
    )
    assert map_bytes(XML_MAPPING, data) == [
        (3, None, [
            {"field": "usageplacecode", "source": "xpath 'Place/@code'", "value": None, "message": "is required but empty"},
            {"field": "time", "source": "xpath 'Time'", "value": "yesterday", "message": "expected a time as '%Y-%m-%dT%H:%M:%S%z'"},
            {"field": "invoices[0].jobid", "source": "xpath '@jobid'", "value": "seven", "message": "expected a whole number"},
        ])
    ]


def test_duplicate_ids_in_a_one_line_xml_file():
    # every record of a minified export starts on line 1: duplicates must still be caught
    data = xml_doc(*[f'<Event id="{i}"><Place code="{n}"/><Time>2024-02-05T04:30:00Z</Time><Status>connected</Status></Event>'
                     for n, i in enumerate(["A", "B", "A"])]).replace("\n", "")
    results = map_bytes(XML_MAPPING, data)
    assert [event is not None for _, event, _ in results] == [True, True, False]
    assert results[2][2] == [{"field": "id", "source": "xpath '@id'", "value": "A", "message": "event id is used again (first on line 1)"}]


# --- ids -----------------------------------------------------------------------------------------------


def test_duplicate_event_ids_in_a_file():
    data = HEADER + "A,6,2024-02-05 06:30:00,connected,\nB,6,2024-02-05 06:30:00,connected,\nA,7,2024-02-05 06:30:00,connected,\n"
    for chunk_size in (1, 5000):
        results = map_bytes(BASE, data, chunk_size=chunk_size)
        assert [line for line, _, _ in results] == [2, 3, 4]
        assert results[2] == (4, None, [{"field": "id", "source": "column 'id'", "value": "A", "message": "event id is used again (first on line 2)"}])


def test_an_invalid_record_still_claims_its_id():
    data = HEADER + "A,,2024-02-05 06:30:00,connected,\nA,6,2024-02-05 06:30:00,connected,\n"
    results = map_bytes(BASE, data)
    assert results[1][2][-1]["message"] == "event id is used again (first on line 2)"


GENERATED = BASE.replace("id: {column: id}", "id: {generate: true, prefix: 'g-'}")


def expected_content_id(event: dict) -> str:
    body = {k: v for k, v in event.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()[:32]


def test_generated_ids_are_deterministic_across_files_and_positions():
    one = map_bytes(GENERATED, HEADER + "x,6,2024-02-05 06:30:00,connected,Käyttöpaikka\n")
    other_file = map_bytes(
        GENERATED,
        "note,status,time,code,id\nfirst,connected,2024-01-01 00:00:00,1,y\nKäyttöpaikka,connected,2024-02-05 06:30:00,6,z\n",
    )
    event = one[0][1]
    assert event == {"id": event["id"], "usageplacecode": "6", "time": "2024-02-05 06:30:00", "status": "connected", "description": "Käyttöpaikka"}
    assert event["id"] == "g-" + expected_content_id(event)
    assert other_file[1][1]["id"] == event["id"]
    assert other_file[0][1]["id"] != event["id"]
    assert content_id(event) == expected_content_id(event)


def test_generated_ids_depend_on_the_mapped_value_not_the_raw_text():
    # same event after trimming and time conversion -> same id
    a = only_event(GENERATED, HEADER + "x, 6 ,2024-02-05 06:30:00,connected,\n")
    b = only_event(GENERATED, HEADER + "x,6,2024-02-05 06:30:00,connected,\n")
    assert a["id"] == b["id"]


def test_identical_records_with_generated_ids_are_duplicates():
    results = map_bytes(GENERATED, HEADER + "x,6,2024-02-05 06:30:00,connected,\n" * 2)
    assert results[1][1] is None and results[1][2][0]["message"] == "event id is used again (first on line 2)"


def test_generated_ids_with_invoices():
    mapping = INVOICE_COLUMNS.replace("id: {column: id}", "id: {generate: true}")
    event = only_event(mapping, INVOICE_HEADER + "x,6,2024-02-05 06:30:00,connected,,1|2,3|4\n")
    assert event["id"] == expected_content_id(event)
    assert list(event)[0] == "id"


# --- the compiled mapping's surface ------------------------------------------------------------------------


def test_sources_and_xml_plan():
    compiled = compile_mapping(XML_MAPPING)
    assert compiled.sources() == ["@id", "Place/@code", "normalize-space(u:Customer)", "Time", "Status", "Note"]
    plan = compiled.xml_plan()
    assert plan.groups == [("inv:Invoices/inv:Invoice", ["inv:Number", "@jobid"])]
    assert compile_mapping(INVOICE_COLUMNS).required_columns() == ["id", "code", "time", "status", "note", "numbers", "jobs"]


def test_map_chunk_directly_and_a_run_per_file():
    compiled = compile_mapping(BASE)
    chunk = Chunk(["id", "code", "time", "status", "note"], [7], [["A", "6", "2024-02-05 06:30:00", "connected", ""]])
    first = map_all(compiled.start(), [chunk])
    second = map_all(compiled.start(), [chunk])  # a new file: the id is new again
    assert first[0].ok and second[0].ok
    assert first[0].line == 7
    run = compiled.start()
    run.map_chunk(chunk)
    assert not run.map_chunk(chunk)[0].ok


def test_columns_in_another_order_per_chunk_are_rebound():
    compiled = compile_mapping(BASE)
    run = compiled.start()
    a = Chunk(["id", "code", "time", "status", "note"], [2], [["A", "6", "2024-02-05 06:30:00", "connected", ""]])
    b = Chunk(["note", "status", "time", "code", "id"], [3], [["", "connected", "2024-02-05 06:30:00", "7", "B"]])
    assert [r.event["usageplacecode"] for r in run.map_chunk(a) + run.map_chunk(b)] == ["6", "7"]


def test_record_error_text():
    compiled = compile_mapping(BASE)
    [record] = map_all(compiled.start(), [
        Chunk(["id", "code", "time", "status", "note"], [9], [["A", "6", "2024-02-05 06:30:00", "x" * 100, ""]])
    ])
    assert str(record.errors[0]) == (
        "line 9: status (column 'status' = '" + "x" * 80 + "…'): must be one of connected, disconnected, not_disconnected"
    )
    assert record.partial == {"id": "A", "usageplacecode": "6", "status": "x" * 100}


# --- properties ------------------------------------------------------------------------------------------

# Readers decode strictly (CSV) or through libxml2 (XML), so a value is any Unicode text except lone
# surrogates, which no strict decoder produces.
ANY_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
PLAUSIBLE = st.one_of(
    ANY_TEXT,
    st.sampled_from(["", " ", "K", "k", "KY", "EK", "ek ", "x", "5.2.2024", "6:30:00", "31.2.2024", "25:00:00",
                     "1001,1002", "71,72", "71", ",", "1,,2", "643007572062443672", "99999999999999999999",
                     "+5", "-1", "1 234", "\x00", "[/x]", "\u00a0", "１２"]),
)

FINNISH = """\
format: csv
csv: {delimiter: ";"}
fields:
  id: {column: Tapahtumatunnus, required: true}
  usageplacecode: {column: Käyttöpaikka, pattern: '\\d{18}'}
  customernumber: {column: Asiakasnro}
  contract_no: {column: Sopimusnro, default: "-"}
  time: {template: "{Pvm} {Klo}", formats: ["%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"]}
  status: {column: Tila, map: {K: disconnected, KY: connected, EK: not_disconnected}, map_ignore_case: true}
  description: {column: Selite, default_by_status: {disconnected: Katkaistu}}
invoices:
  mode: columns
  invoicenumber: {column: Laskunumerot, split: ","}
  jobid: {column: Toimeksiannot, split: ","}
"""
FINNISH_COLUMNS = ["Tapahtumatunnus", "Käyttöpaikka", "Asiakasnro", "Sopimusnro", "Pvm", "Klo", "Tila", "Laskunumerot", "Toimeksiannot", "Selite"]
FINNISH_COMPILED = compile_mapping(FINNISH)
GENERATED_COMPILED = compile_mapping(GENERATED)
ROWS_COMPILED = compile_mapping(ROWS)


def _rows_strategy(width: int):
    return st.lists(st.lists(PLAUSIBLE, min_size=width - 2, max_size=width + 1), min_size=1, max_size=6)


def _check_outcomes(records, lines, merged_rows=False):
    assert [r.line for r in records] == sorted(r.line for r in records)
    for record in records:
        assert record.line in lines
        if record.ok:
            assert record.errors == []
            assert_contract(record.event)
        else:
            assert record.event is None and record.errors
            for error in record.errors:
                if merged_rows:  # an event built from several rows names the row at fault
                    assert error.line in lines and error.line >= record.line
                else:
                    assert error.line == record.line
                assert isinstance(error.field, str) and isinstance(error.message, str) and error.message
                json.dumps(error.as_dict())  # printable as --json


def _both_paths(compiled, columns, rows):
    lines = list(range(2, 2 + len(rows)))
    fast = map_all(compiled.start(), [Chunk(columns, lines, [list(r) for r in rows])])
    general_run = compiled.start()
    general_run._fast_mapper = lambda bound, index: None
    general = map_all(general_run, [Chunk(columns, lines, [list(r) for r in rows])])
    return lines, fast, general


def _as_tuples(records):
    return [(r.line, r.event, [e.as_dict() for e in r.errors]) for r in records]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows_strategy(len(FINNISH_COLUMNS)))
def test_any_strings_in_any_column_give_an_event_or_errors(rows):
    lines, fast, general = _both_paths(FINNISH_COMPILED, FINNISH_COLUMNS, rows)
    _check_outcomes(fast, lines)
    assert len(fast) == len(rows)
    # the generated fast path and the general mapper agree on every record
    assert _as_tuples(fast) == _as_tuples(general)


# Mostly valid records with ids from a small pool: whole chunks take the bulk path of
# MappingRun.map_chunk, and repeated ids fall within a chunk, across chunks, and next to
# invalid records that claim an id first.
_VALID_ROW = st.tuples(
    st.sampled_from(["A", "B", "C", "D", "E", "F", " G ", ""]),
    st.sampled_from(["6", "7", ""]),
    st.sampled_from(["2024-02-05 06:30:00", "2024-02-31 06:30:00"]),
    st.sampled_from(["connected", "disconnected", "nope"]),
    st.sampled_from(["", "note"]),
).map(list)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_VALID_ROW, min_size=1, max_size=12), st.lists(st.integers(1, 5), min_size=1, max_size=12))
def test_chunked_bulk_path_agrees_with_the_general_path(rows, cuts):
    columns = ["id", "code", "time", "status", "note"]
    compiled = compile_mapping(BASE)
    lines = list(range(2, 2 + len(rows)))
    chunks, start = [], 0
    for size in cuts * len(rows):
        if start >= len(rows):
            break
        chunks.append(Chunk(columns, lines[start:start + size], [list(r) for r in rows[start:start + size]]))
        start += size
    fast = map_all(compiled.start(), chunks)
    general_run = compiled.start()
    general_run._fast_mapper = lambda bound, index: None  # type: ignore[method-assign]  # force the general path
    general = map_all(general_run, [Chunk(columns, lines, [list(r) for r in rows])])
    assert _as_tuples(fast) == _as_tuples(general)


def test_a_repeated_id_inside_an_otherwise_valid_chunk():
    rows = [["A", "6", "2024-02-05 06:30:00", "connected", ""], ["B", "6", "2024-02-05 06:30:00", "connected", ""],
            ["A", "7", "2024-02-05 06:30:00", "connected", ""]]
    run = compile_mapping(BASE).start()
    records = run.map_chunk(Chunk(["id", "code", "time", "status", "note"], [2, 3, 4], rows))
    assert [r.ok for r in records] == [True, True, False]
    assert records[2].errors[0].message == "event id is used again (first on line 2)"
    later = run.map_chunk(Chunk(["id", "code", "time", "status", "note"], [5], [["B", "6", "2024-02-05 06:30:00", "connected", ""]]))
    assert later[0].errors[0].message == "event id is used again (first on line 3)"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows_strategy(5))
def test_generated_ids_any_input(rows):
    columns = ["id", "code", "time", "status", "note"]
    lines, fast, general = _both_paths(GENERATED_COMPILED, columns, rows)
    _check_outcomes(fast, lines)
    assert _as_tuples(fast) == _as_tuples(general)


# The chunk function (fastpath.build_fast_chunk_mapper) maps a whole chunk column by column; when
# it returns events, they are the row function's, keys in the same order. Values that are
# mostly valid, so that it often does.
def _mostly(valid: list[str], odd: list[str]):
    """A valid value most of the time (each column of a chunk must be valid for it to go in bulk)."""
    return st.tuples(st.integers(0, 29), st.sampled_from(valid), st.sampled_from(odd), PLAUSIBLE).map(
        lambda drawn: drawn[1] if drawn[0] > 1 else drawn[2 + drawn[0]])


_FINNISH_ROW = st.tuples(
    _mostly(["A", " B ", "C"], [""]), _mostly(["643007572062443672", " 643007572062443672 "], ["6430075720624436"]),
    _mostly(["", "C1", " "], ["\x00"]), _mostly(["", "K-1"], ["\t"]), _mostly(["5.2.2024", "05.02.2024"], ["31.2.2024"]),
    _mostly(["6:30:00", "6:30", "23:59:59"], ["25:00:00"]), _mostly(["K", "ky", "KY"], ["EK", "x", ""]),
    _mostly(["1001,1002", " 1 , 2 "], ["", "71", "1,,2"]), _mostly(["71,72", " 8 , 9"], ["", "7", "x", "-1"]),
    _mostly(["", "note", " note "], ["a\tb"]),
).map(list)
_BASE_ROW = st.tuples(
    _mostly(["A", "B", "C", " D "], [""]), _mostly(["6", ""], ["\x01"]), _mostly(["2024-02-05 06:30:00"], ["2024-02-31 06:30:00"]),
    _mostly(["connected", "disconnected", "not_disconnected"], ["x"]), _mostly(["", "note"], [" "]),
).map(list)


def _rows_of(compiled, columns, rows):
    bound = compiled.start()._bind(columns)
    events = bound.fast_chunk(rows)
    one_by_one = [bound.fast(row) for row in rows]
    if events is not None:
        assert [list(event.items()) for event in events] == [list(event.items()) for event in one_by_one]
    return events


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FINNISH_ROW, min_size=1, max_size=6))
def test_chunk_function_agrees_with_the_row_function(rows):
    _rows_of(FINNISH_COMPILED, FINNISH_COLUMNS, rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_BASE_ROW, min_size=1, max_size=6))
def test_chunk_function_agrees_with_the_row_function_optional_fields_and_generated_ids(rows):
    for compiled in (compile_mapping(BASE), GENERATED_COMPILED):
        _rows_of(compiled, ["id", "code", "time", "status", "note"], rows)


# Invoice cells split by the chunk function: with one-character separators a column's cells are
# joined and split at once when every cell holds invoices; other separators split cell by cell.
_SEPARATED = {
    (";", ","): ["1;2", " 3 ; 4 ", "5", "6;;7", ";", "8; ", "", " ", "9,10", "1;2;3"],
    ("||", ","): ["1||2", " 3 || 4 ", "5", "6||||7", "||", "8|| ", "", " ", "9|10", "1||2||3"],
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_SEPARATED)), st.data())
def test_invoice_cells_split_by_the_chunk_function_as_by_the_row_function_and_the_general_path(separators, data):
    numbers_split, jobs_split = separators
    compiled = compile_mapping(FINNISH.replace('split: ","}\n  jobid', f'split: "{numbers_split}"}}\n  jobid')
                               .replace('Toimeksiannot, split: ","', f'Toimeksiannot, split: "{jobs_split}"'))
    invoices = compiled.mapping.invoices
    assert invoices is not None and invoices.invoicenumber is not None and invoices.jobid is not None
    assert (invoices.invoicenumber.split, invoices.jobid.split) == separators
    numbers = st.one_of(st.sampled_from(_SEPARATED[separators]), PLAUSIBLE)
    jobs = st.one_of(st.sampled_from(["7,8", " 7 , 8", "7", "7,,8", "", "7,8,9", "x,1", ","]), PLAUSIBLE)
    rows = data.draw(st.lists(st.tuples(numbers, jobs).map(
        lambda cells: ["A", "643007572062443672", "", "", "5.2.2024", "6:30", "K", cells[0], cells[1], ""]),
        min_size=1, max_size=6))
    rows = [[f"{row[0]}{i}", *row[1:]] for i, row in enumerate(rows)]  # distinct ids
    _rows_of(compiled, FINNISH_COLUMNS, rows)
    _, fast, general = _both_paths(compiled, FINNISH_COLUMNS, rows)
    assert _as_tuples(fast) == _as_tuples(general)


def test_invoice_cells_of_a_whole_column_joined_and_split():
    rows = [["A", "643007572062443672", "", "", "5.2.2024", "6:30", "K", " 1001, 1002 ", "71 ,72", ""],
            ["B", "643007572062443672", "", "", "5.2.2024", "6:30", "K", "1003", "73", ""]]
    events = _rows_of(FINNISH_COMPILED, FINNISH_COLUMNS, rows)
    assert events is not None
    assert [event["invoices"] for event in events] == [
        [{"invoicenumber": "1001", "jobid": 71}, {"invoicenumber": "1002", "jobid": 72}],
        [{"invoicenumber": "1003", "jobid": 73}],
    ]
    # a cell with one item more than its pair: the chunk goes row by row
    assert _rows_of(FINNISH_COMPILED, FINNISH_COLUMNS, [rows[0][:8] + ["71", ""], rows[1]]) is None


def test_chunk_function_takes_valid_chunks_with_empty_optional_values():
    rows = [["A", "643007572062443672", "", "", "5.2.2024", "6:30", "K", "", "", ""],
            [" B ", "643007572062443672", "C1", "K-1", "5.2.2024", "6:30:00", "ek", "1001,1002", "71,72", "note"],
            ["C", "643007572062443672", "", "", "5.2.2024", "6:30:00", "KY", "71", "7", ""]]
    events = _rows_of(FINNISH_COMPILED, FINNISH_COLUMNS, rows)
    assert events == [
        {"id": "A", "usageplacecode": "643007572062443672", "contract_no": "-", "invoices": [],
         "time": "2024-02-05 06:30:00", "status": "disconnected", "description": "Katkaistu"},
        {"id": "B", "usageplacecode": "643007572062443672", "customernumber": "C1", "contract_no": "K-1",
         "invoices": [{"invoicenumber": "1001", "jobid": 71}, {"invoicenumber": "1002", "jobid": 72}],
         "time": "2024-02-05 06:30:00", "status": "not_disconnected", "description": "note"},
        {"id": "C", "usageplacecode": "643007572062443672", "contract_no": "-",
         "invoices": [{"invoicenumber": "71", "jobid": 7}], "time": "2024-02-05 06:30:00", "status": "connected"},
    ]
    assert [list(event) for event in events][2] == ["id", "usageplacecode", "contract_no", "invoices", "time", "status"]


def test_chunk_function_on_xml_records():
    from batch.transform.readers import read_xml

    compiled = compile_mapping(XML_MAPPING)
    data = xml_doc(
        '<Event id="X1"><Place code="6"/><Customer>  A  B </Customer><Time>2024-02-05T04:30:00Z</Time>'
        '<Status>disconnected</Status><inv:Invoices><inv:Invoice jobid="7"><inv:Number>100</inv:Number></inv:Invoice>'
        '</inv:Invoices></Event>',
        '<Event id="X2"><Place code="7"/><Time>2024-02-05T04:30:00Z</Time><Status>connected</Status><Note>n</Note>'
        '<inv:Invoices/></Event>',
    )
    assert compiled.mapping.xml is not None
    [chunk] = read_xml(io.BytesIO(data.encode()), compiled.mapping.xml, compiled.xml_plan())
    events = _rows_of(compiled, chunk.columns, chunk.rows)
    assert events == [
        {"id": "X1", "usageplacecode": "6", "customernumber": "A B", "invoices": [{"invoicenumber": "100", "jobid": 7}],
         "time": "2024-02-05 06:30:00", "status": "disconnected"},
        {"id": "X2", "usageplacecode": "7", "invoices": [], "time": "2024-02-05 06:30:00", "status": "connected",
         "description": "n"},
    ]
    # an invoice without a job id: the row function (and the general mapper) take the chunk
    missing = chunk.rows[0][:-1] + [[["101", None]]]
    assert _rows_of(compiled, chunk.columns, [missing]) is None


_SIMPLE_ATOM = st.tuples(
    st.sampled_from(["a", "Z", "0", "9", "_", "\\d", "[0-9]", "[A-F0-9]", "[a-z_]", "[0-z]"]),
    st.sampled_from(["", "{0}", "{1}", "{3}", "{18}"]),
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SIMPLE_ATOM, min_size=1, max_size=4).map("".join), st.data())
def test_a_simple_pattern_checked_for_a_whole_column_answers_as_re2(pattern, data):
    import re

    from batch.config.mapping import compile_pattern
    from batch.transform.fastpath import _column_pattern

    matching = st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True)
    odd = st.one_of(st.text("aZ09_:`\n\u0660１ ", max_size=20), PLAUSIBLE)
    values = data.draw(st.lists(st.one_of(matching, matching, matching, odd), min_size=1, max_size=5))
    column = _column_pattern(pattern)
    assert column is not None
    lines = "\n".join(values)
    whole_column = lines.count("\n") == len(values) - 1 and bool(column(lines))  # as the chunk function checks
    assert whole_column == all(map(compile_pattern(pattern), values))


@pytest.mark.parametrize("pattern", ["(a+)+$", "\\d+", "\\d*", "[^0-9]", ".", "\\s", "a|b", "\\D", "[\\d]", "\\d{1,3}",
                                     "(?i)a", "é", "[a-é]", "\\w"])
def test_other_patterns_are_checked_value_by_value_with_re2(pattern):
    from batch.transform.fastpath import _column_pattern

    assert _column_pattern(pattern) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(st.sampled_from(["A", "B"]), PLAUSIBLE), min_size=7, max_size=7), min_size=1, max_size=8))
def test_rows_mode_any_input(rows):
    columns = ["id", "code", "time", "status", "note", "inv", "job"]
    lines = list(range(2, 2 + len(rows)))
    records = map_all(ROWS_COMPILED.start(), [Chunk(columns, lines, rows)])
    _check_outcomes(records, lines, merged_rows=True)
    ids = [r.event["id"] for r in records if r.ok]
    assert len(ids) == len(set(ids))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(ANY_TEXT, min_size=10, max_size=10), min_size=1, max_size=5))
def test_any_csv_file_content_through_the_reader(rows):
    # the same through real bytes: quoting, delimiters and line breaks inside values
    text = io.StringIO()
    writer = csv.writer(text, delimiter=";", lineterminator="\r\n")
    writer.writerow(FINNISH_COLUMNS)
    writer.writerows(rows)
    results = map_bytes(FINNISH_COMPILED, text.getvalue().encode("utf-8"))
    assert 1 <= len(results) <= len(rows) + 1
    for _, event, errors in results:
        assert (event is None) != (errors == [])
        if event is not None:
            assert_contract(event)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(ANY_TEXT, ANY_TEXT, ANY_TEXT), min_size=1, max_size=4))
def test_any_xml_text_and_attributes(values):
    from xml.sax.saxutils import escape, quoteattr

    def xml_safe(text: str) -> str:
        return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd") or c > "\uffff")

    events = [
        f"<Event id={quoteattr(xml_safe(a))}><Place code={quoteattr(xml_safe(b))}/><Time>{escape(xml_safe(c))}</Time>"
        f"<Status>{escape(xml_safe(c))}</Status><inv:Invoices><inv:Invoice jobid={quoteattr(xml_safe(b))}>"
        f"<inv:Number>{escape(xml_safe(a))}</inv:Number></inv:Invoice></inv:Invoices></Event>"
        for a, b, c in values
    ]
    compiled = compile_mapping(XML_MAPPING)
    fast = map_bytes(compiled, xml_doc(*events))
    general = map_bytes(compile_mapping(XML_MAPPING), xml_doc(*events), general=True)
    assert fast == general
    assert len(fast) == len(values)
    for _, event, errors in fast:
        assert (event is None) != (errors == [])
        if event is not None:
            assert_contract(event)
