"""Logging for the service: plain or JSON lines, with secrets redacted in one place.

`setup_logging` replaces the root logger's handlers with one stream handler that carries a
`RedactingFilter`. Every command sets logging up through it (the CLI's group does, before any
command runs; `run` sets it up again with the configuration's level and format, keeping the
same filter and what it knows), so no command logs around the redaction. A command that loads
a configuration tells the filter its secrets at once (:func:`redact_config_secrets`), and one
that builds an API client adds the client's redactor, which knows the tokens it was issued.
A filter on the *handler* sees every record that reaches it, whatever
logger it came from (ours, paramiko, urllib3 ...), so there is one place where secrets are
removed: known values (the resolved API code, SFTP passphrases and passwords, anything a
registered redactor such as `RopoClient.redact` knows, e.g. the tokens it was issued), and
anything that looks like a credential: a Bearer or Basic authorization, a JWT, a
``apicode=``/``token=``/``password=`` pair in a form body or query string, or the same key
in JSON.

The redaction itself is :func:`batch.redact.redact_text`, shared with the API client, so
logs, journal and receipts are redacted alike.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch.config.service import ServiceConfig

from batch.redact import escape_unprintable, redact_text

# What a log line may keep of its own layout: multi-line messages (configuration problems) and
# tracebacks. A file name cannot bring a line break in (inbox names with C0 are refused).
_LOG_LAYOUT = "\n\t"

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Replaces secrets in every record, and escapes what a terminal would act on; never drops a record."""

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
        return escape_unprintable(redact_text(text, values), _LOG_LAYOUT)

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


_installed: RedactingFilter | None = None  # the filter of the process's log handler


def setup_logging(level: str | int = "INFO", fmt: str = "plain", stream: IO[str] | None = None) -> RedactingFilter:
    """Route every log record through one handler with the redacting filter; returns the filter.

    Called again (e.g. with the configuration's level and format), it replaces its handler
    but keeps the filter, so the secrets it learnt meanwhile stay redacted. Handlers it did
    not install (a test runner's log capture) are left alone."""
    global _installed
    root = logging.getLogger()
    for handler in list(root.handlers):
        if _installed is not None and _installed in handler.filters:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    redactor = _installed = _installed or RedactingFilter()
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries: paramiko logs every channel at INFO; urllib3 every connection at DEBUG.
    logging.getLogger("paramiko").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    threading.excepthook = log_thread_exception
    return redactor


def installed_filter() -> RedactingFilter:
    """The filter of the handler `setup_logging` installed (a new, unattached one before that)."""
    global _installed
    if _installed is None:
        _installed = RedactingFilter()
    return _installed


def redact_config_secrets(config: ServiceConfig, redactor: RedactingFilter | None = None) -> None:
    """From now on, logging removes the configuration's secrets: the API code (or fixed token), a
    PostgreSQL journal's password, and every feed's SFTP password and key passphrase, resolved
    from the environment or their files. A secret that cannot be resolved is skipped: the
    command that needs it says so.
    `redactor`: the filter to teach (default: the one `setup_logging` installed)."""
    from batch.config.secrets import SecretResolutionError

    redactor = redactor or installed_filter()
    try:
        redactor.add_secrets(config.api.credentials().secrets())
    except SecretResolutionError:
        pass
    resolvers = [config.resolved_journal_password]
    for feed in config.feeds:
        resolvers += [feed.resolved_key_passphrase, feed.resolved_password]
    for resolve in resolvers:
        try:
            secret = resolve()
        except SecretResolutionError:
            continue
        if secret is not None:
            redactor.add_secret(secret.get_secret_value())
    from batch.delivery.notify import secret_forms

    for notify in [config.notify, *(feed.notify for feed in config.feeds)]:
        try:
            url = notify.resolved_url() if notify is not None else None
        except SecretResolutionError:
            continue
        for form in secret_forms(url.get_secret_value()) if url is not None else []:
            redactor.add_secret(form)


def print_redacted_traceback(stream: IO[str] | None = None) -> None:
    """The exception being handled, as a traceback, redacted like every log record (--debug)."""
    import traceback

    (stream or sys.stderr).write(installed_filter().redact(traceback.format_exc()))


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
