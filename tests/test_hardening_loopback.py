"""Issue 7: plain http only to a loopback ADDRESS, never to a name that merely resolves there.

`http://localhost` was accepted as loopback by its name, but a name is whatever /etc/hosts or DNS
answers when the client connects: pointed elsewhere, the API code would travel in clear over the
network. http now needs an IP literal that is loopback (127.0.0.0/8, ::1); names need https
(whose certificate check makes the name mean something). Each refusal below was accepted before.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batch.config.api import ApiSettings

NAME_REFUSED = ("plain http is allowed only for a loopback address written as one (127.0.0.1 or [::1]), "
                "not for the name '{}', which /etc/hosts or DNS may point elsewhere; use https")


@pytest.mark.parametrize("url, name", [
    ("http://localhost:8765/rest", "localhost"),
    ("http://LocalHost:8765/rest", "localhost"),
    ("http://sandbox.localhost:8765/rest", "sandbox.localhost"),
])
def test_http_to_localhost_by_name_is_refused(url: str, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        ApiSettings(base_url=url, cid="1", apicode="${A}")
    [error] = info.value.errors()
    assert error["loc"] == ("base_url",) and error["msg"] == "Value error, " + NAME_REFUSED.format(name)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/rest", "http://127.0.0.2:8765/rest", "http://[::1]:8765/rest",
                                 "https://localhost:8443/rest"])
def test_loopback_addresses_and_https_names_are_still_accepted(url: str) -> None:
    assert ApiSettings(base_url=url, cid="1", apicode="${A}").base_url == url


def test_the_shipped_sandbox_config_uses_an_address() -> None:
    from pathlib import Path

    import yaml

    config = Path(__file__).resolve().parent.parent / "config" / "service.sandbox.yaml"
    base_url = yaml.safe_load(config.read_text())["api"]["base_url"]
    assert ApiSettings(base_url=base_url, cid="1", apicode="${A}").origin.host == "127.0.0.1"
