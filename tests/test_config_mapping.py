"""Mapping files: what loads, and the exact file:line:column, key and message of what does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from batch.config.mapping import (
    CsvOptions,
    Mapping,
    load_mapping,
    load_mapping_text,
    mapping_json_schema,
)
from batch.config.yamlload import ConfigError
from tests.fixtures_mapping import MINIMAL, mapping_problems

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = sorted((ROOT / "config" / "mappings").glob("*.yaml"))

problems = mapping_problems


# --- mappings that load ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", MAPPINGS, ids=lambda p: p.stem)
def test_shipped_mappings_load(path):
    mapping = load_mapping(path)
    assert isinstance(mapping, Mapping)
    assert mapping.name == path.stem


def test_minimal_mapping_and_its_defaults():
    mapping = load_mapping_text(MINIMAL)
    assert mapping.format == "csv"
    assert mapping.csv == CsvOptions()
    assert mapping.csv.encoding == "utf-8" and mapping.csv.delimiter == "," and mapping.csv.header_line == 1
    assert mapping.time_zone == "Europe/Helsinki"
    assert mapping.status_vocabulary() == ("connected", "disconnected", "not_disconnected")
    assert mapping.fields.time.formats == ["%Y-%m-%d %H:%M:%S"]
    assert mapping.fields.usageplacecode.trim is True


def test_yes_no_on_off_stay_text():
    # YAML 1.1 would turn these status codes into booleans; a map compares text with text
    mapping = load_mapping_text(
        MINIMAL.replace("status: {column: s}", "status: {column: s, map: {NO: disconnected, OFF: connected, y: connected, 1: connected}}")
    )
    assert mapping.fields.status.map == {"NO": "disconnected", "OFF": "connected", "y": "connected", "1": "connected"}


def test_numeric_looking_codes_keep_their_spelling():
    # status codes such as 01 must not become 1 (or, as YAML 1.1 octal, 010 -> 8)
    mapping = load_mapping_text(
        MINIMAL.replace("status: {column: s}", "status: {column: s, map: {01: disconnected, 010: connected, 0x1F: connected, 1.50: connected, 7: connected}}")
    )
    assert mapping.fields.status.map == {
        "01": "disconnected", "010": "connected", "0x1F": "connected", "1.50": "connected", "7": "connected",
    }


def test_tab_delimiter_and_bom_in_the_mapping_file(tmp_path):
    path = tmp_path / "feed.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.replace("format: csv", 'format: csv\ncsv: {delimiter: "\\t"}').encode())
    assert load_mapping(path).csv.delimiter == "\t"


def test_schema_key_is_accepted():
    mapping = load_mapping_text('$schema: "../mapping.schema.json"\n' + MINIMAL)
    assert mapping.schema_ref == "../mapping.schema.json"


def test_status_vocabulary_can_be_overridden():
    mapping = load_mapping_text(
        textwrap.dedent(
            """\
            format: csv
            statuses: {not_disconnected: ei_katkaistu}
            fields:
              usageplacecode: {column: c}
              time: {column: t}
              status: {column: s, map: {EK: ei_katkaistu, K: disconnected}}
              description: {column: d, default_by_status: {disconnected: Katkaistu}}
            """
        )
    )
    assert mapping.status_vocabulary() == ("connected", "disconnected", "ei_katkaistu")


# --- exact messages -----------------------------------------------------------------------------------


def test_unknown_key_has_a_did_you_mean_hint():
    assert problems(
        """\
        format: csv
        csv:
          delimter: ";"
        fields:
          usageplacecode: {column: code, patern: '\\d+'}
          time: {column: t}
          status: {column: s}
        feilds: {}
        """
    ) == [
        "m.yaml:3:3: csv.delimter: unknown key; did you mean 'delimiter'? (allowed here: columns, delimiter, "
        "doublequote, encoding, escapechar, header_line, quotechar, skip_blank_lines, skip_footer, skip_lines)",
        "m.yaml:5:34: fields.usageplacecode.patern: unknown key; did you mean 'pattern'? (allowed here: column, "
        "const, default, map, map_default, map_ignore_case, pattern, required, split, template, trim, xpath)",
        "m.yaml:8:1: feilds: unknown key; did you mean 'fields'? (allowed here: $schema, compression, csv, fields, fixed, "
        "format, invoices, keep, name, statuses, time_zone, xlsx, xml)",
    ]


def test_unknown_key_without_a_close_match():
    assert problems(MINIMAL + "colour: blue\n") == [
        "m.yaml:6:1: colour: unknown key (allowed here: $schema, compression, csv, fields, fixed, format, invoices, keep, "
        "name, statuses, time_zone, xlsx, xml)"
    ]


def test_every_problem_of_a_file_at_once():
    assert problems(
        """\
        format: csv
        csv:
          delimiter: ";;"
          quotechar: ";"
          header_line: 0
          encoding: latin-99
        time_zone: Mars/Olympus
        fields:
          id: {column: id, generate: true}
          usageplacecode: {column: code, map_default: x}
          time: {template: "no placeholders", formats: ["%d.%m.%Y %Q"]}
          status: {column: s, map: {a: connected, A: connected}, map_ignore_case: true, pattern: "("}
        """
    ) == [
        "m.yaml:3:3: csv.delimiter: must be exactly one character (got ';;')",
        "m.yaml:5:3: csv.header_line: Input should be greater than or equal to 1 (got 0)",
        "m.yaml:6:3: csv.encoding: unknown encoding 'latin-99' (e.g. utf-8, utf-8-sig, utf-16, cp1252, iso-8859-1)",
        "m.yaml:7:1: time_zone: unknown time zone 'Mars/Olympus' (e.g. Europe/Helsinki, UTC)",
        "m.yaml:9:3: fields.id: generate: true takes no column/xpath/template",
        "m.yaml:10:3: fields.usageplacecode: map_default needs a 'map'",
        "m.yaml:11:10: fields.time.template: a template needs at least one {placeholder}; use 'const' for fixed text",
        "m.yaml:11:39: fields.time.formats: format '%d.%m.%Y %Q': %Q is not supported "
        "(use %Y, %y, %m, %d, %H, %I, %p, %M, %S, %f, %z)",
        "m.yaml:12:3: fields.status: map has keys that differ only in case, but map_ignore_case is on",
        "m.yaml:12:81: fields.status.pattern: not a valid regular expression: missing ): (",
    ]


def test_cross_field_problems_are_not_hidden_by_a_wrong_value():
    # the unknown zone on line 6 must not hide the rules that need the whole file
    assert problems(
        """\
        format: csv
        xml: {record_path: //E}
        fields:
          id: {xpath: "@id"}
          usageplacecode: {column: code, split: ","}
          time: {column: t, source_time_zone: Nowhere/City}
          status: {column: s, map: {K: disconected}, map_default: gone}
          description: {column: d, default_by_status: {disconnect: x}}
        invoices:
          mode: rows
          element: X
          invoicenumber: {column: n}
        """
    ) == [
        "m.yaml:2:1: xml: this is a CSV feed (format: csv); remove the 'xml' section",
        "m.yaml:4:3: fields.id: 'xpath' is for XML feeds; this feed is CSV: use 'column'",
        "m.yaml:5:3: fields.usageplacecode: 'split' is only for invoices with mode: columns",
        "m.yaml:6:21: fields.time.source_time_zone: unknown time zone 'Nowhere/City' (e.g. Europe/Helsinki, UTC)",
        "m.yaml:7:3: fields.status: status value 'disconected' is not one of connected, disconnected, not_disconnected",
        "m.yaml:7:3: fields.status: status value 'gone' is not one of connected, disconnected, not_disconnected",
        "m.yaml:8:48: fields.description.default_by_status.disconnect: 'disconnect' is not a status "
        "(connected, disconnected, not_disconnected)",
        # fields.id is mapped (with the wrong key, said on line 4): no second problem about it
        "m.yaml:11:3: invoices.element: 'element' is only for mode 'elements' (mode is 'rows')",
    ]


def test_problems_in_an_xml_mapping():
    assert problems(
        """\
        format: xml
        csv: {}
        xml:
          record_path: /a:Root/Event
          namespaces: {"": "urn:x"}
        fields:
          usageplacecode: {column: code}
          time: {xpath: "t:Time"}
          status: {xpath: "Status[", map: {K: connected}}
        invoices:
          mode: elements
          invoicenumber: {const: "1"}
        """
    ) == [
        "m.yaml:2:1: csv: this is an XML feed (format: xml); remove the 'csv' section",
        "m.yaml:4:3: xml.record_path: namespace prefix 'a' is not declared in xml.namespaces",
        "m.yaml:7:3: fields.usageplacecode: 'column' is for CSV feeds; this feed is XML: use 'xpath'",
        "m.yaml:8:3: fields.time: 't:Time': namespace prefix 't' is not declared in xml.namespaces",
        "m.yaml:9:3: fields.status: 'Status[': not a usable XPath: Invalid expression",
        "m.yaml:10:1: invoices.element: mode 'elements' needs 'element' (XPath of the repeated element)",
        "m.yaml:12:3: invoices.invoicenumber: mode 'elements' reads each invoice with 'xpath' (relative to the element)",
    ]


@pytest.mark.parametrize(
    "record_path",
    ["/Root/Event[1]", "//*", "Root/Event", "///Event", "/Root/Event/@id", "//Event/text()", "/Root//"],
)
def test_record_path_must_be_streamable(record_path):
    text = f"format: xml\nxml: {{record_path: '{record_path}'}}\n" + MINIMAL.split("\n", 1)[1].replace("column", "xpath")
    assert problems(text) == [
        "m.yaml:2:7: xml.record_path: record_path must be a plain element path such as /Export/Events/Event or "
        "//Event (no predicates, wildcards or functions: records are streamed)"
    ]


def test_required_fields_missing_in_a_stable_order():
    expected = [
        "m.yaml:1:1: xml: an XML feed needs an 'xml' section with record_path",
        "m.yaml:2:1: fields.usageplacecode: 'usageplacecode' is needed for every event: map it (or give a const/default)",
        "m.yaml:2:1: fields.time: 'time' is needed for every event: map it (or give a const/default)",
        "m.yaml:2:1: fields.status: 'status' is needed for every event: map it (or give a const/default)",
    ]
    assert problems("format: xml\nfields: {}\n") == expected
    # and the same order whatever the interpreter's string hashing
    script = (
        "from batch.config.mapping import load_mapping_text\n"
        "try:\n    load_mapping_text('format: xml\\nfields: {}\\n', 'm.yaml')\n"
        "except Exception as e:\n    print(e)\n"
    )
    for seed in ("1", "4"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        assert out.splitlines() == expected


@pytest.mark.parametrize(
    "csv_section, message",
    [
        ("{header_line: null}", "m.yaml:3:1: csv: a file without a header row (header_line: null) needs 'columns'"),
        (
            "{skip_lines: 2}",
            "m.yaml:3:1: csv: skip_lines is for files without a header; with a header use header_line to skip banners",
        ),
        ("{header_line: null, columns: [a, a]}", "m.yaml:3:1: csv: columns has a name twice"),
        ("{delimiter: ';', quotechar: ';'}", "m.yaml:3:1: csv: quotechar and delimiter must differ"),
        ("{escapechar: ''}", "m.yaml:3:7: csv.escapechar: must be exactly one character (got '')"),
        ("{skip_footer: -1}", "m.yaml:3:7: csv.skip_footer: Input should be greater than or equal to 0 (got -1)"),
    ],
)
def test_csv_option_rules(csv_section, message):
    text = "format: csv\nname: x\ncsv: " + csv_section + "\n" + MINIMAL.split("\n", 1)[1]
    assert problems(text) == [message]


@pytest.mark.parametrize(
    "fields, message",
    [
        ("status: {column: s, const: connected}", "m.yaml:5:3: fields.status: give only one of column, xpath, const, template (got column, const)"),
        ("status: {}", "m.yaml:5:3: fields.status: say where the value comes from: column, xpath, const or template"),
        ("status: {const: broken}", "m.yaml:5:3: fields.status: status value 'broken' is not one of connected, disconnected, not_disconnected"),
        ("status: {column: s, default: off}", "m.yaml:5:3: fields.status: status value 'off' is not one of connected, disconnected, not_disconnected"),
        ("status: {column: s, split: ','}", "m.yaml:5:3: fields.status: 'split' is only for invoices with mode: columns"),
        ("status: {template: '{a'}", "m.yaml:5:12: fields.status.template: template '{a': expected '}' before end of string"),
        ("status: {xpath: S}", "m.yaml:5:3: fields.status: 'xpath' is for XML feeds; this feed is CSV: use 'column'"),
        ("status: {column: s, trim: maybe}", "m.yaml:5:23: fields.status.trim: Input should be a valid boolean, unable to interpret input (got 'maybe')"),
        ("status: {column: [s]}", "m.yaml:5:12: fields.status.column: Input should be a valid string"),
        ("status: s", "m.yaml:5:3: fields.status: Input should be a valid dictionary or instance of ValueSpec (got 's')"),
    ],
)
def test_field_rules(fields, message):
    text = "format: csv\nfields:\n  usageplacecode: {column: c}\n  time: {column: t}\n  " + fields + "\n"
    assert problems(text) == [message]


@pytest.mark.parametrize(
    "invoices, message",
    [
        ("{mode: columns, invoicenumber: {column: n}}", "m.yaml:7:27: invoices.invoicenumber: mode 'columns' needs 'split' (the separator inside the cell)"),
        ("{mode: rows, invoicenumber: {column: n}}", "m.yaml:7:12: invoices.mode: mode 'rows' merges rows by event id: map fields.id from the file"),
        ("{mode: elements, element: X, invoicenumber: {column: n}}", "m.yaml:7:12: invoices.mode: mode 'elements' is for XML feeds; use 'columns' or 'rows'"),
        ("{mode: lines, invoicenumber: {column: n}}", "m.yaml:7:12: invoices.mode: Input should be 'columns', 'rows', 'elements' or 'pairs' (got 'lines')"),
        ("{mode: columns}", "m.yaml:7:1: invoices.invoicenumber: required key is missing"),
        ("{mode: columns, element: X, invoicenumber: {column: n, split: ','}}", "m.yaml:7:27: invoices.element: 'element' is only for mode 'elements' (mode is 'columns')"),
    ],
)
def test_invoice_rules(invoices, message):
    text = (
        "format: csv\nfields:\n  id: {generate: true}\n  usageplacecode: {column: c}\n  time: {column: t}\n"
        "  status: {column: s}\ninvoices: " + invoices + "\n"
    )
    assert problems(text) == [message]


def test_rows_mode_with_a_generated_id():
    text = MINIMAL.replace("fields:\n", "fields:\n  id: {generate: true}\n") + "invoices: {mode: rows, invoicenumber: {column: n}}\n"
    assert problems(text) == [
        "m.yaml:7:12: invoices.mode: mode 'rows' merges rows by event id: map fields.id from the file"
    ]


def test_elements_mode_needs_xpaths_for_the_invoice_values():
    # a const jobid cannot be read per invoice element: refused at load, not a crash on the first record
    text = textwrap.dedent(
        """\
        format: xml
        xml: {record_path: //E}
        fields:
          usageplacecode: {xpath: C}
          time: {xpath: T}
          status: {xpath: S}
        invoices:
          mode: elements
          element: I
          invoicenumber: {xpath: "@n"}
          jobid: {const: 7}
        """
    )
    assert problems(text) == [
        "m.yaml:11:3: invoices.jobid: mode 'elements' reads each invoice with 'xpath' (relative to the element)"
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", ["m.yaml:1:1: a mapping file must be a YAML mapping (key: value lines)"]),
        ("", ["m.yaml: a mapping file must be a YAML mapping (key: value lines)"]),
        ("format: csv\nfields: [\n", ["m.yaml:3:1: not valid YAML: expected the node content, but found '<stream end>'"]),
        ("format: csv\nfields:\n\tx: 1\n", ["m.yaml:3:1: not valid YAML: found character '\\t' that cannot start any token"]),
        (
            "format: csv\nfields:\n  time: {column: a}\n  time: {column: b}\n",
            ["m.yaml:4:3: fields.time: duplicate key (first given on line 3)"],
        ),
        (
            "base: &b {column: x}\nformat: csv\nfields:\n  usageplacecode: {<<: *b}\n",
            ["m.yaml:4:20: fields.usageplacecode: YAML merge keys (<<) are not supported here"],
        ),
        ("format: json\n" + MINIMAL.split("\n", 1)[1], ["m.yaml:1:1: format: Input should be 'csv', 'xml', 'fixed' or 'xlsx' (got 'json')"]),
        (MINIMAL.replace("format: csv\n", ""), ["m.yaml:1:1: format: required key is missing"]),
    ],
)
def test_yaml_level_problems(text, expected):
    assert problems(text) == expected


def test_file_level_problems(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_mapping(missing)
    assert str(info.value) == f"{missing}: file not found"

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(MINIMAL.encode() + b"name: K\xe4ytt\xf6\n")
    with pytest.raises(ConfigError) as info:
        load_mapping(latin)
    assert str(info.value) == f"{latin}: not UTF-8 text (invalid continuation byte at byte {len(MINIMAL) + 7})"

    broken = tmp_path / "broken.yaml"
    broken.write_text(MINIMAL + "time_zone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as info:
        load_mapping(broken)
    assert str(info.value) == f"{broken}:6:1: time_zone: unknown time zone 'Mars/Olympus' (e.g. Europe/Helsinki, UTC)"
    problem = info.value.problems[0]
    assert (problem.file, problem.line, problem.column, problem.path) == (str(broken), 6, 1, "time_zone")


# --- JSON Schema ---------------------------------------------------------------------------------------


def test_json_schema_is_a_valid_schema_that_accepts_the_shipped_mappings():
    schema = mapping_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "usageplace-batch mapping"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in MAPPINGS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert list(validator.iter_errors(data)) == [], path.name


def test_json_schema_refuses_unknown_keys_and_formats():
    validator = jsonschema.Draft202012Validator(mapping_json_schema())
    data = yaml.safe_load(MINIMAL)
    assert list(validator.iter_errors(data)) == []
    assert not validator.is_valid({**data, "feilds": {}})
    assert not validator.is_valid({**data, "format": "json"})
    assert not validator.is_valid({**data, "csv": {"delimter": ";"}})
    assert not validator.is_valid({**data, "fields": {**data["fields"], "status": {"colum": "s"}}})


def test_json_schema_describes_every_option():
    schema = json.dumps(mapping_json_schema())
    for key in (
        "encoding", "delimiter", "quotechar", "escapechar", "header_line", "columns", "skip_lines", "skip_footer",
        "record_path", "namespaces", "column", "xpath", "const", "template", "trim", "map", "map_ignore_case",
        "map_default", "default", "required", "pattern", "split", "formats", "source_time_zone", "generate",
        "prefix", "default_by_status", "not_disconnected", "invoicenumber", "jobid", "element",
    ):
        assert f'"{key}"' in schema, key
