"""Rendering a page: the one Jinja2 environment (autoescaped), and ``render``, which gives every
template what the base layout needs (the CSRF token, who is logged in, the navigation, a
configuration problem to show). Routes of any page module (the playground's too) call it.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from batch.console.security import SESSION_CSRF, SESSION_USER, new_csrf_token
from batch.console.state import ConsoleState

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.autoescape = True  # every .html, and templates loaded from strings in tests too
templates.env.trim_blocks = templates.env.lstrip_blocks = True


def console_state(request: Request) -> ConsoleState:
    """The configuration, journal and leases the console reads (see batch.console.state)."""
    state: ConsoleState = request.app.state.console
    return state


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use); forms carry it as the field ``csrf``."""
    token = request.session.get(SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = new_csrf_token()
        request.session[SESSION_CSRF] = token
    return token


def current_user(request: Request) -> str:
    """Who is at the console, for the pages and for the journal's "who" of a retry request: the
    name given at the login, or (no login on loopback) the user the console runs as."""
    user = request.session.get(SESSION_USER)
    if isinstance(user, str) and user:
        return user
    return f"{getpass.getuser()} (console on loopback)"


def render(request: Request, name: str, context: dict[str, Any] | None = None,
           status_code: int = 200) -> HTMLResponse:
    """The template `name` (which extends base.html) with `context` and what every page shows."""
    state = console_state(request)
    page: dict[str, Any] = {
        "csrf": csrf_token(request),
        "user": current_user(request) if request.app.state.password is None or request.session.get(SESSION_USER)
        else "",
        "login_enabled": request.app.state.password is not None,
        "config_problem": state.config_problem,
        "playground": request.app.state.playground_enabled,
        "nav": request.scope.get("console_nav", ""),
    }
    page.update(context or {})
    response = templates.TemplateResponse(request, name, page, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response
