"""The mapping playground's routes over real HTTP (a live console on loopback): checking as you
type, preview, the diff, saving (versions, concurrent edit), a new mapping from a sample, and
the security rules (CSRF refused, traversal in feed and file names refused)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_browser import LiveConsole
from tests.service_helpers import MAPPING, MAPPING_BROKEN, MAPPING_V2, export, write_config

ROOT = Path(__file__).resolve().parents[1]
META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def token(console: LiveConsole, path: str = "/playground/") -> str:
    found = META_CSRF.search(console.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def post_json(console: LiveConsole, path: str, body: dict[str, Any], csrf: str | None) -> Any:
    headers = {} if csrf is None else {"X-CSRF-Token": csrf}
    return console.http.post(console.url.rstrip("/") + path, json=body, headers=headers, timeout=60)


@pytest.fixture
def feed_config(tmp_path: Path, sandbox) -> Path:
    inbox = tmp_path / "inbox"
    archive = inbox / "archive"
    archive.mkdir(parents=True)
    for n in range(1, 8):  # seven archived files: the diff reads the last five
        path = archive / f"night{n}.csv"
        path.write_bytes(export(f"n{n}", 10))
        os.utime(path, (1_700_000_000 + n * 86_400,) * 2)
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])


def test_the_feeds_and_the_editor_pages(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    index = console.get("/playground/")
    assert index.status_code == 200
    assert '<a href="/playground/feed/local">local</a>' in index.text and "7 archived file(s)" in index.text
    page = console.get("/playground/feed/local")
    assert page.status_code == 200
    assert "fields:\n  id: {column: id}" in page.text  # the mapping in the textarea (autoescaped)
    assert '<option value="night7.csv">night7.csv</option>' in page.text
    missing = console.get("/playground/feed/nope")
    assert missing.status_code == 404 and "no feed named &#39;nope&#39;; the feeds are: local" in missing.text


def test_validate_gives_the_problems_with_their_lines(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    csrf = token(console)
    answer = post_json(console, "/playground/feed/local/validate", {"text": MAPPING_BROKEN}, csrf)
    assert answer.status_code == 200
    assert answer.json() == {"ok": False, "problems": [{
        "line": 5, "column": 20, "key": "fields.usageplacecode.colum",
        "message": "unknown key; did you mean 'column'? (allowed here: column, const, default, map, map_default, "
                   "map_ignore_case, pattern, required, split, template, trim, xpath)",
        "text": "mapping.yaml:5:20: fields.usageplacecode.colum: unknown key; did you mean 'column'? (allowed here: "
                "column, const, default, map, map_default, map_ignore_case, pattern, required, split, template, "
                "trim, xpath)"}]}
    assert post_json(console, "/playground/feed/local/validate", {"text": MAPPING}, csrf).json() == {
        "ok": True, "problems": []}


def test_every_post_without_the_csrf_token_is_refused(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    token(console)  # the session exists and has a token
    for path in ("validate", "diff", "save", "preview", "new"):
        refused = post_json(console, f"/playground/feed/local/{path}", {"text": MAPPING, "base_hash": "x"}, None)
        assert refused.status_code == 403, path
        wrong = post_json(console, f"/playground/feed/local/{path}", {"text": MAPPING, "base_hash": "x"}, "forged")
        assert wrong.status_code == 403, path
    assert (feed_config.parent / "mapping.yaml").read_text() == MAPPING


def test_diff_over_the_last_archived_files(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    answer = post_json(console, "/playground/feed/local/diff", {"text": MAPPING_V2}, token(console))
    assert answer.status_code == 200
    diff = answer.json()
    assert [f["name"] for f in diff["files"]] == ["night7.csv", "night6.csv", "night5.csv", "night4.csv", "night3.csv"]
    assert (diff["compared"], diff["changed"], diff["outcomes"]) == (50, 50, [])
    assert diff["fields"] == [{"field": "description", "records": 50}]
    first = diff["samples"][0]
    assert (first["file"], first["line"]) == ("night7.csv", 2)
    assert (first["before"]["event"]["description"], first["after"]["event"]["description"]) == ("note 1",
                                                                                                "mapping-v2")
    broken = post_json(console, "/playground/feed/local/diff", {"text": MAPPING_BROKEN}, token(console))
    assert broken.status_code == 422 and broken.json()["problems"][0]["line"] == 5


def test_save_keeps_the_earlier_version_and_refuses_a_concurrent_edit(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    csrf = token(console)
    mapping = feed_config.parent / "mapping.yaml"
    page = console.get("/playground/feed/local").text
    found = re.search(r'data-base-hash="([0-9a-f]{64})"', page)
    assert found is not None
    base_hash = found.group(1)
    refused = post_json(console, "/playground/feed/local/save", {"text": MAPPING_BROKEN, "base_hash": base_hash}, csrf)
    assert refused.status_code == 422 and refused.json()["error"] == "the mapping has problems; it was not saved"
    saved = post_json(console, "/playground/feed/local/save", {"text": MAPPING_V2, "base_hash": base_hash}, csrf)
    assert saved.status_code == 200
    assert saved.json()["saved"] == "mapping.yaml" and saved.json()["kept"] == "mapping.yaml.1"
    assert mapping.read_text() == MAPPING_V2 and mapping.with_name("mapping.yaml.1").read_text() == MAPPING
    kept = console.get("/playground/feed/local/version/1")
    assert kept.json() == {"version": "mapping.yaml.1", "text": MAPPING}
    assert '<button type="button" class="link version" data-number="1">mapping.yaml.1</button>' in \
        console.get("/playground/feed/local").text
    for number, message in [(2, "no version 2 of mapping.yaml is kept"), (0, "no version 0 of mapping.yaml")]:
        missing = console.get(f"/playground/feed/local/version/{number}")
        assert (missing.status_code, missing.json()["error"]) == (404, message)
    again = post_json(console, "/playground/feed/local/save", {"text": MAPPING, "base_hash": base_hash}, csrf)
    assert again.status_code == 409
    assert again.json()["error"].startswith("mapping.yaml was changed since this editor loaded it")
    assert mapping.read_text() == MAPPING_V2


def test_preview_of_an_archived_file_and_of_a_sample_and_traversal_refused(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    csrf = token(console)
    url = console.url.rstrip("/") + "/playground/feed/local/preview"
    archived = console.http.post(url, data={"text": MAPPING, "archived": "night3.csv"}, headers={"X-CSRF-Token": csrf},
                                 timeout=60)
    assert archived.status_code == 200
    assert archived.json()["counts"] == {"records": 10, "valid": 10, "invalid": 0, "filtered": 0, "error": None}
    assert archived.json()["records"][0] == {"line": 2, "event": {
        "id": "n3-1", "usageplacecode": "643007572062450001", "time": "2024-02-05 06:30:00", "status": "disconnected",
        "description": "note 1"}}
    sample = console.http.post(url, data={"text": MAPPING}, files={"sample": ("mine.csv", export("s", 3))},
                               headers={"X-CSRF-Token": csrf}, timeout=60)
    assert sample.status_code == 200 and sample.json()["file"] == "mine.csv"
    assert sample.json()["counts"]["valid"] == 3
    unreadable = console.http.post(url, data={"text": MAPPING}, files={"sample": ("wrong.csv", b"a;b\n1;2\n")},
                                   headers={"X-CSRF-Token": csrf}, timeout=60)
    assert unreadable.status_code == 200 and unreadable.json()["counts"]["records"] == 0
    assert unreadable.json()["counts"]["error"] == (
        "line 1: missing columns 'id', 'place', 'time', 'status', 'note': the header row (line 1) has 'a;b'. Check "
        "the delimiter, header_line and encoding in the mapping.")
    for name, message in [
        ("../mapping.yaml", "refused file name '../mapping.yaml': it contains a path separator"),
        ("..", "refused file name '..': not a plain file name"),
        ("/etc/passwd", "refused file name '/etc/passwd': it contains a path separator"),
    ]:
        refused = console.http.post(url, data={"text": MAPPING, "archived": name}, headers={"X-CSRF-Token": csrf},
                                    timeout=60)
        assert (refused.status_code, refused.json()["error"]) == (400, message)
    traversal = console.get("/playground/feed/..%2F..%2Fetc")
    assert traversal.status_code == 404


def test_a_new_mapping_from_a_sample(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    sample = (ROOT / "samples/finnish_cp1252.csv").read_bytes()
    answer = console.http.post(console.url.rstrip("/") + "/playground/feed/local/new",
                               files={"sample": ("finnish_cp1252.csv", sample)},
                               headers={"X-CSRF-Token": token(console)}, timeout=60)
    assert answer.status_code == 200
    detected = answer.json()["detected"]
    assert (detected["encoding"], detected["delimiter"], detected["header_line"]) == ("cp1252", ";", 3)
    assert answer.json()["problems"] == []
    assert 'name: "local"' in answer.json()["text"] and '  delimiter: ";"' in answer.json()["text"]


def test_the_console_settings_say_how_many_files_a_diff_reads_and_versions_a_save_keeps(
        tmp_path: Path, sandbox, live_console) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    for n in range(1, 4):
        (inbox / "archive" / f"night{n}.csv").write_bytes(export(f"n{n}", 2))
        os.utime(inbox / "archive" / f"night{n}.csv", (1_700_000_000 + n,) * 2)
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                          console={"playground_files": 2, "mapping_versions": 1})
    console = live_console(config)
    csrf = token(console)
    diff = post_json(console, "/playground/feed/local/diff", {"text": MAPPING_V2}, csrf).json()
    assert [f["name"] for f in diff["files"]] == ["night3.csv", "night2.csv"]
    mapping = tmp_path / "mapping.yaml"
    first = post_json(console, "/playground/feed/local/save",
                      {"text": MAPPING_V2, "base_hash": hashlib.sha256(MAPPING.encode()).hexdigest()}, csrf).json()
    second = post_json(console, "/playground/feed/local/save", {"text": MAPPING, "base_hash": first["hash"]}, csrf)
    assert second.json()["versions"] == ["mapping.yaml.1"]
    assert mapping.with_name("mapping.yaml.1").read_text() == MAPPING_V2
    assert not mapping.with_name("mapping.yaml.2").exists()


def test_a_new_mapping_from_another_feeds_mapping_and_a_sample(tmp_path: Path, sandbox, live_console) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    template = tmp_path / "finnish.yaml"
    template.write_text((ROOT / "config/mappings/finnish_cp1252.yaml").read_text())
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)},
                                              {"name": "finnish", "inbox": str(inbox) + "2", "mapping": "finnish.yaml"}])
    (tmp_path / "inbox2").mkdir()
    console = live_console(config)
    url = console.url.rstrip("/") + "/playground/feed/local/new"
    sample = (ROOT / "samples/finnish_gzip.csv.gz").read_bytes()
    csrf = {"X-CSRF-Token": token(console)}
    answer = console.http.post(url, data={"template": "finnish"}, files={"sample": ("nightly.csv.gz", sample)},
                               headers=csrf, timeout=60)
    assert answer.status_code == 200 and answer.json()["problems"] == []
    text = answer.json()["text"]
    assert text.splitlines()[:2] == [
        "# yaml-language-server: $schema=../mapping.schema.json",
        "# Started from the mapping finnish.yaml with the layout of the sample nightly.csv.gz: check every field in "
        "the preview.",
    ]
    assert 'name: "local"\nformat: csv\ncsv:\n  encoding: cp1252\n  delimiter: ";"\n  header_line: 3\n' in text
    assert "    pattern: '\\d{18}'     # GSRN: 18 digits" in text  # the template's fields, comments and all
    xml = console.http.post(url, data={"template": "finnish"},
                            files={"sample": ("erp.xml", (ROOT / "samples/erp_export.xml").read_bytes())},
                            headers=csrf, timeout=60)
    assert (xml.status_code, xml.json()["error"]) == (
        422, "the sample is not a CSV export (xml): start from the blank template")
    unknown = console.http.post(url, data={"template": "nope"}, files={"sample": ("s.csv", sample)}, headers=csrf,
                                timeout=60)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "no feed named 'nope'; the feeds are: local, finnish")


def test_an_sftp_feeds_archive_is_previewed_and_diffed_through_its_inbox(
        tmp_path: Path, sandbox, sshd, remote_inbox: Path, live_console, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive is on a real sshd: listed (a symlink and a dotfile there left out), its files
    downloaded to a temporary folder for a preview or a diff and removed afterwards; a server that
    cannot be reached is said to be so, once."""
    archive = remote_inbox / "archive"
    archive.mkdir()
    for n in range(1, 8):  # seven archived files: the diff reads the last five
        path = archive / f"night{n}.csv"
        path.write_bytes(export(f"n{n}", 10))
        os.utime(path, (1_700_000_000 + n * 86_400,) * 2)
    (archive / ".night9.csv").write_bytes(export("hidden", 1))
    (archive / "night8.csv").symlink_to(tmp_path / "mapping.yaml")
    config = write_config(tmp_path, sandbox, [{
        "name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts), "connect_timeout_seconds": 5, "io_timeout_seconds": 10,
        "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1}])
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where the console's copies go
    console = live_console(config)
    assert "7 archived file(s)" in console.get("/playground/").text
    assert '<option value="night7.csv">night7.csv</option>' in console.get("/playground/feed/remote").text
    csrf = token(console)

    answer = post_json(console, "/playground/feed/remote/diff", {"text": MAPPING_V2}, csrf)
    assert answer.status_code == 200, answer.text
    diff = answer.json()
    assert [f["name"] for f in diff["files"]] == ["night7.csv", "night6.csv", "night5.csv", "night4.csv", "night3.csv"]
    assert (diff["compared"], diff["changed"], diff["fields"]) == (50, 50, [{"field": "description", "records": 50}])
    assert (diff["samples"][0]["file"], diff["samples"][0]["after"]["event"]["description"]) == ("night7.csv",
                                                                                                "mapping-v2")
    url = console.url.rstrip("/") + "/playground/feed/remote/preview"
    preview = console.http.post(url, data={"text": MAPPING, "archived": "night3.csv"}, headers={"X-CSRF-Token": csrf},
                                timeout=60)
    assert preview.status_code == 200 and preview.json()["counts"]["valid"] == 10
    assert preview.json()["records"][0]["event"]["id"] == "n3-1"
    link = console.http.post(url, data={"text": MAPPING, "archived": "night8.csv"}, headers={"X-CSRF-Token": csrf},
                             timeout=60)
    assert (link.status_code, link.json()["error"]) == (
        400, f"feed remote: cannot fetch {sshd.url_prefix}{archive}/night8.csv: it is a symbolic link, not a regular "
             "file")
    assert list(temporary.iterdir()) == []  # every copy removed
    assert sorted(p.name for p in archive.iterdir()) == [".night9.csv", *(f"night{n}.csv" for n in range(1, 9))]

    sshd.kill()
    down = post_json(console, "/playground/feed/remote/diff", {"text": MAPPING_V2}, csrf)
    assert down.status_code == 409
    assert down.json()["error"] == (f"feed remote: its archive cannot be read now: {sshd.url_prefix}{remote_inbox}: "
                                    "cannot connect: ConnectionRefusedError: [Errno 111] Connection refused")
    page = console.get("/playground/feed/remote").text
    assert page.count("its archive cannot be read now") == 1
