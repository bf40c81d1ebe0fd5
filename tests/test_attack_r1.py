"""The second attacker's findings (issue 7 / issue 8 neighbours), each under its class's name.

Real service runs (`python -m batch run --once` in a subprocess) against the real sandbox where
the defect shows end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batch.sandbox import Sandbox
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

    from batch.logs import redact_and_cut, redact_text

    for body in ("eyJ-" * 250_000, "eyJ_" * 250_000, "x-eyJ" * 200_000, "-eyJabcdef." * 100_000):
        started = time.perf_counter()
        redact_and_cut(body, 300)
        assert time.perf_counter() - started < 1.0, body[:20]
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for text in (jwt, f"Bearer {jwt}", f'"{jwt}"', f"token {jwt}.", f"={jwt}&", f"({jwt})"):
        assert "eyJhbGci" not in redact_text(text), text
