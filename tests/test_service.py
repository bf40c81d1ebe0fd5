"""The service with a local inbox: run --once and long-running, native events and polling,
hot reload, health and metrics, logs, signals. The sandbox plays Ropo One (contract-checked)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from batch.service.logs import JsonFormatter, RedactingFilter
from batch.service.metrics import Metrics, MetricsServer
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import (
    MAPPING_BROKEN,
    MAPPING_V2,
    ServiceProcess,
    ServiceThread,
    export,
    ids,
    receipt,
    run_once,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def drop(inbox: Path, name: str, data: bytes, *, mtime: float | None = None) -> Path:
    """Write under a dotfile name, then rename into the inbox (what most exporters do)."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    final = inbox / name
    os.rename(tmp, final)
    return final


# --------------------------------------------------------------------------- run --once


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_once_processes_ready_files_oldest_first(tmp_path: Path, sandbox, apicode_env, mode: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "mode": mode}])
    # b.csv is older than a.csv: it goes first, and every one of its events before a's
    drop(inbox, "b.csv", export("B", 20), mtime=1_700_000_000)
    drop(inbox, "a.csv", export("A", 20), mtime=1_700_000_100)

    code, runner = run_once(config)

    assert code == 0, runner.logs.text
    assert sorted(p.name for p in (inbox / "archive").iterdir()) == ["a.csv", "b.csv"]
    assert not list((inbox / "processing").iterdir())
    for name in ("a.csv", "b.csv"):
        assert receipt(inbox / "outbox", name)["counts"]["accepted"] == 20
    arrivals = [a.id for a in sandbox.arrivals]
    assert set(arrivals) == ids("A", 20) | ids("B", 20)
    assert max(arrivals.index(i) for i in ids("B", 20)) < min(arrivals.index(i) for i in ids("A", 20))


def test_once_exit_codes(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    bad_record = export("R", 3).replace(b"R-2,643007572062450002,2024-02-05 06:30:00,disconnected",
                                        b"R-2,643007572062450002,2024-02-05 06:30:00,exploded")
    drop(inbox, "records.csv", bad_record)
    code, runner = run_once(config)
    assert code == 1, runner.logs.text  # one record invalid
    assert receipt(inbox / "outbox", "records.csv")["counts"] == {
        "accepted": 2, "rejected": 0, "invalid": 1, "failed": 0, "duplicate": 0, "not_sent": 0, "pending": 0,
        "filtered": 0}

    drop(inbox, "unusable.csv", b"who,what\n1,2\n")  # not the columns the mapping reads
    code, runner = run_once(config)
    assert code == 2, runner.logs.text
    assert (inbox / "error" / "unusable.csv").exists()
    assert receipt(inbox / "outbox", "unusable.csv")["state"] == "error"


# --------------------------------------------------------------------------- long-running


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_running_service_picks_up_new_files(tmp_path: Path, sandbox, apicode_env, mode: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # native: a closed or moved-in file is ready at once; polling relies on min_age
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "mode": mode,
                                               "min_age_seconds": 60 if mode == "native" else 0.3}])
    with ServiceThread(config) as runner:
        # events only come once the inbox is watched; a file there before that waits for min_age
        wait_until(lambda: getattr(runner.service.workers.get("local"), "last_scan", None), 30, what="the first scan")
        drop(inbox, "one.csv", export("one", 5))
        (inbox / "two.csv").write_bytes(export("two", 5))  # written in place and closed
        wait_until(lambda: (inbox / "archive" / "one.csv").exists() and (inbox / "archive" / "two.csv").exists(),
                   30, what="both files archived")
        health = runner.service.health()
        assert health[0] and health[1]["feeds"]["local"]["alive"]
    assert set(sandbox.accepted_ids) == ids("one", 5) | ids("two", 5)


def test_hot_reload_refuses_invalid_mapping_and_applies_valid_one(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    mapping = tmp_path / "mapping.yaml"
    with ServiceThread(config, reload_interval=0.1) as runner:
        drop(inbox, "v1.csv", export("v1", 3))
        wait_until(lambda: (inbox / "archive" / "v1.csv").exists(), 30, what="v1 archived")

        mapping.write_text(MAPPING_BROKEN)
        runner.wait_log("configuration change refused")
        text = runner.logs.text
        assert f"{mapping}:5:" in text and "unknown key" in text, text  # file, line and key at fault

        drop(inbox, "still_v1.csv", export("still", 3))  # the previous mapping keeps working
        wait_until(lambda: (inbox / "archive" / "still_v1.csv").exists(), 30, what="still_v1 archived")

        mapping.write_text(MAPPING_V2)
        runner.wait_log("configuration #2 applied")
        drop(inbox, "v2.csv", export("v2", 3))
        wait_until(lambda: (inbox / "archive" / "v2.csv").exists(), 30, what="v2 archived")

    accepted = {event["id"]: event for event in sandbox.accepted}
    assert accepted["v1-1"]["description"] == "note 1"
    assert accepted["still-2"]["description"] == "note 2"
    assert {accepted[i]["description"] for i in ids("v2", 3)} == {"mapping-v2"}


def test_healthz_and_metrics(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                          metrics={"host": "127.0.0.1", "port": 0})
    with ServiceThread(config) as runner:
        runner.wait_log("health and metrics at")
        host, port = runner.service.metrics_server.address
        drop(inbox, "m.csv", export("m", 7))
        wait_until(lambda: (inbox / "archive" / "m.csv").exists(), 30, what="m archived")

        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as response:
            assert response.status == 200
            health = json.loads(response.read())
        assert health["status"] == "ok"
        assert health["feeds"]["local"]["alive"] and health["feeds"]["local"]["last_file"] == "m.csv"

        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'usageplace_batch_files_total{feed="local",status="done"} 1.0' in text
        assert 'usageplace_batch_events_total{feed="local",outcome="accepted"} 7.0' in text
        assert 'usageplace_batch_delivery_seconds_count{feed="local"} 7.0' in text
        assert 'usageplace_batch_queue_depth{feed="local"}' in text
        assert 'usageplace_batch_last_scan_timestamp_seconds{feed="local"}' in text
        assert "usageplace_batch_retries_total" in text

    metrics = Metrics()
    server = MetricsServer("127.0.0.1", 0, metrics, lambda: (False, {"feeds": {"x": {"alive": False}}})).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen("http://{}:{}/healthz".format(*server.address), timeout=5)
        assert failed.value.code == 503
    finally:
        server.close()
    assert not runner.service.health()[0]  # stopped: its feed threads are gone


# --------------------------------------------------------------------------- logs and secrets


def test_redacting_filter_removes_secrets() -> None:
    redactor = RedactingFilter()
    redactor.add_secret("canary-apicode-123")
    redactor.add_redactor(lambda text: text.replace("issued-token-xyz", "***"))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "code %s token %s header %s jwt %s", (
        "canary-apicode-123", "issued-token-xyz", "Authorization: Bearer abc.def-ghi",
        "eyJhbGciOiJIUzI1NiJ9.eyJjaWQiOiIxMDAwMDExIn0.c2lnbmF0dXJl"), None)
    try:
        raise RuntimeError("failed with canary-apicode-123")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    redactor.filter(record)
    line = JsonFormatter().format(record)
    document = json.loads(line)
    for secret in ("canary-apicode-123", "issued-token-xyz", "abc.def-ghi", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in line
    assert document["message"].startswith("code *** token *** header Authorization: Bearer *** jwt ***")
    assert "RuntimeError: failed with ***" in document["exception"]


def test_json_logs_are_json_lines_without_secrets(tmp_path: Path, make_sandbox) -> None:
    canary = "canary-apicode-5d1f0e"
    sandbox = make_sandbox(apicode=canary)
    sandbox.set_faults(script=[503, 401])  # a retry, then a token renewal: more to log
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}],
                          logging={"level": "DEBUG", "format": "json"})
    drop(inbox, "secret.csv", export("s", 5))
    service = ServiceProcess(config, tmp_path / "service.log", "--once", env={APICODE_ENV: canary})
    assert service.wait(60) == 0, service.text()
    text = service.text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), text
    assert any("secret.csv: done" in json.loads(line)["message"] for line in lines)
    assert canary not in text
    for token in sandbox.issued_tokens():
        assert token not in text
    assert set(sandbox.accepted_ids) == ids("s", 5)


def test_an_exception_that_ends_a_thread_is_logged_as_json_and_redacted() -> None:
    # a child process: pytest installs its own threading.excepthook in the test process
    code = textwrap.dedent("""
        import threading
        from batch.service.logs import setup_logging
        redactor = setup_logging("DEBUG", "json")
        redactor.add_secret("canary-passphrase-77")

        def crash():
            raise RuntimeError("key canary-passphrase-77 rejected")

        def prefetch():
            raise EOFError()

        for target, name in ((crash, "worker"), (prefetch, "Thread-9 (_prefetch_thread)")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            thread.join()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    documents = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    crash, prefetch = documents
    assert crash["level"] == "ERROR" and crash["message"] == "thread worker ended with an unexpected error"
    assert "RuntimeError: key *** rejected" in crash["exception"]
    assert prefetch["level"] == "DEBUG" and "ended with the connection: EOFError" in prefetch["message"]
    assert "canary-passphrase-77" not in proc.stderr


# --------------------------------------------------------------------------- signals


def test_sigterm_exits_0_and_leaves_the_file_resumable(tmp_path: Path, sandbox, apicode_env) -> None:
    sandbox.set_faults(latency_ms=60)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}],
                          delivery={"max_in_flight": 2, "backoff_base": 0.05, "backoff_cap": 0.5})
    drop(inbox, "long.csv", export("L", 200))
    service = ServiceProcess(config, tmp_path / "service.log")
    wait_until(lambda: len(sandbox.arrivals) >= 6, 30, what="delivery under way")
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.text()
    assert (inbox / "processing" / "long.csv").exists(), service.text()
    assert "left in processing/ to resume" in service.text()
    sent_before = len(sandbox.arrivals)
    assert 0 < sent_before < 200

    sandbox.set_faults()  # no latency: finish quickly
    code, runner = run_once(config)
    assert code == 0, runner.logs.text
    assert (inbox / "archive" / "long.csv").exists()
    assert set(sandbox.accepted_ids) == ids("L", 200)
    assert not sandbox.duplicates  # in-flight requests were finished and journaled: none sent twice
    assert receipt(inbox / "outbox", "long.csv")["counts"]["accepted"] == 200


# --------------------------------------------------------------------------- commands


def _example_env(tmp_path: Path) -> dict[str, str]:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "ropo-apicode").write_text("example-apicode\n")
    # validate-config opens the key (D11): a real, unencrypted one
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (creds / "sftp-key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    for secret in creds.iterdir():
        secret.chmod(0o600)
    return {"CREDENTIALS_DIRECTORY": str(creds)}


def test_validate_config_accepts_the_documented_example(tmp_path: Path) -> None:
    env = {**os.environ, **_example_env(tmp_path)}
    shutil.copytree(REPO / "config", tmp_path / "config")
    proc = subprocess.run([sys.executable, "-m", "batch", "validate-config", "--config",
                           str(tmp_path / "config" / "service.yaml")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "2 feed(s)" in proc.stdout


def test_validate_config_reports_every_problem_with_its_line(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "missing")}])
    text = config.read_text().replace("max_in_flight: 4", "max_in_flight: 0")
    config.write_text(text)
    (tmp_path / "mapping.yaml").write_text(MAPPING_BROKEN)
    env = {key: value for key, value in os.environ.items() if key != APICODE_ENV}
    proc = subprocess.run([sys.executable, "-m", "batch", "validate-config", "--config", str(config)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any(line.startswith(f"{config}:") and "delivery.max_in_flight" in line for line in lines), proc.stderr
    assert any(line.startswith(f"{tmp_path / 'mapping.yaml'}:5:") and "unknown key" in line for line in lines)


def test_status_shows_the_feeds(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
    drop(inbox, "s.csv", export("st", 2))
    assert run_once(config)[0] == 0
    (inbox / "processing" / "waiting.csv").write_bytes(export("w", 1))
    proc = subprocess.run([sys.executable, "-m", "batch", "status", "--config", str(config)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "waiting.csv" in proc.stdout and "s.csv (done" in proc.stdout and str(inbox) in proc.stdout


def test_relative_key_file_is_found_beside_the_config_from_any_directory(tmp_path, monkeypatch):
    """A relative private_key_file means beside the configuration, wherever the service is started."""
    from batch.config.service import load_service_config
    from batch.config.yamlload import ConfigError

    config_dir = tmp_path / "etc"
    (config_dir / "mappings").mkdir(parents=True)
    (config_dir / "mappings" / "m.yaml").write_text(
        "format: csv\nfields:\n  usageplacecode: {column: p}\n  time: {column: t}\n  status: {column: s}\n"
    )
    (config_dir / "known_hosts").write_text("")
    (config_dir / "sftp-key").write_text("not really a key")
    text = (
        "api: {base_url: 'http://127.0.0.1:1/rest', cid: '1', apicode: '${UPB_TEST_APICODE}'}\n"
        "feeds:\n"
        "  - name: remote\n"
        "    inbox: sftp://u@127.0.0.1:2222/drop\n"
        "    mapping: mappings/m.yaml\n"
        "    known_hosts: known_hosts\n"
        "    private_key_file: sftp-key\n"
    )
    (config_dir / "service.yaml").write_text(text)
    monkeypatch.setenv("UPB_TEST_APICODE", "x")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    loaded = load_service_config(config_dir / "service.yaml")
    assert loaded.config.feeds[0].private_key_file == config_dir / "sftp-key"

    (config_dir / "service.yaml").write_text(text.replace("sftp-key", "missing-key"))
    with pytest.raises(ConfigError) as error:
        load_service_config(config_dir / "service.yaml")
    assert [str(p) for p in error.value.problems] == [
        f"{config_dir / 'service.yaml'}:7:5: feeds[0].private_key_file: {config_dir / 'missing-key'} is not a readable file"
    ]


# --------------------------------------------------------------------------- journal retention


def _age_every_file(journal_path: Path, days: float) -> None:
    """Pretend every file finished `days` ago (the journal keeps UTC ISO times)."""
    import sqlite3
    from datetime import datetime, timedelta, timezone

    then = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="microseconds")
    with sqlite3.connect(journal_path) as raw:
        raw.execute("UPDATE files SET finished_at = ?, started_at = ? WHERE finished_at IS NOT NULL", (then, then))


def test_the_service_forgets_files_past_the_retention_at_start(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}],
                          journal_retention_days=30)
    drop(inbox, "old.csv", export("old", 3))
    assert run_once(config)[0] == 0
    journal_path = tmp_path / "var" / "journal.sqlite3"
    _age_every_file(journal_path, 31)
    drop(inbox, "new.csv", export("new", 2))
    code, runner = run_once(config)
    assert code == 0
    assert "journal: forgot 1 file(s) and 3 event(s) finished more than 30 days ago" in runner.logs.text
    proc = subprocess.run([sys.executable, "-m", "batch", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True)
    assert [row["file"] for row in map(json.loads, proc.stdout.splitlines()) if row["kind"] == "file"] == ["new.csv"]


def test_prune_command(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}],
                          journal_retention_days=None)
    drop(inbox, "a.csv", export("a", 4))
    assert run_once(config)[0] == 0
    _age_every_file(tmp_path / "var" / "journal.sqlite3", 10)

    def prune(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "batch", "prune", "--config", str(config), *extra],
                              capture_output=True, text=True)

    refused = prune()
    assert refused.returncode == 1 and "give --older-than-days" in refused.stderr
    assert prune("--older-than-days", "11").stdout.strip() == "forgot 0 file(s) and 0 event(s) finished more than 11 days ago"
    done = prune("--older-than-days", "9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "forgot 1 file(s) and 4 event(s) finished more than 9 days ago"
