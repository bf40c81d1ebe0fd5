"""Issue 7: a trickling server must not hold a sender (a total deadline per request), on loopback.

requests' read timeout bounds each socket read, so a server that sends a byte every 50 ms never
trips a 2 s read timeout and holds the request as long as it likes. `Trickler` is such a server:
a raw socket server in a thread that answers the status line, then dribbles the headers (on
/token) or the body (on events) a byte at a time for up to `TRICKLE_SECONDS`, then finishes the
answer; or, to an https client, dribbles its side of the TLS handshake. Before the fix the client waited it out and got a normal answer (the tests failed on
`accepted`); now `api.request_deadline` cuts the connection and the request fails as transient.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from batch.config.api import ApiSettings
from batch.delivery.ropo import RopoClient, SendKind, SendResult

EVENT = {"id": "d-1", "usageplacecode": "643007572062443672", "time": "2024-01-04 10:41:40",
         "status": "disconnected"}
TOKEN_BODY = b'{"token": "trickle-token-0001"}'
TRICKLE_SECONDS = 3.0  # how long the server dribbles before it completes its answer
TRICKLE_GAP = 0.05  # seconds between two bytes: far below the read timeout
DEADLINE = 0.5
CUT = (f"no complete answer within the request deadline of {DEADLINE:g} s (api.request_deadline); "
       "the connection was closed")


@dataclass
class Trickler:
    """Answers /token and events; trickles what `slow` names ('token headers', 'event body')
    for the first `slow_times` requests of that kind, and answers the others at once."""

    slow: str
    slow_times: int = 1
    cut: list[str] = field(default_factory=list)  # what the client hung up on, mid-trickle
    answered: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stop = False
        self._handlers: list[threading.Thread] = []

    def start(self) -> Trickler:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def join(self) -> None:
        """Wait until every connection has ended (the client closed them, or hung up mid-trickle)."""
        for handler in list(self._handlers):
            handler.join(timeout=TRICKLE_SECONDS + 10)

    def _serve(self, conn: socket.socket) -> None:
        if self.slow == "tls handshake":
            with conn:
                conn.recv(1 << 16)  # the ClientHello
                try:  # a TLS record header (handshake, 16 KB), then its body a byte at a time
                    conn.sendall(b"\x16\x03\x03\x40\x00")
                    self._dribble(conn, b"\x02" * int(TRICKLE_SECONDS / TRICKLE_GAP))
                except OSError:
                    self.cut.append(self.slow)
            return
        with conn, conn.makefile("rb") as reader:
            while True:  # keep-alive: one connection may carry the token and then the events
                path = self._read_request(reader)
                if path is None:
                    return
                kind = "token" if path.endswith("/token") else "event"
                with self._lock:
                    slow = self.slow.startswith(kind) and self.slow_times > 0
                    self.slow_times -= slow
                if not self._answer(conn, kind, slow):
                    self.cut.append(self.slow)
                    return
                self.answered.append(kind)

    @staticmethod
    def _read_request(reader) -> str | None:
        request_line = reader.readline()
        if not request_line:
            return None
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        reader.read(length)
        return request_line.split()[1].decode("ascii")

    def _answer(self, conn: socket.socket, kind: str, slow: bool) -> bool:
        body = TOKEN_BODY if kind == "token" else b'{"ok": true}'
        status = b"HTTP/1.1 200 OK\r\n" if kind == "token" else b"HTTP/1.1 201 Created\r\n"
        head = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        if not slow:
            conn.sendall(status + head + b"\r\n" + body)
            return True
        try:
            if self.slow == "token headers":
                conn.sendall(status + b"X-Slow: ")
                self._dribble(conn, b"x" * int(TRICKLE_SECONDS / TRICKLE_GAP))
                conn.sendall(b"\r\n" + head + b"\r\n" + body)
            else:
                padded = body + b" " * int(TRICKLE_SECONDS / TRICKLE_GAP)
                conn.sendall(status + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(padded))
                self._dribble(conn, padded)
        except OSError:
            return False  # the client hung up mid-trickle
        return True

    @staticmethod
    def _dribble(conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(TRICKLE_GAP)  # the hostile server's pace, not a wall-clock assertion


@pytest.fixture
def trickler(request) -> Iterator[Trickler]:
    server = Trickler(request.param).start()
    yield server
    server.stop()


def client_for(server: Trickler, scheme: str = "http", **settings: float) -> RopoClient:
    api = ApiSettings(**{"base_url": f"{scheme}://127.0.0.1:{server.port}/rest", "cid": "1000011",
                         "apicode": "${TRICKLE_APICODE}", "connect_timeout": 2.0, "read_timeout": 2.0, **settings})
    return RopoClient(api, env={"TRICKLE_APICODE": "trickle-apicode-0123456789"})


@pytest.mark.parametrize("trickler", ["token headers"], indirect=True)
def test_a_token_endpoint_that_trickles_its_headers_is_cut_at_the_request_deadline(trickler):
    with client_for(trickler, request_deadline=DEADLINE) as client:
        assert client.send_event(EVENT) == SendResult(SendKind.TRANSIENT, None, f"token request failed: {CUT}")
        # the next attempt gets a fresh connection and goes through
        assert client.send_event(EVENT) == SendResult(SendKind.ACCEPTED, 201)
    trickler.join()
    assert trickler.cut == ["token headers"]
    assert trickler.answered == ["token", "event"]


@pytest.mark.parametrize("trickler", ["event body"], indirect=True)
def test_an_event_answer_that_trickles_its_body_is_cut_at_the_request_deadline(trickler):
    with client_for(trickler, request_deadline=DEADLINE) as client:
        result = client.send_event(EVENT)  # on the token request's kept-alive connection
        assert result == SendResult(SendKind.TRANSIENT, None, CUT)
        assert not result.final  # retried like a timeout
        assert client.send_event(EVENT) == SendResult(SendKind.ACCEPTED, 201)
    trickler.join()
    assert trickler.cut == ["event body"]
    assert trickler.answered == ["token", "event"]


@pytest.mark.parametrize("trickler", ["tls handshake"], indirect=True)
def test_a_server_that_trickles_the_tls_handshake_is_cut_at_the_request_deadline(trickler):
    """CPython bounds a whole TLS handshake by the socket timeout (here the connect timeout, set
    longer than the trickle); the request deadline cuts it sooner, as it cuts every phase."""
    with client_for(trickler, "https", connect_timeout=TRICKLE_SECONDS + 5, request_deadline=DEADLINE) as client:
        assert client.send_event(EVENT) == SendResult(SendKind.TRANSIENT, None, f"token request failed: {CUT}")
    trickler.join()
    assert trickler.cut == ["tls handshake"]


@pytest.mark.parametrize("trickler", ["event body"], indirect=True)
def test_a_deadline_longer_than_the_trickle_lets_a_slow_answer_through(trickler):
    with client_for(trickler, request_deadline=60.0) as client:
        assert client.send_event(EVENT) == SendResult(SendKind.ACCEPTED, 201)
    trickler.join()
    assert trickler.cut == []


def test_the_request_deadline_has_a_default_and_must_be_positive():
    settings = ApiSettings(base_url="https://ropo24.fi/rest", cid="1", apicode="${A}")
    assert settings.request_deadline == 120.0
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValidationError) as info:
            ApiSettings(base_url="https://ropo24.fi/rest", cid="1", apicode="${A}", request_deadline=bad)
        assert info.value.errors()[0]["loc"] == ("request_deadline",)
