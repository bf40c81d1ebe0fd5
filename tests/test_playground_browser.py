"""The mapping playground in a real browser (Debian's Chromium, driven by Playwright) next to a
real running service: a typo is marked on its line as it is typed; fixed, the diff over the
archived files is shown; saved, the service uses the new mapping for the next file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import MAPPING, MAPPING_BROKEN, MAPPING_V2, ServiceThread, export, ids, write_config


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def test_edit_a_typo_see_it_on_its_line_fix_it_see_the_diff_save_and_the_service_uses_it(
        tmp_path: Path, sandbox, apicode_env, live_console, browser_page) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    with ServiceThread(config, reload_interval=0.1) as runner:
        wait_until(lambda: getattr(runner.service.workers.get("local"), "last_scan", None), 30, what="the first scan")
        (inbox / "before.csv").write_bytes(export("before", 4))
        wait_until(lambda: (inbox / "archive" / "before.csv").exists(), 30, what="before.csv archived")

        console = live_console(config)
        page = browser_page
        page.goto(console.url + "playground/")
        page.click("text=local")
        page.wait_for_selector("#playground[data-checked='valid']")

        page.fill("#mapping-text", MAPPING_BROKEN)  # `colum` on line 5
        page.wait_for_selector("#gutter span[data-line='5'].bad")
        assert page.locator("#gutter span.bad").count() == 1
        problem = page.locator("#problems li").first
        assert problem.get_attribute("data-line") == "5"
        assert "mapping.yaml:5:20: fields.usageplacecode.colum: unknown key; did you mean 'column'?" in \
            problem.inner_text()
        assert page.locator("#check-state").inner_text() == "1 problem"
        assert page.locator("#save-button").is_disabled()

        page.fill("#mapping-text", MAPPING_V2)
        page.wait_for_selector("#playground[data-checked='valid']")
        assert page.locator("#gutter span.bad").count() == 0
        page.click("#diff-button")
        page.wait_for_selector("#diff-summary")
        assert page.locator("#diff-summary").inner_text() == \
            "4 of 4 records change in the 1 last archived file(s)."
        assert page.locator("table.diff-fields tbody tr").first.inner_text().split("\t") == ["description", "4"]
        cells = page.locator("table.diff-samples tbody tr").first.locator("td")
        assert [cells.nth(i).locator("dt").all_inner_texts() for i in (2, 3)] == [["description"], ["description"]]
        assert cells.nth(0).inner_text() == "before.csv:2"
        assert [cells.nth(i).locator("dd").inner_text() for i in (2, 3)] == ['"note 1"', '"mapping-v2"']

        page.click("#save-button")
        page.wait_for_selector("#save-state.good")
        assert page.locator("#save-state").inner_text() == (
            "Saved mapping.yaml (the earlier version kept as mapping.yaml.1). The service uses it from its next "
            "reload.")
        # the earlier version can be loaded back into the editor (a revert is an edit like any other)
        page.click("#versions button.version")
        page.wait_for_selector("#save-state:has-text('mapping.yaml.1 is in the editor')")
        page.wait_for_selector("#playground[data-checked='valid']")
        assert "description: {column: note}" in page.locator("#mapping-text").input_value()
        assert page.locator("#save-button").is_disabled()
        runner.wait_log("configuration #2 applied")
        (inbox / "after.csv").write_bytes(export("after", 3))
        wait_until(lambda: (inbox / "archive" / "after.csv").exists(), 30, what="after.csv archived")
    accepted = {event["id"]: event for event in sandbox.accepted}
    assert accepted["before-1"]["description"] == "note 1"
    assert {accepted[i]["description"] for i in ids("after", 3)} == {"mapping-v2"}


def test_a_new_mapping_from_a_sample_shows_what_was_detected(tmp_path: Path, sandbox, live_console,
                                                             browser_page) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    console = live_console(config)
    page = browser_page
    page.goto(console.url + "playground/feed/local")
    page.wait_for_selector("#playground[data-checked='valid']")
    page.set_input_files("#new-sample", str(Path(__file__).resolve().parents[1] / "samples/finnish_cp1252.csv"))
    page.click("#new-button")
    page.wait_for_selector("#detected-facts")
    assert page.locator("#detected-encoding").inner_text() == "cp1252"
    assert page.locator("#detected-delimiter").inner_text() == ";"
    assert page.locator("#detected-header").inner_text().startswith("line 3: Tapahtumatunnus, Käyttöpaikka")
    page.wait_for_selector("#playground[data-checked='valid']")
    assert 'name: "local"' in page.locator("#mapping-text").input_value()
    # the sample previewed with the proposed mapping: read, statuses still codes to map
    page.set_input_files("#preview-sample", str(Path(__file__).resolve().parents[1] / "samples/finnish_cp1252.csv"))
    page.click("#preview-button")
    page.wait_for_selector("#preview-summary")
    assert page.locator("#preview-summary").inner_text() == \
        "finnish_cp1252.csv: 4 records, 0 valid, 4 invalid, 0 filtered"


XSS = "<img src=x onerror=alert(1)>"


def test_html_in_a_mapping_its_problems_a_diff_and_a_preview_stays_text(tmp_path: Path, sandbox, live_console,
                                                                        browser_page) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    (inbox / "archive" / f"{XSS}.csv").write_bytes(export("x", 2))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    console = live_console(config)
    page = browser_page
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(console.url + "playground/feed/local")
    page.wait_for_selector("#playground[data-checked='valid']")

    page.fill("#mapping-text", MAPPING_BROKEN.replace("colum: place", f'"{XSS}": place'))
    page.wait_for_selector("#problems li")
    assert f"fields.usageplacecode.{XSS}: unknown key" in page.locator("#problems").inner_text()

    page.fill("#mapping-text", MAPPING.replace("description: {column: note}", f'description: {{const: "{XSS}"}}'))
    page.wait_for_selector("#playground[data-checked='valid']")
    page.click("#diff-button")
    page.wait_for_selector("#diff-summary")
    assert f'"{XSS}"' in page.locator("table.diff-samples").inner_text()
    assert page.locator("table.diff-samples").inner_text().count(f"{XSS}.csv:") == 2

    page.select_option("#archived", f"{XSS}.csv")
    page.click("#preview-button")
    page.wait_for_selector("#preview-summary")
    assert page.locator("#preview-summary").inner_text().startswith(f"{XSS}.csv: 2 records, 2 valid")
    assert f'"description":"{XSS}"' in page.locator("table.preview-records").inner_text()
    assert page.locator("img").count() == 0 and dialogs == []  # shown as text: no element, no script ran
