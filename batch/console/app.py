"""The console's web application: ``create_app`` puts the pages, the security middleware and the
playground's routes together; ``serve`` runs it with uvicorn on a socket the caller bound.

Middleware, outermost first: the Host check (on loopback only loopback names: a DNS-rebinding
page cannot reach the console; off loopback only console.allowed_hosts), security headers (a
strict Content-Security-Policy: scripts and styles only from /static, no framing; behind HTTPS
HSTS), the signed session cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS),
the limit of a request body's size (refused before it is read), the login (when a password is
configured), the CSRF check of every POST.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import secrets
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from batch.config.service import ConsoleSettings
from batch.console import pages, playground, retries
from batch.console.render import STATIC, console_state, render, templates
from batch.console.security import (
    LOOPBACK_NAMES,
    SESSION_ID,
    SESSION_USER,
    ASGIApp,
    BodyLimit,
    CsrfMiddleware,
    LiveSessions,
    LoginThrottle,
    Password,
    Receive,
    Scope,
    Send,
    check_listening,
    client_address,
    console_password,
    host_allowed,
    is_loopback,
)
from batch.console.state import ConsoleState
from batch.service.logs import installed_filter
from batch.store.journal import JournalError, JournalUnavailable

log = logging.getLogger("batch.console")

SESSION_COOKIE = "usageplace_console"
SESSION_SECONDS = 12 * 3600
#: What the login lets through without a session.
OPEN_PATHS = ("/login", "/static/")

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class HostCheck:
    """Refuses (400) a request whose Host header is not a name the console answers to: on loopback
    the loopback names (a page of another site that made its name resolve to 127.0.0.1 -- DNS
    rebinding -- sends its own name) and any of ``console.allowed_hosts``; off loopback only
    ``console.allowed_hosts``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str], loopback: bool) -> None:
        self.app, self.allowed, self.loopback = app, allowed, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                text = ("<h1>400: not a loopback host name</h1>" if self.loopback and self.allowed == LOOPBACK_NAMES
                        else "<h1>400: not a host name of this console</h1><p>It answers only to the names of "
                             "console.allowed_hosts in its configuration.</p>")
                await HTMLResponse(text, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """The security headers on every response; behind HTTPS (``console.public_url: https://…``)
    HSTS too, and a redirect's relative Location made absolute under the public URL."""

    def __init__(self, app: ASGIApp, public_url: str | None = None) -> None:
        self.app, self.public_url = app, public_url
        self.headers = list(SECURITY_HEADERS)
        if public_url is not None and public_url.startswith("https://"):
            # not includeSubDomains: the console cannot speak for the other hosts of its domain
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(key, self._located(value) if key.lower() == b"location" else value)
                           for key, value in message.get("headers", [])]
                message["headers"] = headers + self.headers
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)

    def _located(self, location: bytes) -> bytes:
        # the console's own redirects are paths ("/login?next=…"); the browser behind the proxy
        # is sent to the public URL, not to the address the console listens on
        if self.public_url is None or not location.startswith(b"/") or location.startswith(b"//"):
            return location
        return self.public_url.encode("latin-1") + location


class LoginGate:
    """With a password configured, every path but the login page and static files needs a
    logged-in session: a page request is sent to the login, anything else gets 401."""

    def __init__(self, app: ASGIApp, password: Password | None, sessions: LiveSessions) -> None:
        self.app, self.password, self.sessions = app, password, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = scope.get("session", {})
        if self.password is not None and session.get(SESSION_USER) and not self.sessions.live(session.get(SESSION_ID)):
            session.clear()  # logged out (or the console restarted): this cookie is no login any more
        if (self.password is None or scope["type"] != "http" or session.get(SESSION_USER)
                or scope["path"] == "/login" or scope["path"].startswith("/static/")):
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["method"] == "GET":
            target = scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope["query_string"] else "")
            response = RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        else:
            response = HTMLResponse("<h1>401: log in first</h1>", status_code=401)
        await response(scope, receive, send)


async def refuse_csrf(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    request = Request(scope, receive)
    await render(request, "error.html", {"title": "Refused (403)", "message": f"{why}. Nothing was done: "
                 "reload the page and try again."}, status_code=403)(scope, receive, send)


async def refuse_body(scope: Scope, receive: Receive, send: Send, status: int, why: str) -> None:
    request = Request(scope, receive)
    await render(request, "error.html", {"title": f"Refused ({status})", "message": f"{why}. Nothing was done."},
                 status_code=status)(scope, receive, send)


# --------------------------------------------------------------------------- login


def login_page(request: Request) -> Response:
    if request.app.state.password is None:
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html", {"next": safe_next(request.query_params.get("next")), "error": None})


async def login(request: Request) -> Response:
    password: Password | None = request.app.state.password
    if password is None:
        return RedirectResponse("/", status_code=303)
    form = await request.form()
    name, attempt, target = (str(form.get(key) or "") for key in ("name", "password", "next"))
    name = " ".join(name.split())[:80]
    if not name:
        return render(request, "login.html", {"next": safe_next(target), "name": name,
                                              "error": "Give your name (recorded with what you do)."}, status_code=400)
    throttle: LoginThrottle = request.app.state.login_throttle
    client = client_address(request.scope, request.app.state.trusted_proxies)  # behind a proxy: its X-Forwarded-For
    wait = throttle.start(client)
    if wait:
        log.warning("login refused for %s: too many wrong passwords", client)
        response = render(request, "login.html", {"next": safe_next(target), "name": name, "error": (
            f"Too many wrong passwords from {client}: logging in from there is refused for a minute after "
            "the last one. Wait, then try again.")}, status_code=429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if not await run_in_threadpool(password.matches, attempt):  # scrypt: ~50 ms of CPU
        log.warning("login: wrong password from %s", client)  # not the name: a password typed in its field
        await asyncio.sleep(0.3)  # a guess costs a little time
        return render(request, "login.html", {"next": safe_next(target), "error": "Wrong password.", "name": name},
                      status_code=401)
    throttle.succeeded(client)
    request.session.clear()  # a new session (and CSRF token) for the logged-in user
    request.session[SESSION_USER] = name
    request.session[SESSION_ID] = request.app.state.sessions.open()
    return RedirectResponse(safe_next(target), status_code=303)


async def logout(request: Request) -> Response:
    request.app.state.sessions.close(request.session.get(SESSION_ID))
    request.session.clear()
    return RedirectResponse("/login" if request.app.state.password is not None else "/", status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path of this console only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


# --------------------------------------------------------------------------- errors


def _redacted(text: str) -> str:
    return installed_filter().redact(text)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.method == "POST" and request.url.path.startswith("/playground/"):
        # the editor's script reads {"error"} from every answer of the playground (a page would be lost)
        return JSONResponse({"error": _redacted(str(exc.detail))}, status_code=exc.status_code)
    return render(request, "error.html", {"title": f"{exc.status_code}", "message": _redacted(str(exc.detail))},
                  status_code=exc.status_code)


async def journal_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, JournalUnavailable):
        # opened afresh by the next page: a pool whose server went away reconnects on its own only
        # after its backoff, and the page after a restart of PostgreSQL would still say it is down
        console_state(request).forget_stores()
    return render(request, "error.html", {
        "title": "The journal cannot be read", "message": _redacted(str(exc))}, status_code=503)


async def sqlite_error(request: Request, exc: Exception) -> Response:
    """A SQLite journal the driver cannot read ("file is not a database", "malformed"): the journal's
    page (503), and the stores are opened afresh by the next request (a journal put back is read)."""
    state = console_state(request)
    state.forget_stores()
    return render(request, "error.html", {
        "title": "The journal cannot be read",
        "message": _redacted(f"journal {state.journal_display}: {exc} (the console reads it again at the next "
                             "page)")}, status_code=503)


async def internal_error(request: Request, exc: Exception) -> Response:
    # the message is redacted of the configuration's secrets; the traceback stays in the log
    return HTMLResponse(templates.get_template("error.html").render(
        title="Internal error", message=_redacted(f"{type(exc).__name__}: {exc}; please report it"),
        csrf="", user="", login_enabled=False, playground=False, nav=""), status_code=500)


# --------------------------------------------------------------------------- the app


def create_app(config_path: Path, *, host: str = "127.0.0.1", secret_key: str | None = None) -> Starlette:
    """The console for the service configuration at `config_path`, to listen on `host`.

    Raises LoginRequired (a non-loopback `host` without a configured password), HostsRequired (one
    without console.allowed_hosts), ConfigError /
    ConfigurationError (an unusable configuration) before anything listens. `secret_key` signs
    the session cookies (default: random, so sessions end when the console stops)."""
    state = ConsoleState(Path(config_path))
    settings = state.loaded.config.console or ConsoleSettings()
    password = console_password(settings)
    check_listening(host, password, state.config_path, settings.allowed_hosts)
    allowed = frozenset(settings.allowed_hosts or ())
    if is_loopback(host):
        allowed |= LOOPBACK_NAMES
    https = settings.public_url is not None and settings.public_url.startswith("https://")
    sessions = LiveSessions(SESSION_SECONDS)
    routes: list[BaseRoute] = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *pages.routes,
        *retries.routes,
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    if playground.routes:
        routes.append(Mount("/playground", routes=playground.routes))
    middleware = [
        Middleware(HostCheck, allowed=allowed, loopback=is_loopback(host)),
        Middleware(SecurityHeaders, public_url=settings.public_url),
        # https_only: the cookie is Secure (a browser never sends it over plain http)
        Middleware(SessionMiddleware, secret_key=secret_key or secrets.token_urlsafe(32),
                   session_cookie=SESSION_COOKIE, max_age=SESSION_SECONDS, same_site="strict", https_only=https),
        Middleware(BodyLimit, refuse=refuse_body),
        # the login before the CSRF check: a POST without a login is refused before its body is read
        Middleware(LoginGate, password=password, sessions=sessions),
        Middleware(CsrfMiddleware, refuse=refuse_csrf),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        HTTPException: http_error, JournalError: journal_error, sqlite3.DatabaseError: sqlite_error,
        Exception: internal_error})
    app.state.console = state
    app.state.retries = retries.Retries()
    app.state.password = password
    app.state.login_throttle = LoginThrottle()
    app.state.trusted_proxies = tuple(ipaddress.ip_network(one, strict=False) for one in settings.trusted_proxies)
    app.state.sessions = sessions
    app.state.playground_enabled = bool(playground.routes)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the console (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection: uvicorn writes a response's head and body apart,
    # and with Nagle's algorithm the body waits for the client's delayed ACK, ~40 ms a page on a
    # kept-alive connection (bench/bench_console.py)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(app: Starlette, sock: socket.socket) -> Any:
    """A uvicorn server for `app` on `sock` (quiet: no access log; the caller prints the URL)."""
    import uvicorn

    # log_config None: uvicorn's loggers go through the root handler that setup_logging installed,
    # with its redaction of secrets (an error's traceback included)
    config = uvicorn.Config(app, fd=None, log_config=None, log_level="warning", access_log=False, lifespan="off",
                            server_header=False, proxy_headers=False)
    return uvicorn.Server(config)


class InThread:
    """A console served by a thread of this process (tests, scripts/screenshots.py)."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        self.app, self.url = app, url_of(sock)
        self.server = make_server(app, sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="console",
                                       daemon=True)
        self.thread.start()
        while not self.server.started:  # uvicorn sets it once it accepts connections
            if not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        close(self.app)


def serve(app: Starlette, sock: socket.socket, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM, then return (exit 0): uvicorn stops gracefully on either and
    then raises the signal again for the handler that was there before it: this one, which asks the
    server to stop (a signal that comes before uvicorn's handlers are in place stops it too)."""
    server = make_server(app, sock)

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        close(app)


def close(app: Starlette) -> None:
    """Stop the retry threads, close the journal and the lease store."""
    app.state.retries.close()
    app.state.console.close()


__all__ = ["InThread", "bind", "close", "console_state", "create_app", "serve", "url_of"]
