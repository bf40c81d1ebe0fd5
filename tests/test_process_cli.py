"""The `process`, `retry` and `status` commands against the sandbox on loopback: exit codes,
receipts (dialect, CSV injection, file-level failures), duplicate files and ids, --force, and
no secret in any output at --debug (a real subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.cli.commands import run
from batch.sandbox.server import Faults, Sandbox
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_pipeline import (
    COLUMNS,
    Workspace,
    journal_events,
    make_rows,
    read_receipt,
    write_feed,
)

ROOT = Path(__file__).resolve().parent.parent
CP1252_SAMPLE = ROOT / "samples" / "finnish_cp1252.csv"
CP1252_MAPPING = ROOT / "config" / "mappings" / "finnish_cp1252.yaml"
XML_MAPPING = ROOT / "config" / "mappings" / "erp_export.yaml"
XML_SAMPLE = ROOT / "samples" / "erp_export.xml"


def process(ws: Workspace, path: Path, *extra: str) -> int:
    return run(["process", str(path), "--config", str(ws.config), *extra])


# --------------------------------------------------------------------------- exit codes


def test_exit_0_when_every_record_is_accepted(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace], capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace_for(sandbox)
    rows = make_rows(50, 10)
    assert process(ws, write_feed(ws.inbox / "n.csv", rows)) == 0
    out = capsys.readouterr().out
    assert "n.csv: 50 accepted" in out and str(ws.receipt("n.csv")) in out
    assert [r["outcome"] for r in read_receipt(ws.receipt("n.csv"))] == ["accepted"] * 50
    assert sorted(sandbox.accepted_ids) == sorted(r["id"] for r in rows)


def test_exit_1_when_records_are_invalid_or_rejected(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(10, 10)
    sandbox = make_sandbox(faults=Faults(reject_ids=[rows[1]["id"]]))
    ws = workspace_for(sandbox)
    rows[4]["time"] = "yesterday"
    assert process(ws, write_feed(ws.inbox / "n.csv", rows)) == 1
    assert "8 accepted, 1 rejected, 1 invalid" in capsys.readouterr().out
    receipt = read_receipt(ws.receipt("n.csv"))
    invalid = receipt[4]
    assert (invalid["outcome"], invalid["http_status"]) == ("invalid", "")
    assert "time" in invalid["message"] and "yesterday" in invalid["message"]
    assert receipt[1]["outcome"] == "rejected"
    assert rows[4]["id"] not in {a.id for a in sandbox.arrivals}  # invalid: never sent


def _broken_encoding(ws: Workspace) -> Path:
    path = ws.inbox / "latin.csv"
    write_feed(path, make_rows(5, 5) + [{**make_rows(1, 1, start=9)[0], "description": "Käyttöpaikka"}],
               encoding="cp1252")
    return path


def _missing_column(ws: Workspace) -> Path:
    return write_feed(ws.inbox / "short.csv", make_rows(5, 5), columns=[c for c in COLUMNS if c != "time"])


def _broken_xml(ws: Workspace) -> Path:
    text = XML_SAMPLE.read_text("utf-8")
    path = ws.inbox / "cut.xml"
    path.write_text(text[: len(text) * 2 // 3], encoding="utf-8")  # cut off mid-document
    return path


@pytest.mark.parametrize("broken, mapping, expected", [
    (_broken_encoding, None, "utf-8"),
    (_missing_column, None, "time"),
    (_broken_xml, XML_MAPPING, "xml"),
], ids=["wrong-encoding", "missing-column", "broken-xml"])
def test_exit_2_and_a_one_line_receipt_for_an_unusable_file(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace], capsys: pytest.CaptureFixture[str],
        broken: Callable[[Workspace], Path], mapping: Path | None, expected: str) -> None:
    if mapping is None:
        ws = workspace_for(sandbox)
    else:
        ws = workspace_for(sandbox, mapping_text=mapping.read_text("utf-8"), mapping_name=mapping.stem)
    path = broken(ws)
    assert process(ws, path) == 2
    err = capsys.readouterr().err
    assert "the file cannot be used" in err and expected in err.lower()
    receipt = read_receipt(ws.receipt(path.name))
    assert len(receipt) == 1
    row = receipt[0]
    assert row["outcome"] == "file_error" and expected in row["message"].lower()
    assert "\n" not in row["message"] and row["line"] == "" and row["event_id"] == ""
    assert len(ws.receipt(path.name).read_bytes().splitlines()) == 2  # header + one line
    summary = ws.summary(path.name)
    assert summary["state"] == "error" and summary["error"]
    assert sandbox.arrivals == [] and sandbox.tokens_issued == 0  # nothing sent


def test_exit_2_when_the_credentials_are_refused_or_missing(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace_for(sandbox)
    path = write_feed(ws.inbox / "n.csv", make_rows(5, 5))
    monkeypatch.setenv(APICODE_ENV, "not-the-apicode")
    assert process(ws, path) == 2
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "not-the-apicode" not in err
    assert sandbox.accepted_ids == []
    monkeypatch.delenv(APICODE_ENV)
    assert process(ws, path) == 2
    assert f"environment variable {APICODE_ENV} is not set" in capsys.readouterr().err
    # credentials fixed: the interrupted file resumes and completes
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    assert process(ws, path) == 0
    assert len(sandbox.accepted_ids) == 5


def test_exit_codes_of_the_installed_command(sandbox: Sandbox, workspace_for: Callable[..., Workspace]) -> None:
    ws = workspace_for(sandbox)
    good = write_feed(ws.inbox / "good.csv", make_rows(5, 5))
    rows = make_rows(5, 5, start=100)
    rows[0]["status"] = "??"
    partly = write_feed(ws.inbox / "partly.csv", rows)
    broken = _missing_column(ws)
    env = {**os.environ, APICODE_ENV: sandbox.apicode}
    codes = [
        subprocess.run([sys.executable, "-m", "batch", "process", str(path), "--config", str(ws.config)],
                       env=env, capture_output=True, timeout=120).returncode
        for path in (good, partly, broken)
    ]
    assert codes == [0, 1, 2]


# --------------------------------------------------------------------------- duplicates


def test_the_same_content_again_is_already_processed_and_nothing_is_sent(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace], capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace_for(sandbox)
    first = write_feed(ws.inbox / "monday.csv", make_rows(20, 5))
    assert process(ws, first) == 0
    sent = len(sandbox.arrivals)
    again = ws.inbox / "monday-again.csv"
    shutil.copy(first, again)
    capsys.readouterr()
    assert process(ws, again) == 1
    assert "not sent: Already processed" in capsys.readouterr().out
    assert len(sandbox.arrivals) == sent
    receipt = read_receipt(ws.receipt("monday-again.csv"))
    assert len(receipt) == 1 and receipt[0]["outcome"] == "already_processed"
    assert "'monday.csv'" in receipt[0]["message"]
    assert ws.summary("monday-again.csv")["state"] == "skipped"


def test_force_processes_again_but_never_resends_an_accepted_id(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace]) -> None:
    rows = make_rows(12, 4)
    sandbox = make_sandbox(faults=Faults(reject_ids=[rows[5]["id"]]))
    ws = workspace_for(sandbox)
    path = write_feed(ws.inbox / "n.csv", rows)
    assert process(ws, path) == 1
    sandbox.set_faults()  # Ropo One now knows the usage place
    assert process(ws, path) == 1  # without --force: already processed
    sent = len(sandbox.arrivals)
    assert process(ws, path, "--force") == 0
    assert [a.id for a in sandbox.arrivals[sent:]] == [rows[5]["id"]]
    receipt = read_receipt(ws.receipt("n.csv"))
    assert [r["outcome"] for r in receipt] == ["duplicate"] * 5 + ["accepted"] + ["duplicate"] * 6
    assert receipt[0]["message"].startswith("event id already accepted: file 'n.csv', line 2")
    assert sandbox.duplicates == {}


def test_ids_already_accepted_in_another_file_or_repeated_in_the_file_are_not_sent(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace]) -> None:
    ws = workspace_for(sandbox)
    assert process(ws, write_feed(ws.inbox / "a.csv", make_rows(10, 5))) == 0
    rows = make_rows(10, 5, start=5)  # ids 5..14: 5..9 were accepted with a.csv
    rows.append(dict(rows[-1]))  # and the last one once more: the mapping calls that invalid
    sent = len(sandbox.arrivals)
    assert process(ws, write_feed(ws.inbox / "b.csv", rows)) == 1
    assert sorted(a.id or "" for a in sandbox.arrivals[sent:]) == [r["id"] for r in rows[5:10]]
    receipt = read_receipt(ws.receipt("b.csv"))
    assert [r["outcome"] for r in receipt] == ["duplicate"] * 5 + ["accepted"] * 5 + ["invalid"]
    assert receipt[0]["message"] == "event id already accepted: file 'a.csv', line 7"
    assert receipt[-1]["message"].endswith("event id is used again (first on line 11)")
    assert sandbox.duplicates == {}
    assert ws.summary("b.csv")["counts"] == {
        "accepted": 5, "rejected": 0, "invalid": 1, "failed": 0, "duplicate": 5, "not_sent": 0, "pending": 0,
        "filtered": 0}


# --------------------------------------------------------------------------- retry and status


def test_retry_resends_the_failed_events_and_rewrites_the_receipt(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = make_sandbox(faults=Faults(script=["ok", "ok", 503, 503]))
    ws = workspace_for(sandbox, delivery={"max_attempts": 2})
    rows = make_rows(6, 1)  # one place: the 3rd event fails, the later three wait behind it
    path = write_feed(ws.inbox / "n.csv", rows)
    assert process(ws, path) == 1
    assert [r["outcome"] for r in read_receipt(ws.receipt("n.csv"))] == ["accepted"] * 2 + ["failed"] * 4
    capsys.readouterr()
    assert run(["retry", "--config", str(ws.config)]) == 0
    assert "n.csv: 6 accepted" in capsys.readouterr().out
    receipt = read_receipt(ws.receipt("n.csv"))
    assert [r["outcome"] for r in receipt] == ["accepted"] * 6
    assert {r["message"] for r in receipt} == {""}
    summary = ws.summary("n.csv")
    assert summary["state"] == "done" and summary["counts"]["accepted"] == 6
    assert summary["counts"]["failed"] == 0
    ids = [r["id"] for r in rows]
    assert [a.id for a in sandbox.arrivals] == ids[:3] + ids[2:3] + ids[2:]  # 2 tries, then the retry
    assert sandbox.duplicates == {}
    assert run(["retry", "--config", str(ws.config)]) == 0
    assert "no failed events to retry" in capsys.readouterr().err


def test_status_lists_the_files_with_their_counts(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(8, 4)
    sandbox = make_sandbox(faults=Faults(reject_ids=[rows[0]["id"]]))
    ws = workspace_for(sandbox)
    assert run(["status", "--config", str(ws.config)]) == 0
    assert "nothing has been processed" in capsys.readouterr().err
    process(ws, write_feed(ws.inbox / "a.csv", rows))
    process(ws, write_feed(ws.inbox / "b.csv", make_rows(3, 3, start=50)))
    process(ws, _missing_column(ws))
    capsys.readouterr()
    assert run(["status", "--config", str(ws.config), "--json"]) == 0
    files = [row for row in map(json.loads, capsys.readouterr().out.splitlines()) if row["kind"] == "file"]
    assert [(f["file"], f["state"]) for f in files] == [("short.csv", "error"), ("b.csv", "done"), ("a.csv", "done")]
    assert files[2]["counts"] == {"accepted": 7, "rejected": 1, "invalid": 0, "failed": 0,
                                  "duplicate": 0, "not_sent": 0, "pending": 0, "filtered": 0}
    assert files[1]["counts"]["accepted"] == 3 and files[0]["error"]
    assert run(["status", "--config", str(ws.config)]) == 0
    table = capsys.readouterr().out
    for name in ("a.csv", "b.csv", "short.csv"):
        assert name in table
    a_line = next(line for line in table.splitlines() if "a.csv" in line)
    assert [cell.strip() for cell in a_line.split("│")[6:12]] == ["7", "1", "0", "0", "0", "0"]


# --------------------------------------------------------------------------- receipts


def test_formula_cells_are_neutralised_in_the_receipt(
        sandbox: Sandbox, workspace_for: Callable[..., Workspace]) -> None:
    ws = workspace_for(sandbox)
    rows = make_rows(5, 5)
    nasty = [("=1+2", "=HYPERLINK(\"x\")"), ("+SUM(A1)", "+358"), ("@cmd", "@place"),
             ("-2+3", "-cmd|' /C calc'!A0"), ("-42", "-17")]
    for row, (event_id, place) in zip(rows, nasty):
        row["id"], row["place"] = event_id, place
    assert process(ws, write_feed(ws.inbox / "n.csv", rows)) == 0
    receipt = read_receipt(ws.receipt("n.csv"))
    assert [(r["event_id"], r["usageplacecode"]) for r in receipt] == [
        ("'=1+2", "'=HYPERLINK(\"x\")"), ("'+SUM(A1)", "'+358"), ("'@cmd", "'@place"),
        ("'-2+3", "'-cmd|' /C calc'!A0"), ("-42", "-17"),  # plain negative numbers stay
    ]
    # Ropo One got the values as they were
    assert sorted(sandbox.accepted_ids) == sorted(event_id for event_id, _ in nasty)


def test_the_receipt_speaks_the_feeds_dialect_and_encoding(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace]) -> None:
    sandbox = make_sandbox(faults=Faults(reject_places=["643007572062443689"],
                                         reject_detail="Käyttöpaikkaa ei löydy"))
    ws = workspace_for(sandbox, mapping_text=CP1252_MAPPING.read_text("utf-8"), mapping_name="finnish_cp1252")
    path = ws.inbox / CP1252_SAMPLE.name
    shutil.copy(CP1252_SAMPLE, path)
    assert process(ws, path) == 1
    data = ws.receipt(path.name).read_bytes()
    assert "Käyttöpaikkaa ei löydy".encode("cp1252") in data
    assert "ä".encode() not in data
    assert data.count(b"\r\n") == 5 and data.count(b"\n") == 5
    receipt = read_receipt(ws.receipt(path.name), encoding="cp1252", delimiter=";")
    assert [(r["event_id"], r["outcome"]) for r in receipt] == [
        ("KT-2024-0001", "accepted"), ("KT-2024-0002", "rejected"),
        ("KT-2024-0003", "accepted"), ("KT-2024-0004", "accepted")]
    assert receipt[1]["message"] == "HTTP 422: Unprocessable event: Käyttöpaikkaa ei löydy"
    assert (receipt[1]["title"], receipt[1]["detail"]) == ("Unprocessable event", "Käyttöpaikkaa ei löydy")
    assert data.splitlines()[0] == (b"line;event_id;usageplacecode;status;outcome;http_status;message;"
                                    b"field;source;value;title;detail")


# --------------------------------------------------------------------------- secrets

CANARY = "CANARY-apicode-91f2"


def test_no_secret_in_any_output_receipt_or_journal_at_debug(
        make_sandbox: Callable[..., Sandbox], workspace_for: Callable[..., Workspace], tmp_path: Path) -> None:
    # Ropo One echoing the secret back in a problem or a plain-text body must not leak it either
    sandbox = make_sandbox(apicode=CANARY, token_ttl=0.3, token_exp_claim=False, faults=Faults(
        latency_ms=3, script=["ok"] * 5 + [503, 401, 429, 500],
        reject_ids=["E000003"], reject_title="Bad apicode " + CANARY,
        reject_detail=f"apicode={CANARY}"))
    ws = workspace_for(sandbox, delivery={"max_in_flight": 2}, api={"token_renew_margin": 0})
    rows = make_rows(120, 30)
    rows[7]["time"] = "not a time"  # an invalid record too
    path = write_feed(ws.inbox / "n.csv", rows)
    env = {**os.environ, APICODE_ENV: CANARY}
    result = subprocess.run(
        [sys.executable, "-m", "batch", "--debug", "process", str(path), "--config", str(ws.config)],
        env=env, capture_output=True, timeout=120)
    assert result.returncode == 1, result.stderr.decode(errors="replace")[-2000:]
    # the same file again, forced, with a plain-text rejection that echoes the apicode
    sandbox.set_faults(reject_ids=["E000003"], reject_status=400,
                       reject_raw_body=f"bad request from {CANARY}")
    forced = subprocess.run(
        [sys.executable, "-m", "batch", "--debug", "process", str(path), "--config", str(ws.config), "--force"],
        env=env, capture_output=True, timeout=120)
    assert forced.returncode == 1
    tokens = sandbox.issued_tokens()
    assert len(tokens) >= 3  # one per run, and renewed after the 401 at least
    output = result.stdout + result.stderr + forced.stdout + forced.stderr
    assert b"DEBUG" in output and b"token" in output  # the debug log was on
    secrets = [CANARY, *tokens]
    # the token strings also as the parts a log could carry on their own (signature, claims)
    secrets += [part for token in tokens for part in token.split(".")[1:]]
    places = {"output": output}
    for file in ws.outbox.iterdir():
        places[file.name] = file.read_bytes()
    for file in ws.journal.parent.iterdir():  # journal.sqlite3, -wal, -shm
        places[file.name] = file.read_bytes()
    assert any(name.endswith("-wal") or name.endswith(".sqlite3") for name in places)
    for name, data in places.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret[:12]}... found in {name}"
    messages = [(e.file_id, e.event_id, e.message) for e in journal_events(ws)]
    assert (1, "E000003", "HTTP 422: Bad apicode ***: apicode=***") in messages
    assert (2, "E000003", "HTTP 400 Bad Request: bad request from ***") in messages
