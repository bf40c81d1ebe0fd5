"""The API client against hostile servers (issue 7: D2, D9, D15), on loopback only.

A tiny purpose-built HTTP server (``Hostile``, http.server in a thread) answers what the
sandbox never would: redirects on /token and on events, rejections that echo credentials.
A second one (``Landing``), on another loopback address, records whatever reaches it: a
redirect that was followed, or cid and apicode posted where they do not belong.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batch.config.api import ApiSettings
from batch.delivery.ropo import AuthError, OffOriginRequest, RopoClient, SendKind, endpoint_urls
from batch.delivery.scheduler import DeliverySettings, Outgoing, State, deliver
from batch.pipeline import FileOutcome
from batch.redact import redact_and_cut, redact_text
from batch.service.logs import RedactingFilter
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_pipeline import (
    journal_events,
    make_rows,
    read_receipt,
    write_feed,
    write_workspace,
)

APICODE = "hostile-test-apicode-0123456789"
CID = "1000011"
EVENT = {"id": "h-1", "usageplacecode": "643007572062443672", "time": "2024-01-04 10:41:40",
         "status": "disconnected"}
# A JWT this process never fetched (header {"alg":"HS256","typ":"JWT"}).
FOREIGN_JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzb21lb25lLWVsc2UifQ."
               "c2lnbmF0dXJlLW9mLWFub3RoZXItc2VydmVy")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Hostile:
    """An HTTP server on 127.0.0.x whose answers the test sets per endpoint."""

    host: str = "127.0.0.1"
    token: Reply = (200, {"Content-Type": "application/json"}, b'{"token": "hostile-token-0001"}')
    event: Reply = (201, {}, b"")
    other: Reply = (200, {"Content-Type": "application/json"}, b'{"ok": true}')
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> Hostile:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                if self.path.endswith("/token"):
                    status, headers, payload = owner.token
                elif self.path.endswith("/usageplace/event"):
                    status, headers, payload = owner.event
                else:
                    status, headers, payload = owner.other
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/rest"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Hostile]]:
    started: list[Hostile] = []

    def make(**kwargs: Any) -> Hostile:
        server = Hostile(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()


@pytest.fixture
def client_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RopoClient]]:
    clients: list[RopoClient] = []

    def make(server: Hostile, **overrides: Any) -> RopoClient:
        monkeypatch.setenv(APICODE_ENV, APICODE)
        values: dict[str, Any] = {"base_url": server.base_url, "cid": CID, "apicode": "${" + APICODE_ENV + "}",
                                  "connect_timeout": 2.0, "read_timeout": 2.0, **overrides}
        client = RopoClient(ApiSettings(**values))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


REDIRECTS = [(300, "Multiple Choices"), (301, "Moved Permanently"), (302, "Found"), (303, "See Other"),
             (304, "Not Modified"), (305, "Use Proxy"), (307, "Temporary Redirect"),
             (308, "Permanent Redirect")]


def redirect_to(landing: Hostile, status: int) -> Reply:
    location = f"http://user:pw-{APICODE}@{landing.host}:{landing.url.rsplit(':', 1)[1]}/landing?token=abc123&x=1"
    return status, {"Location": location}, b""


# --------------------------------------------------------------------------- D2


@pytest.mark.parametrize(("status", "reason"), REDIRECTS)
def test_D2_redirect_on_event_post_is_not_followed(servers: Callable[..., Hostile],
                                                   client_for: Callable[..., RopoClient],
                                                   status: int, reason: str) -> None:
    landing = servers(host="127.0.0.2")
    api = servers()
    api.event = redirect_to(landing, status)
    result = client_for(api).send_event(EVENT)
    port = landing.url.rsplit(":", 1)[1]
    assert (result.kind, result.status) == (SendKind.AUTH, status)  # halts delivery, never accepted
    assert result.message == (f"redirect refused: HTTP {status} {reason} to http://***@127.0.0.2:{port}"
                              f"/landing?token=***&x=1; the event was not accepted (check api.base_url)")
    assert landing.seen == []
    assert [(s.method, s.path) for s in api.seen] == [("POST", "/rest/token"), ("POST", "/rest/usageplace/event")]


def test_D2_redirected_events_stay_pending_and_the_file_halts(
        servers: Callable[..., Hostile], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        process_file: Callable[..., FileOutcome]) -> None:
    # A redirect is about api.base_url, not about one event: no event may be rejected for
    # good (nor accepted); the file stops like refused credentials and resumes once fixed.
    landing = servers(host="127.0.0.2")
    api = servers()
    api.event = redirect_to(landing, 302)
    monkeypatch.setenv(APICODE_ENV, APICODE)
    ws = write_workspace(tmp_path / "ws", api.base_url, CID)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", make_rows(4, 2)))
    assert outcome.status == "auth_failed"
    assert outcome.message is not None and "redirect refused: HTTP 302 Found to http://***@127.0.0.2:" in outcome.message
    assert not outcome.counts.get("accepted") and not outcome.counts.get("rejected")
    assert {e.state for e in journal_events(ws)} == {"pending"}
    assert len([s for s in api.seen if s.path.endswith("/event")]) <= 2  # at most one per place in flight
    assert landing.seen == []


def test_D2_a_long_location_is_cut_after_redaction(servers: Callable[..., Hostile],
                                                   client_for: Callable[..., RopoClient]) -> None:
    api = servers()
    api.event = (302, {"Location": "http://127.0.0.1:1/" + "a" * 110 + APICODE + "\x1b[2J" + "b" * 500}, b"")
    message = client_for(api).send_event(EVENT).message
    assert APICODE[:6] not in message and "\x1b" not in message and "b" * 50 not in message
    assert message.startswith("redirect refused: HTTP 302 Found to http://127.0.0.1:1/" + "a" * 100)
    assert "...; the event was not accepted" in message


@pytest.mark.parametrize(("status", "reason"), REDIRECTS)
def test_D2_redirect_on_token_is_a_configuration_error(servers: Callable[..., Hostile],
                                                       client_for: Callable[..., RopoClient],
                                                       status: int, reason: str) -> None:
    landing = servers(host="127.0.0.2")
    api = servers()
    api.token = redirect_to(landing, status)
    client = client_for(api)
    with pytest.raises(AuthError) as refused:
        client.authenticate()
    port = landing.url.rsplit(":", 1)[1]
    assert str(refused.value) == (
        f"the token request was redirected (HTTP {status} {reason} to http://***@127.0.0.2:{port}"
        f"/landing?token=***&x=1); the redirect was refused and cid and apicode were sent nowhere else: "
        f"check api.base_url ({api.base_url})")
    result = client.send_event(EVENT)  # delivery halts like refused credentials
    assert (result.kind, result.status) == (SendKind.AUTH, status)
    assert landing.seen == []


def test_D2_a_redirect_halts_delivery_like_refused_credentials(servers: Callable[..., Hostile],
                                                               client_for: Callable[..., RopoClient]) -> None:
    landing = servers(host="127.0.0.2")
    api = servers()
    api.token = redirect_to(landing, 307)
    outcomes: list[Any] = []
    items = [Outgoing(n, f"P{n % 3}", {**EVENT, "id": f"h-{n}"}) for n in range(6)]
    report = deliver(items, client_for(api), DeliverySettings(max_in_flight=2, backoff_base=0.01),
                     lambda item, outcome: outcomes.append(outcome))
    assert {o.state for o in outcomes} == {State.PENDING}
    assert report.auth_error is not None and "the redirect was refused" in report.auth_error


# --------------------------------------------------------------------------- D9


def test_D9_307_on_token_never_reposts_cid_and_apicode(servers: Callable[..., Hostile],
                                                       client_for: Callable[..., RopoClient]) -> None:
    landing = servers(host="127.0.0.2")  # "another host" answering with a token of its own
    landing.other = (200, {"Content-Type": "application/json"}, b'{"token": "token-from-elsewhere"}')
    api = servers()
    api.token = (307, {"Location": f"{landing.url}/steal/token2"}, b"")
    client = client_for(api)
    assert client.send_event(EVENT).kind is SendKind.AUTH
    assert landing.seen == []
    token_posts = [s for s in api.seen if s.path == "/rest/token"]
    assert len(token_posts) == 1 and not [s for s in api.seen if s.path.endswith("/event")]


def test_D9_every_request_is_pinned_to_the_configured_origin(servers: Callable[..., Hostile],
                                                             client_for: Callable[..., RopoClient]) -> None:
    api = servers()
    client = client_for(api)
    token_url, event_url = endpoint_urls(client.settings)
    assert (token_url, event_url) == (f"{api.base_url}/token", f"{api.base_url}/usageplace/event")
    port = int(api.url.rsplit(":", 1)[1])
    assert (client.settings.origin.scheme, client.settings.origin.host, client.settings.origin.port) == (
        "http", "127.0.0.1", port)
    for elsewhere in (f"http://127.0.0.2:{port}/rest/token", f"https://127.0.0.1:{port}/rest/token",
                      "http://127.0.0.1:1/rest/token", f"http://u:{APICODE}@127.0.0.3/rest/token"):
        with pytest.raises(OffOriginRequest) as refused:
            client._post(elsewhere, json={"cid": CID, "apicode": APICODE})
        assert APICODE not in str(refused.value)
        assert str(refused.value).endswith(f"it is not the configured origin {api.base_url}")
    assert api.seen == []
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED  # the configured origin works


def test_D9_netrc_credentials_never_replace_the_bearer_token(servers: Callable[..., Hostile],
                                                             client_for: Callable[..., RopoClient],
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    api = servers()
    assert client_for(api).send_event(EVENT).kind is SendKind.ACCEPTED
    token_post, event_post = api.seen
    assert "Authorization" not in token_post.headers
    assert event_post.headers["Authorization"] == "Bearer hostile-token-0001"


# --------------------------------------------------------------------------- D15


def test_D15_an_echoed_foreign_bearer_token_is_redacted_in_journal_and_receipt(
        servers: Callable[..., Hostile], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        process_file: Callable[..., FileOutcome]) -> None:
    api = servers()
    echo = (f"bad request; you sent Authorization: Bearer {FOREIGN_JWT} and "
            f"Authorization: Basic dXNlcjpwYXNzd29yZA== with body cid=1000011&apicode={APICODE}").encode()
    api.event = (400, {"Content-Type": "text/plain"}, echo)
    monkeypatch.setenv(APICODE_ENV, APICODE)
    ws = write_workspace(tmp_path / "ws", api.base_url, CID)
    outcome = process_file(ws, write_feed(ws.inbox / "a.csv", make_rows(2, 2)))
    assert outcome.counts["rejected"] == 2
    expected = ("HTTP 400 Bad Request: bad request; you sent Authorization: Bearer *** and "
                "Authorization: Basic *** with body cid=1000011&apicode=***")
    assert {r["message"] for r in read_receipt(ws.receipt("a.csv"))} == {expected}
    assert {e.message for e in journal_events(ws)} == {expected}
    everything = ws.receipt("a.csv").read_bytes() + ws.journal.read_bytes()
    for secret in (FOREIGN_JWT, FOREIGN_JWT[:20], "dXNlcjpwYXNzd29yZA", APICODE[:10]):
        assert secret.encode() not in everything


@pytest.mark.parametrize("cut_at", [5, 10, 20, len(APICODE) - 1])
def test_D15_a_secret_straddling_the_cut_leaves_nothing_behind(servers: Callable[..., Hostile],
                                                               client_for: Callable[..., RopoClient],
                                                               cut_at: int) -> None:
    api = servers()
    # the apicode starts `cut_at` characters before the 300th character of the message
    body = ("x" * (300 - cut_at - len("?")) + " " + APICODE + " tail").encode()
    api.event = (422, {"Content-Type": "text/plain"}, body)
    message = client_for(api).send_event(EVENT).message
    assert APICODE[:cut_at] not in message
    assert " ***" in message  # redacted first (*** is shorter): the cut comes after it


@pytest.mark.parametrize("where", ["title", "detail"])
def test_D15_problem_details_are_redacted_then_cut(servers: Callable[..., Hostile],
                                                   client_for: Callable[..., RopoClient], where: str) -> None:
    api = servers()
    problem = {"title": "Invalid", "detail": "see", where: "y" * 290 + f" Bearer {FOREIGN_JWT} " + "z" * 400}
    api.event = (422, {"Content-Type": "application/problem+json"}, json.dumps(problem).encode())
    message = client_for(api).send_event(EVENT).message
    assert FOREIGN_JWT[:8] not in message and "z" * 20 not in message
    assert message.startswith("HTTP 422: ") and message.endswith("...")


def test_D15_token_error_text_is_redacted(servers: Callable[..., Hostile],
                                         client_for: Callable[..., RopoClient]) -> None:
    api = servers()
    api.token = (400, {"Content-Type": "application/json"},
                 json.dumps({"errorId": 7, "errorText": f"no cid for {{\"cid\":\"1\",\"apicode\":\"{APICODE}\"}} "
                                                         f"token={FOREIGN_JWT}"}).encode())
    with pytest.raises(AuthError) as refused:
        client_for(api).authenticate()
    assert str(refused.value) == ('Ropo One refused the credentials for cid 1000011 (HTTP 400: errorId 7: '
                                  'no cid for {"cid":"1","apicode":"***"} token=***); check cid and apicode')


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
    ("authorization: basic dXNlcjpwYXNz", "authorization: basic ***"),
    (f"GET /x?access_token={FOREIGN_JWT}&a=1", "GET /x?access_token=***&a=1"),
    ("POST apicode=s3cr3t-value&cid=1", "POST apicode=***&cid=1"),
    ("form apicode%3Ds3cr3t%2Bvalue%26cid", "form apicode%3D***%26cid"),
    ('{"apicode": "s3cr3t", "cid": "1"}', '{"apicode": "***", "cid": "1"}'),
    ('"{\\"apicode\\":\\"s3cr3t\\"}"', '"{\\"apicode\\":\\"***\\"}"'),
    ("the known one: k%2Fnown+value and k/nown value and k\\/nown", "the known one: *** and *** and k\\/nown"),
    ("json escaped: \\\"q\\\"uoted-secret", "json escaped: ***"),
])
def test_D15_one_redaction_for_every_output(text: str, expected: str) -> None:
    known = ["k/nown value", '"q"uoted-secret']
    assert redact_text(text, known) == expected
    log_filter = RedactingFilter()
    log_filter.add_secrets(known)
    assert log_filter.redact(text) == expected  # the log filter is the same function


def test_D15_redact_and_cut_redacts_first() -> None:
    secret = "0123456789abcdef"
    text = "a" * 295 + secret
    assert redact_and_cut(text, 300, [secret]) == "a" * 295 + "***"
    assert redact_and_cut("b" * 400, 300) == "b" * 300 + "..."
