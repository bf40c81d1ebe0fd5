"""The second attacker's findings (issue 7 / issue 8 neighbours), each under its class's name.

Real service runs (`python -m batch run --once` in a subprocess) against the real sandbox where
the defect shows end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.sandbox.server import Sandbox
from tests.fixtures_http import APICODE_ENV
from tests.service_helpers import export, write_config


def _run_once(config: Path, sandbox: Sandbox, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "batch", *extra, "run", "--config", str(config), "--once"],
                          capture_output=True, timeout=120, env={**os.environ, APICODE_ENV: sandbox.apicode})


def test_D20_log_lines_escape_c1_controls_and_bidi_in_file_names(tmp_path: Path, sandbox: Sandbox) -> None:
    # C0 and DEL in a name are refused; C1 controls (U+009B is CSI), bidi overrides and line
    # separators are not, and the log lines that name the file reach the operator's terminal.
    names = ["c1\u009b31m.csv", "bidi\u202evsc.csv", "ls\u2028x.csv"]
    for fmt in ("plain", "json"):
        inbox = tmp_path / fmt / "inbox"
        inbox.mkdir(parents=True)
        for index, name in enumerate(names):
            (inbox / name).write_bytes(export(f"{fmt}{index}", 2))
        config = write_config(tmp_path / fmt, sandbox, [{"name": "c", "inbox": str(inbox)}],
                              logging={"format": fmt})
        done = _run_once(config, sandbox)
        log = done.stderr.decode("utf-8")
        assert done.returncode == 0, log
        for raw in ("\u009b", "\u202e", "\u2028"):
            assert raw not in log, log
        for shown in ("c1\\x9b31m.csv", "bidi\\u202evsc.csv", "ls\\u2028x.csv"):
            if fmt == "plain":
                assert f"feed c: {shown}: done: 2 accepted" in log, log
            else:  # JSON writes the escape's backslash as \\
                assert shown.replace("\\", "\\\\") in log, log


def test_D8_a_config_problem_quotes_at_most_a_short_value() -> None:
    from batch.config.mapping import load_mapping_text
    from batch.config.yamlload import ConfigError

    base = Path("config/mappings/utf8_iso.yaml").read_text()
    huge = "A" * 1_000_000
    for text in (base.replace("format: csv", f'format: "{huge}"'),                      # pydantic's (got ...)
                 base.replace('delimiter: ","', f'delimiter: "{huge}"'),                # a model check's quote
                 base.replace('formats: ["%Y-%m-%dT%H:%M:%S%z"]', f'formats: ["{huge}%Q"]')):
        try:
            load_mapping_text(text, "m.yaml")
        except ConfigError as exc:
            message = str(exc)
        else:
            raise AssertionError("accepted")
        assert message.startswith("m.yaml:") and "AAAA" in message
        assert len(message) < 400, len(message)
        assert message.endswith("...")


def test_D4_credential_patterns_stay_linear_on_a_hostile_server_body() -> None:
    # The log filter and every server message run the credential patterns over the whole text
    # (redacted before it is cut). "eyJ-" repeated made the JWT pattern quadratic: 80 kB took
    # 1.3 s, a 1 MB rejection body minutes per event, holding the GIL like the D4 pattern did.
    import time

    from batch.redact import redact_and_cut, redact_text

    for body in ("eyJ-" * 250_000, "eyJ_" * 250_000, "x-eyJ" * 200_000, "-eyJabcdef." * 100_000):
        started = time.perf_counter()
        redact_and_cut(body, 300)
        assert time.perf_counter() - started < 1.0, body[:20]
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for text in (jwt, f"Bearer {jwt}", f'"{jwt}"', f"token {jwt}.", f"={jwt}&", f"({jwt})"):
        assert "eyJhbGci" not in redact_text(text), text


def test_D8_an_endless_server_answer_is_read_only_to_a_bound(monkeypatch) -> None:
    # A rejection whose body never ends (a hostile or broken server, a proxy's error page
    # streaming a file): the whole body was read into memory and split, 300 MB took 57 s and
    # 2 GB per event. Now 64 KB at most are read; the rest of the connection is dropped.
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from batch.config.api import ApiSettings
    from batch.delivery.ropo import RopoClient, SendKind

    sent: list[int] = []

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith("/token"):
                body = b'{"token": "endless-token-0001"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(400)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            total = 0
            try:
                while total < 1 << 30:
                    self.wfile.write(b"apicode=endless-apicode-123 " * 4096)
                    total += 28 * 4096
            except OSError:
                pass
            sent.append(total)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(APICODE_ENV, "endless-apicode-123")
    try:
        client = RopoClient(ApiSettings(base_url=f"http://127.0.0.1:{server.server_address[1]}/rest", cid="1",
                                        apicode="${" + APICODE_ENV + "}", read_timeout=5.0))
        started = time.perf_counter()
        result = client.send_event({"id": "e-1"})
        again = client.send_event({"id": "e-2"})
        assert time.perf_counter() - started < 5.0
        assert result.kind is SendKind.REJECTED and result.status == 400
        assert result.message.startswith("HTTP 400 Bad Request: apicode=*** apicode=***")
        assert result.message.endswith("...") and len(result.message) < 400
        assert "endless-apicode" not in result.message
        assert again.kind is SendKind.REJECTED and again.message == result.message
        client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_D22_a_mapping_or_secret_file_that_is_a_fifo_or_device_is_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    # D22 refused a FIFO given on the command line; the paths a configuration names were still
    # opened blindly: validate-config blocked for ever on a FIFO mapping or apicode_file, and
    # read /dev/zero as a mapping until memory ran out.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [({"mapping": str(fifo)}, {}, f"{fifo}: cannot read: not a regular file (a FIFO); give the path of a file"),
             ({"mapping": "/dev/zero"}, {},
              "/dev/zero: cannot read: not a regular file (a character device); give the path of a file"),
             ({}, {"apicode_file": str(fifo)},
              f"api: apicode_file: cannot read {fifo}: not a regular file (a FIFO); give the path of a file")]
    for index, (feed, api, expected) in enumerate(cases):
        base = tmp_path / str(index)
        config = write_config(base, sandbox, [{"name": "c", "inbox": str(base / "inbox"), **feed}])
        if api:
            text = config.read_text().replace("apicode: ${" + APICODE_ENV + "}", f"apicode_file: {api['apicode_file']}")
            config.write_text(text)
        done = subprocess.run([sys.executable, "-m", "batch", "validate-config", "--config", str(config)],
                              capture_output=True, text=True, timeout=30, env={**os.environ, APICODE_ENV: "x" * 8})
        assert done.returncode == 1, done.stderr
        assert expected in done.stderr, done.stderr


def test_D22_a_mapping_replaced_by_a_fifo_is_refused_on_reload(tmp_path: Path, sandbox: Sandbox) -> None:
    # The reload thread read every watched file to fingerprint it: a mapping swapped for a FIFO
    # blocked it for ever (no later change was ever taken up), /dev/zero grew it without end.
    from tests.service_helpers import ServiceProcess

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "c", "inbox": str(inbox)}])
    mapping = tmp_path / "mapping.yaml"
    good = mapping.read_text()
    service = ServiceProcess(config, tmp_path / "service.log", env={APICODE_ENV: sandbox.apicode})
    try:
        service.wait_log("watching 1 feed(s)")
        mapping.unlink()
        os.mkfifo(mapping)
        service.wait_log("not a regular file (a FIFO)", timeout=20)
        mapping.unlink()
        mapping.write_text(good.replace("description: {column: note}", "description: {const: v2}"))
        service.wait_log("configuration #2 applied", timeout=20)
        service.signal(15)
        assert service.wait(30) == 0
    finally:
        service.kill()


def test_D22_a_key_or_known_hosts_that_becomes_a_fifo_is_an_inbox_error(sftp_settings, sshd, tmp_path: Path) -> None:
    # paramiko reads the private key and known_hosts by path on every connection: one swapped
    # for a FIFO after the configuration was checked blocked the feed's connection for ever.
    import shutil

    from batch.inbox.base import InboxError
    from batch.inbox.sftp import SftpInbox

    key, known = tmp_path / "id_key", tmp_path / "known_hosts"
    shutil.copy(sshd.client_key, key)
    shutil.copy(sshd.known_hosts, known)
    key.chmod(0o600)
    for path, what in ((key, "private key"), (known, "known_hosts")):
        inbox = SftpInbox(sftp_settings(private_key_file=key, known_hosts=known))
        saved = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        try:
            with pytest.raises(InboxError) as info:
                inbox.scan()
            assert str(info.value).startswith(f"cannot read {what} {path}: "), str(info.value)
            assert "not a regular file (a FIFO); give the path of a file" in str(info.value)
        finally:
            inbox.close()
            path.unlink()
            path.write_bytes(saved)
            path.chmod(0o600)


def test_F6_run_once_gives_up_an_outage_after_holding_and_exits_2(tmp_path: Path, sandbox: Sandbox) -> None:
    # The breaker (F6) holds a feed for as long as Ropo One is down: right for the service, but
    # `run --once` (cron) and `process` never ended, so the next cron run started a second
    # instance on the same inbox. A one-shot run holds while its probes back off up to
    # breaker_probe_max, then gives up: the file stays in processing/ with its events pending,
    # and the run exits 2 for the next run to resume.
    import time

    sandbox.set_faults(error_rate=1.0, error_status=503)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "f.csv").write_bytes(export("o", 30))
    config = write_config(tmp_path, sandbox, [{"name": "c", "inbox": str(inbox)}],
                          delivery={"max_in_flight": 2, "breaker_threshold": 3, "breaker_probe_initial": 0.2,
                                    "breaker_probe_max": 0.4, "backoff_base": 0.05, "backoff_cap": 0.2,
                                    "backoff_jitter": 0.0})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "batch", "run", "--config", str(config), "--once"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, APICODE_ENV: sandbox.apicode})
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 30
    assert "delivery holds every event and probes" in done.stderr
    assert "cannot deliver to Ropo One: Ropo One is unreachable" in done.stderr, done.stderr
    assert (inbox / "processing" / "f.csv").exists()
    status = subprocess.run([sys.executable, "-m", "batch", "status", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert "processing" in status.stdout and "f.csv" in status.stdout


def test_D5_validate_config_lists_each_mapping_problem_once(tmp_path: Path, sandbox: Sandbox) -> None:
    # The service loader lists a broken mapping's problems under "the mapping M has problems:",
    # and validate-config added the same problems again (1 problem counted as 3).
    from tests.service_helpers import MAPPING_BROKEN

    (tmp_path / "mapping.yaml").write_text(MAPPING_BROKEN)
    config = write_config(tmp_path, sandbox, [{"name": "c", "inbox": str(tmp_path / "inbox")}])
    done = subprocess.run([sys.executable, "-m", "batch", "validate-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, APICODE_ENV: "x" * 8})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    unknown = [line for line in lines if "fields.usageplacecode.colum: unknown key" in line]
    assert len(unknown) == 1, done.stderr
    assert lines[-1] == f"{config}: 2 problem(s)", done.stderr


def test_F2_a_journal_that_cannot_be_opened_is_named(tmp_path: Path, sandbox: Sandbox) -> None:
    # The journal's file could not be opened at all (a read-only or unmounted disk; here the
    # path is a folder): every command said only "OperationalError: unable to open database file".
    journal = tmp_path / "journal.sqlite3"
    journal.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "c", "inbox": str(tmp_path / "inbox")}],
                          journal=str(journal))
    for command in ("status", "retry", "run"):
        done = subprocess.run([sys.executable, "-m", "batch", command, "--config", str(config)],
                              capture_output=True, text=True, timeout=30, env={**os.environ, APICODE_ENV: "x" * 8})
        assert done.returncode == 2, done.stderr
        assert f"journal {journal}: cannot open it: unable to open database file" in done.stderr, done.stderr


@pytest.mark.parametrize(("where", "key", "value", "message"), [
    ("feed", "poll_interval_seconds", ".inf", "Input should be a finite number"),
    ("feed", "min_age_seconds", "1e300", "Input should be less than or equal to 31536000"),
    ("api", "read_timeout", ".inf", "Input should be a finite number"),
    ("api", "connect_timeout", "1e300", "Input should be less than or equal to 31536000"),
    ("delivery", "breaker_probe_max", ".inf", "Input should be a finite number"),
    ("delivery", "backoff_base", ".nan", "Input should be a finite number"),
    ("top", "journal_retention_days", "1e300", "Input should be less than or equal to 365"),
])
def test_D5_durations_must_be_finite_and_bounded(tmp_path: Path, sandbox: Sandbox, where: str, key: str,
                                                   value: str, message: str) -> None:
    # YAML reads .inf, .nan and 1e300 as floats, and validate-config said ok: a poll interval
    # of .inf left the feed asleep for ever with a file waiting; a read_timeout of .inf failed
    # every event with "OverflowError: timestamp out of range for platform time_t".
    import yaml

    config = write_config(tmp_path, sandbox, [{"name": "c", "inbox": str(tmp_path / "inbox")}])
    data = yaml.safe_load(config.read_text())
    target = {"feed": data["feeds"][0], "api": data["api"], "delivery": data["delivery"], "top": data}[where]
    target[key] = f"@{key}@"
    config.write_text(yaml.safe_dump(data, sort_keys=False).replace(f"'@{key}@'", value))
    done = subprocess.run([sys.executable, "-m", "batch", "validate-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, APICODE_ENV: "x" * 8})
    assert done.returncode == 1, done.stderr
    assert f"{key}: {message}" in done.stderr, done.stderr
