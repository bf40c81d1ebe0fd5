"""A local stand-in for Ropo One, for demos and tests: a real HTTP/1.1 server on loopback.

It implements ``POST /rest/token`` and ``POST /rest/usageplace/event`` as the contract
describes them, records what it accepted (deduplicated on the event ``id``) and every
event POST in arrival order, and injects faults on request. It is controlled from Python
(:class:`Sandbox`) or over HTTP under ``/_sandbox/`` (unauthenticated: bind it to
loopback, which is the default):

- ``GET  /_sandbox/state``     counts: accepted, duplicates, arrivals, tokens issued
- ``GET  /_sandbox/accepted``  accepted events, in acceptance order
- ``GET  /_sandbox/arrivals``  every event POST: seq, id, usageplacecode, status, connection
- ``GET  /_sandbox/faults``    the current faults
- ``POST /_sandbox/faults``    replace the faults (JSON object of :class:`Faults` fields)
- ``POST /_sandbox/reset``     forget events, arrivals, tokens and faults
- ``POST /_sandbox/revoke``    invalidate every issued token (the next event POST gets 401)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import random
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from batch.clock import SYSTEM_CLOCK, Clock
from batch.contract import component_schema

log = logging.getLogger(__name__)

DEFAULT_CID = "1000011"
DEFAULT_APICODE = "sandbox-apicode"
DEFAULT_PORT = 8765
PREFIX = "/rest"
TOKEN_PATH = PREFIX + "/token"
EVENT_PATH = PREFIX + "/usageplace/event"
CONTROL_PREFIX = "/_sandbox/"
ACCEPTED_FILE = "accepted.jsonl"
PROBLEM_JSON = "application/problem+json"

# Script entries other than a status code.
DROP = "drop"              # close the connection without an answer; the event is not kept
DROP_AFTER = "drop_after"  # keep the event, then close without an answer (a lost reply)
SLOW = "slow"              # wait slow_ms, then answer normally (beyond a client's timeout)
NORMAL = "ok"              # answer normally
GARBAGE = "garbage"        # answer 200 (201 for a token) with a body that is not JSON
ECHO = "echo"              # answer 500 (400 for a token) echoing the request's body and Authorization


@dataclass
class Faults:
    """What goes wrong, and how often. Script entries are consumed one per event POST."""

    script: Sequence[int | str] = field(default_factory=list)  # statuses or DROP/DROP_AFTER/SLOW/NORMAL/GARBAGE/ECHO
    token_script: Sequence[int | str] = field(default_factory=list)  # the same, for POST /token
    error_rate: float = 0.0        # share of event POSTs answered with error_status
    error_status: int = 503
    error_ids: list[str] = field(default_factory=list)  # answered error_status every time
    drop_rate: float = 0.0         # share of event POSTs dropped without an answer
    latency_ms: float = 0.0        # added to every event POST
    latency_jitter_ms: float = 0.0  # plus a uniform random 0..jitter
    slow_ms: float = 2000.0        # the wait of a SLOW entry
    retry_after: str | None = None  # Retry-After sent with 429 and 503 answers
    reject_ids: list[str] = field(default_factory=list)     # permanent rejection of these ids
    reject_places: list[str] = field(default_factory=list)  # ... and these usageplacecodes
    reject_status: int = 422
    reject_title: str = "Unprocessable event"
    reject_detail: str = "The usage place is not known to Ropo One"
    reject_raw_body: str | None = None  # if set, rejections answer this text/plain body instead
    # An outage: at event arrival ``down_at_arrival`` (1-based) the server stops listening (that
    # event's connection is dropped; new ones are refused) for ``down_seconds``, then listens
    # again on the same port with everything it had accepted (see Sandbox.go_down / come_back).
    down_at_arrival: int | None = None
    down_seconds: float = 15.0
    revoke_at_arrivals: list[int] = field(default_factory=list)  # revoke every token before these (1-based)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault settings: {unknown}")
        return cls(**data)


@dataclass
class Arrival:
    """One event POST as it arrived (any outcome). ``status`` None: dropped unanswered."""

    seq: int
    id: str | None
    usageplacecode: str | None
    status: int | None = None
    started: float = 0.0   # time.monotonic() at arrival
    finished: float = 0.0  # time.monotonic() when answered (or dropped)
    connection: int = 0    # the TCP connection it came on, numbered from 1 (so: which client process sent it)


@dataclass(frozen=True)
class RawRequest:
    """A request as received, for a request hook (e.g. a contract validator in tests)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    host_url: str


RequestHook = Callable[[RawRequest], None]


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(self, status: int, payload: Any = None, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.content_type = content_type
        self.headers = headers or {}


def _problem(status: int, title: str, detail: str | None = None,
             headers: dict[str, str] | None = None) -> _Reply:
    payload = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return _Reply(status, payload, PROBLEM_JSON, headers)


def _garbage(status: int) -> _Reply:
    """A success status with a body no client can parse (a proxy's page, a truncated answer)."""
    return _Reply(status, b'<html><body>\x00\xff{"token": ', "application/json")


def _echo(status: int, body: bytes, authorization: str | None) -> _Reply:
    """An error that repeats the request, secrets and all: a careless server's debug page."""
    text = f"request failed: Authorization: {authorization} body: {body.decode(errors='replace')}"
    return _Reply(status, text, "text/plain")


# ---- body validation --------------------------------------------------------------------

Check = Callable[[Any, str], "str | None"]

_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def compile_schema(schema: dict[str, Any], strict: bool = False) -> Check:
    """A fast checker for the JSON Schema subset the contract uses.

    Supports type (one or a list), properties, required, items. Returns a function
    ``check(value, path) -> first error or None``. ``strict`` also refuses properties
    the schema does not name (the contract itself allows them).
    """
    types = schema.get("type")
    type_names = [types] if isinstance(types, str) else list(types or [])
    tests = [_TYPE_TESTS[t] for t in type_names]
    props = {k: compile_schema(v, strict) for k, v in schema.get("properties", {}).items()}
    required = list(schema.get("required", []))
    items = compile_schema(schema["items"], strict) if "items" in schema else None

    def check(value: Any, path: str) -> str | None:
        if tests and not any(t(value) for t in tests):
            return f"{path or '(body)'}: expected {' or '.join(type_names)}, got {_json_type(value)}"
        if isinstance(value, dict):
            for name in required:
                if name not in value:
                    return f"{path}/{name}: required property missing"
            for name, item in value.items():
                sub = props.get(name)
                if sub is not None:
                    error = sub(item, f"{path}/{name}")
                    if error:
                        return error
                elif strict and props:
                    return f"{path}/{name}: property not in the contract"
        if items is not None and isinstance(value, list):
            for index, item in enumerate(value):
                error = items(item, f"{path}/{index}")
                if error:
                    return error
        return None

    return check


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPE_TESTS[name](value):
            return name
    return type(value).__name__


# ---- tokens ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _TokenIssuer:
    """JWT-shaped tokens (HS256 over a random key) with an expiry, remembered until reset."""

    def __init__(self, ttl: float, exp_claim: bool, clock: Clock = SYSTEM_CLOCK) -> None:
        self.ttl = ttl
        self.exp_claim = exp_claim
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._expiry: dict[str, float] = {}  # token -> clock.wall() expiry
        self._issued: list[str] = []  # every token ever issued, revoked or not (for leak checks)
        self._lock = threading.Lock()
        self._counter = 0

    def issue(self, cid: str) -> str:
        with self._lock:
            self._counter += 1
            now = self._clock.wall()
            claims: dict[str, Any] = {"sub": cid, "iat": int(now), "jti": self._counter}
            if self.exp_claim:
                claims["exp"] = round(now + self.ttl, 3)
            head = _b64(b'{"alg":"HS256","typ":"JWT"}')
            body = _b64(json.dumps(claims, separators=(",", ":")).encode())
            sig = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
            token = f"{head}.{body}.{sig}"
            self._expiry[token] = now + self.ttl
            self._issued.append(token)
            return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and self._clock.wall() < expiry

    def revoke_all(self) -> None:
        with self._lock:
            self._expiry.clear()

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    @property
    def count(self) -> int:
        return self._counter


# ---- the server -------------------------------------------------------------------------------


class Sandbox:
    """A running stand-in for Ropo One. Use as a context manager, or start()/close().

    ``port`` 0 picks a free port. ``token_exp_claim`` False issues tokens without ``exp``,
    so a client cannot foresee expiry and must rely on the 401. ``strict`` refuses event
    properties the contract does not name. ``request_hook`` is called with every API
    request (not ``/_sandbox/``) before it is handled, in the handler's thread.
    ``clock``: what token lifetimes are measured with (tests move a shared one on by hand).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cid: str = DEFAULT_CID,
        apicode: str = DEFAULT_APICODE,
        token_ttl: float = 7200.0,
        token_exp_claim: bool = True,
        strict: bool = False,
        data_dir: Path | str | None = None,
        request_hook: RequestHook | None = None,
        faults: Faults | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.cid = cid
        self.apicode = apicode
        self.strict = strict
        self.request_hook = request_hook
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._tokens = _TokenIssuer(token_ttl, token_exp_claim, clock)
        self._check_event = compile_schema(component_schema("UsageplaceEvent"), strict)
        self._lock = threading.Lock()
        self._faults = faults or Faults()
        self._script: deque[int | str] = deque(self._faults.script)
        self._token_script: deque[int | str] = deque(self._faults.token_script)
        self._accepted: dict[str, dict[str, Any]] = {}
        self._duplicates: Counter[str] = Counter()
        self._arrivals: list[Arrival] = []
        self._random = random.Random()
        self._accepted_file = None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # open for the server's whole life (SIM115): stop() closes it
            self._accepted_file = open(self.data_dir / ACCEPTED_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._tls_context = tls
        self.tls = tls is not None
        self._server = self._listen(host, port)
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.RLock()
        self.outages = 0

    # ---- lifecycle

    def _listen(self, host: str, port: int) -> _Server:
        server = _Server((host, port), _Handler, self)
        if self._tls_context is not None:
            # the handshake runs in each connection's handler thread (see _Handler.setup),
            # so a client that never completes it cannot hold up the accept loop
            server.socket = self._tls_context.wrap_socket(server.socket, server_side=True,
                                                          do_handshake_on_connect=False)
        return server

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{PREFIX}"

    def start(self) -> Sandbox:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.1},
                                            name=f"sandbox:{self.port}", daemon=True)
            self._thread.start()
        return self

    def go_down(self) -> None:
        """An outage: stop listening and cut every open connection (state is kept)."""
        with self._lifecycle:
            if self._thread is None:
                return
            self._server.shutdown()
            self._thread.join()
            self._thread = None
            self._server.server_close()
            self._server.close_connections()
            self.outages += 1

    def come_back(self) -> None:
        """Listen again on the same address after :meth:`go_down`."""
        with self._lifecycle:
            if self._thread is not None:
                return
            host, port = self._server.server_address[:2]
            for _ in range(50):  # the old socket may linger for a moment
                try:
                    self._server = self._listen(str(host), port)
                    break
                except OSError:
                    time.sleep(0.1)
            self._thread = None
        self.start()

    def _outage(self, seconds: float) -> None:
        self.go_down()
        time.sleep(seconds)
        self.come_back()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.close_connections()
        if self._accepted_file is not None:
            self._accepted_file.close()
            self._accepted_file = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- inspection and control

    @property
    def accepted(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._accepted.values())

    @property
    def accepted_ids(self) -> list[str]:
        with self._lock:
            return list(self._accepted)

    @property
    def duplicates(self) -> dict[str, int]:
        """Event id -> how many times it was accepted again after the first time."""
        with self._lock:
            return dict(self._duplicates)

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return [dataclasses.replace(a) for a in self._arrivals]

    @property
    def tokens_issued(self) -> int:
        return self._tokens.count

    def issued_tokens(self) -> list[str]:
        """Every token ever issued, revoked and reset ones too (for tests that look for leaks)."""
        return self._tokens.issued()

    @property
    def faults(self) -> Faults:
        with self._lock:
            return dataclasses.replace(self._faults, script=list(self._script),
                                       token_script=list(self._token_script))

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> None:
        """Replace the faults: ``set_faults(Faults(...))`` or ``set_faults(error_rate=0.1)``
        (keyword changes start from no faults, not from the current ones)."""
        new = faults if faults is not None else Faults(**changes)
        with self._lock:
            self._faults = new
            self._script = deque(new.script)
            self._token_script = deque(new.token_script)

    def revoke_tokens(self) -> None:
        self._tokens.revoke_all()

    def reset(self) -> None:
        with self._lock:
            self._accepted.clear()
            self._duplicates.clear()
            self._arrivals.clear()
            self._faults = Faults()
            self._script.clear()
            self._token_script.clear()
        self._tokens.revoke_all()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "base_url": self.base_url,
                "accepted": len(self._accepted),
                "duplicates": sum(self._duplicates.values()),
                "arrivals": len(self._arrivals),
                "tokens_issued": self._tokens.count,
            }

    # ---- request handling (called from handler threads)

    def handle_token(self, body: bytes) -> _Reply | str:
        with self._lock:
            action = self._next(self._token_script)
        if action == DROP:
            return DROP
        if action == GARBAGE:
            return _garbage(201)
        if action == ECHO:
            return _echo(400, body, None)
        if isinstance(action, int) and action != 201:
            return self._fault_reply(action)
        try:
            payload = json.loads(body)
        except ValueError:
            return _Reply(400, {"errorId": 1, "errorText": "Request body is not valid JSON"})
        if not isinstance(payload, dict) or not isinstance(payload.get("cid"), str) \
                or not isinstance(payload.get("apicode"), str):
            return _Reply(400, {"errorId": 2, "errorText": "cid and apicode are required strings"})
        if payload["cid"] != self.cid or not hmac.compare_digest(
                payload["apicode"].encode(), self.apicode.encode()):
            return _Reply(400, {"errorId": 3, "errorText": "Invalid cid or apicode"})
        return _Reply(201, {"token": self._tokens.issue(payload["cid"])})

    def handle_event(self, handler: _Handler, body: bytes) -> _Reply | str:
        """The reply for an event POST, or DROP to close without one."""
        arrival = Arrival(seq=0, id=None, usageplacecode=None, started=time.monotonic(),
                          connection=handler.connection_number)
        event = _peek_event(body)
        if event is not None:
            arrival.id = _str_or_none(event.get("id"))
            arrival.usageplacecode = _str_or_none(event.get("usageplacecode"))
        with self._lock:
            arrival.seq = len(self._arrivals) + 1
            self._arrivals.append(arrival)
            faults = self._faults
            action = self._next(self._script)
            if arrival.seq in faults.revoke_at_arrivals:
                self._tokens.revoke_all()  # as if every token had expired just now
        if faults.down_at_arrival is not None and arrival.seq == faults.down_at_arrival:
            threading.Thread(target=self._outage, args=(faults.down_seconds,), daemon=True,
                             name="sandbox-outage").start()
            arrival.finished = time.monotonic()
            return DROP
        try:
            reply = self._event_reply(handler, body, event, faults, action)
        except _Reply as early:
            reply = early
        arrival.status = reply.status if isinstance(reply, _Reply) else None
        arrival.finished = time.monotonic()
        return reply

    def _event_reply(self, handler: _Handler, body: bytes, event: dict[str, Any] | None,
                     faults: Faults, action: int | str | None) -> _Reply | str:
        delay = faults.latency_ms + self._random.uniform(0, faults.latency_jitter_ms)
        if action == SLOW:
            delay += faults.slow_ms
        if delay > 0:
            time.sleep(delay / 1000.0)
        if action == DROP or (action is None and faults.drop_rate
                              and self._random.random() < faults.drop_rate):
            return DROP
        if action == GARBAGE:
            return _garbage(200)
        if action == ECHO:
            return _echo(500, body, handler.headers.get("Authorization"))
        if isinstance(action, int):
            return self._fault_reply(action)
        if action is None and faults.error_rate and self._random.random() < faults.error_rate:
            return self._fault_reply(faults.error_status)
        if event is not None and faults.error_ids and event.get("id") in faults.error_ids:
            return self._fault_reply(faults.error_status)
        self._authorise(handler.headers.get("Authorization"))
        event = self._validate(handler.headers.get("Content-Type"), body, event)
        event_id = _str_or_none(event.get("id"))
        place = _str_or_none(event.get("usageplacecode"))
        if (event_id is not None and event_id in faults.reject_ids) or \
                (place is not None and place in faults.reject_places):
            if faults.reject_raw_body is not None:
                return _Reply(faults.reject_status, faults.reject_raw_body, "text/plain")
            return _problem(faults.reject_status, faults.reject_title, faults.reject_detail)
        self._keep(event)
        return DROP_AFTER if action == DROP_AFTER else _Reply(200)

    def _authorise(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _problem(401, "Unauthorized", "A Bearer token is required",
                           {"WWW-Authenticate": "Bearer"})
        if not self._tokens.valid(token.strip()):
            raise _problem(401, "Unauthorized", "The token is expired or invalid",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def _validate(self, content_type: str | None, body: bytes,
                  event: dict[str, Any] | None) -> dict[str, Any]:
        media = (content_type or "").split(";")[0].strip().lower()
        if media != "application/json":
            raise _problem(415, "Unsupported Media Type", "Send the event as application/json")
        if event is None:
            try:
                value = json.loads(body)
            except ValueError as exc:
                raise _problem(400, "Bad Request", f"The body is not valid JSON: {exc}") from None
            error = self._check_event(value, "")
            raise _problem(400, "Bad Request", f"The event does not match UsageplaceEvent: {error}")
        error = self._check_event(event, "")
        if error:
            raise _problem(400, "Bad Request", f"The event does not match UsageplaceEvent: {error}")
        return event

    def _keep(self, event: dict[str, Any]) -> None:
        with self._lock:
            event_id = _str_or_none(event.get("id"))
            key = event_id if event_id is not None else f"(no id #{len(self._accepted) + 1})"
            if key in self._accepted:
                self._duplicates[key] += 1
                return
            self._accepted[key] = event
            if self._accepted_file is not None:
                self._accepted_file.write(json.dumps(event, ensure_ascii=False) + "\n")
                self._accepted_file.flush()

    def _fault_reply(self, status: int) -> _Reply:
        headers = {}
        faults = self._faults
        if status in (429, 503) and faults.retry_after is not None:
            headers["Retry-After"] = faults.retry_after
        title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        return _problem(status, title, "Injected by the sandbox", headers)

    def _next(self, script: deque[int | str]) -> int | str | None:
        try:
            return script.popleft()
        except IndexError:
            return None

    def control(self, method: str, name: str, body: bytes) -> _Reply:
        if method == "GET" and name == "state":
            return _Reply(200, self.state())
        if method == "GET" and name == "accepted":
            return _Reply(200, self.accepted)
        if method == "GET" and name == "arrivals":
            return _Reply(200, [dataclasses.asdict(a) for a in self.arrivals])
        if method == "GET" and name == "faults":
            return _Reply(200, dataclasses.asdict(self.faults))
        if method == "POST" and name == "faults":
            try:
                self.set_faults(Faults.from_json(json.loads(body or b"{}")))
            except (ValueError, TypeError) as exc:
                return _problem(400, "Bad Request", str(exc))
            return _Reply(200, dataclasses.asdict(self.faults))
        if method == "POST" and name == "reset":
            self.reset()
            return _Reply(200, self.state())
        if method == "POST" and name == "revoke":
            self.revoke_tokens()
            return _Reply(200, self.state())
        return _problem(404, "Not Found", f"No control {method} /_sandbox/{name}")


def _peek_event(body: bytes) -> dict[str, Any] | None:
    """The event as a dict if the body is a JSON object, else None (validation says why)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs when many clients connect at once

    def __init__(self, address: tuple[str, int], handler: type, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.connections_accepted = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops the connection or refuses the TLS certificate is no server fault."""
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections so their handler threads end with the server."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RopoOneSandbox/1.0"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one write (flushed after each request)
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # a refused handshake ends here, quietly (handle_error)
        super().setup()
        self.connection_number = next(self.server.connections_accepted)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:  # the connection was cut mid-request (e.g. by an outage): no request
            raise ConnectionError(f"request body cut short: {len(body)} of {length} bytes")
        return body

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        sandbox = self.server.sandbox
        path = self.path.split("?", 1)[0]
        if path.startswith(CONTROL_PREFIX):
            self._send(sandbox.control(method, path[len(CONTROL_PREFIX):], body))
            return
        self._run_hook(method, body)
        if path == TOKEN_PATH and method == "POST":
            reply: _Reply | str = sandbox.handle_token(body)
        elif path == EVENT_PATH and method == "POST":
            reply = sandbox.handle_event(self, body)
        elif path in (TOKEN_PATH, EVENT_PATH):
            reply = _problem(405, "Method Not Allowed", f"{method} {path}", {"Allow": "POST"})
        else:
            reply = _problem(404, "Not Found", f"No API at {path}")
        if isinstance(reply, str):  # DROP / DROP_AFTER: hang up without an answer
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(reply)

    def _run_hook(self, method: str, body: bytes) -> None:
        hook = self.server.sandbox.request_hook
        if hook is None:
            return
        host, port = self.server.server_address[:2]
        request = RawRequest(method=method, path=self.path,
                             headers={k: v for k, v in self.headers.items()},
                             body=body, host_url=f"http://{host!s}:{port}")
        try:
            hook(request)
        except Exception:  # a broken hook must not take the sandbox down
            log.exception("sandbox request hook failed")

    def _send(self, reply: _Reply) -> None:
        if reply.payload is None:
            data = b""
        elif isinstance(reply.payload, bytes):  # sent as is, whatever the content type says
            data = reply.payload
        elif isinstance(reply.payload, str) and not reply.content_type.endswith("json"):
            data = reply.payload.encode("utf-8")
        else:
            data = json.dumps(reply.payload, ensure_ascii=False).encode("utf-8")
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)


# ---- blocking entry point for the CLI --------------------------------------------------------


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: Path | str | None = None,
    *,
    cid: str = DEFAULT_CID,
    apicode: str = DEFAULT_APICODE,
    token_ttl: float = 7200.0,
    faults: Faults | None = None,
    on_ready: Callable[[Sandbox], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Run a sandbox until SIGINT or SIGTERM (call from the main thread).

    ``on_ready(sandbox)`` is called once it listens (e.g. to print ``sandbox.base_url``).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Sandbox(host=host, port=port, data_dir=data_dir, cid=cid, apicode=apicode,
                     token_ttl=token_ttl, faults=faults, tls=tls) as sandbox:
            if on_ready is not None:
                on_ready(sandbox)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None = None) -> None:
    """``python -m batch.sandbox.server [--host H] [--port P] [--data DIR]``: a CLI-less runner."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m batch.sandbox.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.data,
          on_ready=lambda sb: print(sb.base_url, flush=True))


def tls_context(cert_file: Path | str, key_file: Path | str | None = None) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate (chain) and its key (may be in the same file)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return context


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read back the accepted events a sandbox wrote to ``data_dir``."""
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":
    _main()

__all__ = [
    "Arrival", "Faults", "RawRequest", "Sandbox", "serve", "compile_schema", "iter_jsonl", "tls_context",
    "DROP", "DROP_AFTER", "SLOW", "NORMAL", "DEFAULT_CID", "DEFAULT_APICODE",
]
