"""The security review's leftovers in the console, over real HTTP against a live console where
there is a request to make: an upload's CSRF token, the checks as you type, the retry problems
kept."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from batch.console import playground
from batch.console.retries import Retries
from tests.fixtures_browser import LiveConsole
from tests.service_helpers import write_config


def token(console: LiveConsole, path: str = "/playground/") -> str:
    return console.csrf(path)


def head_only(console: LiveConsole, head: str) -> bytes:
    """Sends a request's head (and no body) and returns what the console answers: an answer at all
    shows that nothing waited for the body."""
    address = urlsplit(console.url)
    with socket.create_connection((str(address.hostname), int(address.port or 80)), timeout=20) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while not answer.rstrip().endswith(b"</html>"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.fixture
def open_config(tmp_path: Path, sandbox) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])


def test_an_upload_without_the_csrf_header_is_refused_before_its_body_is_read(open_config: Path,
                                                                               live_console) -> None:
    console = live_console(open_config)
    csrf = token(console)
    # 60 MB announced, none sent: an answer at all shows that nothing waited for the body
    answer = head_only(console, (
        "POST /playground/feed/local/preview HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Cookie: " + "; ".join(f"{c.name}={c.value}" for c in console.http.cookies) + "\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 60000000\r\n\r\n"
        f"--xyz\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert (b"an upload must carry its security token (CSRF) in the X-CSRF-Token header. Nothing was done: reload "
            b"the page and try again.") in body
    text = (open_config.parent / "mapping.yaml").read_text()
    with_header = console.post("/playground/feed/local/preview", {"text": text}, headers={"X-CSRF-Token": csrf},
                               files={"sample": ("s.csv", b"")})
    assert with_header.status_code != 403


def test_checks_as_you_type_run_one_at_a_time_per_session_and_a_few_in_all(open_config: Path,
                                                                           live_console) -> None:
    console = live_console(open_config)
    text = (open_config.parent / "mapping.yaml").read_text()
    csrf = token(console, "/playground/feed/local")

    def check(who: LiveConsole, key: str) -> requests.Response:
        return who.post("/playground/feed/local/validate", json={"text": text}, headers={"X-CSRF-Token": key})

    assert check(console, csrf).json()["ok"] is True
    assert playground._CHECKS.enter(csrf) is None  # a check of this session runs (a slow one)
    try:
        busy = check(console, csrf)
        assert (busy.status_code, busy.json()) == (429, {"error": (
            "a check of this session's mapping is running already: its answer comes first, then check again")})
        other = console.other_session()
        other_csrf = token(other, "/playground/feed/local")
        assert check(other, other_csrf).status_code == 200  # another session is not held up
        others = [f"session-{number}" for number in range(playground._CHECKS.most - 1)]
        assert [playground._CHECKS.enter(one) for one in others] == [None] * len(others)
        full = check(other, other_csrf)
        assert (full.status_code, full.json()) == (429, {
            "error": "the console is checking other mappings now: try again in a moment"})
        for one in others:
            playground._CHECKS.leave(one)
    finally:
        playground._CHECKS.leave(csrf)
    assert check(console, csrf).status_code == 200


def test_the_retry_problems_kept_are_bounded() -> None:
    retries = Retries(max_problems=3)
    for request_id in range(1, 6):
        retries.note_problem(request_id, f"problem {request_id}")
    assert retries.problems == {3: "problem 3", 4: "problem 4", 5: "problem 5"}
    retries.note_problem(3, "again")  # noted again: the newest
    retries.note_problem(6, "problem 6")
    assert retries.problems == {5: "problem 5", 3: "again", 6: "problem 6"}


def test_an_sftp_feeds_original_is_downloaded_from_its_server_through_a_copy_that_is_removed(
        tmp_path: Path, sandbox, sshd, remote_inbox: Path, live_console, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import tempfile

    from batch.store.journal import Journal
    from tests.service_helpers import export

    archive = remote_inbox / "archive"
    archive.mkdir()
    data = export("n1", 10)
    (archive / "night1.csv").write_bytes(b"another file of the same name, archived before")
    (archive / "night1.20261129T010203Z.csv").write_bytes(data)  # stamped: archive/ held a night1.csv already
    config = write_config(tmp_path, sandbox, [{
        "name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts), "connect_timeout_seconds": 5, "io_timeout_seconds": 10,
        "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1}])
    (tmp_path / "var").mkdir()
    with Journal(tmp_path / "var" / "journal.sqlite3") as journal:
        found = journal.begin_file("night1.csv", hashlib.sha256(data).hexdigest(), len(data), "remote").file.id
        journal.finish_file(found, "done")
        missing = journal.begin_file("gone.csv", "b" * 64, 5, "remote").file.id
        journal.finish_file(missing, "done")
        huge = journal.begin_file("huge.csv", "c" * 64, 300_000_000, "remote").file.id
        journal.finish_file(huge, "done")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where the console's copies go
    console = live_console(config)
    page = console.get(f"/files/{found}").text
    assert f'<a href="/files/{found}/original" download>Original</a>' in page
    assert "(from its server's archive; the receipts of an SFTP feed are on its server)" in page
    answer = console.get(f"/files/{found}/original")
    assert answer.status_code == 200
    assert answer.content == data
    assert answer.headers["content-disposition"] == 'attachment; filename="night1.20261129T010203Z.csv"'
    assert (answer.headers["content-type"], answer.headers["cache-control"]) == ("text/csv; charset=utf-8", "no-store")
    assert list(temporary.iterdir()) == []  # the copy is gone once it was sent
    gone = console.get(f"/files/{missing}/original")
    assert gone.status_code == 404
    assert "gone.csv is not in the feed&#39;s archive/ (moved, or not finished)" in gone.text
    too_big = console.get(f"/files/{huge}/original")
    assert too_big.status_code == 404
    assert ("feed remote: huge.csv is 300,000,000 bytes, larger than the limit of 268,435,456 bytes the console "
            "downloads from an archive") in too_big.text
    from batch.console import pages

    assert pages._FETCHES.acquire(blocking=False) and pages._FETCHES.acquire(blocking=False)  # two downloads run
    try:
        busy = console.get(f"/files/{found}/original")
        assert busy.status_code == 429
        assert ("two originals are being downloaded from SFTP servers already (at most two at a time on this "
                "console): try again when one has finished") in busy.text
    finally:
        pages._FETCHES.release()
        pages._FETCHES.release()
    sshd.kill()
    down = console.get(f"/files/{found}/original")
    assert down.status_code == 503
    assert (f"feed remote: its archive cannot be read now: {sshd.url_prefix}{remote_inbox}: cannot connect: "
            "ConnectionRefusedError: [Errno 111] Connection refused") in down.text
    assert list(temporary.iterdir()) == []
    assert sorted(p.name for p in archive.iterdir()) == ["night1.20261129T010203Z.csv", "night1.csv"]
