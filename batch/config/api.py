"""Settings for talking to Ropo One: where, who, and how hard to push.

Ropo One base URLs (Finland; from the contract's ``servers``):

- test environment:       https://rc.ropo24.fi/rest
- production environment: https://ropo24.fi/rest

Sweden and Norway have their own hosts. A local sandbox (``batch.sandbox``) listens on
``http://127.0.0.1:PORT/rest``; plain http is accepted for loopback hosts only.

Secrets (the API code, or a fixed token) are never written literally in YAML. They are
given either as ``${ENV_VAR}`` (the whole value, resolved from the environment) or as a
path in ``apicode_file`` / ``token_file`` (the file's content, stripped). The models keep
only the reference; :meth:`ApiSettings.credentials` resolves it when a client is built,
so a configuration can be checked on a machine that does not hold the secrets.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from batch.config.envpath import expand_env_path

TEST_BASE_URL = "https://rc.ropo24.fi/rest"
PRODUCTION_BASE_URL = "https://ropo24.fi/rest"

TOKEN_LIFETIME_SECONDS = 7200.0  # "A token lives 2 hours" (contract)

_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_LOOPBACK_NAMES = {"localhost"}


class SecretResolutionError(ValueError):
    """A secret reference could not be resolved. The message never holds the secret."""


@dataclass(frozen=True)
class Credentials:
    """Resolved secrets: either cid + apicode (a token is fetched) or a fixed token."""

    cid: str | None
    apicode: SecretStr | None
    token: SecretStr | None

    def secrets(self) -> list[str]:
        """The secret strings, for redaction."""
        return [s.get_secret_value() for s in (self.apicode, self.token) if s is not None]


def resolve_secret(
    reference: SecretStr | None,
    path: Path | None,
    *,
    field: str,
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """Resolve ``${ENV_VAR}`` (``reference``) or a secret file (``path``) to its value."""
    if reference is not None:
        match = _ENV_REFERENCE.match(reference.get_secret_value())
        if match is None:  # the validators make this unreachable, kept as a guard
            raise SecretResolutionError(f"{field}: expected ${{ENV_VAR}}")
        name = match.group(1)
        value = (os.environ if env is None else env).get(name)
        if value is None or not value.strip():
            raise SecretResolutionError(f"{field}: environment variable {name} is not set")
        return SecretStr(value.strip())
    if path is not None:
        try:
            value = path.read_text("utf-8").strip()
        except OSError as exc:
            raise SecretResolutionError(
                f"{field}_file: cannot read {path}: {exc.strerror or exc}"
            ) from None
        if not value:
            raise SecretResolutionError(f"{field}_file: {path} is empty")
        return SecretStr(value)
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiSettings(BaseModel):
    """How to reach and authenticate with Ropo One.

    ``base_url`` is the server prefix including ``/rest`` (test
    https://rc.ropo24.fi/rest, production https://ropo24.fi/rest). TLS certificates are
    always verified; ``ca_bundle`` adds a private CA bundle instead of the system store.
    Authentication is either ``cid`` + (``apicode`` | ``apicode_file``) — a token is
    fetched from ``POST /token`` and renewed ``token_renew_margin`` seconds before it
    expires — or a fixed ``token`` | ``token_file``.
    """

    # hide_input_in_errors: a literal secret written by mistake must not be echoed back.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    base_url: str = Field(description="Ropo One server prefix, e.g. https://rc.ropo24.fi/rest")
    cid: str | None = Field(default=None, description="Customer number, e.g. 1000011")
    apicode: SecretStr | None = Field(default=None, description="${ENV_VAR} holding the API code")
    apicode_file: Path | None = Field(default=None, description="File holding the API code")
    token: SecretStr | None = Field(default=None, description="${ENV_VAR} holding a fixed token")
    token_file: Path | None = Field(default=None, description="File holding a fixed token")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds")
    ca_bundle: Path | None = Field(default=None, description="PEM bundle of trusted CAs")
    token_renew_margin: float = Field(
        default=300.0, ge=0, description="Renew the token this many seconds before it expires"
    )
    token_lifetime: float = Field(
        default=TOKEN_LIFETIME_SECONDS,
        gt=0,
        description="Assumed token lifetime when the token carries no readable exp claim",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https:// URL, e.g. https://ropo24.fi/rest")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("plain http is allowed only for a loopback sandbox; use https")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("apicode_file", "token_file", "ca_bundle", mode="before")
    @classmethod
    def _expand_path(cls, value: object) -> object:
        return expand_env_path(value)  # ${CREDENTIALS_DIRECTORY}/ropo-apicode (systemd LoadCredential)

    @field_validator("apicode", "token")
    @classmethod
    def _check_reference(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _ENV_REFERENCE.match(value.get_secret_value()):
            raise ValueError(
                "write the secret as ${ENV_VAR} or use the *_file key; "
                "a literal secret is not allowed in configuration"
            )
        return value

    @model_validator(mode="after")
    def _check_auth_choice(self) -> ApiSettings:
        apicode_given = (self.apicode is not None) + (self.apicode_file is not None)
        token_given = (self.token is not None) + (self.token_file is not None)
        if apicode_given > 1:
            raise ValueError("give either apicode or apicode_file, not both")
        if token_given > 1:
            raise ValueError("give either token or token_file, not both")
        if token_given and (apicode_given or self.cid):
            raise ValueError("give either a fixed token or cid + apicode, not both")
        if not token_given and not (self.cid and apicode_given):
            raise ValueError("authentication missing: give cid + apicode (or apicode_file), or token")
        if self.token_renew_margin >= self.token_lifetime:
            raise ValueError("token_renew_margin must be shorter than token_lifetime")
        return self

    @property
    def fixed_token(self) -> bool:
        return self.token is not None or self.token_file is not None

    @property
    def verify(self) -> str | bool:
        """The value for requests' ``verify``: never False."""
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    def credentials(self, env: Mapping[str, str] | None = None) -> Credentials:
        """Resolve the secret references (environment or files). Raises SecretResolutionError."""
        if self.fixed_token:
            token = resolve_secret(self.token, self.token_file, field="token", env=env)
            return Credentials(cid=None, apicode=None, token=token)
        apicode = resolve_secret(self.apicode, self.apicode_file, field="apicode", env=env)
        return Credentials(cid=self.cid, apicode=apicode, token=None)


DEFAULT_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class DeliverySettings(BaseModel):
    """How events are pushed: concurrency, rate, and the retry schedule.

    A transient result (network error, timeout, a status in ``retry_statuses``, any 5xx)
    is retried after ``min(backoff_cap, backoff_base * 2**(attempt-1))`` seconds, reduced
    by a random share of up to ``backoff_jitter`` (0..1), and never sooner than the
    server's Retry-After. After ``max_attempts`` attempts, or when ``deadline_seconds``
    for the file has passed, the event is ``failed`` and can be retried in a later run.

    An outage is one fault, not a failure of every event: when ``breaker_threshold``
    different events in a row meet a transient error (no answer, a timeout, 5xx, 429 ...),
    delivery holds the whole feed and sends one probe at a time, the first after
    ``breaker_probe_initial`` seconds, doubling up to ``breaker_probe_max``; held and probe
    attempts spend no event's ``max_attempts``, and the hold does not count against the
    file's deadline. The service sends a feed's failed events again ``retry_failed_after``
    seconds after they failed, as the ``retry`` command does (null: only ``retry``).
    """

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(default=8, ge=1, le=256, description="Concurrent requests")
    rate_limit: float | None = Field(default=None, gt=0, description="Events per second, at most")
    rate_burst: int = Field(default=1, ge=1, description="Token-bucket size for rate_limit")
    max_attempts: int = Field(default=5, ge=1, le=100, description="Attempts per event per run")
    backoff_base: float = Field(default=1.0, ge=0, description="Seconds before the 1st retry")
    backoff_cap: float = Field(default=60.0, ge=0, description="Longest wait between attempts")
    backoff_jitter: float = Field(default=0.5, ge=0, le=1, description="Random share 0..1")
    deadline_seconds: float | None = Field(
        default=3600.0, gt=0, description="Per file: stop retrying after this many seconds"
    )
    retry_statuses: frozenset[int] = Field(
        default=DEFAULT_RETRY_STATUSES,
        description="HTTP statuses that are transient (5xx always are; 401 renews the token)",
    )
    breaker_threshold: int | None = Field(
        default=5, ge=2, le=1000,
        description="Different events failing transiently in a row before delivery holds for "
                    "an outage and probes (null: never hold)",
    )
    breaker_probe_initial: float = Field(default=1.0, gt=0, description="Seconds to the 1st probe")
    breaker_probe_max: float = Field(default=15.0, gt=0, description="Longest wait between probes")
    retry_failed_after: float | None = Field(
        default=900.0, gt=0,
        description="Seconds after which the service sends failed events again (null: off)",
    )

    @field_validator("retry_statuses")
    @classmethod
    def _check_statuses(cls, value: frozenset[int]) -> frozenset[int]:
        bad = sorted(s for s in value if not 400 <= s <= 599 or s == 401)
        if bad:
            raise ValueError(f"not retriable statuses: {bad} (use 4xx/5xx other than 401)")
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> DeliverySettings:
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be >= backoff_base")
        if self.breaker_probe_max < self.breaker_probe_initial:
            raise ValueError("breaker_probe_max must be >= breaker_probe_initial")
        return self
