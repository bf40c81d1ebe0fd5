"""Issue 9, point 5: every command redacts the configuration's secrets and the issued tokens.

Canary secrets (an API code, an SFTP password and an SFTP key passphrase) are planted in a
service configuration, once through ``${ENV}`` references and once through secret files. Then
every CLI command runs for real (`python -m batch --debug ...`, a subprocess) against the
sandbox over HTTP while it answers 401, 500, garbage, and bodies that echo the request back
(the Authorization header with the token, the token request with the API code). The canaries
and every token the sandbox issued must appear nowhere: not in stdout or stderr, not in any
file the commands left (receipts, the journal's bytes, staging files, archived inputs, the
SFTP outboxes).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from batch.sandbox.server import DEFAULT_APICODE, DEFAULT_CID, ECHO, GARBAGE, Sandbox
from tests.fixtures_pipeline import SIMPLE_MAPPING, make_rows, write_feed
from tests.sshd import SSHD, Sshd, keygen

CANARY_APICODE = "CANARY-apicode-5e1b77"
CANARY_PASSPHRASE = "CANARY-passphrase-90c4d2"
APICODE_ENV = "UPB_CANARY_APICODE"
PASSWORD_ENV = "UPB_CANARY_PASSWORD"
PASSPHRASE_ENV = "UPB_CANARY_PASSPHRASE"
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.")


class Cli:
    """Runs `python -m batch --debug ...` and keeps every output for the leak check."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.outputs: dict[str, bytes] = {}

    def __call__(self, *args: str, expect: int | tuple[int, ...] = (0, 1)) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([sys.executable, "-m", "batch", "--debug", *args], env=self.env,
                                cwd=self.cwd, capture_output=True, timeout=120)
        label = " ".join(args[:2])
        self.outputs[f"{label} #{len(self.outputs)} stdout"] = result.stdout
        self.outputs[f"{label} #{len(self.outputs)} stderr"] = result.stderr
        allowed = (expect,) if isinstance(expect, int) else expect
        assert result.returncode in allowed, (args, result.returncode, result.stderr.decode(errors="replace")[-3000:])
        return result


@pytest.fixture
def sftp_server(tmp_path: Path, password_account: tuple[str, str]) -> Iterator[tuple[Sshd, str, str, Path]]:
    """sshd with password logins; (server, account, its password, that account's inbox)."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed")
    user, password = password_account
    server = Sshd(tmp_path / "sshd", passwords=True)
    server.start()
    # pytest's folders are private to root: the account gets an inbox of its own
    remote = Path(tempfile.mkdtemp(prefix="upb-canary-inbox-"))
    account = pwd.getpwnam(user)
    os.chown(remote, account.pw_uid, account.pw_gid)
    try:
        yield server, user, password, remote
    finally:
        server.kill()
        shutil.rmtree(remote, ignore_errors=True)


def secret_file(folder: Path, name: str, value: str) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def write_config(root: Path, sandbox: Sandbox, server: Sshd, user: str, password_inbox: Path,
                 key: Path, key_inbox: Path, via: str, password: str) -> Path:
    """service.yaml with a local feed and two SFTP feeds (password; key with a passphrase);
    the secrets come from ${ENV} or from files (``via``)."""
    secrets_dir = root / "secrets"
    api: dict[str, Any] = {"base_url": sandbox.base_url, "cid": sandbox.cid,
                           "connect_timeout": 2.0, "read_timeout": 5.0, "token_renew_margin": 0}
    password_feed: dict[str, Any] = {}
    key_feed: dict[str, Any] = {}
    if via == "env":
        api["apicode"] = "${" + APICODE_ENV + "}"
        password_feed["password"] = "${" + PASSWORD_ENV + "}"
        key_feed["key_passphrase"] = "${" + PASSPHRASE_ENV + "}"
    else:
        api["apicode_file"] = str(secret_file(secrets_dir, "apicode", CANARY_APICODE))
        password_feed["password_file"] = str(secret_file(secrets_dir, "password", password))
        key_feed["key_passphrase_file"] = str(secret_file(secrets_dir, "passphrase", CANARY_PASSPHRASE))
    sftp: dict[str, Any] = {"mapping": "mappings/simple.yaml", "patterns": ["*.csv"], "min_age_seconds": 0,
                            "known_hosts": str(server.known_hosts), "connect_timeout_seconds": 10,
                            "io_timeout_seconds": 20, "poll_interval_seconds": 0.2}
    config = {
        "api": api,
        "delivery": {"max_in_flight": 2, "max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.05,
                     "breaker_threshold": 1000},
        "journal": "var/journal.sqlite3",
        "staging_dir": "var/staging",
        "feeds": [
            {"name": "local", "mapping": "mappings/simple.yaml", "inbox": "inbox", "patterns": ["*.csv"],
             "min_age_seconds": 0},
            {"name": "password", "inbox": f"sftp://{user}@{server.host}:{server.port}{password_inbox}",
             **sftp, **password_feed},
            {"name": "key", "inbox": f"{server.url_prefix}{key_inbox}", "private_key_file": str(key),
             **sftp, **key_feed},
        ],
    }
    (root / "mappings").mkdir(parents=True, exist_ok=True)
    (root / "mappings" / "simple.yaml").write_text(SIMPLE_MAPPING, encoding="utf-8")
    (root / "inbox").mkdir(exist_ok=True)
    path = root / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def drop(folder: Path, name: str, rows: list[dict[str, str]], owner: Path | None = None) -> Path:
    path = write_feed(folder / name, rows)
    past = time.time() - 60
    os.utime(path, (past, past))
    if owner is not None:
        stat = owner.stat()
        os.chown(path, stat.st_uid, stat.st_gid)
    return path


def files_under(*roots: Path, skip: Path | None = None) -> dict[str, bytes]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and (skip is None or skip not in path.parents):
                found[str(path)] = path.read_bytes()
    return found


def assert_nowhere(secrets: dict[str, str], places: dict[str, bytes]) -> None:
    """No secret in any place; the failure names the secret and the place, never the value."""
    leaks = [f"{name} in {where}" for where, data in places.items()
             for name, value in secrets.items() if value.encode() in data]
    assert not leaks, "secrets leaked:\n  " + "\n  ".join(leaks)


@pytest.mark.slow  # about 15 runs of the real CLI against a sandbox and sshd, per variant
@pytest.mark.parametrize("via", ["env", "files"])
def test_no_command_shows_or_stores_a_secret_at_debug(
        via: str, tmp_path: Path, make_sandbox: Any, sftp_server: tuple[Sshd, str, str, Path]) -> None:
    server, user, password, password_inbox = sftp_server
    sandbox: Sandbox = make_sandbox(apicode=CANARY_APICODE, token_exp_claim=False)
    key = keygen(tmp_path / "canary_key", passphrase=CANARY_PASSPHRASE)
    with open(server.authorized_keys, "a", encoding="utf-8") as keys:
        keys.write((tmp_path / "canary_key.pub").read_text())
    key_inbox = tmp_path / "remote" / "key-inbox"
    key_inbox.mkdir(parents=True)
    root = tmp_path / "ws"
    config = write_config(root, sandbox, server, user, password_inbox, key, key_inbox, via, password)
    env = {**os.environ, APICODE_ENV: CANARY_APICODE, PASSWORD_ENV: password, PASSPHRASE_ENV: CANARY_PASSPHRASE}
    cli = Cli(env, root)
    conf = str(config)

    cli("validate-config", "--config", conf, expect=0)
    cli("validate", "mappings/simple.yaml", expect=0)
    cli("schema", expect=0)
    cli("preview", "mappings/simple.yaml", str(write_feed(tmp_path / "preview.csv", make_rows(5, 5))), expect=(0, 1))

    # one file through 401 (renewal), 500, a 200 with garbage, and 500s that echo the token
    sandbox.set_faults(script=["ok", 401, 500, GARBAGE, ECHO, "ok", ECHO, ECHO])
    a = drop(root / "inbox", "a.csv", make_rows(12, 4, prefix="A"))
    cli("process", str(a), "--config", conf, "--feed", "local")
    # a token request answered with the API code echoed back, then with garbage
    sandbox.revoke_tokens()
    sandbox.set_faults(token_script=[ECHO])
    cli("process", str(drop(root / "inbox", "b.csv", make_rows(3, 3, prefix="B"))), "--config", conf,
        "--feed", "local", expect=2)
    sandbox.set_faults(token_script=[GARBAGE])
    cli("process", str(drop(root / "inbox", "c.csv", make_rows(3, 3, prefix="C"))), "--config", conf,
        "--feed", "local", expect=2)
    # events that fail (every attempt echoes the request), then `retry` through a 401
    sandbox.set_faults(script=[ECHO] * 6)
    cli("process", str(drop(root / "inbox", "d.csv", make_rows(2, 2, prefix="D"))), "--config", conf,
        "--feed", "local", expect=1)

    # the service: one pass over all three feeds, the SFTP ones failing some events
    drop(root / "inbox", "e.csv", make_rows(4, 4, prefix="E"))
    drop(password_inbox, "p.csv", make_rows(4, 4, prefix="P"), owner=password_inbox)
    drop(key_inbox, "k.csv", make_rows(4, 4, prefix="K"))
    sandbox.revoke_tokens()
    sandbox.set_faults(script=[401, 500, GARBAGE, ECHO], error_ids=["P000001", "K000002"], error_status=500)
    # with a 401 in the script, whether a one-shot run ends as "credentials refused" (2) or
    # with problems (1) depends on which request meets it first (timing): either is a clean end;
    # what this test checks is what the outputs hold, and that nothing ends as a crash (3)
    cli("run", "--once", "--config", conf, expect=(0, 1, 2))
    sandbox.set_faults(script=[401, ECHO])
    cli("retry", "--config", conf, expect=(0, 1, 2))
    cli("status", "--config", conf, expect=0)
    cli("status", "--config", conf, "--json", expect=0)
    cli("prune", "--config", conf, "--older-than-days", "0.000001", expect=0)

    statuses = {arrival.status for arrival in sandbox.arrivals}
    assert {200, 401, 500} <= statuses, statuses
    outputs = b"".join(cli.outputs.values())
    assert b"DEBUG" in outputs and b"***" in outputs  # the debug log was on; echoes were redacted
    tokens = sandbox.issued_tokens()
    assert len(tokens) >= 4
    secrets = {"the API code": CANARY_APICODE, "the SFTP password": password,
               "the key passphrase": CANARY_PASSPHRASE,
               **{f"issued token #{n}": token for n, token in enumerate(tokens)}}
    stored = files_under(root, password_inbox, key_inbox, skip=root / "secrets")
    assert any(name.endswith(".receipt.csv") for name in stored)
    assert any("journal.sqlite3" in name for name in stored)
    assert any("/var/staging/" in name for name in stored) or any("outbox" in name for name in stored)
    assert_nowhere(secrets, {**cli.outputs, **stored})


@pytest.mark.slow  # the demo runs every sample
def test_sandbox_and_demo_commands_show_no_token_at_debug(tmp_path: Path) -> None:
    env = dict(os.environ)
    served = subprocess.Popen([sys.executable, "-m", "batch", "--debug", "sandbox", "--port", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert served.stderr is not None
        first = served.stderr.readline().decode()
        base_url = re.search(r"listening at (\S+)", first)
        assert base_url, first
        url = base_url.group(1)
        control = url.rsplit("/rest", 1)[0] + "/_sandbox/"
        token = requests.post(f"{url}/token", json={"cid": DEFAULT_CID, "apicode": DEFAULT_APICODE},
                              timeout=5).json()["token"]
        event = {"id": "s1", "usageplacecode": "6430075720", "time": "2024-01-04 10:41:40",
                 "status": "disconnected"}
        headers = {"Authorization": f"Bearer {token}"}
        assert requests.post(f"{url}/usageplace/event", json=event, headers=headers, timeout=5).status_code == 200
        requests.post(control + "faults", json={"script": [ECHO, 401]}, timeout=5)
        for _ in range(2):
            requests.post(f"{url}/usageplace/event", json=event, headers=headers, timeout=5)
    finally:
        served.send_signal(signal.SIGINT)
        out, err = served.communicate(timeout=30)
    assert b"DEBUG" in err
    assert token.encode() not in out + err and not JWT.search(out + err)

    demo = subprocess.run([sys.executable, "-m", "batch", "--debug", "demo", "--workspace", str(tmp_path / "demo")],
                          env=env, capture_output=True, timeout=300)
    assert demo.returncode == 0, demo.stderr.decode(errors="replace")[-3000:]
    assert b"DEBUG" in demo.stderr
    places = {"demo stdout": demo.stdout, "demo stderr": demo.stderr,
              **files_under(tmp_path / "demo")}
    leaks = [where for where, data in places.items() if JWT.search(data)]
    assert not leaks, f"a token in {leaks}"



# --------------------------------------------------------------------------- the one logging setup

CANARY_PASSWORD = "CANARY-password-3d8e01"


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """Takes away the handler an in-process command installs on the root logger."""
    import logging

    from batch.service.logs import RedactingFilter

    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if any(isinstance(each, RedactingFilter) for each in handler.filters):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def _config_with_canaries(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mappings").mkdir(exist_ok=True)
    (root / "mappings" / "simple.yaml").write_text(SIMPLE_MAPPING, encoding="utf-8")
    (root / "inbox").mkdir(exist_ok=True)
    password_file = secret_file(root / "secrets", "password", CANARY_PASSWORD)
    config = {
        "api": {"base_url": "http://127.0.0.1:9/rest", "cid": "1000011", "apicode": "${" + APICODE_ENV + "}"},
        "journal": "var/journal.sqlite3",
        "feeds": [
            {"name": "local", "mapping": "mappings/simple.yaml", "inbox": "inbox", "patterns": ["*.csv"]},
            {"name": "remote", "mapping": "mappings/simple.yaml", "inbox": "sftp://u@127.0.0.1:9/in",
             "patterns": ["*.csv"], "password_file": str(password_file), "known_hosts": str(root / "known_hosts")},
        ],
    }
    (root / "known_hosts").write_text("", encoding="utf-8")
    path = root / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


CONFIG_COMMANDS = [["validate-config"], ["status"], ["prune", "--older-than-days", "1"], ["retry"]]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_P5_every_config_command_logs_through_the_redaction_that_knows_the_config_secrets(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], cli_logging: None) -> None:
    import logging

    from batch.cli.commands import run

    monkeypatch.setenv(APICODE_ENV, CANARY_APICODE)
    config = _config_with_canaries(tmp_path / "ws")
    run(["--debug", *command, "--config", str(config)])
    capsys.readouterr()
    # what any library might log, e.g. a connection library that echoes what it was given
    logging.getLogger("some.library").warning("login apicode %s password %s", CANARY_APICODE, CANARY_PASSWORD)
    err = capsys.readouterr().err
    assert "WARNING some.library: login apicode *** password ***" in err
    assert CANARY_APICODE not in err and CANARY_PASSWORD not in err


@pytest.mark.parametrize("command", [["validate", "mappings/simple.yaml"], ["schema"],
                                     ["preview", "mappings/simple.yaml", "inbox/a.csv"]], ids=lambda c: c[0])
def test_P5_commands_without_a_config_log_through_the_redaction_too(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], cli_logging: None) -> None:
    import logging

    from batch.cli.commands import run

    _config_with_canaries(tmp_path)
    write_feed(tmp_path / "inbox" / "a.csv", make_rows(2, 2))
    monkeypatch.chdir(tmp_path)
    run(["--debug", *command])
    capsys.readouterr()
    logging.getLogger("some.library").debug("sent Authorization: Bearer abc.def-123 apicode=xyz")
    err = capsys.readouterr().err
    assert "DEBUG some.library: sent Authorization: Bearer *** apicode=***" in err


def test_P5_the_debug_traceback_of_an_unexpected_error_is_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        cli_logging: None) -> None:
    from batch.cli.commands import run

    monkeypatch.setenv(APICODE_ENV, CANARY_APICODE)
    config = _config_with_canaries(tmp_path / "ws")

    def broken(*args: object) -> None:  # a bug whose message carries what it was handed
        raise RuntimeError(f"unexpected: {CANARY_APICODE} / {CANARY_PASSWORD}")

    monkeypatch.setattr("batch.service.supervisor.feed_overview", broken)  # what `status` prints first
    assert run(["--debug", "status", "--config", str(config)]) == 3  # an internal error (ExitStatus.INTERNAL)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: unexpected: *** / ***" in err
    assert CANARY_APICODE not in err and CANARY_PASSWORD not in err
