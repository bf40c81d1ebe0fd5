"""The console's security rules, each in one place: where it may listen without a login, the
login's password (held as a salted hash only), CSRF tokens, and the confinement of downloads to
a feed's folders.

- **Listening**: loopback by default. Any other address needs a login (``console.password`` as
  ``${ENV_NAME}`` or ``console.password_file``); without one the console refuses to start
  (``LoginRequired``). On loopback the login is optional: configured, it is asked there too.
- **Password**: read once at start, kept as ``scrypt(salt, password)`` with a random salt; a
  login attempt is hashed the same way and compared with ``hmac.compare_digest``.
- **Guessing**: ``LoginThrottle`` refuses the logins of a client address for a minute after 5
  wrong passwords within 15 minutes (429), without hashing the attempt.
- **Logout**: ``LiveSessions`` keeps the id of every login in force; a logout ends it, so a copy
  of the cookie taken before the logout no longer logs anyone in.
- **CSRF**: every session (logged in or not) has a random token; every form carries it as the
  field ``csrf`` (or a script sends it as the header ``X-CSRF-Token``, which an upload must);
  ``CsrfMiddleware`` refuses any POST (PUT, PATCH, DELETE) whose token is missing or wrong with
  403 before the route runs, so a route cannot forget the check.
- **Host names**: on loopback only loopback names (and ``console.allowed_hosts``); off loopback
  ``console.allowed_hosts`` is required (``HostsRequired``) and is all it answers to.
- **Client address** (the login throttle's): ``client_address`` believes X-Forwarded-For only
  from a peer in ``console.trusted_proxies``.
- **Request bodies**: ``BodyLimit`` refuses one bigger than its path allows (``body_limit``: 64 MB
  for a sample upload, 8 MB for the playground's other requests, 64 KB for a form such as the
  login) with 413: by its Content-Length before a byte of it is read, else as soon as the bytes
  received pass the limit.
- **Downloads**: ``confined`` takes a folder and a name from a request and returns the file only
  when it is a regular file inside that folder after every symlink is resolved; a name with
  ``..``, an absolute path, a NUL, a backslash or a control character is refused before the
  file system is asked.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pydantic import SecretStr

from batch.config.secrets import resolve_secret
from batch.config.service import ConsoleSettings
from batch.errors import ConfigurationError, InputFileError

CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_CSRF = "csrf"
SESSION_USER = "user"
SESSION_ID = "sid"  # the login's id in LiveSessions
#: The biggest request body the console reads (a sample file uploaded to the playground).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: A playground request that carries a mapping's text (at most a million characters) as JSON.
MAX_JSON_BYTES = 8 * 1024 * 1024
#: A form: the login, the logout, a retry (what anyone who can reach the console may send).
MAX_FORM_BYTES = 64 * 1024
#: The playground's routes that take a sample file.
UPLOAD_ROUTES = ("/preview", "/new")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LoginRequired(ConfigurationError):
    """The console would listen on a non-loopback address without a login."""


def body_limit(path: str) -> int:
    """The biggest request body the console reads for `path`."""
    if path.startswith("/playground/"):
        return MAX_BODY_BYTES if path.endswith(UPLOAD_ROUTES) else MAX_JSON_BYTES
    return MAX_FORM_BYTES


def is_loopback(host: str) -> bool:
    """True for an address (or `localhost`) that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


#: The host names a browser sends to a console on loopback.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


class Password:
    """The console's password as a salted hash; the text itself is not kept."""

    def __init__(self, secret: SecretStr) -> None:
        self._salt = secrets.token_bytes(16)
        self._hash = self._derive(secret.get_secret_value())

    def _derive(self, text: str) -> bytes:
        return hashlib.scrypt(text.encode("utf-8"), salt=self._salt, n=2**14, r=8, p=1, dklen=32)

    def matches(self, attempt: str) -> bool:
        return hmac.compare_digest(self._derive(attempt), self._hash)


def console_password(settings: ConsoleSettings | None) -> Password | None:
    """The configured password, hashed; None when the configuration gives none. Raises
    SecretResolutionError (a variable not set, a file missing) naming the key, never the value."""
    if settings is None:
        return None
    secret = resolve_secret(settings.password, settings.password_file, field="console.password")
    return None if secret is None else Password(secret)


class HostsRequired(ConfigurationError):
    """The console would listen on a non-loopback address without console.allowed_hosts."""


def check_listening(host: str, password: Password | None, config_path: Path,
                    allowed_hosts: tuple[str, ...] | None = None) -> None:
    """Refuse a non-loopback address without a login (LoginRequired) or without the host names
    it answers to (HostsRequired), each in one line."""
    if is_loopback(host):
        return
    if password is None:
        raise LoginRequired(
            f"the console would listen on {host}, which is not loopback, without a login: set "
            f"console.password (${{ENV_NAME}}) or console.password_file in {config_path}, or listen on 127.0.0.1")
    if not allowed_hosts:
        raise HostsRequired(
            f"the console would listen on {host}, which is not loopback, without console.allowed_hosts: list the "
            f"host names browsers reach it by (e.g. [console.example.org]) in {config_path}, or listen on 127.0.0.1")


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """True when the Host header `host` ("name", "name:port", "[v6]:port") is one of `allowed`:
    an entry without a port allows the name on any port, one with a port only that port."""
    host = host.strip().lower()
    name = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    name = name.rstrip(".")
    port = host[len(name):].lstrip(".")
    return bool(name) and (name in allowed or (name + port) in allowed)


def client_address(scope: Scope, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The address of the client that sent the request: the peer's, unless the peer is one of the
    `trusted` reverse proxies; then the last hop of X-Forwarded-For that is not a trusted proxy
    (every header is read, right to left: the left part is whatever the client wrote, only the
    hops that trusted proxies appended are believed). A forged header from any other peer
    changes nothing."""
    peer = scope["client"][0] if scope.get("client") else "unknown"

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    hops = [hop.strip() for key, value in scope["headers"] if key.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client  # not an address: no hop left of it is believed either
        client = hop
        if not is_trusted(hop):
            return hop
    return client


class LoginThrottle:
    """Slows a password guesser down: after `attempts` wrong passwords from one client address
    within `window` seconds, its logins are refused without a look at the password until `pause`
    seconds after its last wrong one. An attempt counts from its start (a burst of parallel
    guesses is cut at `attempts` too); a right password clears the address. Bounded: at most
    `clients` addresses are remembered (the oldest forgotten first)."""

    def __init__(self, attempts: int = 5, window: float = 900.0, pause: float = 60.0, clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window, self.pause, self.clients, self.clock = attempts, window, pause, clients, clock
        self._failures: dict[str, list[float]] = {}  # address -> times of its recent wrong attempts

    def start(self, client: str) -> float:
        """0 when `client` may try a password now (the attempt is counted as wrong until
        ``succeeded``), else how many seconds it must wait."""
        now = self.clock()
        recent = [when for when in self._failures.pop(client, []) if now - when < self.window]
        if len(recent) >= self.attempts and now - recent[-1] < self.pause:
            self._failures[client] = recent
            return self.pause - (now - recent[-1])
        recent.append(now)
        self._failures[client] = recent  # re-inserted: the dict's order is the order of last use
        while len(self._failures) > self.clients:
            del self._failures[next(iter(self._failures))]
        return 0.0

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class LiveSessions:
    """The logins in force: the session cookie is signed, not stored, so a copy of it would stay
    good until it expires even after a logout. Each login gets a random id, kept here until its
    logout (or `seconds`); a cookie whose id is not here is no login."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._started: dict[str, float] = {}

    def open(self) -> str:
        now = self.clock()
        self._started = {sid: when for sid, when in self._started.items() if now - when < self.seconds}
        sid = secrets.token_urlsafe(24)
        self._started[sid] = now
        return sid

    def live(self, sid: object) -> bool:
        when = self._started.get(sid) if isinstance(sid, str) else None
        return when is not None and self.clock() - when < self.seconds

    def close(self, sid: object) -> None:
        if isinstance(sid, str):
            self._started.pop(sid, None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_valid(session_token: object, sent: object) -> bool:
    return (isinstance(session_token, str) and isinstance(sent, str) and bool(session_token)
            and hmac.compare_digest(session_token.encode(), sent.encode()))


class CsrfMiddleware:
    """Refuses every unsafe request (POST ...) without the session's CSRF token, before any route.

    Sits inside the session middleware (it reads ``scope["session"]``). The token comes in the
    ``X-CSRF-Token`` header or as the field ``csrf`` of a url-encoded form; to read the field, the
    body is read here (at most what ``body_limit`` allows: BodyLimit sits outside) and handed on to
    the route unchanged. A multipart upload without the header is refused before its body is read.
    """

    def __init__(self, app: ASGIApp, refuse: Callable[[Scope, Receive, Send, str], Awaitable[None]]) -> None:
        self.app = app
        self.refuse = refuse  # writes the 403 page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        expected = scope.get("session", {}).get(SESSION_CSRF)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if CSRF_HEADER in headers:
            if csrf_valid(expected, headers[CSRF_HEADER]):
                await self.app(scope, receive, send)
            else:
                await self.refuse(scope, receive, send, "the form's security token (CSRF) is wrong")
            return
        if _content_kind(headers) == "multipart/form-data":
            # an upload (a sample, up to 64 MB): its token must come in the header, checked before a
            # byte of the body is read; the token as a form field would need the whole body parsed
            # first (the playground's script sends the header; no form of the console is multipart)
            await self.refuse(scope, receive, send, "an upload must carry its security token (CSRF) in the "
                              "X-CSRF-Token header")
            return
        body = await _read_body(receive)  # a small form: at most body_limit(path), BodyLimit stops it there
        sent = _form_token(headers, body)
        if not csrf_valid(expected, sent):
            why = ("the form has no security token (CSRF)" if sent is None
                   else "the form's security token (CSRF) is wrong or expired")
            await self.refuse(scope, receive, send, why)
            return
        await self.app(scope, _replay(body), send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive


def _content_kind(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _form_token(headers: dict[str, str], body: bytes) -> str | None:
    if _content_kind(headers) == "application/x-www-form-urlencoded":
        values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(CSRF_FIELD)
        return values[0] if values else None
    return None


class _BodyTooBig(Exception):
    """Raised by BodyLimit's receive when a request body passes the limit (caught by BodyLimit)."""


class BodyLimit:
    """Refuses a request body bigger than `limits(path)` with 413, before it is read when its
    Content-Length says so, else as soon as the bytes received pass the limit: whatever a route
    does with the body (a form parsed to a spooled file, JSON read whole), neither memory nor the
    temporary folder holds more than the limit of one request."""

    def __init__(self, app: ASGIApp, refuse: Callable[[Scope, Receive, Send, int, str], Awaitable[None]],
                 limits: Callable[[str], int] = body_limit) -> None:
        self.app, self.refuse, self.limits = app, refuse, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits(scope["path"])
        declared = [value for key, value in scope["headers"] if key.lower() == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not text.isdigit():
                await self.refuse(scope, receive, send, 400, "the request's Content-Length is not one number")
                return
            if int(text) > limit:
                await self.refuse(scope, receive, send, 413, too_big(limit))
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooBig()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooBig:
            if started:
                raise
            await self.refuse(scope, receive, send, 413, too_big(limit))


def too_big(limit: int) -> str:
    hint = " (a sample file: upload a part of the export)" if limit == MAX_BODY_BYTES else ""
    return f"the request is bigger than {limit:,} bytes{hint}"


class Refused(InputFileError):
    """A download name that is not a file of the folder; the message says why (no path shown
    beyond the name asked for)."""


def confined(folder: Path, name: str) -> Path:
    """The regular file `name` directly or below `folder`, after resolving every symlink; Refused
    for a name that leaves the folder (``..``, absolute, a symlink out of it), holds NUL, a
    backslash or a control character, or is not a regular file there (or one with other hard
    links)."""
    if not name or "\x00" in name or "\\" in name or not name.isprintable():
        raise Refused("not a file name")
    if name.startswith("/") or os.path.isabs(name):
        raise Refused("an absolute path is not a file of this folder")
    if any(part in ("..", ".") for part in name.split("/")):
        raise Refused("a name with '..' or '.' is not a file of this folder")
    try:
        base = folder.resolve(strict=True)
        target = (base / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        raise Refused("no such file") from None
    if not target.is_relative_to(base):
        raise Refused("the name leads out of the folder")
    if not target.is_file():
        raise Refused("not a regular file")
    if target.stat().st_nlink > 1:
        # the service renames its files and never links them: another name of the same file may be
        # anywhere on this file system (a secret the console can read), resolving shows nothing
        raise Refused("a file with other hard links (it may be a file of another folder)")
    return target
