"""The validate, preview and schema commands: output, exit codes, and no tracebacks without --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.cli import commands as cli
from batch.config.mapping import mapping_json_schema
from batch.transform.readers import DEFAULT_CHUNK_SIZE

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "config" / "mappings"
SAMPLES = ROOT / "samples"
CANARY = "CANARY-91d2e7-must-never-be-printed"

MAPPING = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: code}
  time: {column: time}
  status: {column: status, map: {K: disconnected, KY: connected}}
  description: {column: note}
"""
XML_MAPPING = """\
format: xml
xml: {record_path: //E}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: C}
  time: {xpath: T}
  status: {const: connected}
"""


def run(args, capsys):
    code = cli.run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def feed(tmp_path):
    mapping = tmp_path / "feed.yaml"
    mapping.write_text(MAPPING)
    data = tmp_path / "export.csv"
    data.write_text(
        "id,code,time,status,note\n"
        "E1,6430,2024-02-05 06:30:00,K,Katkaistu\n"
        "E2,6431,2024-02-05 07:00:00,X,\n"
        "E3,6432,2024-02-05 08:00:00,KY,see [/bold] [red]markup[/red] text\n"
    )
    return mapping, data


# --- validate --------------------------------------------------------------------------------------------


def test_validate_shipped_mappings(capsys):
    paths = sorted(MAPPINGS.glob("*.yaml"))
    code, out, err = run(["validate", *paths], capsys)
    assert code == 0
    assert err == ""
    formats = {"erp_export.yaml": "xml", "erp_zip.yaml": "xml", "mainframe_fixed.yaml": "fixed",
               "mainframe_ebcdic.yaml": "fixed", "workbook_billing.yaml": "xlsx"}
    fields = {"record_types.yaml": 6, "invoice_pairs.yaml": 4, "mainframe_ebcdic.yaml": 6, "workbook_billing.yaml": 6}
    assert out.splitlines() == [
        f"{p}: ok ({formats.get(p.name, 'csv')}, {fields.get(p.name, 7)} fields)" for p in paths]


def test_validate_reports_every_problem_of_every_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(MAPPING)
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAPPING.replace("{column: code}", "{colum: code}") + "time_zone: Mars/Base\n")
    missing = tmp_path / "missing.yaml"
    code, out, err = run(["validate", good, bad, missing], capsys)
    assert code == 1
    assert out == f"{good}: ok (csv, 5 fields)\n"
    assert err.splitlines() == [
        f"{bad}:4:20: fields.usageplacecode.colum: unknown key; did you mean 'column'? (allowed here: column, const, "
        "default, map, map_default, map_ignore_case, pattern, required, split, template, trim, xpath)",
        f"{bad}:8:1: time_zone: unknown time zone 'Mars/Base' (e.g. Europe/Helsinki, UTC)",
        f"{missing}: file not found",
        "2 of 3 mapping file(s) have problems",
    ]


def test_validate_needs_a_file(capsys):
    code, out, err = run(["validate"], capsys)
    assert code == 2
    assert "Missing argument 'MAPPINGS...'" in err


# --- preview ------------------------------------------------------------------------------------------------


def test_preview_json(feed, capsys):
    mapping, data = feed
    code, out, err = run(["preview", "--json", mapping, data], capsys)
    assert code == 1
    assert [json.loads(line) for line in out.splitlines()] == [
        {"record": 2, "event": {"id": "E1", "usageplacecode": "6430", "time": "2024-02-05 06:30:00",
                                "status": "disconnected", "description": "Katkaistu"}},
        {"record": 3, "errors": [{"field": "status", "source": "column 'status'", "value": "X",
                                  "message": "value is not in the map (expected one of 'K', 'KY')"}]},
        {"record": 4, "event": {"id": "E3", "usageplacecode": "6432", "time": "2024-02-05 08:00:00",
                                "status": "connected", "description": "see [/bold] [red]markup[/red] text"}},
    ]
    assert err == f"{data}: 3 records, 2 valid, 1 invalid\n"


def test_preview_json_keeps_non_ascii_readable(tmp_path, capsys):
    mapping = MAPPINGS / "finnish_cp1252.yaml"
    code, out, _ = run(["preview", "--json", "--limit", "1", mapping, SAMPLES / "finnish_cp1252.csv"], capsys)
    assert code == 0
    assert "Käyttöpaikka katkaistu" in out


def test_preview_limit_shows_n_but_counts_all(feed, capsys):
    mapping, data = feed
    code, out, err = run(["preview", "--json", "--limit", "1", mapping, data], capsys)
    assert code == 1  # the invalid record was not shown but still counts
    assert [json.loads(line)["record"] for line in out.splitlines()] == [2]
    assert err == f"{data}: 3 records, 2 valid, 1 invalid\n"


def test_preview_errors_only(feed, capsys):
    mapping, data = feed
    code, out, _ = run(["preview", "--json", "--errors-only", mapping, data], capsys)
    assert code == 1
    assert [json.loads(line)["record"] for line in out.splitlines()] == [3]


def test_preview_table(feed, capsys):
    mapping, data = feed
    code, out, err = run(["preview", mapping, data], capsys)
    assert code == 1
    for heading in ("line", "id", "usageplacecode", "time", "status", "invoices", "description / problem"):
        assert heading in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "E1" in rows["2"] and "disconnected" in rows["2"] and "Katkaistu" in rows["2"]
    assert "invalid" in rows["3"] and "status (column 'status' = 'X'): value is not in the map" in rows["3"]
    # text from the file is shown as it is, never read as rich markup
    assert "see [/bold] [red]markup[/red] text" in rows["4"]
    assert err == f"{data}: 3 records, 2 valid, 1 invalid\n"


def test_preview_table_of_invoices(capsys):
    code, out, _ = run(["preview", MAPPINGS / "erp_export.yaml", SAMPLES / "erp_export.xml"], capsys)
    assert code == 0
    assert "810001/9001, 810002/9002" in out


def test_preview_all_valid_exits_0(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    data = tmp_path / "d.csv"
    data.write_text("id,code,time,status,note\nE1,6430,2024-02-05 06:30:00,K,\n")
    assert run(["preview", "--json", mapping, data], capsys)[0] == 0


def test_preview_of_a_header_only_file(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    data = tmp_path / "d.csv"
    data.write_text("id,code,time,status,note\r\n")
    code, out, err = run(["preview", "--json", mapping, data], capsys)
    assert (code, out, err) == (0, "", f"{data}: 0 records, 0 valid, 0 invalid\n")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "line 1: the file is empty: no header row"),
        (b"id;code;time;status;note\n", "line 1: missing columns 'id', 'code', 'time', 'status', 'note': the header row "
                                       "(line 1) has 'id;code;time;status;note'. Check the delimiter, header_line and "
                                       "encoding in the mapping."),
        ("id,code,time,status,note\nE1,6430,2024-02-05 06:30:00,K,caf\u00e9\n".encode("cp1252"),
         "line 2: cannot decode the file as utf-8-sig: bytes e9 0a are not valid (is the file cp1252 or iso-8859-1 "
         "rather than utf-8?)"),
    ],
)
def test_preview_unusable_file_exits_2(tmp_path, capsys, content, message):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    data = tmp_path / "d.csv"
    data.write_bytes(content)
    code, out, err = run(["preview", "--json", mapping, data], capsys)
    assert code == 2
    assert out == ""
    assert err == f"error: {data}: {message}\n"


def test_preview_file_error_after_some_records(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(XML_MAPPING)
    data = tmp_path / "d.xml"
    good = "".join(f"<E id='{i}'><C>1</C><T>2024-02-05 06:30:00</T></E>\n" for i in range(6000))
    data.write_text("<r>\n" + good + "<E id='bad'>\n")
    code, out, err = run(["preview", "--json", mapping, data], capsys)
    assert code == 2
    # the complete chunks were mapped before the break was found
    assert len(out.splitlines()) == 6000 // DEFAULT_CHUNK_SIZE * DEFAULT_CHUNK_SIZE > 0
    assert err.startswith(f"error: {data}: line 6003: not well-formed XML: Premature end of data in tag E line 6002")
    assert "Traceback" not in err


def test_preview_with_a_broken_mapping_exits_2(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING.replace("time: {column: time}", "time: {column: time, formats: ['%Q']}"))
    data = tmp_path / "d.csv"
    data.write_text("id\n")
    code, out, err = run(["preview", mapping, data], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        "error: the mapping cannot be used:\n"
        f"{mapping}:5:24: fields.time.formats: format '%Q': %Q is not supported "
        "(use %Y, %y, %m, %d, %H, %I, %p, %M, %S, %f, %z)\n"
    )


def test_preview_missing_input_exits_2(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    code, out, err = run(["preview", mapping, tmp_path / "nope.csv"], capsys)
    assert code == 2
    assert err == f"error: {tmp_path / 'nope.csv'}: No such file or directory\n"


@pytest.mark.parametrize("args", [["preview"], ["preview", "m.yaml"], ["preview", "--limit", "0", "m.yaml", "d.csv"]])
def test_preview_usage_errors_exit_2(args, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    assert "Traceback" not in err


def test_hostile_xml_in_preview(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(XML_MAPPING)
    data = tmp_path / "evil.xml"
    data.write_text(
        f'<?xml version="1.0"?>\n<!-- <a --><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        "<r><E id='1'><C>&x;</C><T>2024-02-05 06:30:00</T></E></r>\n"
    )
    for args in (["preview", "--json", mapping, data], ["preview", mapping, data]):
        code, out, err = run(args, capsys)
        assert code == 2
        assert CANARY not in out + err
        assert err == (
            f"error: {data}: line 1: the XML has a DOCTYPE; documents with DTDs or entity declarations are refused "
            "(they can expand to gigabytes or read local files). Export without a DOCTYPE.\n"
        )


def test_unexpected_errors_without_and_with_debug(feed, capsys, monkeypatch):
    import batch.transform.extract

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(batch.transform.extract, "mapped_chunks", explode)
    mapping, data = feed
    code, out, err = run(["preview", mapping, data], capsys)
    assert code == 3  # ExitStatus.INTERNAL: a bug, not the user's input
    assert err == "internal error: RuntimeError: boom; please report it (run with --debug for the traceback)\n"
    code, out, err = run(["--debug", "preview", mapping, data], capsys)
    assert code == 3
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert err.endswith("internal error: RuntimeError: boom; please report it\n")


# --- schema ----------------------------------------------------------------------------------------------------


def test_schema_prints_the_json_schema(capsys):
    code, out, err = run(["schema"], capsys)
    assert code == 0
    assert json.loads(out) == mapping_json_schema()


def test_schema_to_a_file(tmp_path, capsys):
    target = tmp_path / "mapping.schema.json"
    code, out, err = run(["schema", "-o", target], capsys)
    assert code == 0
    assert out == ""
    assert err == f"wrote {target}\n"
    assert json.loads(target.read_text(encoding="utf-8")) == mapping_json_schema()


# --- as a real process --------------------------------------------------------------------------------------------


def _process(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "batch", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_real_process_exit_codes_and_no_tracebacks(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(XML_MAPPING)
    evil = tmp_path / "evil.xml"
    evil.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file://' + str(secret) + '">]>\n'
        "<r><E id='1'><C>&x;</C><T>2024-02-05 06:30:00</T></E></r>\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("format: csv\nfields: [\n")

    ok = _process("preview", "--json", MAPPINGS / "erp_export.yaml", SAMPLES / "erp_export.xml")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 3

    invalid = _process("preview", MAPPINGS / "invalid_records.yaml", SAMPLES / "invalid_records.csv")
    assert invalid.returncode == 1
    assert "10 records, 1 valid, 9 invalid" in invalid.stderr

    unusable = _process("preview", "--json", mapping, evil)
    assert unusable.returncode == 2
    assert unusable.stdout == ""
    assert "the XML has a DOCTYPE" in unusable.stderr
    assert CANARY not in unusable.stdout + unusable.stderr

    bad_mapping = _process("validate", broken)
    assert bad_mapping.returncode == 1
    assert bad_mapping.stderr.splitlines()[0] == f"{broken}:3:1: not valid YAML: expected the node content, but found '<stream end>'"

    for result in (ok, invalid, unusable, bad_mapping):
        assert "Traceback" not in result.stdout + result.stderr
