"""The sandbox as an HTTP server: contract behaviour, faults, control API, serve()."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

import pytest
import requests

from batch.sandbox.server import DROP, DROP_AFTER, ECHO, GARBAGE, Faults, RawRequest, Sandbox, iter_jsonl
from tests.fixtures_clock import FakeClock
from tests.fixtures_http import ContractCheck

EVENT = {"id": "e1", "usageplacecode": "643007572062443672", "customernumber": "A123456",
         "invoices": [{"jobid": 1234, "invoicenumber": "594294"}],
         "time": "2024-01-04 10:41:40", "status": "disconnected",
         "description": "Usage place disconnected"}


def token_for(sb: Sandbox, session: requests.Session | None = None) -> str:
    response = (session or requests).post(f"{sb.base_url}/token",
                                          json={"cid": sb.cid, "apicode": sb.apicode})
    assert response.status_code == 201
    return response.json()["token"]


def post_event(sb: Sandbox, body: object, token: str | None,
               session: requests.Session | None = None, timeout: float = 5) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return (session or requests).post(f"{sb.base_url}/usageplace/event", json=body,
                                      headers=headers, timeout=timeout)


def control(sb: Sandbox, method: str, name: str, body: object = None) -> requests.Response:
    root = sb.base_url.rsplit("/rest", 1)[0]
    return requests.request(method, f"{root}/_sandbox/{name}", json=body, timeout=5)


def test_binds_loopback_and_base_url(raw_sandbox: Sandbox) -> None:
    assert raw_sandbox.base_url == f"http://127.0.0.1:{raw_sandbox.port}/rest"


def test_token_ok_and_refused(raw_sandbox: Sandbox) -> None:
    token = token_for(raw_sandbox)
    assert token.count(".") == 2
    bad = requests.post(f"{raw_sandbox.base_url}/token",
                        json={"cid": raw_sandbox.cid, "apicode": "wrong"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"errorId", "errorText"}
    missing = requests.post(f"{raw_sandbox.base_url}/token", json={"cid": raw_sandbox.cid})
    assert missing.status_code == 400
    assert raw_sandbox.tokens_issued == 1


def test_event_accepted_deduplicated_and_logged(raw_sandbox: Sandbox) -> None:
    token = token_for(raw_sandbox)
    assert post_event(raw_sandbox, EVENT, token).status_code == 200
    assert post_event(raw_sandbox, EVENT, token).status_code == 200
    assert raw_sandbox.accepted == [EVENT]
    assert raw_sandbox.duplicates == {"e1": 1}
    arrivals = raw_sandbox.arrivals
    assert [(a.seq, a.id, a.usageplacecode, a.status) for a in arrivals] == [
        (1, "e1", EVENT["usageplacecode"], 200), (2, "e1", EVENT["usageplacecode"], 200)]
    assert arrivals[0].finished <= arrivals[1].started


@pytest.mark.parametrize("authorization", [None, "Bearer nonsense", "Basic abc"])
def test_event_needs_a_valid_bearer(raw_sandbox: Sandbox, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.post(f"{raw_sandbox.base_url}/usageplace/event", json=EVENT,
                             headers=headers)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert raw_sandbox.accepted == []


def test_token_expires(fake_clock: FakeClock) -> None:
    with Sandbox(token_ttl=300, clock=fake_clock.clock) as sb:
        token = token_for(sb)
        assert post_event(sb, EVENT, token).status_code == 200
        fake_clock.advance(299)
        assert post_event(sb, {**EVENT, "id": "e1"}, token).status_code == 200
        fake_clock.advance(1)
        assert post_event(sb, {**EVENT, "id": "e2"}, token).status_code == 401


def test_revoke_over_http(raw_sandbox: Sandbox) -> None:
    token = token_for(raw_sandbox)
    assert control(raw_sandbox, "POST", "revoke").status_code == 200
    assert post_event(raw_sandbox, EVENT, token).status_code == 401


@pytest.mark.parametrize("body, fragment", [
    ({"id": 5}, "/id: expected string, got integer"),
    ({"invoices": [{"jobid": "1234"}]}, "/invoices/0/jobid: expected integer, got string"),
    ({"invoices": {"jobid": 1}}, "/invoices: expected array"),
    ([EVENT], "(body): expected object, got array"),
])
def test_bad_body_is_a_problem(raw_sandbox: Sandbox, body: object, fragment: str) -> None:
    response = post_event(raw_sandbox, body, token_for(raw_sandbox))
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    assert fragment in problem["detail"]
    assert raw_sandbox.accepted == []


def test_not_json_and_wrong_media_type(raw_sandbox: Sandbox) -> None:
    token = token_for(raw_sandbox)
    url = f"{raw_sandbox.base_url}/usageplace/event"
    auth = {"Authorization": f"Bearer {token}"}
    broken = requests.post(url, data=b"{nope", headers={**auth, "Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]
    text = requests.post(url, data=json.dumps(EVENT), headers={**auth, "Content-Type": "text/plain"})
    assert text.status_code == 415


def test_strict_refuses_unknown_properties() -> None:
    with Sandbox(strict=True) as sb:
        response = post_event(sb, {**EVENT, "usageplace_code": "x"}, token_for(sb))
        assert response.status_code == 400
        assert "/usageplace_code: property not in the contract" in response.json()["detail"]


def test_keep_alive_serves_many_requests_on_one_connection(raw_sandbox: Sandbox) -> None:
    token = token_for(raw_sandbox)
    conn = http.client.HTTPConnection("127.0.0.1", raw_sandbox.port, timeout=5)
    try:
        for n in range(3):
            body = json.dumps({**EVENT, "id": f"k{n}"})
            conn.request("POST", "/rest/usageplace/event", body=body,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.version == 11 and response.getheader("Connection") != "close"
        sock = conn.sock
        assert sock is not None  # still the same open connection
    finally:
        conn.close()
    assert raw_sandbox.accepted_ids == ["k0", "k1", "k2"]


def test_scripted_statuses_then_normal(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(script=[503, 429, 500], retry_after="7")
    token = token_for(raw_sandbox)
    answers = [post_event(raw_sandbox, EVENT, token) for _ in range(4)]
    assert [r.status_code for r in answers] == [503, 429, 500, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[1].headers["Retry-After"] == "7"
    assert "Retry-After" not in answers[2].headers
    assert answers[0].json()["status"] == 503


def test_error_rate(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(error_rate=1.0, error_status=502)
    token = token_for(raw_sandbox)
    assert {post_event(raw_sandbox, {**EVENT, "id": str(n)}, token).status_code
            for n in range(5)} == {502}
    raw_sandbox.set_faults(error_rate=0.5, error_status=502)
    codes = [post_event(raw_sandbox, {**EVENT, "id": str(n)}, token).status_code
             for n in range(60)]
    assert 10 < codes.count(502) < 50


def test_dropped_connection(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(script=[DROP, DROP_AFTER])
    token = token_for(raw_sandbox)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            post_event(raw_sandbox, EVENT, token)
    # DROP lost the event, DROP_AFTER kept it but lost the answer.
    assert raw_sandbox.accepted_ids == ["e1"]
    assert [a.status for a in raw_sandbox.arrivals] == [None, None]


def test_latency_and_slow(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(latency_ms=150, script=["slow"], slow_ms=500)
    token = token_for(raw_sandbox)
    with pytest.raises(requests.ReadTimeout):
        post_event(raw_sandbox, EVENT, token, timeout=0.3)
    started = time.monotonic()
    assert post_event(raw_sandbox, {**EVENT, "id": "e2"}, token).status_code == 200
    assert time.monotonic() - started >= 0.15
    time.sleep(0.5)  # the slow one completes on the server: accepted though the client gave up
    assert raw_sandbox.accepted_ids == ["e2", "e1"]


def test_permanent_rejections(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(reject_ids=["bad"], reject_places=["P9"], reject_status=409,
                           reject_title="Conflict", reject_detail="Already disconnected")
    token = token_for(raw_sandbox)
    by_id = post_event(raw_sandbox, {**EVENT, "id": "bad"}, token)
    by_place = post_event(raw_sandbox, {**EVENT, "id": "x", "usageplacecode": "P9"}, token)
    for response in (by_id, by_place):
        assert response.status_code == 409
        assert response.json() == {"type": "about:blank", "title": "Conflict", "status": 409,
                                   "detail": "Already disconnected"}
    assert post_event(raw_sandbox, EVENT, token).status_code == 200


def test_token_script(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(token_script=[503])
    first = requests.post(f"{raw_sandbox.base_url}/token",
                          json={"cid": raw_sandbox.cid, "apicode": raw_sandbox.apicode})
    assert first.status_code == 503
    assert token_for(raw_sandbox)


def test_control_over_http(raw_sandbox: Sandbox) -> None:
    assert control(raw_sandbox, "POST", "faults", {"script": [500]}).status_code == 200
    assert control(raw_sandbox, "GET", "faults").json()["script"] == [500]
    assert control(raw_sandbox, "POST", "faults", {"no_such": 1}).status_code == 400
    token = token_for(raw_sandbox)
    assert post_event(raw_sandbox, EVENT, token).status_code == 500
    assert post_event(raw_sandbox, EVENT, token).status_code == 200
    assert control(raw_sandbox, "GET", "accepted").json() == [EVENT]
    arrivals = control(raw_sandbox, "GET", "arrivals").json()
    assert [(a["seq"], a["status"]) for a in arrivals] == [(1, 500), (2, 200)]
    state = control(raw_sandbox, "GET", "state").json()
    assert state["accepted"] == 1 and state["arrivals"] == 2 and state["tokens_issued"] == 1
    assert control(raw_sandbox, "POST", "reset").json()["accepted"] == 0
    assert raw_sandbox.accepted == [] and raw_sandbox.arrivals == []
    assert control(raw_sandbox, "GET", "nothing").status_code == 404


def test_unknown_api_path_and_method(raw_sandbox: Sandbox) -> None:
    assert requests.post(f"{raw_sandbox.base_url}/usageplace/events", json={}).status_code == 404
    assert requests.get(f"{raw_sandbox.base_url}/token").status_code == 405


def test_data_dir_keeps_accepted_events(tmp_path) -> None:
    with Sandbox(data_dir=tmp_path) as sb:
        token = token_for(sb)
        post_event(sb, EVENT, token)
        post_event(sb, EVENT, token)
        post_event(sb, {**EVENT, "id": "e2"}, token)
    assert [e["id"] for e in iter_jsonl(tmp_path / "accepted.jsonl")] == ["e1", "e2"]


def test_request_hook_sees_api_requests_only() -> None:
    seen: list[RawRequest] = []
    with Sandbox(request_hook=seen.append) as sb:
        token = token_for(sb)
        post_event(sb, EVENT, token)
        control(sb, "GET", "state")
    assert [(r.method, r.path) for r in seen] == [
        ("POST", "/rest/token"), ("POST", "/rest/usageplace/event")]
    assert json.loads(seen[1].body) == EVENT
    assert seen[1].headers["Authorization"] == f"Bearer {token}"


def test_contract_check_catches_violations() -> None:
    """The fixture's validator is not a rubber stamp: it flags what the contract forbids."""
    check = ContractCheck()
    with Sandbox(request_hook=check) as sb:
        token = token_for(sb)
        assert check.violations == []
        post_event(sb, EVENT, token)
        assert check.violations == []
        post_event(sb, {"invoices": [{"jobid": "12"}]}, token)  # jobid must be an integer
        post_event(sb, EVENT, None)                              # no bearer token
        requests.post(f"{sb.base_url}/token", json={"cid": 1000011})  # no apicode, cid not str
        requests.post(f"{sb.base_url}/usageplace/events", json=EVENT)  # no such path
    assert check.checked == 6
    assert len(check.violations) == 4
    assert "InvalidRequestBody" in check.violations[0]
    assert "Security" in check.violations[1]
    assert "InvalidRequestBody" in check.violations[2]
    assert "PathNotFound" in check.violations[3]


def test_serve_runs_until_sigterm(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch.sandbox.server", "--port", "0", "--data", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/rest")
        token = requests.post(f"{base_url}/token",
                              json={"cid": "1000011", "apicode": "sandbox-apicode"}).json()["token"]
        response = requests.post(f"{base_url}/usageplace/event", json=EVENT,
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert parsedate_to_datetime(response.headers["Date"])  # a well-formed HTTP/1.1 answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e["id"] for e in iter_jsonl(tmp_path / "accepted.jsonl")] == ["e1"]


def test_faults_from_json_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown fault settings"):
        Faults.from_json({"latency": 5})


def test_garbage_answers_a_success_status_with_a_body_that_is_not_json(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(script=[GARBAGE], token_script=[GARBAGE])
    token_reply = requests.post(f"{raw_sandbox.base_url}/token",
                                json={"cid": raw_sandbox.cid, "apicode": raw_sandbox.apicode}, timeout=5)
    assert token_reply.status_code == 201 and token_reply.content == b'<html><body>\x00\xff{"token": '
    event_reply = post_event(raw_sandbox, EVENT, token_for(raw_sandbox))
    assert event_reply.status_code == 200 and event_reply.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        event_reply.json()
    assert raw_sandbox.accepted == []


def test_echo_repeats_the_request_secrets_and_all(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(script=[ECHO], token_script=[ECHO])
    token_reply = requests.post(f"{raw_sandbox.base_url}/token",
                                json={"cid": raw_sandbox.cid, "apicode": raw_sandbox.apicode}, timeout=5)
    assert token_reply.status_code == 400 and raw_sandbox.apicode in token_reply.text
    token = token_for(raw_sandbox)
    event_reply = post_event(raw_sandbox, EVENT, token)
    assert event_reply.status_code == 500
    assert event_reply.text.startswith(f"request failed: Authorization: Bearer {token} body: {{")


def test_revoke_at_arrivals_expires_every_token_before_that_event(raw_sandbox: Sandbox) -> None:
    raw_sandbox.set_faults(revoke_at_arrivals=[2])
    token = token_for(raw_sandbox)
    assert post_event(raw_sandbox, EVENT, token).status_code == 200
    assert post_event(raw_sandbox, {**EVENT, "id": "e2"}, token).status_code == 401
    assert post_event(raw_sandbox, {**EVENT, "id": "e2"}, token_for(raw_sandbox)).status_code == 200
