"""The console deployed off loopback and behind a reverse proxy, over real HTTP against a live
console: the host names it answers to (console.allowed_hosts), HTTPS behind a proxy
(console.public_url: a Secure cookie, HSTS, redirects to it) and the login throttle's client
address (console.trusted_proxies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from batch.console.app import create_app
from batch.console.security import HostsRequired, client_address
from tests.fixtures_browser import LiveConsole
from tests.service_helpers import write_config

PASSWORD_ENV = "CONSOLE_DEPLOY_PASSWORD"
PASSWORD = "correct horse battery staple"
PUBLIC = "console.example.org"


@pytest.fixture
def deploy_config(tmp_path: Path, sandbox, monkeypatch) -> Any:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)

    def make(**console: Any) -> Path:
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}],
                            console={"password": "${" + PASSWORD_ENV + "}", **console})
    return make


def port_of(console: LiveConsole) -> int:
    return int(console.url.rstrip("/").rpartition(":")[2])


def get(console: LiveConsole, path: str, host: str, **kwargs: Any) -> requests.Response:
    """GET `path` from the console through 127.0.0.1 (it may listen on 0.0.0.0) with the Host `host`."""
    return requests.get(f"http://127.0.0.1:{port_of(console)}{path}", headers={"Host": host, **kwargs},
                        timeout=30, allow_redirects=False)


# --------------------------------------------------------------------------- allowed hosts


def test_off_loopback_the_allowed_hosts_are_required(deploy_config) -> None:
    config = deploy_config()
    with pytest.raises(HostsRequired) as refused:
        create_app(config, host="0.0.0.0")
    assert str(refused.value) == (
        "the console would listen on 0.0.0.0, which is not loopback, without console.allowed_hosts: list the host "
        f"names browsers reach it by (e.g. [console.example.org]) in {config}, or listen on 127.0.0.1")
    done = subprocess.run([sys.executable, "-m", "batch", "console", "--config", str(config), "--host", "0.0.0.0",
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {refused.value}"]


def test_off_loopback_only_the_allowed_hosts_are_answered(deploy_config, live_console) -> None:
    console = live_console(deploy_config(allowed_hosts=[PUBLIC, "10.1.2.3:8443"]), host="0.0.0.0")
    port = port_of(console)
    for host in (PUBLIC, f"{PUBLIC}:{port}", "Console.Example.Org.", "10.1.2.3:8443"):
        answer = get(console, "/", host)
        assert (answer.status_code, answer.headers["location"]) == (303, "/login?next=%2F"), host
    for host in (f"127.0.0.1:{port}", "localhost", "evil.example", f"{PUBLIC}.evil.example", "10.1.2.3:80",
                 "10.1.2.3", ""):
        answer = get(console, "/login", host)
        assert answer.status_code == 400, host
        assert answer.text == ("<h1>400: not a host name of this console</h1><p>It answers only to the names of "
                               "console.allowed_hosts in its configuration.</p>")


def test_on_loopback_the_allowed_hosts_are_answered_beside_the_loopback_names(deploy_config, live_console) -> None:
    # a reverse proxy on the same machine that passes the browser's Host on
    console = live_console(deploy_config(allowed_hosts=[PUBLIC]))
    assert get(console, "/login", PUBLIC).status_code == 200
    assert get(console, "/login", f"127.0.0.1:{port_of(console)}").status_code == 200
    assert get(console, "/login", "evil.example").status_code == 400


def test_the_console_settings_are_checked(deploy_config) -> None:
    from batch.config.service import load_service_config
    from batch.config.yamlload import ConfigError

    for console, message in (
            ({"allowed_hosts": [PUBLIC, "bad host"]},
             "console.allowed_hosts: 'bad host' is not a host name with an optional port (NAME or NAME:PORT)"),
            ({"allowed_hosts": [f"{PUBLIC}:99999"]},
             "console.allowed_hosts: 'console.example.org:99999' is not a host name with an optional port "
             "(NAME or NAME:PORT)"),
            ({"allowed_hosts": PUBLIC}, "console.allowed_hosts: give a list of host names, e.g. [console.example.org]"),
            ({"public_url": "https://console.example.org/console/"},
             "console.public_url: give the URL browsers open, as https://NAME[:PORT]/ (no path, query or user)"),
            ({"public_url": "ftp://console.example.org"},
             "console.public_url: give the URL browsers open, as https://NAME[:PORT]/ (no path, query or user)"),
            ({"allowed_hosts": ["other.example.org", f"{PUBLIC}:8443"], "public_url": f"https://{PUBLIC}/"},
             "console: public_url's host console.example.org is not one of allowed_hosts"),
            ({"trusted_proxies": ["10.0.0.300"]},
             "console.trusted_proxies: '10.0.0.300' is not an address or a network (CIDR)"),
            ({"trusted_proxies": "10.0.0.1"},
             "console.trusted_proxies: give a list of addresses or networks, e.g. [127.0.0.1, 10.0.0.0/24]")):
        config = deploy_config(**console)
        with pytest.raises(ConfigError) as refused:
            load_service_config(config)
        lines = str(refused.value).splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{config}:") and lines[0].endswith(": " + message), lines


# --------------------------------------------------------------------------- behind HTTPS


def test_behind_https_the_cookie_is_secure_hsts_is_sent_and_redirects_go_to_the_public_url(
        deploy_config, live_console) -> None:
    console = live_console(deploy_config(allowed_hosts=[PUBLIC], public_url=f"https://{PUBLIC}/"))
    answer = get(console, "/", PUBLIC)
    assert (answer.status_code, answer.headers["location"]) == (303, f"https://{PUBLIC}/login?next=%2F")
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    page = get(console, "/login", PUBLIC)
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("usageplace_console=")
    assert "; secure" in cookie.lower() and "; httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    csrf = playground_token(page.text)
    login = requests.post(f"http://127.0.0.1:{port_of(console)}/login", headers={"Host": PUBLIC},
                          cookies={"usageplace_console": cookie.split(";")[0].partition("=")[2]},
                          data={"csrf": csrf, "name": "Admin", "password": PASSWORD, "next": "/files/1"},
                          timeout=30, allow_redirects=False)
    assert (login.status_code, login.headers["location"]) == (303, f"https://{PUBLIC}/files/1")
    assert "; secure" in login.headers["set-cookie"].lower()


def test_without_a_public_url_nothing_changes(deploy_config, live_console) -> None:
    console = live_console(deploy_config())
    answer = console.get("/")
    assert (answer.status_code, answer.headers["location"]) == (303, "/login?next=%2F")
    assert "strict-transport-security" not in answer.headers
    assert "secure" not in console.get("/login").headers["set-cookie"].lower()
    http_url = live_console(deploy_config(public_url="http://127.0.0.1:8780"))
    answer = http_url.get("/")
    assert (answer.status_code, answer.headers["location"]) == (303, "http://127.0.0.1:8780/login?next=%2F")
    assert "strict-transport-security" not in answer.headers


def playground_token(page: str) -> str:
    import re

    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found
    return found.group(1)


# --------------------------------------------------------------------------- the login behind a proxy


def wrong_logins(console: LiveConsole, forwarded: str | None, times: int) -> list[int]:
    csrf = console.csrf("/login")
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return [console.post("/login", {"csrf": csrf, "name": "x", "password": "guess", "next": "/"},
                         headers=headers).status_code for _ in range(times)]


def test_behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client(deploy_config, live_console) -> None:
    console = live_console(deploy_config(trusted_proxies=["127.0.0.0/8", "10.9.0.0/16"]))
    # the attacker's own header part is left of what the proxies appended: not believed
    assert wrong_logins(console, "198.51.100.1, 203.0.113.7, 10.9.0.4", 5) == [401] * 5
    csrf = console.csrf("/login")
    refused = console.post("/login", {"csrf": csrf, "name": "x", "password": PASSWORD, "next": "/"},
                           headers={"X-Forwarded-For": "192.0.2.99, 203.0.113.7"})
    assert refused.status_code == 429
    assert ("Too many wrong passwords from 203.0.113.7: logging in from there is refused for a minute after the last "
            "one. Wait, then try again.") in refused.text
    other = console.other_session()  # another user behind the same proxy is not locked out
    csrf = other.csrf("/login")
    assert other.post("/login", {"csrf": csrf, "name": "Admin", "password": PASSWORD, "next": "/"},
                      headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 303


def test_a_forged_forwarded_for_from_an_untrusted_peer_changes_nothing(deploy_config, live_console) -> None:
    console = live_console(deploy_config(trusted_proxies=["10.0.0.0/8"]))  # the test is not one of them
    csrf = console.csrf("/login")
    for number in range(5):
        assert console.post("/login", {"csrf": csrf, "name": "x", "password": "guess", "next": "/"},
                            headers={"X-Forwarded-For": f"203.0.113.{number}"}).status_code == 401
    refused = console.post("/login", {"csrf": csrf, "name": "x", "password": PASSWORD, "next": "/"},
                           headers={"X-Forwarded-For": "203.0.113.200"})
    assert refused.status_code == 429
    assert "Too many wrong passwords from 127.0.0.1:" in refused.text


def test_the_client_address_of_a_chain_of_proxies() -> None:
    import ipaddress

    trusted = (ipaddress.ip_network("10.0.0.0/8"),)

    def scope(peer: str, *forwarded: str) -> dict[str, Any]:
        return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", one.encode()) for one in forwarded]}

    assert client_address(scope("10.0.0.1", "1.2.3.4"), trusted) == "1.2.3.4"
    assert client_address(scope("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2"), trusted) == "1.2.3.4"
    assert client_address(scope("10.0.0.1", "6.6.6.6", "1.2.3.4"), trusted) == "1.2.3.4"  # two headers: in order
    assert client_address(scope("10.0.0.1", "not-an-address, 10.0.0.3"), trusted) == "10.0.0.3"
    assert client_address(scope("10.0.0.1"), trusted) == "10.0.0.1"  # no header: the proxy itself
    assert client_address(scope("192.0.2.1", "1.2.3.4"), trusted) == "192.0.2.1"  # not a trusted peer
    assert client_address(scope("10.0.0.1", "1.2.3.4"), ()) == "10.0.0.1"
