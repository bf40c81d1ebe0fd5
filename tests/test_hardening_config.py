"""Issue 7, configuration and secrets: hostile or careless YAML, secrets, the API URL, the CA bundle.

Every problem is a ConfigError (or a validate-config line) naming file, line and key; no secret
is ever echoed; a hot reload of a bad file never stops the running service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch.config.mapping import load_mapping_text
from batch.config.yamlload import ConfigError, load_yaml_text
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_mapping import MINIMAL, mapping_problems
from tests.fixtures_sftp import wait_until
from tests.service_helpers import MAPPING, ServiceProcess, export, write_config


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
        ("!!timestamp abc", "the value 'abc' is not a date/time; put it in quotes if it is meant as text"),
        ("!!timestamp ''", "the value '' is not a date/time; put it in quotes if it is meant as text"),
        ("!!int ''", "the value '' is not an integer"),
        ("!!float '-'", "the value '-' is not a number (could not convert string to float: '')"),
        ("!!int 0o9", "the value '0o9' is not an integer (invalid literal for int() with base 8: '0o9')"),
        ("1" * 5000, "the value is not an integer (Exceeds the limit (4300 digits) for integer string conversion: "
                     "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)"),
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


def test_D5_duplicate_and_merge_keys_in_the_service_file_are_problems_at_their_line(tmp_path: Path, sandbox) -> None:
    from batch.config.service import load_service_config

    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox")}])
    text = config.read_text().replace("  read_timeout: 5.0\n", "  read_timeout: 5.0\n  read_timeout: 6.0\n")
    config.write_text(text.replace("delivery:\n", "delivery:\n  <<: {max_attempts: 2}\n"))
    with pytest.raises(ConfigError) as info:
        load_service_config(config)
    assert [str(p) for p in info.value.problems] == [
        f"{config}:7:3: api.read_timeout: duplicate key (first given on line 6)",
        f"{config}:9:3: delivery: YAML merge keys (<<) are not supported here",
    ]


@pytest.mark.slow
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
            wait_until(lambda: service.text().count("configuration change refused") >= number, 30,  # noqa: B023 - waited for at once
                       what=f"refusal #{number}")
            assert service.proc.poll() is None, service.text()
        text = service.text()
        assert f"{mapping}:8:16: fields.description: the YAML tag !custom is not accepted" in text, text
        assert f"{mapping}:8:40: fields.description.default: the value '2024-02-30' is not a date/time" in text
        (inbox / "after.csv").write_bytes(export("after", 2))  # the previous mapping keeps working
        wait_until(lambda: (inbox / "archive" / "after.csv").exists(), 30, what="after.csv archived")
        # the service file itself, the same way
        good = config.read_text()
        config.write_text(good.replace("read_timeout: 5.0", "read_timeout: !custom 5.0"))
        wait_until(lambda: service.text().count("configuration change refused") >= 4, 30, what="refusal #4")
        assert f"{config}:6:17: api.read_timeout: the YAML tag !custom is not accepted" in service.text()
        config.write_text(good.replace("read_timeout: 5.0", "read_timeout: 2024-02-30"))
        wait_until(lambda: service.text().count("configuration change refused") >= 5, 30, what="refusal #5")
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
    assert found == ["m.yaml:10:15: aliases expand to more than 20000 nodes (this one to 7381); "
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


# --------------------------------------------------------------------------- shared set-up for service files

SECRET = "s3cr3t-canary-5f1e"


def validate_config(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli("validate-config", "--config", str(config), env=env)


def api_config(tmp_path: Path, sandbox, **api: object) -> Path:
    """A service.yaml with one local feed; `api` keys replace or add to the sandbox's."""
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox")}])
    import yaml

    data = yaml.safe_load(config.read_text())
    for key, value in api.items():
        if value is None:
            data["api"].pop(key, None)
        else:
            data["api"][key] = value
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def secret_file(path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- D17: secrets never echoed


@pytest.mark.parametrize("key, value", [
    ("apicode_file", SECRET),          # the secret itself typed under the *_file key
    ("connect_timeout", SECRET),       # ... or under a key of the wrong type
    ("read_timeout", [SECRET]),
    ("token_renew_margin", {"x": SECRET}),
    ("cid", 12.5),
    ("apicode", SECRET),
])
def test_D17_a_secret_typed_under_the_wrong_key_is_never_echoed(tmp_path: Path, sandbox, key, value) -> None:
    config = api_config(tmp_path, sandbox, **{key: value, **({"apicode": None} if key == "apicode_file" else {})})
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1, proc.stderr
    assert f"api.{key}" in proc.stderr or f"api: {key}" in proc.stderr, proc.stderr  # the key is named
    assert SECRET not in proc.stderr + proc.stdout and "input_value" not in proc.stderr
    assert "12.5" not in proc.stderr


def test_D17_secret_file_keys_of_a_feed_never_show_a_path_that_names_nothing(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox"),
                                               "password_file": SECRET, "key_passphrase_file": "/" + SECRET}])
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1 and SECRET not in proc.stderr, proc.stderr
    assert f"{config}:15:3: feeds[0]: key_passphrase_file: the file it names is not a readable file (the path is " \
           "not shown: it may be a secret typed here)" in proc.stderr.splitlines()


def test_D17_the_service_file_never_quotes_values_while_mappings_do(tmp_path: Path, sandbox) -> None:
    from batch.config.service import load_service_config

    config = api_config(tmp_path, sandbox, connect_timeout=SECRET, read_timeout="abc")
    with pytest.raises(ConfigError) as info:
        load_service_config(config)
    assert [str(p) for p in info.value.problems] == [
        f"{config}:5:3: api.connect_timeout: Input should be a valid number, unable to parse string as a number",
        f"{config}:6:3: api.read_timeout: Input should be a valid number, unable to parse string as a number",
    ]
    assert mapping_problems(MINIMAL.replace("format: csv", "format: csv\ncsv: {header_line: abc}")) == [
        "m.yaml:2:7: csv.header_line: Input should be a valid integer, unable to parse string as an integer "
        "(got 'abc')"]


# --------------------------------------------------------------------------- D18: one rule for every secret


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"  \n\n", "is empty"),
    (b"first\nsecond\n", "holds more than one line: a secret is a single line"),
    (b"\xff\xfesecret\n", "is not UTF-8 text (invalid start byte at byte 0)"),
    (b"sec\x00ret\n", "holds control characters"),
])
@pytest.mark.parametrize("field", ["apicode_file", "password_file", "key_passphrase_file"])
def test_D18_every_secret_file_follows_the_same_rules(tmp_path: Path, sandbox, field, content, problem) -> None:
    path = secret_file(tmp_path / "secret", content)
    if field == "apicode_file":
        config = api_config(tmp_path, sandbox, apicode=None, apicode_file=str(path))
        where = "api"
    else:
        config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox"), field: str(path)}])
        where = "feeds[local]"
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1, proc.stderr
    assert f"{config}: {where}: {field}: {path} {problem}" in proc.stderr.splitlines(), proc.stderr
    assert "Traceback" not in proc.stderr and "second-line-secret" not in proc.stderr


@pytest.mark.parametrize("value, problem", [
    ("", "is empty"),
    ("   ", "is empty"),
    ("a\nb", "holds more than one line: a secret is a single line"),
])
@pytest.mark.parametrize("field", ["apicode", "password", "key_passphrase"])
def test_D18_every_secret_variable_follows_the_same_rules(tmp_path: Path, sandbox, field, value, problem) -> None:
    if field == "apicode":
        config = api_config(tmp_path, sandbox, apicode="${EMPTY_SECRET}")
        where = "api"
    else:
        config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path / "inbox"),
                                                   field: "${EMPTY_SECRET}"}])
        where = "feeds[local]"
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode, "EMPTY_SECRET": value})
    assert proc.returncode == 1, proc.stderr
    assert f"{config}: {where}: {field}: environment variable EMPTY_SECRET {problem}" in proc.stderr.splitlines()


def test_D18_a_secret_is_its_one_line_without_surrounding_whitespace(tmp_path: Path) -> None:
    from batch.config.api import ApiSettings
    from batch.config.inbox import InboxSettings

    path = secret_file(tmp_path / "s", "\n  pass word \r\n")  # a blank line before it is not the secret
    api = ApiSettings(base_url="https://ropo24.fi/rest", cid="1", apicode_file=path)
    feed = InboxSettings(inbox=str(tmp_path), password_file=path, key_passphrase="${PW}")
    assert api.credentials().apicode.get_secret_value() == "pass word"
    assert feed.resolved_password().get_secret_value() == "pass word"
    os.environ["PW"] = "\tpass word\n"
    try:
        assert feed.resolved_key_passphrase().get_secret_value() == "pass word"
    finally:
        del os.environ["PW"]


def test_D18_a_secret_file_open_to_others_draws_a_warning(tmp_path: Path, sandbox) -> None:
    apicode = secret_file(tmp_path / "apicode", sandbox.apicode + "\n", 0o644)
    password = secret_file(tmp_path / "password", "pw\n", 0o666)
    config = api_config(tmp_path, sandbox, apicode=None, apicode_file=str(apicode))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path), "password_file": str(password)}])
    config.write_text(config.read_text().replace("apicode: ${" + APICODE_ENV + "}", f"apicode_file: {apicode}"))
    proc = validate_config(config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"warning: {config}: api: apicode_file: {apicode} can be read or written by group or others (mode 0644); "
        f"make it readable by the service's user only: chmod 600 {apicode}",
        f"warning: {config}: feeds[local]: password_file: {password} can be read or written by group or others "
        f"(mode 0666); make it readable by the service's user only: chmod 600 {password}",
    ]
    # the service says so in its log at start
    service = ServiceProcess(config, tmp_path / "service.log")
    try:
        service.wait_log("watching 1 feed(s)")
        assert f"apicode_file: {apicode} can be read or written by group or others (mode 0644)" in service.text()
    finally:
        service.signal(15)
        assert service.wait() == 0, service.text()
    apicode.chmod(0o600)
    password.chmod(0o400)
    assert validate_config(config).stderr == ""


def test_D18_the_service_does_not_start_on_an_empty_sftp_secret(tmp_path: Path, sandbox) -> None:
    empty = secret_file(tmp_path / "empty", "")
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(tmp_path), "password_file": str(empty)}])
    proc = cli("run", "--config", str(config), "--once", env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: feeds[local]: password_file: {empty} is empty"


# --------------------------------------------------------------------------- D24: the CA bundle


def _pem_key_only(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    path.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.mark.parametrize("make_bundle, problem", [
    (lambda tmp: Path("/dev/null"), "/dev/null is not a file (a PEM bundle of CA certificates is expected)"),
    (lambda tmp: tmp, "{path} is not a file (a PEM bundle of CA certificates is expected)"),
    (lambda tmp: tmp / "missing.pem", "{path} does not exist"),
    (lambda tmp: secret_file(tmp / "empty.pem", ""), "{path} holds no usable PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
    (lambda tmp: secret_file(tmp / "text.pem", "not a certificate\n"),
     "{path} holds no usable PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
    (lambda tmp: _pem_key_only(tmp / "key.pem"), "{path} holds no usable PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
])
def test_D24_an_unusable_ca_bundle_is_a_configuration_error(tmp_path: Path, sandbox, make_bundle, problem) -> None:
    bundle = make_bundle(tmp_path)
    config = api_config(tmp_path, sandbox, ca_bundle=str(bundle))
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[0] == f"{config}:7:3: api.ca_bundle: {problem.format(path=bundle)}"
    # the service does not start on it (exit 2) rather than retrying every event as transient
    run = cli("run", "--config", str(config), "--once", env={APICODE_ENV: sandbox.apicode})
    assert run.returncode == 2 and f"api.ca_bundle: {problem.format(path=bundle)}" in run.stderr, run.stderr


def test_D24_a_real_ca_bundle_is_accepted(tmp_path: Path, sandbox) -> None:
    import certifi

    config = api_config(tmp_path, sandbox, ca_bundle=certifi.where())
    (tmp_path / "inbox").mkdir()
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- D10, D16: the API base URL

PLAIN = ("must be a plain https:// URL (e.g. https://ropo24.fi/rest): no user or password, backslash, '@', '%', "
         "space, control or non-ASCII character")
SHAPE = ("must be an absolute https:// URL, scheme://host[:port]/path without query or fragment "
         "(e.g. https://ropo24.fi/rest)")
NUMERIC = "a numeric host must be an IPv4 address written as four decimal numbers, e.g. 127.0.0.1"


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.2:18773\\@127.0.0.1:18765/rest", PLAIN),   # D10: urllib3 connects to 127.0.0.2
    ("http://127.0.0.2:18773\\\\@127.0.0.1:18765/rest", PLAIN),
    ("https://user:pass@ropo24.fi/rest", PLAIN),                # D16: userinfo
    ("https://user@ropo24.fi/rest", PLAIN),
    ("http://127.0.0.1:8765@evil.example/rest", PLAIN),
    ("https://ropo24.fi/rest@x", PLAIN),
    ("https://ropo24.fi\\rest", PLAIN),
    ("https://ropo24%2efi/rest", PLAIN),                       # percent-encoded host
    ("https://ropo24.fi/re%73t", PLAIN),
    ("https://ropo24.fi /rest", PLAIN),
    ("https://ropo24.fi/re st", PLAIN),
    ("https://ropo24.fi\t/rest", PLAIN),
    ("https://ropo24.fi/rest\x00", PLAIN),
    ("https://ropo24.fi/\x7frest", PLAIN),
    ("https://röpo24.fi/rest", PLAIN),
    ("https://ropo24.fi/rest?x=1", SHAPE),
    ("https://ropo24.fi/rest#frag", SHAPE),
    ("https://ropo24.fi:/rest", SHAPE),
    ("https:/ropo24.fi/rest", SHAPE),
    ("//ropo24.fi/rest", SHAPE),
    ("ropo24.fi", SHAPE),
    ("ftp://ropo24.fi/rest", "must be an absolute https:// URL (e.g. https://ropo24.fi/rest)"),
    ("file:///etc/passwd", SHAPE),
    ("http://ropo24.fi/rest", "plain http is allowed only for a loopback sandbox; use https"),
    ("http://127.0.0.1.nip.io/rest", "plain http is allowed only for a loopback sandbox; use https"),
    ("http://127.1:8765/rest", NUMERIC),
    ("http://0x7f.0.0.1:8765/rest", NUMERIC),
    ("http://2130706433:8765/rest", NUMERIC),
    ("https://ropo24.fi:0/rest", "the port must be 1..65535"),
    ("https://ropo24.fi:65536/rest", "the port must be 1..65535"),
    ("https://[::1/rest", SHAPE),
    ("https://[127.0.0.1]/rest", "the host in [brackets] must be an IPv6 address"),
    ("https://-ropo24.fi/rest", "the host must be a DNS name (letters, digits, '-', '.') or an IP address"),
    ("https://ropo24.fi/rest/../admin", "the path must not contain . or .. segments"),
])
def test_D10_D16_an_ambiguous_or_unsafe_base_url_is_refused(url: str, problem: str) -> None:
    from pydantic import ValidationError

    from batch.config.api import ApiSettings

    with pytest.raises(ValidationError) as info:
        ApiSettings(base_url=url, cid="1", apicode="${A}")
    [error] = info.value.errors()
    assert error["loc"] == ("base_url",) and error["msg"] == f"Value error, {problem}"
    assert "pass" not in str(info.value).replace("password", "")


@pytest.mark.parametrize("url, normalised, origin", [
    ("https://rc.ropo24.fi/rest", "https://rc.ropo24.fi/rest", ("https", "rc.ropo24.fi", 443)),
    ("HTTPS://RC.Ropo24.FI:443/rest/", "https://rc.ropo24.fi/rest", ("https", "rc.ropo24.fi", 443)),
    ("https://ropo24.fi:8443/rest", "https://ropo24.fi:8443/rest", ("https", "ropo24.fi", 8443)),
    ("http://127.0.0.1:8765/rest", "http://127.0.0.1:8765/rest", ("http", "127.0.0.1", 8765)),
    ("http://[::1]:8765/rest", "http://[::1]:8765/rest", ("http", "::1", 8765)),
    (" https://10.0.0.5/rest ", "https://10.0.0.5/rest", ("https", "10.0.0.5", 443)),
])
def test_D10_the_base_url_is_parsed_once_and_its_origin_exposed(url: str, normalised: str, origin) -> None:
    from batch.config.api import ApiSettings

    settings = ApiSettings(base_url=url, cid="1", apicode="${A}")
    assert settings.base_url == normalised
    assert (settings.origin.scheme, settings.origin.host, settings.origin.port) == origin
    assert settings.origin.matches(normalised + "/usageplace/event")


def test_D10_origin_matches_only_the_same_scheme_host_and_port() -> None:
    from batch.config.api import ApiSettings

    origin = ApiSettings(base_url="https://rc.ropo24.fi/rest", cid="1", apicode="${A}").origin
    assert origin.url == "https://rc.ropo24.fi"
    assert origin.matches("https://RC.ropo24.fi:443/rest/token")
    for other in ["http://rc.ropo24.fi/rest/token", "https://rc.ropo24.fi:8443/rest", "https://ropo24.fi/rest",
                  "https://user@rc.ropo24.fi/rest", "https://evil.example/rest", "/rest/token", "https://[::1/x"]:
        assert not origin.matches(other), other


def test_D16_validate_config_never_prints_userinfo(tmp_path: Path, sandbox) -> None:
    config = api_config(tmp_path, sandbox, base_url=f"https://admin:{SECRET}@ropo24.fi/rest")
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1
    assert SECRET not in proc.stderr + proc.stdout and "admin" not in proc.stderr
    assert f"{config}:2:3: api.base_url: {PLAIN}" in proc.stderr.splitlines()


# --------------------------------------------------------------------------- D11: key passphrase


@pytest.fixture
def encrypted_key(sshd, tmp_path: Path) -> Path:
    """An encrypted key the test sshd accepts (besides the fixture's own)."""
    from tests.sshd import keygen

    key = keygen(tmp_path / "encrypted_key", passphrase="correct horse")
    with open(sshd.authorized_keys, "a") as f:
        f.write(Path(f"{key}.pub").read_text())
    return key


def sftp_service_config(tmp_path: Path, sandbox, sshd, remote_inbox: Path, **feed: object) -> Path:
    return write_config(tmp_path / "etc", sandbox, [{
        "name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "known_hosts": str(sshd.known_hosts),
        "private_key_file": str(sshd.client_key), "min_age_seconds": 0.2, "poll_interval_seconds": 0.1,
        "connect_timeout_seconds": 5, "io_timeout_seconds": 10, "reconnect_initial_seconds": 0.2,
        "reconnect_max_seconds": 0.5, **feed}])


@pytest.mark.parametrize("content, problem", [
    ("", "key_passphrase_file: {passphrase} is empty"),
    ("\n", "key_passphrase_file: {passphrase} is empty"),
    ("wrong battery\n", "private_key_file: cannot decrypt private key {key} with the configured passphrase "
                        "(key_passphrase / key_passphrase_file): is it the right one?"),
])
def test_D11_validate_config_opens_the_key_with_its_passphrase(tmp_path: Path, sandbox, sshd, remote_inbox,
                                                               encrypted_key: Path, content: str, problem: str) -> None:
    passphrase = secret_file(tmp_path / "passphrase", content)
    config = sftp_service_config(tmp_path, sandbox, sshd, remote_inbox, private_key_file=str(encrypted_key),
                                 key_passphrase_file=str(passphrase))
    proc = validate_config(config, env={APICODE_ENV: sandbox.apicode})
    assert proc.returncode == 1, proc.stderr
    assert f"{config}: feeds[remote]: {problem.format(passphrase=passphrase, key=encrypted_key)}" \
        in proc.stderr.splitlines(), proc.stderr
    assert "wrong battery" not in proc.stderr and "correct horse" not in proc.stderr


def test_D11_validate_config_names_a_key_that_is_not_a_key(tmp_path: Path, sandbox, sshd, remote_inbox) -> None:
    not_a_key = secret_file(tmp_path / "id_fake", "not really a key\n")
    no_passphrase = sftp_service_config(tmp_path, sandbox, sshd, remote_inbox, private_key_file=str(not_a_key))
    proc = validate_config(no_passphrase, env={APICODE_ENV: sandbox.apicode})
    assert f"{no_passphrase}: feeds[remote]: private_key_file: cannot load private key {not_a_key}: not a private key " \
           "in a format paramiko reads (OpenSSH, or PEM RSA/ECDSA): ValueError" in proc.stderr.splitlines(), proc.stderr


def test_D11_key_loading_failures_are_inbox_errors(sftp_settings, encrypted_key: Path, tmp_path: Path) -> None:
    from batch.inbox.base import InboxError
    from batch.inbox.sftp import SftpInbox

    empty = secret_file(tmp_path / "empty", "")
    wrong = secret_file(tmp_path / "wrong", "wrong battery\n")
    right = secret_file(tmp_path / "right", "correct horse\n")
    cases = [
        (dict(private_key_file=encrypted_key, key_passphrase_file=empty),
         f"cannot load private key {encrypted_key}: key_passphrase_file: {empty} is empty"),
        (dict(private_key_file=encrypted_key),
         f"private key {encrypted_key} is encrypted: set key_passphrase or key_passphrase_file"),
        (dict(private_key_file=encrypted_key, key_passphrase_file=wrong),
         f"cannot decrypt private key {encrypted_key} with the configured passphrase "
         "(key_passphrase / key_passphrase_file): is it the right one?"),
        (dict(private_key_file=Path(f"{encrypted_key}.pub")),
         f"cannot load private key {encrypted_key}.pub: not a private key in a format paramiko reads "
         "(OpenSSH, or PEM RSA/ECDSA): ValueError"),
    ]
    for overrides, message in cases:
        inbox = SftpInbox(sftp_settings(**overrides))
        try:
            with pytest.raises(InboxError) as info:
                inbox.scan()
            assert str(info.value) == message
        finally:
            inbox.close()
    for works in (dict(private_key_file=encrypted_key, key_passphrase_file=right),
                  dict(key_passphrase_file=right)):  # the fixture's key is not encrypted: the passphrase is unused
        inbox = SftpInbox(sftp_settings(**works))
        try:
            assert inbox.scan() == []
        finally:
            inbox.close()


def test_D11_a_bad_passphrase_leaves_the_feed_worker_running(tmp_path: Path, sandbox, sshd, remote_inbox,
                                                            encrypted_key: Path) -> None:
    from tests.service_helpers import ServiceThread

    passphrase = secret_file(tmp_path / "passphrase", "wrong battery\n")
    config = sftp_service_config(tmp_path, sandbox, sshd, remote_inbox, private_key_file=str(encrypted_key),
                                 key_passphrase_file=str(passphrase))
    os.environ[APICODE_ENV] = sandbox.apicode
    try:
        with ServiceThread(config) as runner:
            runner.wait_log("cannot decrypt private key")
            worker = runner.service.workers["remote"]
            assert worker.is_alive() and worker.state == "unavailable", worker.state
            secret_file(passphrase, "")  # emptied while running: refused the same way, the worker lives on
            runner.wait_log(f"key_passphrase_file: {passphrase} is empty")
            assert worker.is_alive() and worker.state == "unavailable"
            secret_file(passphrase, "correct horse\n")  # fixed while running: the feed goes on
            (remote_inbox / "k.csv").write_bytes(export("K", 2))
            wait_until(lambda: (remote_inbox / "archive" / "k.csv").exists(), 30, what="k.csv archived")
        assert "correct horse" not in runner.logs.text and "wrong battery" not in runner.logs.text
    finally:
        del os.environ[APICODE_ENV]


def test_D18_D24_a_reload_with_a_bad_secret_or_ca_bundle_is_refused_and_the_service_runs_on(
        tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.service_helpers import ServiceThread

    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    good = config.read_text()
    empty = secret_file(tmp_path / "empty", "\n")
    with ServiceThread(config, reload_interval=0.1) as runner:
        runner.wait_log("watching 1 feed(s)")
        config.write_text(good.replace("read_timeout: 5.0", "read_timeout: 5.0\n  ca_bundle: /dev/null"))
        runner.wait_log("api.ca_bundle: /dev/null is not a file (a PEM bundle of CA certificates is expected)")
        config.write_text(good.replace("patterns:", f"password_file: {empty}\n  patterns:"))
        runner.wait_log(f"configuration change refused; the previous configuration stays in force: "
                        f"feeds[local]: password_file: {empty} is empty")
        (inbox / "on.csv").write_bytes(export("on", 2))
        wait_until(lambda: (inbox / "archive" / "on.csv").exists(), 30, what="on.csv archived")
        assert runner.service.generation.number == 1 and runner.thread.is_alive()
