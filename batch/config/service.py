"""The service configuration: the API, delivery limits, the journal, logging, and the feeds.

Checked at load like mappings are (file, line, key of every problem), including every feed's
mapping file and the API's CA bundle (it must load as a PEM bundle). Values written in this file
are never quoted in a problem: a secret typed under the wrong key must not be echoed. Relative
paths (mappings, journal, key files, known_hosts, local inboxes) are taken relative to the
configuration file, so a config directory can be moved as a whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from batch.config.api import MAX_SECONDS, ApiSettings, DeliverySettings, ca_bundle_problem
from batch.config.envpath import expand_env_path
from batch.config.inbox import SECRET_FILE_FIELDS, InboxSettings, LocalLocation, missing_secret_file, parse_location
from batch.config.journal import PostgresJournal, parse_journal
from batch.config.mapping import Mapping, load_mapping
from batch.config.secrets import check_reference, secret_file_warning
from batch.config.yamlload import ConfigError, ConfigProblem, LoadedYaml, load_yaml_file, validate_model
from batch.errors import ConfigurationError


class ReceiptOptions(BaseModel):
    """The receipt CSV's dialect; each key defaults to the input file's own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    encoding: str | None = Field(None, description="Default: the input's encoding (utf-8 for XML).")
    delimiter: str | None = Field(None, description="Default: the input's delimiter (',' for XML).")
    quotechar: str = '"'
    line_ending: Literal["crlf", "lf"] = "crlf"


class FeedSettings(InboxSettings):
    """One feed: where its files arrive (the inbox keys), how they are mapped, and the receipt."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Short name used in logs, journal and metrics.")
    mapping: Path = Field(..., description="The feed's mapping file (relative to this file).")
    receipt: ReceiptOptions = Field(default_factory=ReceiptOptions)


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class ConsoleSettings(BaseModel):
    """The web console (`usageplace-batch console`): its login. A password is required for any
    address but loopback, optional on loopback (given, the console asks for it there too)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, hide_input_in_errors=True)

    password: SecretStr | None = Field(None, description="The console's login password, as ${ENV_NAME}.")
    password_file: Path | None = Field(None, description="A file holding the console's password (relative to "
                                                         "this file).")
    playground_files: int = Field(5, ge=1, le=100, description="The mapping playground's diff: how many of a "
                                  "feed's last archived files the current and the edited mapping are run over.")
    mapping_versions: int = Field(10, ge=0, le=1000, description="The mapping playground's save: how many earlier "
                                  "versions of a mapping are kept beside it (NAME.yaml.1, NAME.yaml.2, ...).")

    @field_validator("password", mode="before")
    @classmethod
    def _check_reference(cls, value: object) -> SecretStr | None:
        return check_reference(value, "password")

    @field_validator("password_file", mode="before")
    @classmethod
    def _expand_password_file(cls, value: object) -> object:
        return expand_env_path(value)

    @model_validator(mode="after")
    def _one_password(self) -> ConsoleSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        return self


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
        }
    )


def secret_file_warnings(loaded: LoadedService) -> list[str]:
    """Secret files (API code or token, SFTP key, passphrase, password) open to group or others."""
    api = loaded.config.api
    found = [(f"{loaded.path}: api", api.apicode_file, "apicode_file"),
             (f"{loaded.path}: api", api.token_file, "token_file"),
             (f"{loaded.path}", loaded.config.journal_password_file, "journal_password_file")]
    for feed in loaded.config.feeds:
        found += [(f"{loaded.path}: feeds[{feed.name}]", getattr(feed, field), field) for field in SECRET_FILE_FIELDS]
    warnings = []
    for where, path, field in found:
        warning = secret_file_warning(path, field)
        if warning:
            warnings.append(f"{where}: {warning}")
    return warnings
