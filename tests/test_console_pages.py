"""The console's pages over real HTTP: a file paged, filtered and searched; downloads of the
receipt, summary, rejected rows and original; the configuration reloaded; a late feed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any

import requests
import yaml

from batch.console.pages import PAGE_SIZE, feed_view
from tests.fixtures_pipeline import SIMPLE_MAPPING, make_rows, write_feed

LINE_CELL = re.compile(r'<tr class="event (\w+)[^"]*">\s*<td class="num"(?: rowspan="\d+")?>(\d+)</td>')


def shown(html: str) -> list[tuple[str, int]]:
    """(outcome, line) of each record row of a file page."""
    return [(outcome, int(line)) for outcome, line in LINE_CELL.findall(html)]


def test_a_file_is_paged_filtered_and_searched(sandbox, workspace_for, process_file, live_console):
    ws = workspace_for(sandbox)
    rows = make_rows(350, 40)
    for index in range(0, 350, 50):
        rows[index]["status"] = "X"  # 7 invalid records, at lines 2, 52, ... 302
    path = ws.inbox / "big.csv"
    write_feed(path, rows)
    outcome = process_file(ws, path)
    assert outcome.counts["invalid"] == 7 and outcome.counts["accepted"] == 343
    console = live_console(ws.config)
    first = console.get("/files/1").text
    assert "350 records; page 1 of 4." in first
    assert [line for _, line in shown(first)] == list(range(2, 2 + PAGE_SIZE))
    assert [line for _, line in shown(console.get("/files/1?page=4").text)] == list(range(302, 352))
    assert [line for _, line in shown(console.get("/files/1?page=99").text)] == list(range(302, 352))  # the last
    invalid = console.get("/files/1?outcome=invalid").text
    assert shown(invalid) == [("invalid", line) for line in range(2, 352, 50)]
    assert "7 records invalid." in invalid
    found = console.get("/files/1?q=E000123").text
    assert shown(found) == [("accepted", 125)] and "1 record matching “E000123”." in found
    by_place = console.get("/files/1", params={"q": rows[5]["place"]}).text
    assert [line for _, line in shown(by_place)] == [7, 47, 87, 127, 167, 207, 247, 287, 327]
    refused = console.get("/files/1?outcome=sent")
    assert refused.status_code == 400
    assert "no outcome &#39;sent&#39;" in refused.text


def test_the_downloads_of_a_file(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    page = console.get("/").text
    file_id = int(re.search(r'<a href="/files/(\d+)">invalid_records.csv</a>', page).group(1))
    html = console.get(f"/files/{file_id}").text
    for kind in ("receipt", "summary", "rejected", "original"):
        assert f'href="/files/{file_id}/{kind}"' in html, kind
    outbox = demo_workspace / "inbox" / "invalid_records" / "outbox"
    receipt = console.get(f"/files/{file_id}/receipt")
    assert receipt.status_code == 200
    assert receipt.content == (outbox / "invalid_records.csv.receipt.csv").read_bytes()
    assert 'filename="invalid_records.csv.receipt.csv"' in receipt.headers["content-disposition"]
    summary = console.get(f"/files/{file_id}/summary").json()
    assert summary["rejected_rows"] == "invalid_records.csv.rejected.csv"
    rejected = console.get(f"/files/{file_id}/rejected")
    assert rejected.content == (outbox / "invalid_records.csv.rejected.csv").read_bytes()
    original = console.get(f"/files/{file_id}/original")
    archived = demo_workspace / "inbox" / "invalid_records" / "archive" / "invalid_records.csv"
    assert original.status_code == 200 and original.content == archived.read_bytes()
    assert console.get(f"/files/{file_id}/passwd").status_code == 404


def test_a_file_without_rejected_rows_has_no_such_download(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    page = console.get("/").text
    file_id = int(re.search(r'<a href="/files/(\d+)">utf8_iso.csv</a>', page).group(1))
    assert f'href="/files/{file_id}/rejected"' not in console.get(f"/files/{file_id}").text
    answer = console.get(f"/files/{file_id}/rejected")
    assert answer.status_code == 404 and "this file has no rejected-rows file" in answer.text


def test_an_unknown_file_is_named(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    answer = console.get("/files/4242")
    assert answer.status_code == 404 and "no file #4242 in the journal" in answer.text


def test_a_changed_configuration_is_read_again(tmp_path, demo_workspace, live_console):
    config = yaml.safe_load((demo_workspace / "service.yaml").read_text(encoding="utf-8"))
    path = demo_workspace / "service.reload.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    console = live_console(path)
    assert 'data-feed="utf8_iso"' in console.get("/").text
    config["feeds"] = [feed for feed in config["feeds"] if feed["name"] != "utf8_iso"]
    path.write_text(yaml.safe_dump(config, sort_keys=False) + "\n# changed\n", encoding="utf-8")
    page = console.get("/").text
    assert 'data-feed="utf8_iso"' not in page and 'data-feed="erp_export"' in page
    path.write_text("api: [unusable\n", encoding="utf-8")
    broken = console.get("/").text
    assert "was changed and cannot be used; the last good configuration stays in force" in broken
    assert 'data-feed="erp_export"' in broken


def test_a_late_feed_is_shown_red():
    row: dict[str, Any] = {"feed": "north", "inbox": "/in", "in_processing": [], "last_file": None, "lease": None, "marker": None,
           "expected": {"description": "every day by 03:00 Europe/Helsinki, grace 30m",
                        "due": "2026-11-29T01:30:00+00:00", "next_due": "2026-11-30T01:30:00+00:00", "late": True,
                        "last_arrival": None}}
    view = feed_view(row, None, [], 0, {})
    assert (view["tone"], view["late"]) == ("bad", True)
    assert view["state"] == "late: no file arrived for 2026-11-29T01:30:00+00:00"
    on_time = feed_view({**row, "expected": {**row["expected"], "late": False}}, None, [], 0, {})
    assert (on_time["tone"], on_time["late"]) == ("idle", False)
    assert json.dumps(view["expected"])  # rendered from plain data


def test_a_receipt_replaced_by_a_later_file_of_the_same_name_is_not_offered(sandbox, workspace_for, process_file,
                                                                             live_console):
    ws = workspace_for(sandbox)
    path = ws.inbox / "night.csv"
    write_feed(path, make_rows(3, 3))
    process_file(ws, path)
    write_feed(path, make_rows(4, 3, start=100))  # the next night's export, under the same name
    process_file(ws, path)
    console = live_console(ws.config)
    assert 'href="/files/1/receipt"' not in console.get("/files/1").text
    answer = console.get("/files/1/receipt")
    assert answer.status_code == 404
    assert "the outbox holds no receipt of this night.csv (none, or a later file&#39;s of the same name)" in answer.text
    assert 'href="/files/2/receipt"' in console.get("/files/2").text
    assert console.get("/files/2/summary").json()["records"] == 4
    missing = console.get("/files/2/original")  # `process` leaves the file where it was: not in archive/
    assert missing.status_code == 404
    assert "night.csv is not in the feed&#39;s archive/ (moved, or not finished)" in missing.text


def test_the_console_reads_a_postgresql_journal(tmp_path, pg_database, live_console):
    from batch.store.journal import NewEvent, Result
    from batch.store.journal_pg import PgJournal

    (tmp_path / "password").write_text(pg_database.password + "\n", encoding="utf-8")
    (tmp_path / "password").chmod(0o600)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "mapping.yaml").write_text(SIMPLE_MAPPING, encoding="utf-8")
    config = {"api": {"base_url": "http://127.0.0.1:9/rest", "cid": "1", "apicode": "${CONSOLE_PG_APICODE}"},
              "journal": pg_database.uri, "journal_password_file": "password",
              "feeds": [{"name": "simple", "mapping": "mapping.yaml", "inbox": "inbox"}]}
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with PgJournal(pg_database.uri, password=pg_database.password) as journal:
        file_id = journal.begin_file("pg.csv", "f" * 64, 10, "simple").file.id
        journal.record_events(file_id, [NewEvent.valid(line, {"id": f"E{line}", "usageplacecode": "P1"})
                                        for line in range(2, 302)])
        journal.record_events(file_id, [NewEvent.invalid(302, "status: bad", None, [
            {"field": "status", "source": "column 'Tila'", "value": "X", "message": "bad"}])])
        journal.record_results(Result(file_id, line, "accepted", 200) for line in range(2, 302))
        journal.finish_file(file_id, "done")
    console = live_console(path)
    assert 'href="/files/1">pg.csv</a>' in console.get("/").text
    assert "301 records; page 1 of 4." in console.get(f"/files/{file_id}").text
    assert [line for _, line in shown(console.get(f"/files/{file_id}?page=4").text)] == [302]
    invalid = console.get(f"/files/{file_id}?outcome=invalid").text
    assert shown(invalid) == [("invalid", 302)] and "column &#39;Tila&#39;" in invalid
    assert pg_database.password not in console.get("/").text


def test_the_command_prints_its_url_serves_and_stops_on_sigterm(demo_workspace):
    process = subprocess.Popen([sys.executable, "-m", "batch", "console", "--config", str(demo_workspace / "service.yaml"),
                                "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.fullmatch(r"usageplace-batch console at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)\n", line)
        assert found, line
        assert 'data-feed="utf8_iso"' in requests.get(found.group(1), timeout=30).text
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stdout.read() == "" and process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_playground_routes_are_mounted_with_the_console_s_security(demo_workspace, live_console, monkeypatch):
    # the extension point batch/console/__init__.py documents: playground.routes under /playground
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from batch.console import playground
    from batch.console.render import current_user, render

    def index(request):
        return render(request, "error.html", {"title": "Playground here", "message": "", "nav": "playground"})

    async def check(request):
        form = await request.form()
        return JSONResponse({"user": current_user(request),
                             "form": {key: value if isinstance(value, str) else value.filename
                                      for key, value in form.items()}})

    monkeypatch.setattr(playground, "routes", [])  # none: the navigation shows it greyed out
    assert '<span class="disabled" title="not available in this version">Playground</span>' in \
        live_console(demo_workspace / "service.yaml").get("/").text
    monkeypatch.setattr(playground, "routes", [Route("/", index), Route("/check", check, methods=["POST"])])
    console = live_console(demo_workspace / "service.yaml")
    page = console.get("/playground/").text
    assert "<h1>Playground here</h1>" in page and '<a href="/playground/" class="current">Playground</a>' in page
    token = console.csrf("/playground/")
    answer = console.post("/playground/check", {"csrf": token, "mapping": "name: x"})
    assert answer.status_code == 200 and answer.json()["form"] == {"csrf": token, "mapping": "name: x"}
    assert console.post("/playground/check", headers={"X-CSRF-Token": token}).status_code == 200
    assert console.post("/playground/check", {"mapping": "name: x"}).status_code == 403
    # an upload carries its token in the header (checked before the body is read), not as a field
    upload = console.post("/playground/check", data={"csrf": token}, files={"sample": ("a.csv", b"id\n1\n")})
    assert upload.status_code == 403
    upload = console.post("/playground/check", headers={"X-CSRF-Token": token},
                          files={"sample": ("a.csv", b"id\n1\n")})
    assert upload.status_code == 200 and upload.json()["form"] == {"sample": "a.csv"}
    assert console.post("/playground/check", files={"sample": ("a.csv", b"id\n1\n")}).status_code == 403
