"""The console in a real browser (Debian's Chromium, headless, driven by Playwright): log in, the
feeds page on the demo's journal, a file's invalid records with field, column and value."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.fixtures_pipeline import make_rows, write_feed

PASSWORD_ENV = "CONSOLE_BROWSER_PASSWORD"
PASSWORD = "browser-test-password"


@pytest.fixture
def login_config(demo_workspace, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = yaml.safe_load((demo_workspace / "service.yaml").read_text(encoding="utf-8"))
    config["console"] = {"password": "${" + PASSWORD_ENV + "}"}
    path = demo_workspace / "service.browser.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def test_log_in_and_see_every_feed_of_the_demo(login_config, live_console, browser_page):
    console = live_console(login_config)
    page = browser_page
    page.goto(console.url)
    assert page.url.startswith(console.url + "login?next=")
    page.fill("input[name=name]", "Aino Admin")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert page.text_content("#login-error") == "Wrong password."
    page.fill("input[name=name]", "Aino Admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("table#feeds")
    assert page.url == console.url
    assert "Aino Admin" in page.text_content("header")
    feeds = page.locator("tr.feed")
    names = sorted(page.locator("tr.feed").evaluate_all("rows => rows.map(r => r.dataset.feed)"))
    assert feeds.count() == 12 and "finnish_cp1252" in names and "invalid_records" in names
    finnish = page.locator("tr.feed[data-feed=finnish_cp1252]")
    assert finnish.locator("a").first.text_content() == "finnish_cp1252.csv"
    # its last file's counts per outcome: 3 accepted, 1 rejected
    assert finnish.locator("td.n-accepted").text_content() == "3"
    assert finnish.locator("td.n-rejected").text_content() == "1"


def test_a_file_with_invalid_records_shows_field_column_and_value(demo_workspace, live_console, browser_page):
    console = live_console(demo_workspace / "service.yaml")  # loopback, no login configured
    page = browser_page
    page.goto(console.url)
    page.locator("tr.feed[data-feed=invalid_records] a").first.click()
    page.wait_for_selector("table#events")
    assert page.text_content("h1") == "invalid_records.csv"
    page.select_option("select[name=outcome]", "invalid")
    page.click("form.filter button[type=submit]")
    page.wait_for_url(re.compile(r"outcome=invalid"))
    rows = page.locator("tr.event.invalid")
    assert rows.count() == 9
    first = rows.first
    assert [first.locator(f"td.{cell}").text_content() for cell in ("field", "source", "value")] == [
        "status", "column 'Tila'", "X"]
    empty = page.locator("tr.event.invalid", has_text="Käyttöpaikka")
    assert [empty.locator(f"td.{cell}").text_content() for cell in ("field", "value", "why")] == [
        "usageplacecode", "(empty)", "is required but empty"]
    time_row = page.locator("tr.event.invalid", has_text="31.2.2024 7:10:00")
    assert time_row.locator("td.source").text_content() == "template '{Pvm} {Klo}'"
    assert "#" not in page.text_content("#showing") and "9 records invalid" in page.text_content("#showing")


def test_a_rejected_record_shows_the_apis_problem(demo_workspace, live_console, browser_page):
    console = live_console(demo_workspace / "service.yaml")
    page = browser_page
    page.goto(console.url)
    page.locator("tr.feed[data-feed=finnish_cp1252] a").first.click()
    page.fill("input[name=q]", "643007572062443689")  # the place the demo's sandbox does not know
    page.click("form.filter button[type=submit]")
    row = page.locator("tr.event.rejected")
    assert row.count() == 1
    assert row.locator("td.num").nth(1).text_content() == "422"
    assert row.locator("td.why .title").text_content() == "Unprocessable event"
    assert row.locator("td.why .detail").text_content() == "The usage place is not known to Ropo One"


def test_retry_a_failed_event_and_see_it_accepted(sandbox, workspace_for, process_file, live_console, browser_page):
    ws = workspace_for(sandbox, delivery={"max_attempts": 2})
    rows = make_rows(6, 3)
    sandbox.set_faults(error_ids=[rows[4]["id"]])  # Ropo One fails on this event until the fault is gone
    path = ws.inbox / "night.csv"
    write_feed(path, rows)
    outcome = process_file(ws, path)
    assert (outcome.counts["accepted"], outcome.counts["failed"]) == (5, 1)
    sandbox.set_faults()  # Ropo One is well again
    console = live_console(ws.config)
    page = browser_page
    page.goto(console.url)
    assert page.locator("tr.feed[data-feed=simple] td.waiting").first.text_content().strip().startswith("1")
    page.locator("tr.feed[data-feed=simple] a").first.click()
    failed = page.locator("tr.event.failed")
    assert failed.count() == 1 and failed.locator("td").nth(1).text_content() == rows[4]["id"]
    page.once("dialog", lambda dialog: dialog.accept())  # "Send the 1 failed event(s) of night.csv again?"
    page.click("#retry-button")
    page.wait_for_selector(".retry-request[data-state=done]", timeout=60_000)
    request = page.locator(".retry-request")
    assert "Asked by console:" in request.text_content()
    assert request.locator(".pill.accepted").text_content() == "accepted 6"
    assert page.locator("tr.event.failed").count() == 0
    row = page.locator("tr.event", has_text=rows[4]["id"])
    assert row.locator("td.outcome").text_content() == "accepted"
    assert rows[4]["id"] in sandbox.accepted_ids
    assert page.locator("#retry-button").count() == 0  # nothing left to retry


def test_a_late_feed_turns_red(demo_workspace, live_console, browser_page):
    config = yaml.safe_load((demo_workspace / "service.yaml").read_text(encoding="utf-8"))
    (demo_workspace / "inbox" / "nightly_missing").mkdir(exist_ok=True)
    config["feeds"].append({"name": "nightly_missing", "mapping": config["feeds"][0]["mapping"],
                            "inbox": "inbox/nightly_missing", "patterns": ["*.csv"],
                            # due every minute, no grace: its file is always missing
                            "expected": {"cron": "* * * * *", "time_zone": "Europe/Helsinki", "grace": "0m"}})
    for feed in config["feeds"][:-1]:
        if feed["name"] == "utf8_iso":  # its file came minutes ago; due once a year: on time
            feed["expected"] = {"cron": "0 3 1 1 *", "time_zone": "Europe/Helsinki", "grace": "0m"}
    path = demo_workspace / "service.late.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    console = live_console(path)
    page = browser_page
    page.goto(console.url)
    late = page.locator("tr.feed[data-feed=nightly_missing]")
    assert late.get_attribute("class") == "feed bad late"
    assert late.locator("td.state").text_content().strip().startswith("late: no file arrived for ")
    red = late.locator("td.state").evaluate("cell => getComputedStyle(cell).color")
    assert red == "rgb(176, 0, 32)"
    on_time = page.locator("tr.feed[data-feed=utf8_iso]")
    assert "late" not in on_time.get_attribute("class")
    assert "expected" in on_time.text_content()


def test_a_retry_asked_in_the_console_is_carried_out_by_the_running_service(tmp_path, sandbox, live_console,
                                                                              browser_page):
    from tests.fixtures_http import APICODE_ENV
    from tests.service_helpers import ServiceProcess, export, write_config

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "north", "inbox": str(inbox)}], instance="svc-1",
                          delivery={"max_in_flight": 4, "max_attempts": 2, "backoff_base": 0.05, "backoff_cap": 0.1})
    sandbox.set_faults(error_ids=["N-3"])
    service = ServiceProcess(config, tmp_path / "service.log", env={APICODE_ENV: sandbox.apicode})
    try:
        service.wait_log("watching 1 feed(s)")
        (inbox / "night.csv").write_bytes(export("N", 5))
        service.wait_log("night.csv: done", timeout=60)
        sandbox.set_faults()
        console = live_console(config)  # the console has no API code: the service must carry it out
        page = browser_page
        page.goto(console.url + "files/1")
        assert page.locator("tr.event.failed td").nth(1).text_content() == "N-3"
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#retry-button")
        page.wait_for_selector(".retry-request[data-state=done]", timeout=60_000)
        assert "carried out by svc-1" in page.text_content(".retry-request")
        assert page.locator("tr.event", has_text="N-3").locator("td.outcome").text_content() == "accepted"
        assert "N-3" in sandbox.accepted_ids
    finally:
        service.signal(15)
        service.wait(30)
