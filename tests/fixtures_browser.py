"""The console's test fixtures: a live console on a free loopback port (uvicorn in a thread, the
real app over real HTTP), and Debian's Chromium driven by Playwright's Python package.

``chromium``        — one headless Chromium for the session (/usr/bin/chromium, a fresh profile;
                      skipped where Chromium is not installed: tests/install.sh installs it)
``browser_page``    — a new browser context (own cookies) and page for one test
``demo_workspace``  — the demo's workspace (every sample processed against a sandbox, which has
                      stopped since): a journal with accepted, rejected, invalid and skipped files;
                      made once per session, read-only for the tests that share it
``live_console``    — starts consoles: ``live_console(config_path, host=...)`` -> ``LiveConsole``
                      (``.url``, ``.get(path)``, ``.post(path, data)`` over ``requests`` with a
                      session that keeps cookies); stopped after the test

Nothing is downloaded: ``playwright install`` is never run; Playwright drives the Debian binary by
its path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from batch.console.app import InThread, bind, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class LiveConsole:
    """A console serving on loopback in a thread of the test process, and a browser-like HTTP
    session (cookies kept) to talk to it."""

    def __init__(self, running: InThread) -> None:
        self.running = running
        self.url = running.url  # "http://127.0.0.1:PORT/"
        self.app = running.app
        self.http = requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.url.rstrip("/") + path, timeout=30, allow_redirects=False, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        return self.http.post(self.url.rstrip("/") + path, data=data, timeout=30, allow_redirects=False, **kwargs)

    def csrf(self, path: str = "/") -> str:
        """The CSRF token of this session, as the page at `path` gives it to its forms."""
        found = CSRF_META.search(self.get(path).text)
        assert found, f"no CSRF field on {path}"
        return found.group(1)

    def login(self, password: str, name: str = "Test Admin") -> requests.Response:
        token = self.csrf("/login")
        return self.post("/login", {"csrf": token, "name": name, "password": password, "next": "/"})

    def other_session(self) -> LiveConsole:
        """The same console seen by another browser (its own cookies)."""
        return LiveConsole(self.running)

    def stop(self) -> None:
        self.http.close()
        self.running.stop()


def start_console(config_path: Path, host: str = "127.0.0.1") -> LiveConsole:
    """A console for `config_path` on a free port of `host`, serving once this returns."""
    return LiveConsole(InThread(create_app(config_path, host=host), bind(host, 0)))


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from batch.sandbox.demo import run_demo

    workspace = tmp_path_factory.mktemp("console-demo")
    run_demo(workspace, echo=lambda text: None)
    return workspace


@pytest.fixture
def live_console() -> Iterator[Callable[..., LiveConsole]]:
    started: list[LiveConsole] = []

    def start(config_path: Path, host: str = "127.0.0.1") -> LiveConsole:
        console = start_console(config_path, host)
        started.append(console)
        return console

    yield start
    for console in started:
        console.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (tests/install.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
