"""Issue 7, configuration and secrets: hostile or careless YAML, secrets, the API URL, the CA bundle.

Every problem is a ConfigError (or a validate-config line) naming file, line and key; no secret
is ever echoed; a hot reload of a bad file never stops the running service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from batch.config.mapping import load_mapping, load_mapping_text
from batch.config.yamlload import ConfigError, load_yaml_text
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import MAPPING, ServiceProcess, export, write_config

MINIMAL = """\
format: csv
fields:
  usageplacecode: {column: code}
  time: {column: t}
  status: {column: s}
"""


def mapping_problems(text: str, file: str = "m.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_mapping_text(textwrap.dedent(text), file)
    return [str(p) for p in info.value.problems]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


# --------------------------------------------------------------------------- D5: YAML construct errors

TAG_ONLY = "only plain values (text, numbers, true/false, null, dates), lists and mappings"


@pytest.mark.parametrize(
    "value, message",
    [
        ("!custom x", f"the YAML tag !custom is not accepted: {TAG_ONLY}"),
        ('!!python/name:os.system ""', f"the YAML tag !!python/name:os.system is not accepted: {TAG_ONLY}"),
        ("!!python/object:os.system {}", f"the YAML tag !!python/object:os.system is not accepted: {TAG_ONLY}"),
        ("!!python/object/apply:os.system [id]",
         f"the YAML tag !!python/object/apply:os.system is not accepted: {TAG_ONLY}"),
        ('!!binary "AAAA"', f"the YAML tag !!binary is not accepted: {TAG_ONLY}"),
        ("!!set {a}", f"the YAML tag !!set is not accepted: {TAG_ONLY}"),
        ("!!omap [a: 1]", f"the YAML tag !!omap is not accepted: {TAG_ONLY}"),
        ("!!pairs [a: 1]", f"the YAML tag !!pairs is not accepted: {TAG_ONLY}"),
        ("!!str [1]", "the YAML tag !!str does not fit this value (a list)"),
        ("!!map x", "the YAML tag !!map does not fit this value (a plain value)"),
        ("2024-02-30", "the value '2024-02-30' is not a date/time (day is out of range for month); "
                       "put it in quotes if it is meant as text"),
        ("2024-02-05 25:00:00", "the value '2024-02-05 25:00:00' is not a date/time (hour must be in 0..23); "
                                "put it in quotes if it is meant as text"),
        ("!!timestamp 2024-13-01", "the value '2024-13-01' is not a date/time (month must be in 1..12); "
                                   "put it in quotes if it is meant as text"),
        ("!!int abc", "the value 'abc' is not an integer (invalid literal for int() with base 10: 'abc')"),
        ("!!float abc", "the value 'abc' is not a number (could not convert string to float: 'abc')"),
    ],
)
def test_D5_yaml_construct_errors_are_config_problems_with_file_line_key(value: str, message: str) -> None:
    text = MINIMAL.replace("{column: s}", "{column: s}\n  description: {column: d, default: VALUE}")
    found = mapping_problems(text.replace("VALUE", value))
    assert found == [f"m.yaml:6:37: fields.description.default: {message}"]


def test_D5_a_key_with_a_tag_or_a_bad_value_is_a_problem_too() -> None:
    found = mapping_problems(MINIMAL + "!custom k: 1\n2024-02-30: 1\n")
    assert found == ["m.yaml:6:1: keys must be plain text",
                     "m.yaml:7:1: the value '2024-02-30' is not a date/time (day is out of range for month); "
                     "put it in quotes if it is meant as text"]


def test_D5_valid_dates_and_explicit_plain_tags_still_load() -> None:
    loaded = load_yaml_text("a: !!str 123\nb: !!int '7'\nc: 2024-02-29\nd: !!float 1.5\ne: !!null ''\n", "x.yaml")
    assert loaded.data["a"] == "123" and loaded.data["b"] == 7 and str(loaded.data["c"]) == "2024-02-29"
    assert loaded.data["d"] == 1.5 and loaded.data["e"] is None


def test_D5_validate_lists_the_bad_file_and_goes_on_with_the_others(tmp_path: Path) -> None:
    bad_tag = tmp_path / "tag.yaml"
    bad_tag.write_text(MINIMAL.replace("{column: s}", "!custom {column: s}"))
    bad_date = tmp_path / "date.yaml"
    bad_date.write_text(MINIMAL.replace("{column: s}", "{column: s, default: 2024-02-30}"))
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    proc = cli("validate", str(bad_tag), str(bad_date), str(good))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"{bad_tag}:5:11: fields.status: the YAML tag !custom is not accepted: {TAG_ONLY}",
        f"{bad_date}:5:32: fields.status.default: the value '2024-02-30' is not a date/time "
        "(day is out of range for month); put it in quotes if it is meant as text",
        "2 of 3 mapping file(s) have problems",
    ]
    assert proc.stdout == f"{good}: ok (csv, 3 fields)\n"


def test_D5_the_service_file_is_checked_the_same_way(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox")}])
    text = config.read_text().replace("read_timeout: 5.0", "read_timeout: !!python/name:os.system ''")
    config.write_text(text.replace("max_in_flight: 4", "max_in_flight: 2024-02-30"))
    proc = cli("validate-config", "--config", str(config), env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    # the service file never quotes what was written (it may be a secret typed in the wrong place)
    assert lines[:2] == [
        f"{config}:6:17: api.read_timeout: the YAML tag !!python/name:os.system is not accepted: {TAG_ONLY}",
        f"{config}:8:18: delivery.max_in_flight: the value is not a date/time (day is out of range for month); "
        "put it in quotes if it is meant as text",
    ], proc.stderr


def test_D5_hot_reload_of_a_mapping_with_a_custom_tag_never_stops_the_service(tmp_path: Path, sandbox) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    mapping = tmp_path / "mapping.yaml"
    service = ServiceProcess(config, tmp_path / "service.log", env={APICODE_ENV: sandbox.apicode})
    try:
        service.wait_log("watching 1 feed(s)")
        for number, bad in enumerate([
            MAPPING.replace("{column: note}", "!custom {column: note}"),
            MAPPING.replace("{column: note}", "{column: note, default: 2024-02-30}"),
            MAPPING.replace("{column: note}", "!!python/object/apply:os.system [id]"),
        ], start=1):
            mapping.write_text(bad)
            wait_until(lambda: service.text().count("configuration change refused") >= number, 30,
                       what=f"refusal #{number}")
            assert service.proc.poll() is None, service.text()
        text = service.text()
        assert f"{mapping}:8:16: fields.description: the YAML tag !custom is not accepted" in text, text
        assert f"{mapping}:8:40: fields.description.default: the value '2024-02-30' is not a date/time" in text
        (inbox / "after.csv").write_bytes(export("after", 2))  # the previous mapping keeps working
        wait_until(lambda: (inbox / "archive" / "after.csv").exists(), 30, what="after.csv archived")
        assert service.proc.poll() is None
    finally:
        service.signal(15)
        assert service.wait() == 0, service.text()


# --------------------------------------------------------------------------- D12: alias bomb


def _alias_bomb(levels: int = 6, width: int = 9) -> str:
    lines = MINIMAL.splitlines() + ["x0: &x0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"x{level}: &x{level} [" + ", ".join([f"*x{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_D12_yaml_alias_bomb_is_refused_quickly_with_its_line() -> None:
    started = time.monotonic()
    found = mapping_problems(_alias_bomb())
    assert time.monotonic() - started < 2.0
    # x3 aliases x2 (91 nodes) nine times, ... the running total passes the budget on line 10
    assert found == [f"m.yaml:10:15: aliases expand to more than 20000 nodes (this one to 7381); "
                     "anchors and aliases are for small repeated pieces"]


def test_D12_an_alias_inside_its_own_anchor_and_deep_nesting_are_refused() -> None:
    assert mapping_problems(MINIMAL + "loop: &a [x, *a]\n") == [
        "m.yaml:6:14: an alias inside the node its anchor names (a loop)"]
    assert mapping_problems(MINIMAL + "deep: " + "[" * 200 + "]" * 200 + "\n") == [
        "m.yaml:6:70: lists and mappings nested deeper than 64 levels"]
    chained = MINIMAL + "a: &a " + "[" * 40 + "]" * 40 + "\nb: &b [[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    assert mapping_problems(chained) == [
        "m.yaml:7:33: lists and mappings nested deeper than 64 levels (aliases expanded)"]


def test_D12_small_anchors_and_aliases_keep_working() -> None:
    text = MINIMAL.replace("status: {column: s}", "status: {column: s, map: &codes {D: disconnected, C: connected}}")
    text += "  description: {column: d, map: *codes}\n"
    mapping = load_mapping_text(text)
    assert mapping.fields.status.map == mapping.fields.description.map == {"D": "disconnected", "C": "connected"}
    # a generous budget: a status map of 500 codes reused in 15 places
    big = "{" + ", ".join(f"c{i}: v{i}" for i in range(500)) + "}"
    loaded = load_yaml_text(f"m: &m {big}\nuses: [" + ", ".join(["*m"] * 15) + "]\n", "x.yaml")
    assert len(loaded.data["uses"]) == 15 and loaded.data["uses"][14]["c499"] == "v499"
