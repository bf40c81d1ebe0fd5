"""The Ropo One API client: a token, one event per call, and what the answer means.

One ``requests.Session`` with a connection pool sized for the delivery concurrency is
shared by all threads. The token is cached under a lock, renewed ``token_renew_margin``
seconds before it expires (the JWT ``exp`` claim when readable, else the configured
lifetime), and renewed once more when an event POST answers 401.

Secrets (the API code, tokens) never appear in log records, exception texts or
``SendResult`` messages: every text that may echo server output goes through
:meth:`RopoClient.redact` (the log filter's patterns plus the known secret values) and is
cut only after that (:func:`batch.redact.redact_and_cut`). Of an answer's body at most
``BODY_LIMIT`` bytes are ever read: a body without end costs neither memory nor time.

Every request (token or event) has a total deadline, ``api.request_deadline``, from its
connection (a proxy's CONNECT and the TLS handshake included) to the last byte of its answer:
the read timeout only bounds each socket read, so a server that trickles a byte every few
seconds would hold a sender for ever. A watchdog thread shuts the request's socket down when
its deadline passes; the read waiting on it ends at once, and the request fails like a timeout
(transient).

Every request goes to the configured origin and nowhere else:

- both URLs are built from the one parse of ``base_url`` (urllib3's, the parser that
  connects), and each prepared request's scheme, host and port are checked against it
  before it is sent;
- a redirect is never followed (the session cannot follow one, and every send says so):
  a 3xx on an event or on ``/token`` halts delivery like refused credentials, naming the
  status and the Location (the events stay pending) — cid and apicode are posted to the
  configured ``/token`` only;
- the session ignores the environment (``trust_env = False``): no ``~/.netrc`` credentials
  replace the Authorization header. Two environment settings are still applied, on
  purpose and explicitly: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (a proxy only relays
  to the same origin) and, when ``api.ca_bundle`` is not set, ``REQUESTS_CA_BUNDLE`` (or
  ``CURL_CA_BUNDLE``) as the trusted CAs.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader
from urllib3.util import parse_url
from urllib3.util.retry import Retry

from batch.clock import SYSTEM_CLOCK, Clock
from batch.config.api import DEFAULT_RETRY_STATUSES, ApiSettings, Credentials
from batch.errors import AccessRefused, TransientError
from batch.redact import REDACTED, redact_and_cut, redact_text
from batch.transform.jsonenc import event_bytes

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 300  # characters of a server's text (problem, body, error, Location) kept in a message
LOCATION_LIMIT = 120  # characters of a redirect's Location kept in a message
BODY_LIMIT = 1 << 16  # bytes of an answer's body read (a token, a problem document, an error page)
_USER_AGENT = "usageplace-batch"

def endpoint_urls(settings: ApiSettings) -> tuple[str, str]:
    """The token and event URLs, built from the configured origin (``ApiSettings.origin``, the
    one parse of ``base_url`` that the configuration checked) and its path."""
    path = (parse_url(settings.base_url).path or "").rstrip("/")
    base = settings.origin.url + path
    return f"{base}/token", f"{base}/usageplace/event"


class OffOriginRequest(AccessRefused):
    """A request was about to leave the configured origin (a bug or a hostile URL): not sent."""


class _RequestDeadline(requests.Timeout):
    """A request outlasted ``api.request_deadline`` (a server that answers too slowly): transient."""


class _Deadline:
    """One request's deadline: the socket it uses is shut down if the deadline passes first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.when = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._owned: socket.socket | None = None  # a duplicate made for this request: closed with it
        self._expired = False
        self.done = False

    def attach(self, sock: socket.socket | None, owned: bool = False) -> None:
        """The socket the request is using (a new connection's, or a reused one's). `owned`: a
        duplicate this deadline closes when the request is over."""
        with self._lock:
            self._sock = sock
            if owned:
                self._owned = sock
            if self._expired:
                _shut_down(sock)

    def expire(self) -> None:
        with self._lock:
            if not self.done:
                self._expired = True
                _shut_down(self._sock)

    def finish(self) -> bool:
        """The request is over (answer read, or failed): did its deadline pass first?"""
        with self._lock:
            self.done = True
            if self._owned is not None:
                self._owned.close()  # the connection keeps its own descriptor
                self._owned = None
            return self._expired


def _shut_down(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        # the plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop its TLS state
        # under the thread that is reading
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class _Watchdog:
    """One thread that expires the deadlines of a client's requests in flight, soonest first."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()  # ties on `when` never compare two _Deadline objects
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, seconds: float) -> _Deadline:
        deadline = _Deadline(seconds)
        with self._wake:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="ropo-deadlines", daemon=True)
                self._thread.start()
            if len(self._due) >= _PRUNE_AT:
                self._due = [entry for entry in self._due if not entry[2].done]
                heapq.heapify(self._due)
            heapq.heappush(self._due, (deadline.when, next(self._order), deadline))
            if self._due[0][2] is deadline:  # sooner than all others: the thread sleeps too long
                self._wake.notify()
        return deadline

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2].expire()  # a finished one ignores it
                self._wake.wait(self._due[0][0] - now if self._due else None)


# Finished deadlines stay queued until their time; past this many, the queue keeps only live ones
# (at most max_in_flight + 1 are live), so it stays small at any rate of requests.
_PRUNE_AT = 1024

# The deadline of the request this thread is sending, for the connection to attach its socket to.
_in_flight = threading.local()


class _WatchedHTTPConnection(HTTPConnection):
    """A connection that hands its socket to the current request's deadline.

    A new socket is handed over as soon as it is connected, so that the deadline also covers a
    proxy's CONNECT and the TLS handshake, which a server can trickle as well. It is handed as a
    duplicate (the same connection under a second descriptor): TLS takes over the original
    socket object and detaches it, and a shutdown through either descriptor cuts the connection.
    A reused connection is handed over when its answer is awaited."""

    def _new_conn(self) -> socket.socket:
        return _attach_new(super()._new_conn())

    def getresponse(self) -> Any:
        _attach(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    """_WatchedHTTPConnection's hooks on urllib3's TLS connection."""

    def _new_conn(self) -> socket.socket:
        return _attach_new(super()._new_conn())

    def getresponse(self) -> Any:
        _attach(self.sock)
        return super().getresponse()


def _attach_new(sock: socket.socket) -> socket.socket:
    deadline = getattr(_in_flight, "deadline", None)
    if deadline is not None:
        deadline.attach(sock.dup(), owned=True)
    return sock


def _attach(sock: socket.socket | None) -> None:
    deadline = getattr(_in_flight, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.attach(sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, whose connections (direct or through an HTTP proxy) are watched."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _NoRedirectSession(requests.Session):
    """A session that cannot follow a redirect, whatever a caller passes."""

    def get_redirect_target(self, resp: requests.Response) -> None:  # noqa: ARG002
        return None


class SendKind(str, Enum):
    ACCEPTED = "accepted"    # 2xx
    REJECTED = "rejected"    # permanent 4xx: this event will never be accepted as it is
    TRANSIENT = "transient"  # network error, timeout, 408, 429, 5xx: try again later
    AUTH = "auth"            # credentials refused: a configuration problem, not the event's


@dataclass(frozen=True)
class SendResult:
    kind: SendKind
    status: int | None  # HTTP status of the event POST (or of /token for AUTH); None: no answer
    message: str = ""
    retry_after: float | None = None  # seconds, from Retry-After
    # a rejection's problem document (HttpApiProblem): its title and detail, redacted and cut
    title: str | None = None
    detail: str | None = None

    @property
    def final(self) -> bool:
        return self.kind in (SendKind.ACCEPTED, SendKind.REJECTED)


class AuthError(AccessRefused):
    """Ropo One refused the credentials (or the token endpoint answered nonsense)."""

    def __init__(self, message: str, status: int | None = None,
                 error_id: int | None = None, error_text: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.error_text = error_text


class TokenUnavailable(TransientError):
    """The token endpoint could not be reached or answered 5xx/408/429: transient."""

    def __init__(self, message: str, status: int | None, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def encode_event(event: Mapping[str, Any] | bytes) -> bytes:
    """The JSON body of one event: ``jsonenc.event_bytes``, the bytes the journal stores
    (journaled events come as those bytes already and are passed through untouched)."""
    if isinstance(event, bytes):
        return event
    return event_bytes(event)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(Retry().parse_retry_after(value)))
    except InvalidHeader:
        return None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verification; None if absent."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class RopoClient:
    """Thread-safe client for ``POST /token`` and ``POST /usageplace/event``.

    ``pool_size`` should be at least the number of threads that send at once.
    ``transient_statuses``: statuses retried by the caller (5xx always are transient).
    ``env``: where ``${ENV_VAR}`` secret references are looked up (default os.environ).
    ``clock``: what token expiry is measured with (tests pass one they move on by hand).
    """

    def __init__(
        self,
        settings: ApiSettings,
        *,
        pool_size: int = 8,
        transient_statuses: Collection[int] = DEFAULT_RETRY_STATUSES,
        env: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._credentials: Credentials = settings.credentials(env)
        self._transient = frozenset(transient_statuses)
        self._origin = settings.origin
        self._token_url, self._event_url = endpoint_urls(settings)
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._verify = _trusted_cas(settings)
        self._proxies = requests.utils.get_environ_proxies(self._event_url)
        self._session = self._make_session(pool_size)
        self._deadlines = _Watchdog()
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_renew_at = 0.0  # clock.monotonic() after which the token is renewed
        self._secrets_lock = threading.Lock()
        self._static_secrets = tuple(self._credentials.secrets())
        self._recent_tokens: deque[str] = deque(maxlen=8)  # fetched tokens, for redaction
        if self._credentials.token is not None:
            self._token = self._credentials.token.get_secret_value()
            self._token_renew_at = float("inf")

    def _make_session(self, pool_size: int) -> requests.Session:
        session = _NoRedirectSession()
        session.max_redirects = 0
        # The environment is applied explicitly (proxies, CA bundle: see the module's note);
        # trust_env would also let ~/.netrc replace the Authorization header.
        session.trust_env = False
        # +1: a token request can run while every sender holds a connection.
        adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=max(1, pool_size) + 1,
                                  max_retries=0)  # POST is not idempotent: the caller retries
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update({"User-Agent": _USER_AGENT, "Accept": "application/json"})
        return session

    # ---- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()
        self._deadlines.close()

    def __enter__(self) -> RopoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RopoClient(base_url={self.settings.base_url!r})"

    # ---- secrets -------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with every known secret (API code, tokens) and anything that looks like a
        credential (the log filter's patterns) replaced by ***."""
        return redact_text(text, self._secrets())

    def redact_and_cut(self, text: str, limit: int = MESSAGE_LIMIT) -> str:
        """:meth:`redact`, then at most ``limit`` characters: never cut before redacting."""
        return redact_and_cut(text, limit, self._secrets())

    def _secrets(self) -> list[str]:
        with self._secrets_lock:
            return [*self._static_secrets, *self._recent_tokens]

    def _remember_token(self, token: str) -> None:
        with self._secrets_lock:
            self._recent_tokens.append(token)

    # ---- token -----------------------------------------------------------------------

    def authenticate(self) -> None:
        """Fetch a fresh token now (a start-up check).

        Raises AuthError when the credentials are refused, TokenUnavailable when the
        token endpoint cannot be reached or answers 5xx/408/429. A fixed token is not checked.
        """
        if self._credentials.token is not None:
            return
        self._bearer(force=True)

    def _bearer(self, force: bool = False, stale: str | None = None) -> str:
        """A valid token. ``stale``: the token a 401 refused (renewed only if still current)."""
        with self._token_lock:
            if self._credentials.token is not None:
                return self._token  # type: ignore[return-value]  # the configured token, set in __init__
            current = self._token
            valid = current is not None and self._clock.monotonic() < self._token_renew_at
            # A 401 with ``stale`` renews only if no other thread has renewed meanwhile.
            if valid and not force and current != stale:
                return current  # type: ignore[return-value]  # valid: not None
            token, lifetime = self._fetch_token()
            self._token = token
            self._token_renew_at = self._clock.monotonic() + max(
                0.0, lifetime - self.settings.token_renew_margin
            )
            return token

    def _fetch_token(self) -> tuple[str, float]:
        creds = self._credentials
        assert creds.cid is not None and creds.apicode is not None
        body = {"cid": creds.cid, "apicode": creds.apicode.get_secret_value()}
        log.debug("requesting a token for cid %s", creds.cid)
        try:
            response = self._post(self._token_url, json=body)
        except requests.RequestException as exc:
            untrusted = self._untrusted_server(exc)
            if untrusted is not None:
                raise AuthError(untrusted) from None
            raise TokenUnavailable(
                f"token request failed: {self._describe(exc)}", None, None) from None
        with response:
            status = response.status_code
            if 300 <= status < 400:
                raise AuthError(f"the token request was redirected ({self._redirect(response)}); "
                                f"the redirect was refused and cid and apicode were sent nowhere "
                                f"else: check api.base_url ({self._base_url_shown()})", status=status)
            if status == 400:
                raise self._auth_error(response)
            if status >= 500 or status in (408, 429):
                raise TokenUnavailable(
                    f"token request answered HTTP {status}", status,
                    parse_retry_after(response.headers.get("Retry-After")))
            if not 200 <= status < 300:
                raise AuthError(f"token request answered HTTP {status}", status=status)
            token = _token_from(response)
        if token is None:
            raise AuthError(f"token response (HTTP {status}) has no token", status=status)
        self._remember_token(token)
        lifetime = self.settings.token_lifetime
        exp = jwt_expiry(token)
        if exp is not None:
            lifetime = min(lifetime, exp - self._clock.wall())
        log.debug("token received, renewing in %.0f s", lifetime - self.settings.token_renew_margin)
        return token, lifetime

    def _auth_error(self, response: requests.Response) -> AuthError:
        error_id: int | None = None
        error_text: str | None = None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            raw_id, raw_text = payload.get("errorId"), payload.get("errorText")
            error_id = raw_id if isinstance(raw_id, int) else None
            error_text = self.redact_and_cut(str(raw_text)) if raw_text is not None else None
        detail = ": ".join(str(p) for p in (
            f"errorId {error_id}" if error_id is not None else None, error_text) if p)
        message = (f"Ropo One refused the credentials for cid {self._credentials.cid} "
                   f"(HTTP 400{': ' + detail if detail else ''}); check cid and apicode")
        return AuthError(message, status=400, error_id=error_id, error_text=error_text)

    # ---- events ----------------------------------------------------------------------

    def send_event(self, event: Mapping[str, Any] | bytes) -> SendResult:
        """POST one event and classify the answer. Never raises for HTTP or network trouble."""
        body = encode_event(event)
        try:
            token = self._bearer()
            response = self._post_event(body, token)
            if response is not None and response.status_code == 401:
                response.close()
                if self._credentials.token is not None:
                    return SendResult(SendKind.AUTH, 401, "the configured token was refused (401)")
                log.debug("event POST answered 401, renewing the token once")
                token = self._bearer(stale=token)
                response = self._post_event(body, token)
        except AuthError as exc:
            return SendResult(SendKind.AUTH, exc.status, str(exc))
        except TokenUnavailable as exc:
            return SendResult(SendKind.TRANSIENT, exc.status, str(exc), exc.retry_after)
        except OffOriginRequest as exc:
            return SendResult(SendKind.AUTH, None, str(exc))
        except requests.RequestException as exc:
            untrusted = self._untrusted_server(exc)
            if untrusted is not None:  # retrying cannot help: stop like refused credentials
                return SendResult(SendKind.AUTH, None, untrusted)
            return SendResult(SendKind.TRANSIENT, None, self._describe(exc))
        with response:
            return self._classify(response)

    def _post_event(self, body: bytes, token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return self._post(self._event_url, data=body, headers=headers)

    def _post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST to ``url`` (one of the two endpoint URLs), never anywhere else, never twice."""
        prepared = self._session.prepare_request(requests.Request("POST", url, **kwargs))
        self._check_origin(prepared.url or "")
        deadline = self._deadlines.start(self.settings.request_deadline)
        _in_flight.deadline = deadline
        try:
            response = self._session.send(prepared, allow_redirects=False, timeout=self._timeout,
                                          verify=self._verify, proxies=self._proxies, stream=True)
            _read_capped(response)
        except Exception:
            if deadline.finish():  # whatever the cut socket made of the read, it is the deadline
                raise self._past_deadline(deadline) from None
            raise
        finally:
            _in_flight.deadline = None
        if deadline.finish():  # a cut body can look complete
            response.close()
            raise self._past_deadline(deadline)
        return response

    def _past_deadline(self, deadline: _Deadline) -> _RequestDeadline:
        return _RequestDeadline(
            f"no complete answer within the request deadline of {deadline.seconds:g} s (api.request_deadline); "
            f"the connection was closed")

    def _check_origin(self, url: str) -> None:
        if not self._origin.matches(url):
            raise OffOriginRequest(self.redact_and_cut(
                f"refused to send a request to {_strip_userinfo(url)}: it is not the configured "
                f"origin {self._base_url_shown()}"))

    def _base_url_shown(self) -> str:
        return _strip_userinfo(self.settings.base_url)

    def _redirect(self, response: requests.Response) -> str:
        """``HTTP 302 Found to <Location>``, the Location without userinfo, redacted, cut."""
        location = response.headers.get("Location")
        shown = (self.redact_and_cut(_strip_userinfo(_printable(location)), LOCATION_LIMIT)
                 if location else "(no Location)")
        return f"HTTP {response.status_code} {_printable(response.reason or '')}".rstrip() + f" to {shown}"

    def _classify(self, response: requests.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(SendKind.ACCEPTED, status)
        if status == 401:
            return SendResult(SendKind.AUTH, 401, "token refused (401) even after renewal")
        if 300 <= status < 400:
            # Never followed: the API accepted nothing. A redirect is about the configured URL,
            # never about one event, so delivery halts like refused credentials (the events stay
            # pending and the file resumes once api.base_url is fixed) instead of every event of
            # the night being rejected for good.
            return SendResult(SendKind.AUTH, status,
                              f"redirect refused: {self._redirect(response)}; the event was not "
                              f"accepted (check api.base_url)")
        message = self._problem_message(response)
        if status >= 500 or status in self._transient:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return SendResult(SendKind.TRANSIENT, status, message, retry_after)
        title, detail = self._problem_parts(response)
        return SendResult(SendKind.REJECTED, status, message, title=title, detail=detail)

    def _problem_parts(self, response: requests.Response) -> tuple[str | None, str | None]:
        """The problem document's ``title`` and ``detail`` (each redacted and cut), if it has them."""
        try:
            payload = json.loads(response.text) if response.text else None
        except ValueError:
            return None, None
        if not isinstance(payload, dict):
            return None, None
        return tuple(  # type: ignore[return-value]  # two items
            self.redact_and_cut(_printable(str(payload[key]))) if payload.get(key) not in (None, "") else None
            for key in ("title", "detail"))

    def _problem_message(self, response: requests.Response) -> str:
        """``title: detail`` of an HttpApiProblem, else the start of the raw body."""
        status = response.status_code
        text = response.text
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            parts = [str(payload[k]) for k in ("title", "detail") if payload.get(k)]
            if parts:
                return f"HTTP {status}: " + self.redact_and_cut(_printable(": ".join(parts)))
        snippet = self.redact_and_cut(_printable(" ".join(text.split())))
        reason = _printable(response.reason or "")
        return f"HTTP {status} {reason}" + (f": {snippet}" if snippet else "")

    def _untrusted_server(self, exc: requests.RequestException) -> str | None:
        """The message for a server certificate that failed verification; None for anything
        else (a TLS handshake cut short is a network fault like any other, and is retried)."""
        if not isinstance(exc, requests.exceptions.SSLError):
            return None
        problem = _certificate_problem(exc)
        if problem is None:
            return None
        trust = (f"the CA bundle {self.settings.ca_bundle}" if self.settings.ca_bundle is not None
                 else "the system's trusted CAs")
        return self.redact(
            f"the TLS certificate of {self._base_url_shown()} could not be verified against "
            f"{trust} ({problem}); nothing was sent. If Ropo One is reached through a "
            f"TLS-inspecting proxy or a private CA, set api.ca_bundle to its PEM bundle")

    def _describe(self, exc: requests.RequestException) -> str:
        if isinstance(exc, _RequestDeadline):
            return str(exc)
        if isinstance(exc, requests.ConnectTimeout):
            kind = "connect timeout"
        elif isinstance(exc, requests.ReadTimeout):
            kind = "read timeout"
        elif isinstance(exc, requests.ConnectionError):
            kind = "connection error"
        else:
            kind = type(exc).__name__
        return f"{kind}: {self.redact_and_cut(_printable(_root_cause(exc)))}"


def _read_capped(response: requests.Response, limit: int = BODY_LIMIT) -> None:
    """Read at most ``limit`` bytes of the body into ``response.content``. A server's answer is
    only ever a token, a problem or an error page: a body without end (300 MB took 57 s and
    2 GB per event) is cut, and its connection closed instead of reused. Read errors are
    requests' own (ChunkedEncodingError, ConnectionError ...), as without ``stream``."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(1 << 14):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    except BaseException:
        response.close()
        raise
    if size > limit:
        response.close()  # the rest is never read: this connection cannot serve another request
    response._content = b"".join(chunks)[:limit]  # what requests' .text and .json() read
    response._content_consumed = True  # type: ignore[attr-defined]  # requests' private flag, read by .content


def _token_from(response: requests.Response) -> str | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    token = payload.get("token") if isinstance(payload, dict) else None
    return token if isinstance(token, str) and token else None


def _certificate_problem(exc: BaseException, depth: int = 0) -> str | None:
    """The verification failure (ssl.SSLCertVerificationError) somewhere in requests' and
    urllib3's chain of wrapped exceptions, as text; None if there is none."""
    if depth > 10:
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    inner = [arg for arg in exc.args if isinstance(arg, BaseException)]
    inner += [e for e in (getattr(exc, "reason", None), exc.__cause__, exc.__context__)
              if isinstance(e, BaseException)]
    for nested in inner:
        found = _certificate_problem(nested, depth + 1)
        if found is not None:
            return found
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's text, which is the readable one in requests' chains."""
    seen = exc
    while True:
        inner = seen.__cause__ or seen.__context__
        if inner is None or inner is seen:
            break
        seen = inner
    if seen.args and isinstance(seen.args[-1], BaseException):
        seen = seen.args[-1]
    return str(seen) or type(seen).__name__  # cut by the caller, after redaction


def _trusted_cas(settings: ApiSettings) -> str | bool:
    """requests' ``verify``: api.ca_bundle, else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else the
    system's CAs (what requests itself does with trust_env; never False)."""
    if settings.ca_bundle is not None:
        return str(settings.ca_bundle)
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (whatever parser reads it)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority_end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            authority_end = min(authority_end, found)
    authority = rest[:authority_end]
    if "@" in authority:
        authority = REDACTED + "@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{rest[authority_end:]}"


def _printable(text: str) -> str:
    """Control characters of a server's text escaped (\\x1b ...): they reach terminals."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
