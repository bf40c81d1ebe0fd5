"""Logging for the service: plain or JSON lines, with secrets redacted in one place.

`setup_logging` replaces the root logger's handlers with one stream handler that carries a
`RedactingFilter`. A filter on the *handler* sees every record that reaches it, whatever
logger it came from (ours, paramiko, urllib3 ...), so there is one place where secrets are
removed: known values (the resolved API code, SFTP passphrases and passwords, anything a
registered redactor such as `RopoClient.redact` knows, e.g. the tokens it was issued), and
anything that looks like a credential: a Bearer or Basic authorization, a JWT, a
``apicode=``/``token=``/``password=`` pair in a form body or query string, or the same key
in JSON.

:func:`redact_text` is that one redaction, and :func:`redact_and_cut` applies it *before* a
text is shortened, so that no cut can leave the head of a secret behind. The API client
uses both for every message it makes from a server's answer (problem detail, body excerpt,
error text, Location), so logs, journal and receipts are redacted alike.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any
from urllib.parse import quote, quote_plus

REDACTED = "***"
CUT_MARK = "..."

# "Authorization: Bearer abc.def" / "bearer abc" / "Basic dXNlcjpwYXNz" -> "Bearer ***"
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=%-]+")
# header.payload.signature, each base64url; a JWT header always starts with eyJ ('{"').
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_SECRET_KEYS = r"apicode|api_?key|access_token|refresh_token|token|password|passwd|passphrase|secret"
# apicode=abc&cid=1 (a form body or a query string, also URL-encoded: apicode%3Dabc)
_KEY_VALUE = re.compile(rf"(?i)\b({_SECRET_KEYS})(=|%3D)(?:(?!%26)[^&\s\"'<>,;])+")
# "apicode": "abc" and \"apicode\":\"abc\" (JSON, also JSON inside a JSON string)
_JSON_PAIR = re.compile(rf'(?i)(\\?"(?:{_SECRET_KEYS})\\?"\s*:\s*\\?")((?:[^"\\]|\\.)*?)(\\?")')


def _forms(value: str) -> set[str]:
    """A secret as it may appear in a text: itself, URL-encoded, JSON-escaped."""
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the known ``secrets`` (in any of their usual encodings) and anything that
    looks like a credential replaced by ***. The one redaction of logs, journal and receipts."""
    forms = {form for value in secrets if value for form in _forms(value)}
    for form in sorted(forms, key=len, reverse=True):  # longest first: no partial leftovers
        if form in text:
            text = text.replace(form, REDACTED)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _JSON_PAIR.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)


def redact_and_cut(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """:func:`redact_text`, then at most ``limit`` characters (plus "..." when cut).

    Redacting first is the point: a secret that straddles the cut is already *** and
    cannot leave its first characters behind."""
    text = redact_text(text, secrets)
    return text if len(text) <= limit else text[:limit] + CUT_MARK

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Replaces secrets in every record; never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._redactors: list[Callable[[str], str]] = []

    def add_secret(self, value: str | None) -> None:
        """A secret value to remove from every record (short values are ignored: too many false hits)."""
        if value and len(value) >= 4:
            with self._lock:
                self._values.add(value)

    def add_secrets(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add_secret(value)

    def add_redactor(self, redactor: Callable[[str], str]) -> None:
        """A function that removes the secrets it knows (e.g. `RopoClient.redact`)."""
        with self._lock:
            self._redactors.append(redactor)

    def redact(self, text: str) -> str:
        with self._lock:
            values = list(self._values)
            redactors = list(self._redactors)
        for redactor in redactors:
            try:
                text = redactor(text)
            except Exception:  # noqa: BLE001 - a broken redactor must not lose the record
                pass
        return redact_text(text, values)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what there is
            message = f"{record.msg!r} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # formatters use exc_text; the raw exception may hold secrets
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                document[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        return json.dumps(document, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT)


def setup_logging(level: str = "INFO", fmt: str = "plain", stream: IO[str] | None = None) -> RedactingFilter:
    """Route every log record through one handler with the redacting filter; returns the filter."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    redactor = RedactingFilter()
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries: paramiko logs every channel at INFO; urllib3 every connection at DEBUG.
    logging.getLogger("paramiko").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    threading.excepthook = log_thread_exception
    return redactor


_threads_log = logging.getLogger("batch.threads")


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread is logged like everything else — one plain or JSON
    line, redacted — instead of a raw traceback on stderr that would bypass both.

    paramiko's SFTP prefetch thread ends this way whenever a connection drops mid-download;
    the download reports that loss itself, so here it is only a debug note.
    """
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    if "_prefetch_thread" in name and (issubclass(args.exc_type, (EOFError, OSError))
                                       or args.exc_type.__module__.startswith("paramiko")):
        _threads_log.debug("SFTP read-ahead thread %s ended with the connection: %s: %s",
                           name, args.exc_type.__name__, args.exc_value)
        return
    # the stubs allow exc_value None, but an exception that reached the hook is always an instance
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    _threads_log.error("thread %s ended with an unexpected error", name,
                       exc_info=exc_info)  # type: ignore[arg-type]  # see above


def apply_level(level: str) -> None:
    logging.getLogger().setLevel(level)
