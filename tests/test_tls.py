"""TLS is verified: a real HTTPS sandbox with certificates from a throw-away CA (trustme).

An untrusted or wrongly named certificate stops delivery at once with a message that says
what to do (nothing is sent, nothing is retried in vain, the events stay pending); the
feed's ``ca_bundle`` trusts a private CA; and the `process` command resumes the file once
the bundle is configured.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from batch.cli.commands import run
from batch.config.api import ApiSettings
from batch.delivery.ropo import AuthError, RopoClient, SendKind
from batch.delivery.scheduler import DeliverySettings, Outgoing, State, deliver
from batch.sandbox.server import Sandbox, tls_context
from tests.fixtures_http import APICODE_ENV, settings_for
from tests.fixtures_pipeline import Workspace, make_rows, write_feed

TOKEN_ENV = "ROPO_TEST_TOKEN"
EVENT = {"id": "tls-1", "usageplacecode": "643007572062443672", "time": "2024-01-04 10:41:40",
         "status": "disconnected"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def https_sandbox(ca: trustme.CA, *names: str) -> Sandbox:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return Sandbox(tls=context)


@pytest.fixture
def tls_sandbox(ca: trustme.CA) -> Iterator[Sandbox]:
    with https_sandbox(ca, "127.0.0.1", "localhost") as sandbox:
        yield sandbox


@pytest.fixture
def client_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RopoClient]]:
    clients: list[RopoClient] = []

    def make(sandbox: Sandbox, **overrides: object) -> RopoClient:
        monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
        monkeypatch.setenv(TOKEN_ENV, "a-configured-token")
        client = RopoClient(settings_for(sandbox, **overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_the_sandbox_serves_https(tls_sandbox: Sandbox) -> None:
    assert tls_sandbox.base_url.startswith("https://127.0.0.1:")


def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
        tls_sandbox: Sandbox, client_for: Callable[..., RopoClient]) -> None:
    client = client_for(tls_sandbox)
    with pytest.raises(AuthError) as refused:
        client.authenticate()
    message = str(refused.value)
    assert f"the TLS certificate of {tls_sandbox.base_url} could not be verified" in message
    assert "system's trusted CAs" in message and "api.ca_bundle" in message
    assert tls_sandbox.apicode not in message
    assert tls_sandbox.tokens_issued == 0 and tls_sandbox.arrivals == []


def test_delivery_stops_at_an_untrusted_certificate_and_leaves_everything_pending(
        tls_sandbox: Sandbox, client_for: Callable[..., RopoClient]) -> None:
    client = client_for(tls_sandbox, token="${" + TOKEN_ENV + "}", cid=None, apicode=None)
    assert client.send_event(EVENT).kind is SendKind.AUTH  # not TRANSIENT: retrying cannot help
    outcomes = []
    items = [Outgoing(n, f"P{n % 3}", {**EVENT, "id": f"tls-{n}"}) for n in range(12)]
    report = deliver(items, client, DeliverySettings(max_in_flight=2, backoff_base=0.01),
                     lambda item, outcome: outcomes.append(outcome))
    assert len(outcomes) == 12 and {o.state for o in outcomes} == {State.PENDING}
    assert report.auth_error is not None and "could not be verified" in report.auth_error
    assert max(o.attempts for o in outcomes) <= 1
    assert tls_sandbox.arrivals == []  # the handshake failed: no request reached the server


def test_ca_bundle_trusts_a_private_ca(tls_sandbox: Sandbox, ca_bundle: Path,
                                       client_for: Callable[..., RopoClient]) -> None:
    client = client_for(tls_sandbox, ca_bundle=ca_bundle)
    client.authenticate()
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    assert tls_sandbox.accepted_ids == ["tls-1"]


def test_D9_requests_ca_bundle_still_trusts_a_private_ca_without_trust_env(
        tls_sandbox: Sandbox, ca_bundle: Path, client_for: Callable[..., RopoClient],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the session ignores the environment (no .netrc), but REQUESTS_CA_BUNDLE is applied on purpose
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_bundle))
    client = client_for(tls_sandbox)
    assert client._session.trust_env is False
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED


def test_a_certificate_for_another_host_is_refused(ca: trustme.CA, ca_bundle: Path,
                                                   client_for: Callable[..., RopoClient]) -> None:
    with https_sandbox(ca, "api.ropo.example") as sandbox:
        client = client_for(sandbox, ca_bundle=ca_bundle)
        with pytest.raises(AuthError) as refused:
            client.authenticate()
        assert f"against the CA bundle {ca_bundle}" in str(refused.value)
        assert "127.0.0.1" in str(refused.value) and "mismatch" in str(refused.value).lower()
        assert sandbox.tokens_issued == 0


def test_process_stops_on_an_untrusted_certificate_and_resumes_with_ca_bundle(
        tls_sandbox: Sandbox, ca_bundle: Path, workspace_for: Callable[..., Workspace],
        capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace_for(tls_sandbox)
    path = write_feed(ws.inbox / "n.csv", make_rows(6, 3))
    assert run(["process", str(path), "--config", str(ws.config)]) == 2
    err = capsys.readouterr().err
    assert "n.csv: cannot deliver to Ropo One: the TLS certificate of" in err and "6 pending" in err
    assert tls_sandbox.apicode not in err
    text = ws.config.read_text(encoding="utf-8")
    ws.config.write_text(text.replace("api:\n", f"api:\n  ca_bundle: {ca_bundle}\n", 1), encoding="utf-8")
    assert run(["process", str(path), "--config", str(ws.config)]) == 0
    assert len(tls_sandbox.accepted_ids) == 6


def test_sandbox_command_serves_https_with_a_certificate_file(
        ca: trustme.CA, ca_bundle: Path, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    tls_context(pem)  # loads: certificate and key in one file
    proc = subprocess.Popen([sys.executable, "-m", "batch", "sandbox", "--port", "0", "--tls-cert", str(pem)],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening at https://127.0.0.1:" in line, line
        base_url = line.split("listening at ", 1)[1].strip()
        settings = ApiSettings(base_url=base_url, token="${" + TOKEN_ENV + "}", ca_bundle=ca_bundle)
        client = RopoClient(settings, env={TOKEN_ENV: "not-a-sandbox-token"})
        try:
            result = client.send_event(EVENT)
        finally:
            client.close()
        assert result.kind is SendKind.AUTH and result.status == 401  # TLS fine; the token is not
    finally:
        proc.terminate()
        proc.wait(timeout=10)
