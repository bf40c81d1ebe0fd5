"""The console's security rules over real HTTP (a live console on loopback): CSRF, traversal,
the login (required off loopback, wrong password refused), the Host check, secrets never
rendered, cookie flags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.console.app import create_app
from batch.console.security import LoginRequired, Refused, confined, is_loopback
from batch.store.journal import Journal

PASSWORD_ENV = "CONSOLE_TEST_PASSWORD"
PASSWORD = "correct horse battery staple"
APICODE = "s3cr3t-apicode-value"
WEBHOOK = "https://hooks.example/services/T000/B000/s3cr3t-webhook-token"


def with_console(workspace: Path, console: dict[str, Any] | None, name: str) -> Path:
    """A copy of the workspace's service.yaml (same journal and feeds) with a `console:` section."""
    config = yaml.safe_load((workspace / "service.yaml").read_text(encoding="utf-8"))
    if console is not None:
        config["console"] = console
    path = workspace / name
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def password_config(demo_workspace, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return with_console(demo_workspace, {"password": "${" + PASSWORD_ENV + "}"}, "service.login.yaml")


# --------------------------------------------------------------------------- listening and login


def test_a_non_loopback_address_without_a_password_is_refused(demo_workspace):
    config = demo_workspace / "service.yaml"
    with pytest.raises(LoginRequired) as refused:
        create_app(config, host="0.0.0.0")
    assert str(refused.value) == (
        f"the console would listen on 0.0.0.0, which is not loopback, without a login: set console.password "
        f"(${{ENV_NAME}}) or console.password_file in {config}, or listen on 127.0.0.1")


def test_the_command_refuses_it_with_one_line_and_exit_2(demo_workspace):
    done = subprocess.run([sys.executable, "-m", "batch", "console", "--config", str(demo_workspace / "service.yaml"),
                           "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: the console would listen on 0.0.0.0, which is not loopback, without a login: set "
        f"console.password (${{ENV_NAME}}) or console.password_file in {demo_workspace / 'service.yaml'}, or "
        "listen on 127.0.0.1"]


def test_a_non_loopback_address_with_a_password_and_its_host_names_is_allowed(demo_workspace, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = with_console(demo_workspace, {"password": "${" + PASSWORD_ENV + "}",
                                           "allowed_hosts": ["console.example.org"]}, "service.hosts.yaml")
    create_app(config, host="0.0.0.0")  # builds; nothing listens (without allowed_hosts: test_console_deploy.py)


def test_loopback_addresses():
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org")] == [False] * 4


def test_a_password_file_that_is_missing_is_named(demo_workspace):
    config = with_console(demo_workspace, {"password_file": "no-such-password"}, "service.nofile.yaml")
    from batch.config.secrets import SecretResolutionError

    with pytest.raises(SecretResolutionError) as refused:
        create_app(config)
    assert str(refused.value) == "console.password_file: cannot read the file it names: it does not exist"


def test_with_a_password_every_page_asks_for_the_login_first(password_config, live_console):
    console = live_console(password_config)
    for path in ("/", "/files/1", "/files/1/receipt", "/feeds/utf8_iso/archive/utf8_iso.csv"):
        answer = console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    assert console.post("/logout", {"csrf": console.csrf("/login")}).status_code == 401


def test_a_wrong_password_is_refused(password_config, live_console):
    console = live_console(password_config)
    answer = console.login("not the password")
    assert answer.status_code == 401
    assert "Wrong password." in answer.text
    assert console.get("/").status_code == 303  # still not logged in


def test_the_right_password_logs_in_and_the_name_is_shown(password_config, live_console):
    console = live_console(password_config)
    answer = console.login(PASSWORD, name="Aino Admin")
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    page = console.get("/")
    assert page.status_code == 200 and "Aino Admin" in page.text
    console.post("/logout", {"csrf": console.csrf("/")})
    assert console.get("/").status_code == 303


def test_the_login_goes_back_only_to_a_page_of_the_console(password_config, live_console):
    console = live_console(password_config)
    token = console.csrf("/login")
    answer = console.post("/login", {"csrf": token, "name": "A", "password": PASSWORD, "next": "//evil.example/x"})
    assert answer.headers["location"] == "/"


def test_the_session_cookie_is_httponly_and_samesite_strict(password_config, live_console):
    console = live_console(password_config)
    cookie = console.get("/login").headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


# --------------------------------------------------------------------------- CSRF


def test_a_post_without_the_csrf_token_is_refused(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    console.get("/")  # a session with a token exists; the form below does not carry it
    answer = console.post("/logout", {"name": "x"})
    assert answer.status_code == 403
    assert "the form has no security token (CSRF). Nothing was done" in answer.text


def test_a_post_with_a_wrong_csrf_token_is_refused(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    console.get("/")
    assert console.post("/logout", {"csrf": "forged"}).status_code == 403
    answer = console.post("/logout", headers={"X-CSRF-Token": "forged"})
    assert answer.status_code == 403
    assert "the form&#39;s security token (CSRF) is wrong" in answer.text


def test_a_token_of_another_session_is_refused(demo_workspace, live_console):
    first = live_console(demo_workspace / "service.yaml")
    token = first.csrf("/")
    second = first.other_session()
    second.get("/")
    assert second.post("/logout", {"csrf": token}).status_code == 403
    assert first.post("/logout", {"csrf": token}).status_code == 303


# --------------------------------------------------------------------------- downloads and traversal


def test_confined_refuses_names_that_leave_the_folder(tmp_path):
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / "a.csv").write_text("x")
    (tmp_path / "secret.yaml").write_text("apicode")
    (folder / "link.csv").symlink_to(tmp_path / "secret.yaml")
    (folder / "inner").mkdir()
    (folder / "inner" / "b.csv").write_text("y")
    assert confined(folder, "a.csv") == (folder / "a.csv").resolve()
    assert confined(folder, "inner/b.csv") == (folder / "inner" / "b.csv").resolve()
    refusals = {}
    for name in ("../secret.yaml", "inner/../../secret.yaml", "/etc/passwd", str(tmp_path / "secret.yaml"),
                 "link.csv", "a.csv\x00.txt", "..\\secret.yaml", "inner", "missing.csv", "", "./a.csv"):
        with pytest.raises(Refused) as refused:
            confined(folder, name)
        refusals[name] = str(refused.value)
    assert refusals == {
        "../secret.yaml": "a name with '..' or '.' is not a file of this folder",
        "inner/../../secret.yaml": "a name with '..' or '.' is not a file of this folder",
        "/etc/passwd": "an absolute path is not a file of this folder",
        str(tmp_path / "secret.yaml"): "an absolute path is not a file of this folder",
        "link.csv": "the name leads out of the folder",
        "a.csv\x00.txt": "not a file name",
        "..\\secret.yaml": "not a file name",
        "inner": "not a regular file",
        "missing.csv": "no such file",
        "": "not a file name",
        "./a.csv": "a name with '..' or '.' is not a file of this folder",
    }


def test_traversal_over_http_is_refused(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    outbox = demo_workspace / "inbox" / "utf8_iso" / "outbox"
    (outbox / "escape.csv").symlink_to(demo_workspace / "service.yaml")
    try:
        ok = console.get("/feeds/utf8_iso/outbox/utf8_iso.csv.receipt.json")
        assert ok.status_code == 200 and ok.json()["file"]
        for path in ("/feeds/utf8_iso/outbox/..%2F..%2F..%2Fservice.yaml",
                     "/feeds/utf8_iso/outbox/%2e%2e/%2e%2e/%2e%2e/service.yaml",
                     "/feeds/utf8_iso/outbox/%2e%2e%2f%2e%2e%2f%2e%2e%2fservice.yaml",
                     "/feeds/utf8_iso/outbox/%2Fetc%2Fpasswd",
                     "/feeds/utf8_iso/outbox/escape.csv",
                     "/feeds/utf8_iso/outbox/utf8_iso.csv.receipt.json%00.txt",
                     "/feeds/utf8_iso/processing/x", "/feeds/nofeed/outbox/x"):
            answer = console.get(path)
            assert answer.status_code in (404, 400), path
            assert "apicode" not in answer.text and "feeds:" not in answer.text, path
    finally:
        (outbox / "escape.csv").unlink()


# --------------------------------------------------------------------------- other sites, secrets


def test_a_foreign_host_name_is_refused_on_loopback(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    assert console.get("/", headers={"Host": "rebind.example:80"}).status_code == 400
    assert console.get("/", headers={"Host": "localhost"}).status_code == 200


def test_pages_carry_a_strict_content_security_policy(demo_workspace, live_console):
    console = live_console(demo_workspace / "service.yaml")
    headers = console.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_no_secret_is_in_any_page(demo_workspace, live_console, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("CONSOLE_TEST_APICODE", APICODE)
    monkeypatch.setenv("CONSOLE_TEST_WEBHOOK", WEBHOOK)
    config = yaml.safe_load((demo_workspace / "service.yaml").read_text(encoding="utf-8"))
    config["api"]["apicode"] = "${CONSOLE_TEST_APICODE}"
    config["notify"] = {"url": "${CONSOLE_TEST_WEBHOOK}"}
    config["feeds"][1]["expected"] = {"every": "day", "by": "03:00", "time_zone": "Europe/Helsinki"}
    config["console"] = {"password": "${" + PASSWORD_ENV + "}"}
    path = demo_workspace / "service.secrets.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    console = live_console(path)
    pages = [console.get("/login").text, console.login("wrong").text]
    console.login(PASSWORD)
    pages.append(console.get("/").text)
    pages.append(console.get("/?days=7").text)
    with Journal(demo_workspace / "var" / "journal.sqlite3", read_only=True) as journal:
        ids = [record.id for record in journal.recent_files(100)]
    for file_id in ids:
        for query in ("", "?outcome=invalid", "?outcome=rejected", "?q=x"):
            pages.append(console.get(f"/files/{file_id}{query}").text)
    pages += [console.get(path).text for path in ("/files/99999", "/nothing", "/files/1?page=x")]
    assert len(pages) > 20
    assert "expected every day by 03:00" in pages[2]
    for text in pages:
        assert APICODE not in text and PASSWORD not in text and "hooks.example" not in text
        assert not re.search(r"apicode\W", text, flags=re.IGNORECASE)
    assert os.environ[PASSWORD_ENV] == PASSWORD


def test_the_console_section_is_checked_like_every_secret(demo_workspace, monkeypatch):
    from batch.config.secrets import SecretResolutionError
    from batch.config.service import load_service_config
    from batch.config.yamlload import ConfigError

    literal = with_console(demo_workspace, {"password": "hunter2"}, "service.literal.yaml")
    with pytest.raises(ConfigError) as refused:
        load_service_config(literal)
    assert str(refused.value).endswith(
        "console.password: write password as ${ENV_NAME} (an environment variable) or use password_file; "
        "a literal secret is not allowed in configuration")
    assert "hunter2" not in str(refused.value)
    both = with_console(demo_workspace, {"password": "${X}", "password_file": "p"}, "service.both.yaml")
    with pytest.raises(ConfigError, match="console: give either password or password_file, not both"):
        load_service_config(both)
    monkeypatch.delenv("CONSOLE_UNSET_PASSWORD", raising=False)
    unset = with_console(demo_workspace, {"password": "${CONSOLE_UNSET_PASSWORD}"}, "service.unset.yaml")
    with pytest.raises(SecretResolutionError) as missing:
        create_app(unset)
    assert str(missing.value) == "console.password: environment variable CONSOLE_UNSET_PASSWORD is not set"


def test_a_password_file_gives_the_password(demo_workspace, live_console):
    (demo_workspace / "console-password").write_text(PASSWORD + "\n", encoding="utf-8")
    (demo_workspace / "console-password").chmod(0o600)
    config = with_console(demo_workspace, {"password_file": "console-password"}, "service.file.yaml")
    console = live_console(config)
    assert console.login("wrong").status_code == 401
    assert console.login(PASSWORD).status_code == 303
    assert console.get("/").status_code == 200
