"""The Ropo One client against the sandbox on loopback, and the API settings."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from pydantic import ValidationError

from batch.config.api import (
    PRODUCTION_BASE_URL,
    TEST_BASE_URL,
    ApiSettings,
    DeliverySettings,
    SecretResolutionError,
)
from batch.delivery.ropo import AuthError, RopoClient, SendKind, _trusted_cas, jwt_expiry, parse_retry_after
from batch.sandbox.server import DROP, DROP_AFTER, SLOW, Sandbox
from tests.fixtures_clock import FakeClock
from tests.fixtures_http import APICODE_ENV, settings_for

EVENT = {"id": "e1", "usageplacecode": "643007572062443672", "status": "disconnected",
         "time": "2024-01-04 10:41:40", "invoices": [{"jobid": 1234, "invoicenumber": "594294"}]}
MakeClient = Callable[..., RopoClient]
MakeSandbox = Callable[..., Sandbox]


def statuses(sb: Sandbox) -> list[int | None]:
    return [a.status for a in sb.arrivals]


# ---- tokens -----------------------------------------------------------------------------


def test_token_fetched_once_and_cached(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client()
    for n in range(5):
        assert client.send_event({**EVENT, "id": f"e{n}"}).kind is SendKind.ACCEPTED
    assert sandbox.tokens_issued == 1
    assert sandbox.accepted_ids == [f"e{n}" for n in range(5)]


def test_token_shared_by_concurrent_senders(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client(pool_size=8)
    barrier = threading.Barrier(8)
    results = []

    def send(n: int) -> None:
        barrier.wait()
        results.append(client.send_event({**EVENT, "id": f"c{n}"}).kind)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [SendKind.ACCEPTED] * 8
    assert sandbox.tokens_issued == 1


def test_token_renewed_before_its_exp(make_sandbox: MakeSandbox, make_client: MakeClient,
                                      fake_clock: FakeClock) -> None:
    sb = make_sandbox(token_ttl=100.0, clock=fake_clock.clock)  # the JWT says exp = now + 100 s
    client = make_client(settings_for(sb, token_renew_margin=60), clock=fake_clock.clock)
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    fake_clock.advance(39)  # not yet inside the renew margin
    assert client.send_event({**EVENT, "id": "e2"}).kind is SendKind.ACCEPTED
    assert sb.tokens_issued == 1
    fake_clock.advance(2)  # inside the renew margin, before the token actually expires
    assert client.send_event({**EVENT, "id": "e3"}).kind is SendKind.ACCEPTED
    assert sb.tokens_issued == 2
    assert statuses(sb) == [200, 200, 200]  # never a 401: renewed ahead of time


def test_token_expiry_mid_run_is_handled_by_401(make_sandbox: MakeSandbox, make_client: MakeClient,
                                                fake_clock: FakeClock) -> None:
    # the client cannot foresee it: no exp claim, and it believes the contract's 2 hours
    sb = make_sandbox(token_ttl=300, token_exp_claim=False, clock=fake_clock.clock)
    client = make_client(settings_for(sb), clock=fake_clock.clock)
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    fake_clock.advance(301)
    result = client.send_event({**EVENT, "id": "e2"})
    assert result.kind is SendKind.ACCEPTED and result.status == 200
    assert statuses(sb) == [200, 401, 200]
    assert sb.tokens_issued == 2


def test_401_once_renews_and_retries(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client()
    client.authenticate()
    sandbox.set_faults(script=[401])
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    assert statuses(sandbox) == [401, 200]
    assert sandbox.tokens_issued == 2


def test_401_after_renewal_is_an_auth_failure(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client()
    sandbox.set_faults(script=[401, 401])
    result = client.send_event(EVENT)
    assert result.kind is SendKind.AUTH and result.status == 401
    assert "401" in result.message
    assert statuses(sandbox) == [401, 401]  # renewed once, not in a loop


def test_token_400_is_a_clear_auth_error(sandbox: Sandbox, make_client: MakeClient) -> None:
    settings = settings_for(sandbox)
    client = make_client(settings, env={APICODE_ENV: "wrong-apicode-xyz"})
    with pytest.raises(AuthError) as caught:
        client.authenticate()
    error = caught.value
    assert error.status == 400 and error.error_id == 3
    assert error.error_text == "Invalid cid or apicode"
    assert f"cid {sandbox.cid}" in str(error) and "errorId 3" in str(error)
    assert "wrong-apicode-xyz" not in str(error)
    result = client.send_event(EVENT)
    assert result.kind is SendKind.AUTH and result.status == 400
    assert "Invalid cid or apicode" in result.message
    assert "wrong-apicode-xyz" not in result.message
    assert sandbox.arrivals == []  # no event was sent without a token


def test_token_endpoint_5xx_is_transient(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(token_script=[503], retry_after="3")
    client = make_client()
    result = client.send_event(EVENT)
    assert result.kind is SendKind.TRANSIENT and result.status == 503
    assert result.retry_after == 3.0
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED


def test_fixed_token(sandbox: Sandbox, make_client: MakeClient,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = make_client()
    issuer.authenticate()
    token = sandbox.issued_tokens()[0]
    monkeypatch.setenv("ROPO_TEST_TOKEN", token)
    client = make_client(ApiSettings(base_url=sandbox.base_url, token="${ROPO_TEST_TOKEN}"))
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    sandbox.revoke_tokens()
    result = client.send_event({**EVENT, "id": "e2"})
    assert result.kind is SendKind.AUTH and "configured token" in result.message
    assert sandbox.tokens_issued == 1  # a fixed token is never renewed
    assert token not in result.message


# ---- classification ---------------------------------------------------------------------


def test_429_retry_after_seconds(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(script=[429], retry_after="7")
    result = make_client().send_event(EVENT)
    assert result.kind is SendKind.TRANSIENT and result.status == 429
    assert result.retry_after == 7.0


def test_429_retry_after_http_date(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(script=[429], retry_after=formatdate(time.time() + 30, usegmt=True))
    result = make_client().send_event(EVENT)
    assert result.kind is SendKind.TRANSIENT
    assert result.retry_after is not None and 27 <= result.retry_after <= 31


@pytest.mark.parametrize("value, expected", [
    ("5", 5.0), ("0", 0.0), (None, None), ("soon", None), ("", None),
    (formatdate(0, usegmt=True), 0.0),  # a date in the past: now
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_5xx_burst_then_success(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client()
    sandbox.set_faults(script=[500, 502, 503])
    results = [client.send_event(EVENT) for _ in range(4)]
    assert [(r.kind, r.status) for r in results] == [
        (SendKind.TRANSIENT, 500), (SendKind.TRANSIENT, 502), (SendKind.TRANSIENT, 503),
        (SendKind.ACCEPTED, 200)]
    assert results[0].message == "HTTP 500: Internal Server Error: Injected by the sandbox"


def test_dropped_connections_are_transient(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client()
    client.authenticate()
    sandbox.set_faults(script=[DROP, DROP_AFTER])
    for _ in range(2):
        result = client.send_event(EVENT)
        assert result.kind is SendKind.TRANSIENT and result.status is None
        assert result.message.startswith("connection error")
    assert client.send_event(EVENT).kind is SendKind.ACCEPTED
    assert sandbox.duplicates == {"e1": 1}  # DROP_AFTER had kept it: the retry is a duplicate


def test_read_timeout_is_transient(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client(settings_for(sandbox, read_timeout=0.2))
    client.authenticate()
    sandbox.set_faults(script=[SLOW], slow_ms=600)
    result = client.send_event(EVENT)  # "read timeout": it did not wait for the slow answer
    assert result.kind is SendKind.TRANSIENT and result.status is None
    assert result.message.startswith("read timeout")


def test_connection_refused_is_transient(make_client: MakeClient, sandbox: Sandbox) -> None:
    with socket.socket() as probe:  # a loopback port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(settings_for(sandbox, base_url=f"http://127.0.0.1:{port}/rest"))
    result = client.send_event(EVENT)
    assert result.kind is SendKind.TRANSIENT and result.status is None
    assert "token request failed: connection error" in result.message


def test_permanent_4xx_with_problem(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(reject_ids=["e1"], reject_status=422, reject_title="Unknown usage place",
                       reject_detail="643007572062443672 is not a usage place of 1000011")
    result = make_client().send_event(EVENT)
    assert result.kind is SendKind.REJECTED and result.status == 422
    assert result.message == ("HTTP 422: Unknown usage place: "
                              "643007572062443672 is not a usage place of 1000011")


def test_permanent_4xx_raw_body_is_truncated(sandbox: Sandbox, make_client: MakeClient) -> None:
    sandbox.set_faults(reject_places=[EVENT["usageplacecode"]], reject_status=409,
                       reject_raw_body="conflict " + "x" * 1000)
    result = make_client().send_event(EVENT)
    assert result.kind is SendKind.REJECTED and result.status == 409
    assert result.message.startswith("HTTP 409 Conflict: conflict xxx")
    assert result.message.endswith("...") and len(result.message) < 400


def test_retry_statuses_are_configurable(sandbox: Sandbox, make_client: MakeClient) -> None:
    client = make_client(transient_statuses={409})
    sandbox.set_faults(script=[409, 408, 501])
    assert client.send_event(EVENT).kind is SendKind.TRANSIENT   # configured
    assert client.send_event(EVENT).kind is SendKind.REJECTED    # 408 no longer listed
    assert client.send_event(EVENT).kind is SendKind.TRANSIENT   # 5xx always


def test_event_bytes_are_sent_as_given(sandbox: Sandbox, make_client: MakeClient) -> None:
    body = '{"id":"b1","description":"Käyttöpaikka suljettu"}'.encode()
    assert make_client().send_event(body).kind is SendKind.ACCEPTED
    assert sandbox.accepted == [{"id": "b1", "description": "Käyttöpaikka suljettu"}]


def test_jwt_expiry() -> None:
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.b.c") is None
    assert jwt_expiry("e30.eyJleHAiOjEyMy41fQ.x") == 123.5  # {"exp":123.5}


# ---- secrets never leak ---------------------------------------------------------------------

CANARY_APICODE = "CANARY-apicode-7f3a"


def test_no_secret_in_any_log_or_error(make_sandbox: MakeSandbox, make_client: MakeClient,
                                       caplog: pytest.LogCaptureFixture, fake_clock: FakeClock) -> None:
    caplog.set_level(logging.DEBUG)  # root: requests, urllib3, batch.*, the sandbox
    sb = make_sandbox(apicode=CANARY_APICODE, token_ttl=300, token_exp_claim=False, clock=fake_clock.clock)
    env = {APICODE_ENV: CANARY_APICODE}
    texts: list[str] = []
    client = make_client(settings_for(sb), env=env, clock=fake_clock.clock)
    texts.append(repr(client))
    results = [client.send_event(EVENT)]
    fake_clock.advance(301)                              # expired: 401, renewal
    results.append(client.send_event({**EVENT, "id": "e2"}))
    sb.set_faults(script=[401, DROP, 503])
    results += [client.send_event(EVENT) for _ in range(3)]
    tokens = sb.issued_tokens()
    # A server that echoes a secret back is redacted too.
    sb.set_faults(reject_ids=["e3"], reject_detail=f"token {tokens[-1]} apicode {CANARY_APICODE}")
    results.append(client.send_event({**EVENT, "id": "e3"}))
    assert "***" in results[-1].message
    wrong = make_client(settings_for(sb), env={APICODE_ENV: "CANARY-wrong-9c1d"})
    with pytest.raises(AuthError) as caught:
        wrong.authenticate()
    texts += [str(caught.value), repr(caught.value), wrong.send_event(EVENT).message]
    texts += [r.message for r in results]
    settings = settings_for(sb)
    texts += [repr(settings), str(settings), str(settings.credentials(env)),
              repr(settings.credentials(env)), settings.model_dump_json()]
    with pytest.raises(ValidationError) as literal:
        settings_for(sb, apicode=CANARY_APICODE)
    texts += [str(literal.value), repr(literal.value)]

    assert sb.tokens_issued >= 3 and len(caplog.records) > 10  # the scenario did run
    everything = "\n".join(texts) + "\n" + caplog.text + "\n".join(
        str(record.args) + str(record.msg) for record in caplog.records)
    for secret in [CANARY_APICODE, "CANARY-wrong-9c1d", *tokens]:
        assert secret not in everything


# ---- settings -------------------------------------------------------------------------------


def test_secret_from_env_and_file(tmp_path: Path) -> None:
    from_env = ApiSettings(base_url=TEST_BASE_URL, cid="1", apicode="${MY_CODE}")
    assert from_env.credentials({"MY_CODE": "abc"}).apicode.get_secret_value() == "abc"
    with pytest.raises(SecretResolutionError, match="MY_CODE is not set"):
        from_env.credentials({})
    secret_file = tmp_path / "apicode"
    secret_file.write_text("from-file\n")
    from_file = ApiSettings(base_url=PRODUCTION_BASE_URL, cid="1", apicode_file=secret_file)
    assert from_file.credentials({}).apicode.get_secret_value() == "from-file"
    with pytest.raises(SecretResolutionError, match="cannot read"):
        ApiSettings(base_url=TEST_BASE_URL, cid="1",
                    apicode_file=tmp_path / "missing").credentials({})


@pytest.mark.parametrize("values, fragment", [
    ({"cid": "1", "apicode": "literal-secret"}, "literal secret is not allowed"),
    ({"cid": "1", "apicode": "${A}", "apicode_file": "/x"}, "not both"),
    ({"cid": "1", "apicode": "${A}", "token": "${T}"}, "not both"),
    ({"cid": "1"}, "authentication missing"),
    ({"apicode": "${A}"}, "authentication missing"),
    ({"cid": "1", "apicode": "${A}", "base_url": "http://ropo24.fi/rest"}, "loopback"),
    ({"cid": "1", "apicode": "${A}", "base_url": "ropo24.fi"}, "absolute https"),
    ({"cid": "1", "apicode": "${A}", "verify": False}, "Extra inputs are not permitted"),
])
def test_settings_refused(values: dict, fragment: str) -> None:
    values = {"base_url": TEST_BASE_URL, **values}
    with pytest.raises(ValidationError) as caught:
        ApiSettings(**values)
    assert fragment in str(caught.value)
    assert "literal-secret" not in str(caught.value)


def test_settings_defaults_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    settings = ApiSettings(base_url=PRODUCTION_BASE_URL + "/", cid="1", apicode="${A}")
    assert settings.base_url == "https://ropo24.fi/rest"
    assert _trusted_cas(settings) is True and settings.token_lifetime == 7200.0
    bundle = ApiSettings(base_url=TEST_BASE_URL, cid="1", apicode="${A}", ca_bundle="/ca.pem")
    assert _trusted_cas(bundle) == "/ca.pem"
    assert "${A}" not in repr(settings)  # SecretStr even for the reference


def test_delivery_settings() -> None:
    settings = DeliverySettings()
    assert settings.max_in_flight == 8 and 429 in settings.retry_statuses
    with pytest.raises(ValidationError, match="not retriable"):
        DeliverySettings(retry_statuses={401})
    with pytest.raises(ValidationError, match="backoff_cap"):
        DeliverySettings(backoff_base=10, backoff_cap=1)
    with pytest.raises(ValidationError):
        DeliverySettings(max_in_flight=0)
