"""The console and the playground against hostile requests and files, over real HTTP against a
live console on loopback: a body too big to read, a flood of wrong passwords, a session replayed
after its logout, odd names in a mapping's versions, a journal that cannot be read. Each test
failed before the fix it comes with."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from batch.console.security import MAX_BODY_BYTES, BodyLimit, LoginThrottle
from batch.store.journal import Journal, NewEvent, Result
from tests.fixtures_browser import LiveConsole
from tests.service_helpers import export, write_config

META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture
def feed_config(tmp_path: Path, sandbox) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    (inbox / "archive" / "night1.csv").write_bytes(export("n1", 10))
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])


def token(console: LiveConsole, path: str = "/playground/") -> str:
    found = META_CSRF.search(console.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def raw_request(console: LiveConsole, head: str, timeout: float = 20.0) -> bytes:
    """Sends `head` (request line and headers, no body) and returns what the console answers."""
    address = urlsplit(console.url)
    with socket.create_connection((str(address.hostname), int(address.port or 80)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"</html>"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def cookie_header(console: LiveConsole) -> str:
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in console.http.cookies)


# --------------------------------------------------------------------------- request bodies


def test_a_2_gb_upload_is_refused_before_its_body_is_read(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    csrf = token(console)
    for extra in (f"X-CSRF-Token: {csrf}\r\n", ""):  # the script's header, or the token in the form
        answer = raw_request(console, (
            "POST /playground/feed/local/preview HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: {cookie_header(console)}\r\n{extra}"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 2000000000\r\n\r\n"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert (f"the request is bigger than {MAX_BODY_BYTES:,} bytes (a sample file: upload a part of the export)"
                ". Nothing was done.").encode() in body


def test_a_content_length_that_is_no_number_is_refused(feed_config: Path, live_console) -> None:
    console = live_console(feed_config)
    answer = raw_request(console, "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n")
    # uvicorn's parser refuses it itself (400) before the app: either way nothing is read
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]


def test_a_body_that_streams_past_the_limit_is_cut_when_it_passes_it() -> None:
    """Chunked (no Content-Length): the route reading it is stopped at the limit, answered 413."""
    read: list[int] = []
    answered: list[tuple[int, str]] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    async def refuse(scope: Any, receive: Any, send: Any, status: int, why: str) -> None:
        answered.append((status, why))

    chunks = iter([{"type": "http.request", "body": b"x" * 400, "more_body": True}] * 100)

    async def receive() -> dict[str, Any]:
        return next(chunks)

    async def send(message: Any) -> None:
        raise AssertionError("the route answered")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"transfer-encoding", b"chunked")]}
    # in a thread of its own: the browser tests' Playwright keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, BodyLimit(route, refuse, limits=lambda path: 1000)(scope, receive, send)).result()
    assert read == [400, 400]  # the third chunk passes the limit: the route never gets it
    assert answered == [(413, "the request is bigger than 1,000 bytes")]


# --------------------------------------------------------------------------- the login


PASSWORD_ENV = "CONSOLE_HOSTILE_PASSWORD"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def login_config(tmp_path: Path, sandbox, monkeypatch) -> Path:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                        console={"password": "${" + PASSWORD_ENV + "}"})


def test_repeated_wrong_passwords_pause_the_logins_of_that_address(login_config: Path, live_console) -> None:
    console = live_console(login_config)
    for _ in range(5):
        assert console.login("guess").status_code == 401
    refused = console.login(PASSWORD)  # even the right one: not looked at
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert ("Too many wrong passwords from 127.0.0.1: logging in from there is refused for a minute after the last "
            "one. Wait, then try again.") in refused.text
    assert console.get("/").status_code == 303  # not logged in


def test_the_pause_ends_and_a_right_password_clears_the_address() -> None:
    now = [1000.0]
    throttle = LoginThrottle(attempts=3, window=900, pause=60, clients=2, clock=lambda: now[0])
    assert [throttle.start("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]  # three wrong ones
    assert throttle.start("10.0.0.1") == 60.0
    assert throttle.start("10.0.0.2") == 0.0  # another address is not paused
    now[0] += 60
    assert throttle.start("10.0.0.1") == 0.0  # the pause is over: one more try
    throttle.succeeded("10.0.0.1")
    assert [throttle.start("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    throttle.start("10.0.0.3")
    throttle.start("10.0.0.4")
    assert throttle.start("10.0.0.1") == 0.0  # forgotten: at most two addresses are remembered


def test_whoever_has_no_login_cannot_make_the_console_read_a_big_body(login_config: Path, live_console) -> None:
    console = live_console(login_config)
    csrf = console.csrf("/login")  # anyone who reaches the console gets a session and its token
    for path, status, text in (
            ("/login", 413, b"the request is bigger than 65,536 bytes. Nothing was done."),
            ("/playground/feed/local/preview", 401, b"<h1>401: log in first</h1>")):
        answer = raw_request(console, (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie_header(console)}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000000\r\n\r\n"
            f"csrf={csrf}&"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), (path, head)
        assert text in body, path
    assert console.login(PASSWORD).status_code == 303  # a login is a small form


def test_a_copy_of_the_session_cookie_is_no_login_after_the_logout(login_config: Path, live_console) -> None:
    console = live_console(login_config)
    first = console.get("/login").cookies  # the session before the login
    assert console.login(PASSWORD).status_code == 303
    logged_in = dict(console.http.cookies)
    assert logged_in != dict(first)  # a new session at the login (no fixation)
    assert console.get("/").status_code == 200
    assert console.post("/logout", {"csrf": console.csrf("/")}).status_code == 303
    thief = console.other_session()
    thief.http.cookies.update(logged_in)  # the cookie as it was before the logout
    answer = thief.get("/")
    assert (answer.status_code, answer.headers["location"]) == (303, "/login?next=%2F")
    thief.http.cookies.update(first)
    assert thief.get("/").status_code == 303


# --------------------------------------------------------------------------- the playground


def test_a_diff_preview_or_sample_detection_while_another_runs_is_refused_not_queued(feed_config: Path, live_console) -> None:
    from batch.console import playground

    console = live_console(feed_config)
    csrf = token(console)
    text = (feed_config.parent / "mapping.yaml").read_text()
    assert playground._RUNS.acquire(blocking=False)  # a diff of someone else runs
    try:
        diff = console.http.post(console.url + "playground/feed/local/diff", json={"text": text},
                                 headers={"X-CSRF-Token": csrf}, timeout=20)
        preview = console.http.post(console.url + "playground/feed/local/preview",
                                    files={"text": (None, text), "archived": (None, "night1.csv")},
                                    headers={"X-CSRF-Token": csrf}, timeout=20)
        new = console.http.post(console.url + "playground/feed/local/new", files={"sample": ("a.csv", b"id\n1\n")},
                                headers={"X-CSRF-Token": csrf}, timeout=20)
        for answer in (diff, preview, new):
            assert answer.status_code == 429
            assert answer.json() == {"error": "a preview or a diff is running already (one at a time on this "
                                              "console): try again when it has finished"}
    finally:
        playground._RUNS.release()
    answer = console.http.post(console.url + "playground/feed/local/diff", json={"text": text},
                               headers={"X-CSRF-Token": csrf}, timeout=20)
    assert answer.status_code == 200 and answer.json()["compared"] == 10


# --------------------------------------------------------------------------- hostile names and values


EVIL = "<img src=x onerror=alert(1)>\"'</script>"


def test_hostile_names_and_values_are_text_on_every_page(feed_config: Path, live_console) -> None:
    journal_path = feed_config.parent / "var" / "journal.sqlite3"
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    with Journal(journal_path) as journal:
        file_id = journal.begin_file(EVIL + ".csv", "a" * 64, 1, "local").file.id
        journal.record_events(file_id, [
            NewEvent.invalid(2, "status: " + EVIL, {"id": EVIL, "usageplacecode": EVIL},
                             [{"field": EVIL, "source": EVIL, "value": EVIL, "message": EVIL}]),
            NewEvent.valid(3, {"id": EVIL + "2", "usageplacecode": EVIL})])
        journal.record_results([Result(file_id, 3, "rejected", 400, message=EVIL, title=EVIL, detail=EVIL)])
        journal.finish_file(file_id, "done")
    console = live_console(feed_config)
    escaped = "&lt;img src=x onerror=alert(1)&gt;&#34;&#39;&lt;/script&gt;"
    for path, shown in (("/", 2), (f"/files/{file_id}", 12), (f"/files/{file_id}?outcome=rejected", 6),
                        (f"/files/{file_id}?q={quote(EVIL)}", 14), (f"/files/{file_id}?outcome={quote(EVIL)}", 0)):
        page = console.get(path)
        assert "<img" not in page.text and "</script>'" not in page.text, path
        assert page.text.count(escaped) == shown, path
        assert page.text.count("&lt;img src=x onerror=alert(1)&gt;") >= 1, path
        assert page.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'; ")


def test_download_names_with_quotes_line_ends_and_non_ascii(feed_config: Path, live_console) -> None:
    outbox = feed_config.parent / "inbox" / "outbox"
    outbox.mkdir()
    for name in ('a"b.csv', "a\r\nSet-Cookie: x=1.csv", "ä€ ;x.csv", "n" * 250 + ".csv", "c%22d.csv"):
        (outbox / name).write_text("x")
    console = live_console(feed_config)
    for name, disposition in (
            ('a"b.csv', "attachment; filename*=utf-8''a%22b.csv"),
            ("ä€ ;x.csv", "attachment; filename*=utf-8''%C3%A4%E2%82%AC%20%3Bx.csv"),
            ("n" * 250 + ".csv", 'attachment; filename="' + "n" * 250 + '.csv"'),
            ("c%22d.csv", "attachment; filename*=utf-8''c%2522d.csv")):
        answer = console.get("/feeds/local/outbox/" + quote(name, safe=""))
        assert (answer.status_code, answer.headers["content-disposition"], answer.text) == (200, disposition, "x")
    refused = console.get("/feeds/local/outbox/" + quote("a\r\nSet-Cookie: x=1.csv", safe=""))
    assert refused.status_code == 404 and "x=1" not in refused.headers.get("set-cookie", "")
    assert '<p class="error-message">Not Found</p>' in refused.text  # no route takes a line end in a name


def test_a_hard_link_fifo_or_unicode_dots_are_no_download_nor_preview(feed_config: Path, live_console) -> None:
    inbox = feed_config.parent / "inbox"
    secret = feed_config.parent / "secret.csv"
    secret.write_text("id,place,time,status,note\ns3cr3t,1,2,3,4\n")
    outbox = inbox / "outbox"
    outbox.mkdir()
    os.link(secret, outbox / "linked.csv")
    os.link(secret, inbox / "archive" / "linked.csv")
    os.mkfifo(outbox / "pipe.csv")
    console = live_console(feed_config)
    answers = {path: console.get(path) for path in (
        "/feeds/local/outbox/linked.csv", "/feeds/local/outbox/pipe.csv",
        "/feeds/local/outbox/%E2%80%A5/secret.csv", "/feeds/local/outbox/%EF%BC%8E%EF%BC%8E/secret.csv",
        "/feeds/local/outbox/%252e%252e/secret.csv", "/feeds/local/outbox/..%5Csecret.csv")}
    assert {path: (answer.status_code, re.findall(r'class="error-message">([^<]*)<', answer.text))
            for path, answer in answers.items()} == {
        "/feeds/local/outbox/linked.csv": (404, [
            "&#39;linked.csv&#39;: a file with other hard links (it may be a file of another folder)"]),
        "/feeds/local/outbox/pipe.csv": (404, ["&#39;pipe.csv&#39;: not a regular file"]),
        "/feeds/local/outbox/%E2%80%A5/secret.csv": (404, ["&#39;\u2025/secret.csv&#39;: no such file"]),
        "/feeds/local/outbox/%EF%BC%8E%EF%BC%8E/secret.csv": (404, ["&#39;\uff0e\uff0e/secret.csv&#39;: no such file"]),
        "/feeds/local/outbox/%252e%252e/secret.csv": (404, ["&#39;%2e%2e/secret.csv&#39;: no such file"]),
        "/feeds/local/outbox/..%5Csecret.csv": (404, ["&#39;..\\\\secret.csv&#39;: not a file name"]),
    }
    csrf = token(console)
    preview = console.http.post(console.url + "playground/feed/local/preview",
                                files={"text": (None, (feed_config.parent / "mapping.yaml").read_text()),
                                       "archived": (None, "linked.csv")}, headers={"X-CSRF-Token": csrf}, timeout=20)
    assert (preview.status_code, preview.json()) == (400, {"error": (
        f"feed local: cannot fetch {inbox / 'archive' / 'linked.csv'}: it has other hard links (it may be a file of "
        "another folder)")})
    assert "s3cr3t" not in preview.text


def test_the_login_goes_back_to_no_other_site_whatever_the_spelling() -> None:
    from batch.console.app import safe_next

    for target in ("//evil.example", "/\\evil.example", "\\\\evil.example", "https://evil.example", "https:evil.example",
                   "/\t/evil.example", " //evil.example", "\n//evil.example", "///evil.example", "javascript:alert(1)",
                   "evil.example", "", None):
        assert safe_next(target) == "/", target
    for target in ("/files/1?outcome=invalid", "/%2F%2Fevil.example", "/.//evil.example"):
        assert safe_next(target) == target  # a path of this console (the browser stays on this host)


def test_a_login_sent_as_json_or_with_a_method_override_is_refused(login_config: Path, live_console) -> None:
    console = live_console(login_config)
    csrf = console.csrf("/login")
    as_json = console.http.post(console.url + "login", json={"csrf": csrf, "name": "A", "password": PASSWORD},
                                allow_redirects=False, timeout=20)
    assert as_json.status_code == 403
    assert "the form has no security token (CSRF). Nothing was done: reload the page and try again." in as_json.text
    override = console.http.post(console.url + "logout?_method=GET", headers={"X-HTTP-Method-Override": "GET"},
                                 allow_redirects=False, timeout=20)
    assert override.status_code == 401  # still a POST: refused (no login; without a token the CSRF check would)
    assert console.get("/").status_code == 303


# --------------------------------------------------------------------------- odd requests: a clear answer, never a 500


def test_odd_numbers_and_json_get_a_clear_answer_not_an_internal_error(feed_config: Path, live_console) -> None:
    journal_path = feed_config.parent / "var" / "journal.sqlite3"
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    Journal(journal_path).close()
    console = live_console(feed_config)
    huge = "9" * 23
    page = console.get(f"/files/{huge}")
    assert page.status_code == 404
    assert f'<p class="error-message">no file #{huge} in the journal</p>' in page.text
    csrf = console.csrf("/")
    retry = console.post(f"/files/{huge}/retry", {"csrf": csrf})
    assert retry.status_code == 404 and f"no file #{huge} in the journal" in retry.text
    for body, error in ((b"[" * 100_000 + b"]" * 100_000, "the request's JSON is nested too deeply"),
                        (b"\xff\xfe", "the request is not JSON"), (b'{"text": 5}', "the request has no 'text' text")):
        answer = console.http.post(console.url + "playground/feed/local/validate", data=body, timeout=20,
                                   headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
        assert (answer.status_code, answer.json()) == (400, {"error": error})
    big_text = console.http.post(console.url + "playground/feed/local/preview", files={"text": (None, "x" * 2_000_000)},
                                 headers={"X-CSRF-Token": csrf}, timeout=20)
    assert (big_text.status_code, big_text.json()) == (400, {"error": "Part exceeded maximum size of 1024KB."})


def test_a_journal_that_is_no_database_is_a_clear_page_and_read_again_once_it_is_back(feed_config: Path,
                                                                                       live_console) -> None:
    journal_path = feed_config.parent / "var" / "journal.sqlite3"
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    journal_path.write_bytes(b"not a database " * 1000)
    console = live_console(feed_config)
    for path in ("/", "/files/1"):
        page = console.get(path)
        assert page.status_code == 503, path
        assert "<h1>The journal cannot be read</h1>" in page.text
        # the journal's own words since 44ff874 (JournalUnusable when it is opened)
        assert (f'<p class="error-message">{journal_path}: the journal cannot be read: file is not a database (a '
                "damaged file, or another file at its path): restore it from a backup, or move it away to start a "
                "new journal</p>") in page.text
        assert "Traceback" not in page.text and "please report it" not in page.text
    journal_path.unlink()
    with Journal(journal_path) as journal:
        journal.begin_file("a.csv", "a" * 64, 1, "local")
    assert console.get("/files/1").status_code == 200


def test_a_stopped_postgresql_journal_is_a_clear_page_and_the_console_recovers(tmp_path: Path, sandbox, pg_database,
                                                                               live_console) -> None:
    from batch.store.journal_pg import PgJournal

    with PgJournal(pg_database.uri, password=pg_database.password, timeout_s=5) as journal:
        journal.begin_file("a.csv", "a" * 64, 1, "local")
    password_file = tmp_path / "pg-password"
    password_file.write_text(pg_database.password)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}], journal=pg_database.uri,
                          journal_password_file=str(password_file))
    console = live_console(config)
    assert console.get("/files/1").status_code == 200
    pg_database.cluster.stop("fast")
    try:
        for path in ("/", "/files/1"):
            console.http.close()  # a new connection for each page: a 503 may close the kept-alive one
            page = console.get(path)
            assert page.status_code == 503, path
            assert "<h1>The journal cannot be read</h1>" in page.text
            assert pg_database.password not in page.text and "Traceback" not in page.text
    finally:
        pg_database.cluster.start()
    assert console.get("/files/1").status_code == 200


def test_the_editor_shows_hostile_mapping_text_and_archive_names_as_text(feed_config: Path, live_console) -> None:
    mapping = feed_config.parent / "mapping.yaml"
    mapping.write_text(mapping.read_text() + "# </textarea><script>alert(1)</script>\n")
    (feed_config.parent / "inbox" / "archive" / "<img src=x onerror=alert(1)>.csv").write_bytes(export("x", 1))
    console = live_console(feed_config)
    page = console.get("/playground/feed/local")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "# &lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;\n</textarea>" in page.text
    assert ('<option value="&lt;img src=x onerror=alert(1)&gt;.csv">&lt;img src=x onerror=alert(1)&gt;.csv</option>'
            in page.text)
