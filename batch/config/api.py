"""Settings for talking to Ropo One: where, who, and how hard to push.

Ropo One base URLs (Finland; from the contract's ``servers``):

- test environment:       https://rc.ropo24.fi/rest
- production environment: https://ropo24.fi/rest

Sweden and Norway have their own hosts. A local sandbox (``batch.sandbox.server``) listens on
``http://127.0.0.1:PORT/rest``; plain http is accepted for a loopback address written as one
(127.0.0.1 or [::1]) only, never for a name: ``localhost`` is whatever /etc/hosts or DNS says,
and a name that resolves elsewhere would carry the API code in clear over the network. A base URL is
only ``scheme://host[:port]/path`` that urllib.parse and urllib3 read alike (no user:password@,
backslash, ``@``, ``%``, query or fragment): :attr:`ApiSettings.origin` is where every request goes.

Secrets (the API code, or a fixed token) are never written literally in YAML. They are
given either as ``${ENV_VAR}`` (the whole value, resolved from the environment) or as a
path in ``apicode_file`` / ``token_file``, by the rules every secret follows
(:mod:`batch.config.secrets`). The models keep only the reference;
:meth:`ApiSettings.credentials` resolves it when a client is built, so a configuration can be
checked on a machine that does not hold the secrets.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from batch.config.envpath import expand_env_path

# SecretResolutionError and resolve_secret are imported from here by callers and tests (re-exported)
from batch.config.secrets import SecretResolutionError, check_reference, resolve_secret  # noqa: F401

TEST_BASE_URL = "https://rc.ropo24.fi/rest"
PRODUCTION_BASE_URL = "https://ropo24.fi/rest"

TOKEN_LIFETIME_SECONDS = 7200.0  # "A token lives 2 hours" (contract)
# The longest duration any setting may give (a year). `.inf` is refused as well (allow_inf_nan=False):
# timeouts and waits beyond what sockets and threading accept (~292 years) raised OverflowError on
# every request (events "failed") or left a feed asleep for ever, while validate-config said ok.
MAX_SECONDS = 365 * 86400.0

@dataclass(frozen=True)
class Credentials:
    """Resolved secrets: either cid + apicode (a token is fetched) or a fixed token."""

    cid: str | None
    apicode: SecretStr | None
    token: SecretStr | None

    def secrets(self) -> list[str]:
        """The secret strings, for redaction."""
        return [s.get_secret_value() for s in (self.apicode, self.token) if s is not None]


def _is_loopback_address(host: str) -> bool:
    """Is `host` a loopback IP address (127.0.0.0/8, ::1)? A name never is: it is only what a
    resolver answers, which /etc/hosts or DNS can point anywhere."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiOrigin:
    """Where every request to Ropo One goes: scheme, host (lower case, IPv6 without brackets), port.

    The HTTP client pins each request (and refuses any redirect) to this origin; :meth:`matches`
    tells whether another URL (a request's, a Location header's) points at the same place, parsed
    the way urllib3 parses what it connects to."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[self.scheme]
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    def matches(self, url: str) -> bool:
        try:
            parts = parse_url(url)
        except LocationParseError:
            return False
        scheme = (parts.scheme or "").lower()
        if scheme not in _DEFAULT_PORTS or parts.auth is not None:
            return False
        host = (parts.host or "").lower().strip("[]")
        return (scheme, host, parts.port or _DEFAULT_PORTS[scheme]) == (self.scheme, self.host, self.port)


_DEFAULT_PORTS = {"https": 443, "http": 80}
# an address that resolvers read as IPv4 (127.1, 0x7f.0.0.1, 2130706433) must be written as one
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_URL_SHAPE = re.compile(r"^(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:(?P<port>[0-9]{1,5}))?"
                        r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:/-]*)?$")
_URL_EXAMPLE = "e.g. https://ropo24.fi/rest"


def parse_base_url(value: str) -> tuple[str, ApiOrigin]:
    """The base URL, normalised, and its origin; ValueError for anything two parsers could read apart.

    The check and the HTTP client must see the same host: ``http://127.0.0.2:1\\@127.0.0.1:2/rest``
    passed a urlsplit-based check as 127.0.0.1 while urllib3 connected to 127.0.0.2. So only a plain
    ``scheme://host[:port][/path]`` is accepted (no user or password, backslash, ``@``, ``%``, query,
    fragment, whitespace or control character, no dot segments), and urllib3 and urllib.parse must
    agree on every part of it."""
    text = value.strip()
    if any(c == "\\" or c == "@" or c == "%" or ord(c) <= 32 or ord(c) >= 127 for c in text):
        raise ValueError(f"must be a plain https:// URL ({_URL_EXAMPLE}): no user or password, backslash, "
                         "'@', '%', space, control or non-ASCII character")
    match = _URL_SHAPE.match(_lower_origin(text))
    if match is None:
        raise ValueError(f"must be an absolute https:// URL, scheme://host[:port]/path without query or fragment "
                         f"({_URL_EXAMPLE})")
    scheme, host, path = match["scheme"], match["host"], (match["path"] or "").rstrip("/")
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"must be an absolute https:// URL ({_URL_EXAMPLE})")
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise ValueError("the port must be 1..65535")
    bare = host.strip("[]")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError("the host in [brackets] must be an IPv6 address") from None
    elif _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("a numeric host must be an IPv4 address written as four decimal numbers, "
                             "e.g. 127.0.0.1") from None
    elif not _HOST_NAME.match(host):
        raise ValueError("the host must be a DNS name (letters, digits, '-', '.') or an IP address")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("the path must not contain . or .. segments")
    if scheme == "http" and not _is_loopback_address(bare):
        if bare == "localhost" or bare.endswith(".localhost"):
            raise ValueError(f"plain http is allowed only for a loopback address written as one (127.0.0.1 or [::1]), "
                             f"not for the name {bare!r}, which /etc/hosts or DNS may point elsewhere; use https")
        raise ValueError("plain http is allowed only for a loopback sandbox; use https")
    origin = ApiOrigin(scheme, bare, port)
    normalised = origin.url + path
    _check_parsers_agree(normalised, origin, path)
    return normalised, origin


def _lower_origin(text: str) -> str:
    """Scheme and host in lower case (both are case-insensitive), the path as written."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{authority.lower()}{slash}{path}"


def _check_parsers_agree(url: str, origin: ApiOrigin, path: str) -> None:
    """A backstop: urllib.parse (the check above) and urllib3 (the client) read the same URL."""
    split = urlsplit(url)
    try:
        parsed = parse_url(url)
    except LocationParseError:
        raise ValueError("the HTTP client cannot parse this URL") from None
    ours = (origin.scheme, origin.host, origin.port, path)
    by_urllib = (split.scheme, split.hostname, split.port or _DEFAULT_PORTS[split.scheme], split.path.rstrip("/"))
    by_urllib3 = (parsed.scheme, (parsed.host or "").strip("[]"),
                  parsed.port or _DEFAULT_PORTS.get(parsed.scheme or "", 0), (parsed.path or "").rstrip("/"))
    if not ours == by_urllib == by_urllib3 or split.username or parsed.auth:
        raise ValueError("the URL is ambiguous: the HTTP client would read it differently; write scheme://host:port/path")


def ca_bundle_problem(path: Path) -> str | None:
    """Why a CA bundle cannot be used (loaded once, as the TLS client will), or None."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file (a PEM bundle of CA certificates is expected)"
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        return f"{path} holds no usable PEM certificate ({exc.reason or exc})"
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    return None


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
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)

    base_url: str = Field(description="Ropo One server prefix, e.g. https://rc.ropo24.fi/rest")
    cid: str | None = Field(default=None, description="Customer number, e.g. 1000011")
    apicode: SecretStr | None = Field(default=None, description="${ENV_VAR} holding the API code")
    apicode_file: Path | None = Field(default=None, description="File holding the API code")
    token: SecretStr | None = Field(default=None, description="${ENV_VAR} holding a fixed token")
    token_file: Path | None = Field(default=None, description="File holding a fixed token")
    connect_timeout: float = Field(default=5.0, gt=0, le=MAX_SECONDS, description="Seconds")
    read_timeout: float = Field(default=30.0, gt=0, le=MAX_SECONDS, description="Seconds")
    # read_timeout bounds each socket read: a server sending a byte every few seconds never
    # trips it. This bounds the whole request, from sending it to the last byte of the answer.
    request_deadline: float = Field(
        default=120.0, gt=0, le=MAX_SECONDS,
        description="Seconds one request (token or event) may take in all, however the server trickles its answer",
    )
    ca_bundle: Path | None = Field(default=None, description="PEM bundle of trusted CAs")
    token_renew_margin: float = Field(
        default=300.0, ge=0, le=MAX_SECONDS, description="Renew the token this many seconds before it expires"
    )
    token_lifetime: float = Field(
        default=TOKEN_LIFETIME_SECONDS,
        gt=0, le=MAX_SECONDS,
        description="Assumed token lifetime when the token carries no readable exp claim",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return parse_base_url(value)[0]

    @field_validator("apicode_file", "token_file", "ca_bundle", mode="before")
    @classmethod
    def _expand_path(cls, value: object) -> object:
        return expand_env_path(value)  # ${CREDENTIALS_DIRECTORY}/ropo-apicode (systemd LoadCredential)

    @field_validator("apicode", "token", mode="before")
    @classmethod
    def _check_reference(cls, value: object, info: ValidationInfo) -> SecretStr | None:
        return check_reference(value, info.field_name or "")

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
    def origin(self) -> ApiOrigin:
        """Scheme, host and port of ``base_url``: every request must go there (see ApiOrigin.matches)."""
        return parse_base_url(self.base_url)[1]

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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)

    max_in_flight: int = Field(default=8, ge=1, le=256, description="Concurrent requests")
    rate_limit: float | None = Field(default=None, gt=0, description="Events per second, at most")
    rate_burst: int = Field(default=1, ge=1, description="Token-bucket size for rate_limit")
    max_attempts: int = Field(default=5, ge=1, le=100, description="Attempts per event per run")
    backoff_base: float = Field(default=1.0, ge=0, le=MAX_SECONDS, description="Seconds before the 1st retry")
    backoff_cap: float = Field(default=60.0, ge=0, le=MAX_SECONDS, description="Longest wait between attempts")
    backoff_jitter: float = Field(default=0.5, ge=0, le=1, description="Random share 0..1")
    deadline_seconds: float | None = Field(
        default=3600.0, gt=0, le=MAX_SECONDS, description="Per file: stop retrying after this many seconds"
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
    breaker_probe_initial: float = Field(default=1.0, gt=0, le=MAX_SECONDS, description="Seconds to the 1st probe")
    breaker_probe_max: float = Field(default=15.0, gt=0, le=MAX_SECONDS, description="Longest wait between probes")
    retry_failed_after: float | None = Field(
        default=900.0, gt=0, le=MAX_SECONDS,
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
