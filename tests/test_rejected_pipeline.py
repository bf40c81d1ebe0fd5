"""Receipts and rejected-rows files through the real pipeline and commands: the sandbox over HTTP,
a real SQLite journal, real files (issue 11, points 8 and 9, and the EBCDIC receipt)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.cli.commands import run
from batch.config.mapping import load_mapping, load_mapping_text
from batch.config.service import ReceiptOptions
from batch.pipeline import FileOutcome, receipt_format_for
from batch.sandbox.server import Faults, Sandbox
from tests.fixtures_pipeline import Workspace, make_rows, read_receipt, write_feed

ROOT = Path(__file__).resolve().parent.parent
EBCDIC_MAPPING = ROOT / "config/mappings/mainframe_ebcdic.yaml"
RECORD = 120  # mainframe_ebcdic.yaml: record_length


@pytest.mark.parametrize("encoding", ["cp037", "cp500", "cp1140"])
def test_an_ebcdic_feeds_receipt_is_utf8(encoding: str) -> None:
    fixed = load_mapping_text(
        f"format: fixed\nfixed:\n  encoding: {encoding}\n  columns: [{{name: P, start: 1, width: 18}}]\n"
        "fields:\n  usageplacecode: {column: P}\n  time: {const: '2024-01-01 00:00:00'}\n"
        "  status: {const: connected}\n")
    delimited = load_mapping_text(
        f"format: csv\ncsv: {{encoding: {encoding}, delimiter: ';'}}\n"
        "fields:\n  usageplacecode: {column: P}\n  time: {const: '2024-01-01 00:00:00'}\n"
        "  status: {const: connected}\n")
    assert receipt_format_for(fixed, ReceiptOptions()).encoding == "utf-8"
    assert receipt_format_for(delimited, ReceiptOptions()).encoding == "utf-8"
    assert receipt_format_for(delimited, ReceiptOptions()).delimiter == ";"  # the dialect stays the feed's
    cp1252 = load_mapping(ROOT / "config/mappings/finnish_cp1252.yaml")
    assert receipt_format_for(cp1252, ReceiptOptions()).encoding == "cp1252"  # others keep theirs


def test_ebcdic_records_receipt_in_utf8_rejected_rows_in_cp037(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    sandbox = make_sandbox()
    ws = workspace_for(sandbox, mapping_text=EBCDIC_MAPPING.read_text("utf-8"), mapping_name="ebcdic")
    original = (ROOT / "samples/mainframe_ebcdic.dat").read_bytes()
    records = [original[start:start + RECORD] for start in range(0, len(original), RECORD)]
    assert records[2].decode("cp037").startswith("EB00000202643007572062492018C000020220240307093015R")
    broken = records[2].decode("cp037").replace("093015R", "093015Ä").encode("cp037")  # a status code not mapped
    path = ws.inbox / "MF.DATA"
    path.write_bytes(b"".join([*records[:2], broken, *records[3:]]))
    outcome = process_file(ws, path)
    assert (outcome.counts["accepted"], outcome.counts["invalid"]) == (2, 1)
    raw = ws.receipt("MF.DATA").read_bytes()
    assert raw.startswith(b"line,event_id,usageplacecode,status,outcome,http_status,message,field,source,value,")
    invalid = [row for row in read_receipt(ws.receipt("MF.DATA")) if row["outcome"] == "invalid"]
    assert [(row["line"], row["field"], row["source"], row["value"]) for row in invalid] == [
        ("3", "status", "column 'Status'", "Ä")]
    # the rejected rows: the HDR record, the bad record and the TRL record, bytes as they came
    rejected = ws.outbox / "MF.DATA.rejected.DATA"
    assert rejected.read_bytes() == records[0] + broken + records[-1]
    assert ws.summary("MF.DATA")["rejected_rows"] == "MF.DATA.rejected.DATA"


def test_retry_that_turns_a_failed_event_rejected_rewrites_the_rejected_rows(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = make_sandbox(faults=Faults(script=["ok", "ok", 503, 503]))
    ws = workspace_for(sandbox, delivery={"max_attempts": 2})
    rows = make_rows(4, 1)
    rows[3]["status"] = "X"  # invalid: not in the map
    write_feed(ws.inbox / "n.csv", rows)
    assert run(["run", "--config", str(ws.config), "--once"]) == 1  # the service: claimed, archived
    assert (ws.inbox / "archive" / "n.csv").is_file()
    assert [r["outcome"] for r in read_receipt(ws.outbox / "n.csv.receipt.csv")] == [
        "accepted", "accepted", "failed", "invalid"]
    header = b"id,place,customer,time,status,description\r\n"
    lines = (ws.inbox / "archive" / "n.csv").read_bytes().splitlines(keepends=True)
    assert (ws.outbox / "n.csv.rejected.csv").read_bytes() == header + lines[4]  # the invalid one only

    sandbox.set_faults(reject_ids=[rows[2]["id"]])  # Ropo One now refuses the failed one for good
    capsys.readouterr()
    assert run(["retry", "--config", str(ws.config)]) == 1
    assert "n.csv: 2 accepted, 1 rejected, 1 invalid" in capsys.readouterr().out
    assert (ws.outbox / "n.csv.rejected.csv").read_bytes() == header + lines[3] + lines[4]
    summary = json.loads((ws.outbox / "n.csv.receipt.json").read_text("utf-8"))
    assert [(p["line"], p["outcome"]) for p in summary["problems"]] == [(4, "rejected"), (5, "invalid")]
    assert summary["problems"][1]["errors"] == [{
        "field": "status", "source": "column 'status'", "value": "X",
        "message": "value is not in the map (expected one of 'K', 'KY', 'EK')"}]


def test_a_file_with_nothing_rejected_has_no_rejected_rows_file(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    ws = workspace_for(make_sandbox())
    outcome = process_file(ws, write_feed(ws.inbox / "ok.csv", make_rows(3, 3)))
    assert outcome.receipt is not None and outcome.receipt.rejected is None
    assert sorted(path.name for path in ws.outbox.iterdir()) == ["ok.csv.receipt.csv", "ok.csv.receipt.json"]


def test_a_rejections_title_and_detail_reach_the_receipt_redacted_and_neutralised(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        process_file: Callable[..., FileOutcome]) -> None:
    secret = "SECRET-apicode-77"
    sandbox = make_sandbox(apicode=secret, faults=Faults(
        reject_ids=["E000001"], reject_title="=Bad apicode " + secret, reject_detail=f"apicode={secret} and \x1b[2J"))
    ws = workspace_for(sandbox)
    outcome = process_file(ws, write_feed(ws.inbox / "r.csv", make_rows(2, 2)))
    assert outcome.counts["rejected"] == 1
    row = next(row for row in read_receipt(ws.receipt("r.csv")) if row["outcome"] == "rejected")
    # redacted and cut by the client, control characters escaped; the CSV cell neutralised too
    assert (row["title"], row["detail"]) == ("'=Bad apicode ***", "apicode=*** and \\x1b[2J")
    problem = ws.summary("r.csv")["problems"][0]
    assert (problem["title"], problem["detail"]) == ("=Bad apicode ***", "apicode=*** and \\x1b[2J")
    assert secret not in ws.receipt("r.csv").read_text() + json.dumps(ws.summary("r.csv"))


KEEP_D = """\
format: csv
csv: {delimiter: ";", header_line: null, columns: [Type, EventId, Place, Date, Code]}
keep: {column: Type, equals: D}
fields:
  id: {column: EventId}
  usageplacecode: {column: Place}
  time: {column: Date, formats: ["%d.%m.%Y %H:%M"]}
  status: {column: Code, map: {K: disconnected}}
"""


def test_status_and_process_show_the_filtered_count(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace_for(make_sandbox(), mapping_text=KEEP_D, mapping_name="types")
    path = ws.inbox / "t.csv"
    path.write_text("H;x\nD;E1;643007572062440001;01.03.2024 07:45;K\nC;comment\nT;1\n")
    assert run(["process", str(path), "--config", str(ws.config)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "t.csv: 1 accepted, 3 filtered"
    assert run(["status", "--config", str(ws.config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[0])
    assert status["counts"] == {"accepted": 1, "rejected": 0, "invalid": 0, "failed": 0, "duplicate": 0,
                                "not_sent": 0, "pending": 0, "filtered": 3}
    assert run(["status", "--config", str(ws.config)]) == 0
    table = capsys.readouterr().out
    assert "filtered" in table and table.count("│ 3 ") == 1
