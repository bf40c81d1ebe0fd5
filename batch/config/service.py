"""The service configuration: the API, delivery limits, the journal, logging, and the feeds.

Checked at load like mappings are (file, line, key of every problem), including every feed's
mapping file and the API's CA bundle (it must load as a PEM bundle). Values written in this file
are never quoted in a problem: a secret typed under the wrong key must not be echoed. Relative
paths (mappings, journal, key files, known_hosts, local inboxes) are taken relative to the
configuration file, so a config directory can be moved as a whole.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from batch.config.api import MAX_SECONDS, ApiSettings, DeliverySettings, ca_bundle_problem
from batch.config.envpath import expand_env_path
from batch.config.inbox import SECRET_FILE_FIELDS, InboxSettings, LocalLocation, missing_secret_file, parse_location
from batch.config.journal import PostgresJournal, parse_journal
from batch.config.mapping import Mapping, load_mapping
from batch.config.secrets import SecretResolutionError, check_reference, resolve_secret, secret_file_warning
from batch.config.yamlload import ConfigError, ConfigProblem, LoadedYaml, load_yaml_file, validate_model
from batch.errors import ConfigurationError
from batch.syntax.schedule import Schedule, every, parse_cron, parse_duration, parse_hhmm, time_zone


class ReceiptOptions(BaseModel):
    """The receipt CSV's dialect; each key defaults to the input file's own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    encoding: str | None = Field(None, description="Default: the input's encoding (utf-8 for XML).")
    delimiter: str | None = Field(None, description="Default: the input's delimiter (',' for XML).")
    quotechar: str = '"'
    line_ending: Literal["crlf", "lf"] = "crlf"


class ExpectedSettings(BaseModel):
    """When the feed's file is expected (batch.syntax.schedule; lateness: batch.service.lateness)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    every: str | list[str] | None = Field(
        None, description="day, weekdays, or a list of days [mon, tue, ...]; with `by`.")
    by: str | None = Field(None, description='The local time the file must have arrived by, "HH:MM".')
    cron: str | None = Field(None, description='Instead of every/by: a 5-field cron expression of the due times, '
                                               'e.g. "0 3 * * 1-5".')
    time_zone: str = Field(..., description="The IANA time zone of `by` / `cron`, e.g. Europe/Helsinki.")
    grace: str | float = Field("0m", description="How long after a due time the file may still come before the feed "
                                                 "is late: 30m, 2h, 1h30m, 45s (or seconds).")

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        time_zone(value)
        return value

    @field_validator("by")
    @classmethod
    def _by(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hhmm(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cron(value, "UTC")
        return value

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: str | float) -> str | float:
        if parse_duration(value) > timedelta(days=7):
            raise ValueError("at most 7 days")
        return value

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None:
            every(value, "00:00", "UTC")  # the days alone
        return value

    @model_validator(mode="after")
    def _one_way(self) -> ExpectedSettings:
        if self.cron is not None and (self.every is not None or self.by is not None):
            raise ValueError("give either cron or every + by, not both")
        if self.cron is None and (self.every is None or self.by is None):
            raise ValueError('give every (day, weekdays or [mon, ...]) and by ("HH:MM"), or cron')
        self.schedule  # noqa: B018 - a schedule that never matches is refused here, at load
        return self

    @cached_property
    def schedule(self) -> Schedule:
        if self.cron is not None:
            return parse_cron(self.cron, self.time_zone)
        assert self.every is not None and self.by is not None  # _one_way
        return every(self.every if isinstance(self.every, str) else list(self.every), self.by, self.time_zone)

    @property
    def grace_period(self) -> timedelta:
        return parse_duration(self.grace)


class NotifySettings(BaseModel):
    """A webhook (Slack / Teams style incoming webhook: a JSON POST with "text") told once of a
    late file and once of a finished file with failed, rejected or invalid records."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    url: SecretStr | None = Field(None, description="${ENV_NAME}: the webhook's URL (a secret), or url_file.")
    url_file: Path | None = Field(None, description="A file holding the webhook's URL (relative to this file).")
    when: list[Literal["late", "problems"]] = Field(
        ["late", "problems"], description="late: a file is late; problems: a file finished with failed, rejected "
                                          "or invalid records.")
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="Per attempt.")
    attempts: int = Field(3, ge=1, le=10, description="Attempts of one notification (1 s doubling between).")

    @field_validator("url", mode="before")
    @classmethod
    def _url_reference(cls, value: object) -> SecretStr | None:
        return check_reference(value, "url")

    @field_validator("url_file", mode="before")
    @classmethod
    def _expand_url_file(cls, value: object) -> object:
        return expand_env_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> NotifySettings:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give the webhook's URL as url: ${ENV_NAME} or url_file: FILE (one of them)")
        return self

    def resolved_url(self) -> SecretStr:
        """The webhook's URL, checked (https, or http to a loopback address); SecretResolutionError
        names the key, never the URL."""
        url = resolve_secret(self.url, self.url_file, field="notify.url")
        assert url is not None  # _one_source
        problem = webhook_url_problem(url.get_secret_value())
        if problem:
            raise SecretResolutionError(f"notify.url: {problem} (the URL is not shown: it is a secret)")
        return url


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook's URL, without quoting it; None when it can."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    if any(ord(c) <= 32 or ord(c) >= 127 or c == "\\" for c in url):
        return "the URL holds a space, control, backslash or non-ASCII character"
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "not a URL"
    if parts.scheme not in ("https", "http") or not parts.host:
        return "expected an https:// URL"
    if parts.auth is not None:
        return "a user or password in the URL is not accepted"
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.host.strip("[]")).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return "plain http is allowed only for a loopback address (127.0.0.1, [::1]); use https"
    return None


class FeedSettings(InboxSettings):
    """One feed: where its files arrive (the inbox keys), how they are mapped, and the receipt."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Short name used in logs, journal and metrics.")
    mapping: Path = Field(..., description="The feed's mapping file (relative to this file).")
    receipt: ReceiptOptions = Field(default_factory=ReceiptOptions)
    expected: ExpectedSettings | None = Field(
        None, description="When the feed's file is due; a missing file makes the feed late (status, metrics, log, "
                          "notify).")
    notify: NotifySettings | None = Field(None, description="This feed's webhook, instead of the service's notify.")


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class ConsoleSettings(BaseModel):
    """The web console (`usageplace-batch console`): its login, the host names it answers to and
    what it needs behind a reverse proxy. A password and allowed_hosts are required for any address
    but loopback, optional on loopback (given, the console asks for the password there too)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    password: SecretStr | None = Field(None, description="The console's login password, as ${ENV_NAME}.")
    password_file: Path | None = Field(None, description="A file holding the console's password (relative to "
                                                         "this file).")
    playground_files: int = Field(5, ge=1, le=100, description="The mapping playground's diff: how many of a "
                                  "feed's last archived files the current and the edited mapping are run over.")
    mapping_versions: int = Field(10, ge=0, le=1000, description="The mapping playground's save: how many earlier "
                                  "versions of a mapping are kept beside it (NAME.yaml.1, NAME.yaml.2, ...).")
    allowed_hosts: tuple[str, ...] | None = Field(None, description="The host names (NAME or NAME:PORT) "
                                                 "browsers reach the console by; required off loopback, where a "
                                                 "request for another Host is refused (400).")
    public_url: str | None = Field(None, description="The URL browsers open when a reverse proxy is in front "
                                   "(https://NAME[:PORT]/): with https, a Secure session cookie, HSTS and "
                                   "redirects to it.")
    trusted_proxies: tuple[str, ...] = Field((), description="The reverse proxies' addresses or networks (CIDR): "
                                             "only from them is X-Forwarded-For believed (the login throttle's "
                                             "client address).")

    @field_validator("password", mode="before")
    @classmethod
    def _check_reference(cls, value: object) -> SecretStr | None:
        return check_reference(value, "password")

    @field_validator("password_file", mode="before")
    @classmethod
    def _expand_password_file(cls, value: object) -> object:
        return expand_env_path(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _check_hosts(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ValueError("give a list of host names, e.g. [console.example.org]")
        return tuple(console_host(one) for one in value)

    @field_validator("public_url", mode="before")
    @classmethod
    def _check_public_url(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("give the URL browsers open, as https://NAME[:PORT]/")
        parts = urlsplit(value.strip())
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
                or parts.query or parts.fragment or parts.username or parts.password or not port_ok):
            # a path prefix (https://example.org/console/) is not supported: the pages link from /
            raise ValueError("give the URL browsers open, as https://NAME[:PORT]/ (no path, query or user)")
        return f"{parts.scheme}://{parts.netloc.lower()}"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _check_proxies(cls, value: object) -> object:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError("give a list of addresses or networks, e.g. [127.0.0.1, 10.0.0.0/24]")
        for one in value:
            try:
                ipaddress.ip_network(str(one), strict=False)
            except ValueError:
                raise ValueError(f"{str(one)!r} is not an address or a network (CIDR)") from None
        return tuple(str(one) for one in value)

    @model_validator(mode="after")
    def _one_password(self) -> ConsoleSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.public_url is not None and self.allowed_hosts:
            netloc = urlsplit(self.public_url).netloc
            name = netloc.partition("]")[0] + "]" if netloc.startswith("[") else netloc.partition(":")[0]
            if netloc not in self.allowed_hosts and name not in self.allowed_hosts:
                # the redirects go there: every one of them would be refused (400)
                raise ValueError(f"public_url's host {netloc} is not one of allowed_hosts")
        return self


def console_host(value: object) -> str:
    """An entry of console.allowed_hosts, lowercased: a name or an address, with an optional port
    ("console.example.org", "console.example.org:8443", "10.0.0.5", "[2001:db8::5]:443")."""
    text = str(value).strip().lower().rstrip(".") if isinstance(value, str) else ""
    name, port = text, ""
    if text.startswith("["):
        name, _, rest = text.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ("x" if rest else "")
    elif text.count(":") == 1:
        name, _, port = text.partition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not a host name with an optional port (NAME or NAME:PORT)")
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a host name with an optional port (NAME or NAME:PORT)") from None
    elif not name or not all(part and len(part) < 64 and part.replace("-", "").replace("_", "").isalnum()
                             and part.isascii() for part in name.split(".")):
        raise ValueError(f"{value!r} is not a host name with an optional port (NAME or NAME:PORT)")
    return text


class ServiceConfig(BaseModel):
    # hide_input_in_errors: no error text of the service configuration quotes a value (D17)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True,
                              hide_input_in_errors=True)

    schema_ref: str | None = Field(None, alias="$schema")
    api: ApiSettings
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    journal: Path | PostgresJournal = Field(
        Path("var/journal.sqlite3"),
        description="The SQLite journal (a path, relative to this file), or a shared PostgreSQL journal: "
                    "postgresql://user@host:port/dbname?sslmode=verify-full (a libpq URI; its password only as "
                    "${ENV_NAME}, or from journal_password_file, PGPASSWORD or PGPASSFILE).")
    journal_password_file: Path | None = Field(
        None, description="A file holding the PostgreSQL journal's password (relative to this file).")
    journal_retention_days: float | None = Field(
        90, gt=0, le=MAX_SECONDS / 86400,
        description="Forget files (and their events) this many days after they finished with nothing left to "
                    "retry; null keeps everything. Re-dropped files and repeated event ids are recognised "
                    "within this window.")
    staging_dir: Path = Field(Path("var/staging"), description="Where SFTP downloads are kept while processed.")
    instance: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$",
        description="This instance's name in leases, the inbox's lease marker and `status` (unique per running "
                    "process); default: host name, pid and a random suffix.")
    lease_seconds: float = Field(
        30.0, ge=1.0, le=3600.0,
        description="How long a feed's lease lasts without a heartbeat (renewed every third of it); after it "
                    "another instance may take the feed over.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings | None = Field(None, description="HTTP /healthz and Prometheus /metrics; off when absent.")
    console: ConsoleSettings | None = Field(None, description="The web console's login (`usageplace-batch console`).")
    notify: NotifySettings | None = Field(None, description="A webhook told of late files and of files with "
                                                            "problems (a feed's own notify replaces it).")
    feeds: list[FeedSettings] = Field(..., min_length=1)

    @field_validator("journal", mode="before")
    @classmethod
    def _journal_location(cls, value: object) -> object:
        return parse_journal(value)  # a postgresql:// URI, checked here; anything else a path

    @field_validator("journal_password_file", mode="before")
    @classmethod
    def _expand_journal_password_file(cls, value: object) -> object:
        return expand_env_path(value)  # e.g. ${CREDENTIALS_DIRECTORY}/journal-password (systemd)

    @model_validator(mode="after")
    def _journal_password(self) -> ServiceConfig:
        if self.journal_password_file is None:
            return self
        if not isinstance(self.journal, PostgresJournal):
            raise ValueError("journal_password_file is for a PostgreSQL journal (journal: postgresql://...)")
        if self.journal.display != self.journal.uri:
            raise ValueError("journal: give the password as ${ENV_NAME} in the URI or journal_password_file, not both")
        return self

    @field_validator("feeds")
    @classmethod
    def _unique_names(cls, feeds: list[FeedSettings]) -> list[FeedSettings]:
        names = [feed.name for feed in feeds]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"feed names must be unique: {', '.join(doubled)}")
        return feeds

    @model_validator(mode="after")
    def _distinct_inboxes(self) -> ServiceConfig:
        inboxes = [feed.inbox for feed in self.feeds]
        doubled = sorted({inbox for inbox in inboxes if inboxes.count(inbox) > 1})
        if doubled:
            raise ValueError(f"two feeds watch the same inbox ({', '.join(doubled)}): each inbox belongs to one feed")
        return self

    def resolved_journal_password(self) -> SecretStr | None:
        """A PostgreSQL journal's password from the URI's ${ENV_NAME} or journal_password_file, or
        libpq's PGPASSWORD; None for SQLite or when libpq finds it itself (PGPASSFILE). Raises
        SecretResolutionError."""
        if not isinstance(self.journal, PostgresJournal):
            return None
        password = self.journal.resolve(self.journal_password_file)[1]
        if password is None and os.environ.get("PGPASSWORD"):
            return SecretStr(os.environ["PGPASSWORD"])
        return password

    def notify_of(self, feed: FeedSettings) -> NotifySettings | None:
        """The webhook of `feed`: its own, else the service's; None when there is none."""
        return feed.notify if feed.notify is not None else self.notify

    def feed(self, name: str) -> FeedSettings:
        """The feed named `name`; FeedNotFound names the known feeds (a removed or misspelt name)."""
        for feed in self.feeds:
            if feed.name == name:
                return feed
        known = ", ".join(feed.name for feed in self.feeds)
        raise FeedNotFound(f"no feed named {name!r} (feeds: {known})")


class FeedNotFound(ConfigurationError):
    """No feed (or more than one) fits a name or a file; the message says which and how to choose."""


@dataclass(frozen=True)
class LoadedService:
    """A checked configuration with its paths made absolute and every feed's mapping loaded."""

    path: Path
    config: ServiceConfig
    mappings: dict[str, Mapping]


def load_service_config(path: str | Path) -> LoadedService:
    path = Path(path).resolve()
    return _check(load_yaml_file(path, echo_values=False), path)


def _check(loaded: LoadedYaml, path: Path) -> LoadedService:
    if not isinstance(loaded.data, dict):
        raise ConfigError([loaded.problem((), "a service configuration must be a YAML mapping (key: value lines)")])
    config = validate_model(ServiceConfig, loaded)
    config = _absolute_paths(config, path.parent)
    problems: list[ConfigProblem] = []
    if config.api.ca_bundle is not None:  # a configuration error, never a transient TLS failure (D24)
        problem = ca_bundle_problem(config.api.ca_bundle)
        if problem:
            problems.append(loaded.problem(("api", "ca_bundle"), problem))
    if config.journal_password_file is not None and not config.journal_password_file.is_file():
        problems.append(loaded.problem(("journal_password_file",),
                                       missing_secret_file("journal_password_file", config.journal_password_file)))
    for index, feed in enumerate(config.feeds):
        for field in SECRET_FILE_FIELDS:
            value = getattr(feed, field)
            if value is not None and not value.is_file():
                problems.append(loaded.problem(("feeds", index, field), missing_secret_file(field, value)))
    notifies = [(("notify", "url_file"), config.notify)] + [
        (("feeds", index, "notify", "url_file"), feed.notify) for index, feed in enumerate(config.feeds)]
    for where, notify in notifies:
        if notify is not None and notify.url_file is not None and not notify.url_file.is_file():
            problems.append(loaded.problem(where, missing_secret_file("url_file", notify.url_file)))
    mappings: dict[str, Mapping] = {}
    for index, feed in enumerate(config.feeds):
        try:
            mappings[feed.name] = load_mapping(feed.mapping)
        except ConfigError as exc:
            problems.append(loaded.problem(("feeds", index, "mapping"), f"the mapping {feed.mapping} has problems:"))
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return LoadedService(path, config, mappings)


def _absolute_paths(config: ServiceConfig, base: Path) -> ServiceConfig:
    def absolute(value: Path | None) -> Path | None:
        return None if value is None else (value if value.is_absolute() else (base / value))

    feeds = []
    for feed in config.feeds:
        update: dict[str, Any] = {
            "mapping": absolute(feed.mapping),
            "known_hosts": absolute(feed.known_hosts),
            "private_key_file": absolute(feed.private_key_file),
            "key_passphrase_file": absolute(feed.key_passphrase_file),
            "password_file": absolute(feed.password_file),
        }
        if feed.notify is not None and feed.notify.url_file is not None:
            update["notify"] = feed.notify.model_copy(update={"url_file": absolute(feed.notify.url_file)})
        location = parse_location(feed.inbox)
        if isinstance(location, LocalLocation) and not location.path.is_absolute():
            update["inbox"] = str(base / location.path)
        feeds.append(feed.model_copy(update=update))
    api = config.api
    api_update = {}
    for key in ("apicode_file", "token_file", "ca_bundle"):
        value = getattr(api, key, None)
        if value is not None:
            api_update[key] = absolute(Path(value))
    return config.model_copy(
        update={
            "journal": config.journal if isinstance(config.journal, PostgresJournal) else absolute(config.journal),
            "journal_password_file": absolute(config.journal_password_file),
            "staging_dir": absolute(config.staging_dir),
            "console": None if config.console is None else config.console.model_copy(
                update={"password_file": absolute(config.console.password_file)}),
            "feeds": feeds,
            "api": api.model_copy(update=api_update) if api_update else api,
            "notify": config.notify if config.notify is None or config.notify.url_file is None
            else config.notify.model_copy(update={"url_file": absolute(config.notify.url_file)}),
        }
    )


def secret_file_warnings(loaded: LoadedService) -> list[str]:
    """Secret files (API code or token, SFTP key, passphrase, password) open to group or others."""
    api = loaded.config.api
    found = [(f"{loaded.path}: api", api.apicode_file, "apicode_file"),
             (f"{loaded.path}: api", api.token_file, "token_file"),
             (f"{loaded.path}", loaded.config.journal_password_file, "journal_password_file"),
             (f"{loaded.path}: console", loaded.config.console.password_file if loaded.config.console else None,
              "password_file")]
    if loaded.config.notify is not None:
        found.append((f"{loaded.path}: notify", loaded.config.notify.url_file, "url_file"))
    for feed in loaded.config.feeds:
        found += [(f"{loaded.path}: feeds[{feed.name}]", getattr(feed, field), field) for field in SECRET_FILE_FIELDS]
        if feed.notify is not None:
            found.append((f"{loaded.path}: feeds[{feed.name}]: notify", feed.notify.url_file, "url_file"))
    warnings = []
    for where, path, field in found:
        warning = secret_file_warning(path, field)
        if warning:
            warnings.append(f"{where}: {warning}")
    return warnings
