"""The notify webhook's HTTP part: one JSON POST, as Slack/Teams-style incoming webhooks take it.

The URL is a secret (an incoming webhook's URL is its credential): nothing this module says —
results, errors, log lines — holds it or any part of it; a failure is described by its kind
(``HTTP 404``, ``no answer within 10 s``, ``cannot connect``, ``TLS certificate not trusted``).
TLS is verified, redirects are not followed (a 3xx is a failure), every attempt has a timeout,
and a failed attempt is tried again a few times (batch.backoff: 1 s doubling) unless the answer
says it never will work (a 4xx other than 408 and 429). What to send and when is decided
elsewhere (batch.service.notifying); this module only delivers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from batch.backoff import Backoff
from batch.clock import SYSTEM_CLOCK, Clock

FIRST_WAIT_SECONDS, LONGEST_WAIT_SECONDS = 1.0, 8.0


@dataclass(frozen=True)
class Delivered:
    """The result of one notification: sent or not, after how many attempts, and why not."""

    ok: bool
    attempts: int
    problem: str | None = None  # never holds the URL


def secret_forms(url: str) -> list[str]:
    """What of `url` must be redacted from logs: the URL, and its path with the query (a client
    library's debug line shows the path alone; in a Slack or Teams URL that is the secret part)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return [url] + ([path] if len(path) > 1 else [])


class Webhook:
    """POST JSON to one webhook URL (give it resolved: NotifySettings.resolved_url)."""

    def __init__(self, url: str, *, timeout: float = 10.0, attempts: int = 3, clock: Clock = SYSTEM_CLOCK,
                 stop: threading.Event | None = None) -> None:
        self._url = url
        self.timeout = timeout
        self.attempts = attempts
        self._clock = clock
        self._stop = stop or threading.Event()

    def __repr__(self) -> str:  # never the URL, wherever an object is printed
        return f"Webhook(timeout={self.timeout}, attempts={self.attempts})"

    def post(self, payload: dict[str, Any]) -> Delivered:
        """Send `payload` (with "text"); tries up to `attempts` times; never raises for the network."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        backoff = Backoff(FIRST_WAIT_SECONDS, LONGEST_WAIT_SECONDS)
        problem: str | None = "not sent"
        for attempt in range(1, self.attempts + 1):
            problem, again = self._attempt(body)
            if problem is None:
                return Delivered(True, attempt)
            if not again or attempt == self.attempts:
                return Delivered(False, attempt, problem)
            if self._clock.wait(self._stop, backoff.next()):
                return Delivered(False, attempt, f"{problem}; the service is stopping")
        return Delivered(False, self.attempts, problem)

    def _attempt(self, body: bytes) -> tuple[str | None, bool]:
        """(None, _) when the webhook took it; else (why, worth another attempt)."""
        try:
            with requests.post(self._url, data=body, timeout=self.timeout, allow_redirects=False, verify=True,
                               headers={"Content-Type": "application/json; charset=utf-8"}, stream=True) as answer:
                status = answer.status_code
        except requests.exceptions.SSLError:
            return "TLS: the webhook's certificate is not trusted (or the TLS handshake failed)", True
        except requests.exceptions.Timeout:
            return f"no answer within {self.timeout:g} s", True
        except requests.exceptions.ConnectionError:
            return "cannot connect to the webhook", True
        except requests.exceptions.RequestException as exc:  # the text of a requests error quotes the URL
            return f"the request failed ({type(exc).__name__})", False
        if 200 <= status < 300:
            return None, False
        if 300 <= status < 400:
            return f"HTTP {status}: a redirect, not followed", False
        return f"HTTP {status}", status >= 500 or status in (408, 429)
