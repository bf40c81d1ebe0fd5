"""Late files and the notify webhook, with real parts: a real `usageplace-batch run` process,
a real HTTP server on loopback as the webhook, the sandbox as Ropo One, the SQLite journal;
the configuration's errors with their exact text; the webhook client against real answers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.config.service import load_service_config
from batch.config.yamlload import ConfigError
from batch.delivery.notify import Webhook
from tests.fixtures_clock import FakeClock
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceProcess, write_config

SECRET_PATH = "/services/T0SECRET/B0SECRET/xoxSecretWebhookToken42"
URL_ENV = "TEST_NOTIFY_URL"


class WebhookServer:
    """A real HTTP server on loopback that records every POST; answers `statuses` in turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None, location: str | None = None, tls: Any = None) -> None:
        """`tls`: a trustme.CA whose certificate for 127.0.0.1 the server presents (https)."""
        self.posts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.statuses = list(statuses or [])
        self.location = location
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._lock:
                    outer.posts.append({"content_type": self.headers.get("Content-Type"), **json.loads(body)})
                    outer.paths.append(self.path)
                    status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                if outer.location is not None:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1").configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kinds(self) -> list[str]:
        with self._lock:
            return [post["kind"] for post in self.posts]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def metrics(service: ServiceProcess) -> str:
    address = service.text().split("health and metrics at http://")[1].split("/healthz")[0]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        return answer.read().decode()


def past_hhmm(hours: float) -> str:
    """A UTC time of day `hours` ago: its due time passed today and the next is a day away."""
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).strftime("%H:%M")


BAD_RECORDS = (b"id,place,time,status,note\n"
               b"L-1,643007572062450001,2024-02-05 06:30:00,disconnected,fine\n"
               b"L-2,643007572062450002,not a time,disconnected,invalid\n"
               b"L-3,643007572062450003,2024-02-05 06:30:00,exploded,invalid too\n")


# --------------------------------------------------------------------------- the service, end to end


def test_a_late_feed_is_shown_gauged_logged_and_notified_once_and_a_file_with_problems_once(
        tmp_path: Path, sandbox) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    by = past_hhmm(2)
    config = write_config(tmp_path, sandbox, [{
        "name": "nightly", "inbox": str(inbox),
        "expected": {"every": "day", "by": by, "time_zone": "UTC", "grace": "30m"}}],
        notify={"url": "${" + URL_ENV + "}", "timeout_seconds": 5, "attempts": 2},
        metrics={"host": "127.0.0.1", "port": 0}, logging={"level": "DEBUG", "format": "plain"})
    log = tmp_path / "service.log"
    with WebhookServer() as hook:
        env = {APICODE_ENV: sandbox.apicode, URL_ENV: hook.url}
        service = ServiceProcess(config, log, env=env)
        try:
            service.wait_log("feed nightly: late: expected by")
            wait_until(lambda: hook.kinds() == ["late"], 30, what="one late webhook")
            [late] = hook.posts
            due = late["due"]
            assert late["text"].startswith(f"feed nightly: late: expected by {due} (+ grace, deadline ")
            assert late["text"].endswith(f"no file has arrived yet (every day by {by} UTC, grace 30m)")
            assert (late["feed"], late["expected"], late["last_arrival"]) == (
                "nightly", f"every day by {by} UTC, grace 30m", None)
            assert late["content_type"] == "application/json; charset=utf-8"
            assert hook.paths == [SECRET_PATH]
            gauges = metrics(service)
            assert 'usageplace_batch_feed_late{feed="nightly"} 1.0' in gauges
            next_due = datetime.fromisoformat(due.replace("Z", "+00:00")) + timedelta(days=1)
            [shown] = [line.split()[-1] for line in gauges.splitlines()
                       if line.startswith('usageplace_batch_feed_next_due_timestamp_seconds{feed="nightly"}')]
            assert float(shown) == next_due.timestamp()

            # status: the table says it in red words, --json carries the contract's "expected"
            table = cli("status", "--config", str(config), env=env)
            assert table.returncode == 0, table.stderr
            [row] = [line for line in table.stdout.splitlines() if line.startswith("│ nightly ")]
            assert f"│ late: expected by {due} (every day" in row, table.stdout  # red on a terminal
            rows = [json.loads(line) for line in cli("status", "--config", str(config), "--json", env=env)
                    .stdout.splitlines()]
            [feed_row] = [row for row in rows if row["kind"] == "feed"]
            assert feed_row["expected"] == {"description": f"every day by {by} UTC, grace 30m", "due": due,
                                            "next_due": next_due.strftime("%Y-%m-%dT%H:%M:%SZ"), "late": True,
                                            "last_arrival": None}

            # a file with invalid records: the lateness ends (a line says so), one webhook for the file
            (inbox / ".bad.csv.tmp").write_bytes(BAD_RECORDS)
            os.rename(inbox / ".bad.csv.tmp", inbox / "bad.csv")
            service.wait_log("the feed is no longer late")
            wait_until(lambda: hook.kinds() == ["late", "problems"], 30, what="one webhook for the file")
            problems = hook.posts[1]
            assert problems["text"] == "feed nightly: bad.csv: done with 2 invalid (1 accepted, 2 invalid)"
            assert (problems["file"], problems["counts"]["invalid"], problems["state"]) == ("bad.csv", 2, "done")
            wait_until(lambda: 'usageplace_batch_feed_late{feed="nightly"} 0.0' in metrics(service), 30,
                       what="the gauge back at 0")
            table = cli("status", "--config", str(config), env=env)
            [row] = [line for line in table.stdout.splitlines() if line.startswith("│ nightly ")]
            assert f"│ ok: next due {next_due.strftime('%Y-%m-%dT%H:%M:%SZ')} (every" in row, table.stdout
        finally:
            service.signal(15)
            assert service.wait() == 0, service.text()

        # a restart: nothing is said or sent twice
        service = ServiceProcess(config, log, env=env)
        try:
            (inbox / ".again.csv.tmp").write_bytes(BAD_RECORDS.replace(b"L-", b"M-"))
            os.rename(inbox / ".again.csv.tmp", inbox / "again.csv")
            wait_until(lambda: hook.kinds() == ["late", "problems", "problems"], 30, what="the new file's webhook")
            assert hook.posts[2]["file"] == "again.csv"
        finally:
            service.signal(15)
            assert service.wait() == 0, service.text()
        assert hook.kinds() == ["late", "problems", "problems"]

    text = log.read_text()
    assert text.count("feed nightly: late: expected by") == 1, text
    assert text.count("notified the webhook") == 3
    # the URL is a secret: never in the log (DEBUG, urllib3's lines included), status, or the journal
    secret = SECRET_PATH.rsplit("/", 1)[1]
    status_text = cli("status", "--config", str(config), "--json", env=env).stdout
    journal_bytes = b"".join(path.read_bytes() for path in (tmp_path / "var").glob("journal.sqlite3*"))
    assert secret not in text and secret not in status_text and secret.encode() not in journal_bytes
    with sqlite3.connect(tmp_path / "var" / "journal.sqlite3") as db:
        rows = db.execute("SELECT feed, kind, state, attempts FROM notifications ORDER BY created_at").fetchall()
    assert rows == [("nightly", "late", "sent", 1), ("nightly", "problems", "sent", 1),
                    ("nightly", "problems", "sent", 1)]


def test_a_restart_while_late_says_it_once_more_as_info_and_sends_nothing(tmp_path: Path, sandbox) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    hour, minute = past_hhmm(3).split(":")
    config = write_config(tmp_path, sandbox, [{
        "name": "nightly", "inbox": str(inbox),
        "expected": {"cron": f"{int(minute)} {int(hour)} * * *", "time_zone": "UTC"}}],
        notify={"url_file": "webhook-url"})
    url_file = tmp_path / "webhook-url"
    log = tmp_path / "service.log"
    with WebhookServer(statuses=[500, 500, 500]) as hook:
        url_file.write_text(hook.url + "\n")
        url_file.chmod(0o600)
        env = {APICODE_ENV: sandbox.apicode}
        service = ServiceProcess(config, log, env=env)
        try:
            # the webhook fails: every attempt is logged as one line, without the URL; the feed goes on
            service.wait_log("the late notification was not sent after 3 attempt(s): HTTP 500; the feed goes on",
                             timeout=60)
        finally:
            service.signal(15)
            assert service.wait() == 0
        service = ServiceProcess(config, log, env=env)
        try:
            service.wait_log("feed nightly: still late for the due time")
        finally:
            service.signal(15)
            assert service.wait() == 0
        assert hook.kinds() == ["late", "late", "late"]  # the three attempts of the one notification
    text = log.read_text()
    assert text.count("feed nightly: late: expected by") == 1
    assert SECRET_PATH.rsplit("/", 1)[1] not in text


# --------------------------------------------------------------------------- the webhook client


def test_the_webhook_retries_server_errors_with_backoff_on_the_clock(fake_clock: FakeClock) -> None:
    with WebhookServer(statuses=[503, 500]) as hook:
        result = Webhook(hook.url, timeout=5, attempts=3, clock=fake_clock.clock).post({"text": "hello"})
    assert (result.ok, result.attempts, result.problem) == (True, 3, None)
    assert fake_clock.sleeps == [1.0, 2.0]  # batch.backoff: 1 s doubling
    assert [post["text"] for post in hook.posts] == ["hello"] * 3


@pytest.mark.parametrize("status, location, attempts, problem", [
    (404, None, 1, "HTTP 404"),
    (302, "http://127.0.0.1:9/elsewhere", 1, "HTTP 302: a redirect, not followed"),
    (500, None, 2, "HTTP 500"),
    (429, None, 2, "HTTP 429"),
])
def test_the_webhook_never_follows_redirects_and_gives_up(fake_clock: FakeClock, status: int, location: str | None,
                                                         attempts: int, problem: str) -> None:
    with WebhookServer(statuses=[status] * 5, location=location) as hook:
        result = Webhook(hook.url, timeout=5, attempts=2, clock=fake_clock.clock).post({"text": "x"})
    assert (result.ok, result.attempts, result.problem) == (False, attempts, problem)
    assert len(hook.posts) == attempts
    assert SECRET_PATH not in repr(result)


def test_the_webhook_verifies_tls(fake_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trustme

    ca = trustme.CA()
    with WebhookServer(tls=ca) as hook:
        refused = Webhook(hook.url, timeout=5, attempts=2, clock=fake_clock.clock).post({"text": "x"})
        assert (refused.ok, refused.attempts, hook.posts) == (False, 2, [])
        assert refused.problem == "TLS: the webhook's certificate is not trusted (or the TLS handshake failed)"
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # a private CA, trusted as requests is told
        trusted = Webhook(hook.url, timeout=5, attempts=1, clock=fake_clock.clock).post({"text": "over TLS"})
        assert (trusted.ok, [post["text"] for post in hook.posts]) == (True, ["over TLS"])


def test_the_webhook_unreachable_is_said_without_the_url(fake_clock: FakeClock) -> None:
    with WebhookServer() as hook:
        url = hook.url
    result = Webhook(url, timeout=2, attempts=2, clock=fake_clock.clock).post({"text": "x"})
    assert (result.ok, result.attempts, result.problem) == (False, 2, "cannot connect to the webhook")


# --------------------------------------------------------------------------- configuration errors


def feed_config(tmp_path: Path, sandbox, expected: Any = None, **top: Any) -> Path:
    feed: dict[str, Any] = {"name": "nightly", "inbox": str(tmp_path / "inbox")}
    if expected is not None:
        feed["expected"] = expected
    return write_config(tmp_path, sandbox, [feed], **top)


def problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_service_config(config)
    return [str(problem).replace(str(config), "S") for problem in caught.value.problems]


@pytest.mark.parametrize("expected, problem", [
    ({"cron": "0 25 * * *", "time_zone": "UTC"},
     "S:23:5: feeds[0].expected.cron: the hour field (2nd): 25 is out of range 0-23"),
    ({"cron": "0 3 * *", "time_zone": "UTC"},
     "S:23:5: feeds[0].expected.cron: expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ({"cron": "0 0 30 2 *", "time_zone": "UTC"},
     "S:23:5: feeds[0].expected.cron: this schedule never matches a day (no month has that day)"),
    ({"every": "day", "by": "3am", "time_zone": "Europe/Helsinki"},
     'S:24:5: feeds[0].expected.by: expected a local time HH:MM, e.g. "03:00"'),
    ({"every": "day", "by": "25:00", "time_zone": "Europe/Helsinki"},
     "S:24:5: feeds[0].expected.by: 25:00 is not a time of day (00:00 to 23:59)"),
    ({"every": "day", "by": "03:00", "time_zone": "Europe/Helsinkii"},
     "S:25:5: feeds[0].expected.time_zone: unknown time zone: give an IANA name such as Europe/Helsinki or UTC"),
    ({"every": "daily", "by": "03:00", "time_zone": "UTC"},
     "S:23:5: feeds[0].expected.every: expected day, weekdays or a list of days such as [mon, thu]"),
    ({"every": ["mon", "fry"], "by": "03:00", "time_zone": "UTC"},
     "S:23:5: feeds[0].expected.every: day 2 of the list is not a day: write mon, tue, wed, thu, fri, sat, sun"),
    ({"every": "day", "by": "03:00", "time_zone": "UTC", "grace": "half an hour"},
     "S:26:5: feeds[0].expected.grace: expected a duration such as 30m, 2h, 1h30m or 45s"),
    ({"every": "day", "by": "03:00", "time_zone": "UTC", "grace": "8d"},
     "S:26:5: feeds[0].expected.grace: at most 7 days"),
    ({"every": "day", "time_zone": "UTC"},
     'S:22:3: feeds[0].expected: give every (day, weekdays or [mon, ...]) and by ("HH:MM"), or cron'),
    ({"cron": "0 3 * * *", "every": "day", "by": "03:00", "time_zone": "UTC"},
     "S:22:3: feeds[0].expected: give either cron or every + by, not both"),
    ({"every": "day", "by": "03:00"},
     "S:22:3: feeds[0].expected.time_zone: required key is missing"),
    ({"every": "day", "by": "03:00", "time_zone": "UTC", "at": "03:00"},
     "S:26:5: feeds[0].expected.at: unknown key (allowed here: by, cron, every, grace, time_zone)"),
])
def test_expected_errors_name_the_line_key_and_problem(tmp_path: Path, sandbox, expected: Any, problem: str) -> None:
    assert problems(feed_config(tmp_path, sandbox, expected)) == [problem]


def test_a_literal_webhook_url_is_refused_and_never_echoed(tmp_path: Path, sandbox) -> None:
    config = feed_config(tmp_path, sandbox, notify={"url": "https://hooks.example.com" + SECRET_PATH})
    found = problems(config)
    assert found == ["S:23:3: notify.url: write url as ${ENV_NAME} (an environment variable) or use url_file; "
                     "a literal secret is not allowed in configuration"]
    assert problems(feed_config(tmp_path, sandbox, notify={"url": "${X}", "url_file": "f"})) == [
        "S:22:1: notify: give the webhook's URL as url: ${ENV_NAME} or url_file: FILE (one of them)"]


@pytest.mark.parametrize("url, problem", [
    ("http://hooks.example.com" + SECRET_PATH, "plain http is allowed only for a loopback address (127.0.0.1, "
                                               "[::1]); use https"),
    ("ftp://hooks.example.com" + SECRET_PATH, "expected an https:// URL"),
    ("https://user:pw@hooks.example.com" + SECRET_PATH, "a user or password in the URL is not accepted"),
    ("https://hooks.example.com/a b" + SECRET_PATH, "the URL holds a space, control, backslash or non-ASCII character"),
])
def test_validate_config_checks_the_resolved_url_without_showing_it(tmp_path: Path, sandbox, url: str,
                                                                    problem: str) -> None:
    config = feed_config(tmp_path, sandbox, {"every": "weekdays", "by": "03:00", "time_zone": "Europe/Helsinki"},
                         notify={"url": "${" + URL_ENV + "}"})
    proc = cli("validate-config", "--config", str(config), env={APICODE_ENV: sandbox.apicode, URL_ENV: url})
    assert proc.returncode == 1
    assert f"{config}: notify.url: {problem} (the URL is not shown: it is a secret)" in proc.stderr.splitlines(), \
        proc.stderr
    assert "T0SECRET" not in proc.stderr + proc.stdout


def test_a_missing_url_variable_and_file(tmp_path: Path, sandbox) -> None:
    config = feed_config(tmp_path, sandbox, notify={"url": "${" + URL_ENV + "}"})
    proc = cli("validate-config", "--config", str(config), env={APICODE_ENV: sandbox.apicode})
    assert f"{config}: notify.url: environment variable {URL_ENV} is not set" in proc.stderr.splitlines(), proc.stderr
    data = yaml.safe_load(config.read_text())
    data["feeds"][0]["notify"] = {"url_file": "nowhere"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert problems(config) == ["S:23:5: feeds[0].notify.url_file: the file it names is not a readable file (the "
                                "path is not shown: it may be a secret typed here)"]


def test_a_good_schedule_and_a_feed_notify_override(tmp_path: Path, sandbox) -> None:
    config = feed_config(tmp_path, sandbox, {"cron": "0 3 * * 1-5", "time_zone": "Europe/Helsinki", "grace": "1h30m"},
                         notify={"url": "${SERVICE_URL}"})
    data = yaml.safe_load(config.read_text())
    data["feeds"][0]["notify"] = {"url": "${FEED_URL}", "when": ["late"]}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_service_config(config).config
    feed = loaded.feeds[0]
    assert feed.expected is not None and feed.expected.grace_period == timedelta(hours=1, minutes=30)
    assert feed.expected.schedule.description == "cron 0 3 * * 1-5 Europe/Helsinki"
    assert loaded.notify_of(feed) == feed.notify and feed.notify is not None and feed.notify.when == ["late"]


# --------------------------------------------------------------------------- the journal's notifications


@pytest.fixture(params=["sqlite", "postgresql"])
def two_instances(request: pytest.FixtureRequest, tmp_path: Path):
    """Two journal objects on one journal (two instances), SQLite and PostgreSQL, on a clock the test sets."""
    from batch.store.journal import Journal, JournalStore
    from batch.store.journal_pg import PgJournal

    now = [datetime(2026, 1, 10, 2, 0, tzinfo=timezone.utc)]

    def open_journal() -> JournalStore:
        if request.param == "sqlite":
            return Journal(tmp_path / "journal.sqlite", clock=lambda: now[0])
        database = request.getfixturevalue("pg_database")
        return PgJournal(database.uri, password=database.password, timeout_s=5, clock=lambda: now[0])

    with open_journal() as first, open_journal() as second:
        yield first, second, now


def test_a_notification_is_recorded_once_across_instances_and_a_stale_one_is_found(two_instances) -> None:
    first, second, now = two_instances
    assert first.claim_notification("nightly", "late", "2026-01-10T01:00:00Z", "feed nightly: late", "pending")
    assert not second.claim_notification("nightly", "late", "2026-01-10T01:00:00Z", "feed nightly: late", "pending")
    assert second.claim_notification("nightly", "problems", "7", "feed nightly: f.csv: done with 1 invalid", "pending")
    first.finish_notification("nightly", "problems", "7", "sent", 2, None)
    assert second.stale_notifications("nightly", now[0]) == []  # not older than now
    now[0] += timedelta(minutes=11)
    assert second.stale_notifications("nightly", now[0] - timedelta(minutes=10)) == [
        ("late", "2026-01-10T01:00:00Z", "feed nightly: late")]
    first.finish_notification("nightly", "late", "2026-01-10T01:00:00Z", "failed", 3, "HTTP 500")
    assert first.stale_notifications("nightly", now[0]) == []


def test_prune_forgets_notifications_said_before_the_cutoff_and_keeps_pending_ones(two_instances) -> None:
    first, second, now = two_instances
    first.claim_notification("nightly", "late", "old", "feed nightly: late", "pending")
    first.finish_notification("nightly", "late", "old", "sent", 1, None)
    first.claim_notification("nightly", "late", "unsent", "feed nightly: late", "pending")  # its sender died
    now[0] += timedelta(days=100)
    first.claim_notification("nightly", "problems", "recent", "feed nightly: f.csv", "off")
    assert first.prune(now[0] - timedelta(days=90)) == (0, 0)
    # a pruned one may be claimed again; the pending and the recent ones are still there
    assert second.claim_notification("nightly", "late", "old", "feed nightly: late", "pending")
    assert not second.claim_notification("nightly", "late", "unsent", "feed nightly: late", "pending")
    assert not second.claim_notification("nightly", "problems", "recent", "feed nightly: f.csv", "off")


def test_the_shipped_service_yaml_declares_schedules_that_load() -> None:
    from batch.config.service import ExpectedSettings

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "service.yaml").read_text())
    described = [ExpectedSettings.model_validate(feed["expected"]).schedule.description
                 for feed in shipped["feeds"] if "expected" in feed]
    assert described == ["every day by 03:00 Europe/Helsinki", "cron 0 6 * * 1-5 Europe/Helsinki"]


def test_the_service_models_json_schema_describes_expected_and_notify() -> None:
    from batch.config.service import ServiceConfig

    schema = ServiceConfig.model_json_schema(by_alias=True)
    expected, notify = schema["$defs"]["ExpectedSettings"], schema["$defs"]["NotifySettings"]
    assert list(expected["properties"]) == ["every", "by", "cron", "time_zone", "grace"]
    assert expected["required"] == ["time_zone"]
    assert list(notify["properties"]) == ["url", "url_file", "when", "timeout_seconds", "attempts"]
    assert all(field.get("description") for field in [*expected["properties"].values(), *notify["properties"].values()])
    assert "notify" in schema["properties"] and "expected" in schema["$defs"]["FeedSettings"]["properties"]
