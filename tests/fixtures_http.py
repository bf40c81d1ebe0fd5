"""HTTP fixtures: a Ropo One sandbox on loopback whose every API request is checked
against the published OpenAPI contract with openapi-core.

``sandbox``      — a running Sandbox; at teardown the test fails if any request the
                   client sent violated the contract.
``raw_sandbox``  — the same without the contract check, for tests that send malformed
                   requests on purpose (the sandbox's own validation).
``api_settings`` — ApiSettings pointing at ``sandbox`` (apicode via ${ROPO_TEST_APICODE}).
``make_client``  — builds RopoClients for ``sandbox`` and closes them after the test.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pytest
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from batch.config.api import ApiSettings
from batch.contract import openapi_document
from batch.delivery.ropo import RopoClient
from batch.sandbox.server import RawRequest, Sandbox

APICODE_ENV = "ROPO_TEST_APICODE"


@lru_cache(maxsize=1)
def contract_openapi() -> OpenAPI:
    """The contract, with one more server: the sandbox on any loopback port."""
    spec = copy.deepcopy(openapi_document())
    spec["servers"].append({
        "url": "http://127.0.0.1:{port}/rest",
        "variables": {"port": {"default": "80"}},
    })
    return OpenAPI.from_dict(spec)


@dataclass
class _OpenAPIRequest:
    """A raw request in the shape openapi-core's Request protocol wants."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def to_openapi_request(raw: RawRequest) -> _OpenAPIRequest:
    path, _, query = raw.path.partition("?")
    headers = Headers(list(raw.headers.items()))
    return _OpenAPIRequest(
        host_url=raw.host_url,
        path=path,
        method=raw.method.lower(),
        body=raw.body or None,
        content_type=headers.get("Content-Type", ""),
        parameters=RequestParameters(
            query=ImmutableMultiDict([tuple(p.split("=", 1)) for p in query.split("&") if "=" in p]),  # type: ignore[misc]  # two parts: each holds "="
            header=headers,
        ),
    )


@dataclass
class ContractCheck:
    """Validates raw requests against the contract and remembers the violations."""

    checked: int = 0
    violations: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, raw: RawRequest) -> None:
        errors = list(contract_openapi().iter_request_errors(to_openapi_request(raw)))
        with self._lock:
            self.checked += 1
            for error in errors:
                cause = error.__cause__ or getattr(error, "schema_errors", None) or ""
                self.violations.append(f"{raw.method} {raw.path}: {error!r} {cause}")


@pytest.fixture
def contract_check() -> ContractCheck:
    return ContractCheck()


@pytest.fixture
def make_sandbox(contract_check: ContractCheck) -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes (Sandbox keyword arguments) whose requests are contract-checked."""
    running: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        started = Sandbox(request_hook=contract_check, **kwargs).start()
        running.append(started)
        return started

    yield make
    for started in running:
        started.close()
    if contract_check.violations:
        pytest.fail("requests violated the Ropo One contract:\n  "
                    + "\n  ".join(contract_check.violations[:20]), pytrace=False)


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def raw_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


def settings_for(sandbox: Sandbox, **overrides: Any) -> ApiSettings:
    """ApiSettings for ``sandbox``; the apicode comes from ${ROPO_TEST_APICODE}."""
    values: dict[str, Any] = {
        "base_url": sandbox.base_url, "cid": sandbox.cid,
        "apicode": "${" + APICODE_ENV + "}", "connect_timeout": 2.0, "read_timeout": 2.0,
    }
    values.update(overrides)
    return ApiSettings(**values)


@pytest.fixture
def api_settings(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> ApiSettings:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    return settings_for(sandbox)


@pytest.fixture
def make_client(api_settings: ApiSettings) -> Iterator[Callable[..., RopoClient]]:
    clients: list[RopoClient] = []

    def make(settings: ApiSettings | None = None, **kwargs: Any) -> RopoClient:
        client = RopoClient(settings or api_settings, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
