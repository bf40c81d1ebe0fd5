"""Every YAML example of config/README.md is a tested artefact (issue 11: an administrator who
reads only config/README.md maps each kind of export on the first or second try).

Each ```yaml block is one of, by the HTML comment on the line before it:
- no comment: a complete mapping — `usageplace-batch validate` accepts it as it stands;
- `<!-- example: part of config/mappings/NAME.yaml -->`: a part — its top-level keys put in
  place of the same keys of that shipped mapping, `validate` accepts the result and `preview`
  reads the mapping's sample with it (invalid records allowed, a file-level error not);
- `<!-- example: sketch -->`: an outline with `{ ... }` — every key it names is a mapping key;
- `<!-- example: feed of config/service.yaml -->`: keys of a feed in the service configuration —
  a service configuration whose feed has them loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from batch.cli import commands as cli
from batch.config.mapping import mapping_json_schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "config" / "README.md"
BLOCK = re.compile(r"^(?:<!-- example: (?P<kind>[^>]*?) -->\n)?```yaml\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
PART = re.compile(r"part of (config/mappings/[\w.-]+\.yaml)")


def examples() -> list[tuple[int, str, str]]:
    """(line in the README, kind, YAML text) of every yaml block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, found.start("body")) + 1, found["kind"] or "complete", found["body"])
            for found in BLOCK.finditer(text)]


def test_the_readme_has_examples_of_each_kind():
    kinds = [kind for _, kind, _ in examples()]
    assert len(kinds) == len(re.findall(r"^```yaml$", README.read_text(encoding="utf-8"), re.MULTILINE))
    assert kinds.count("sketch") == 1
    assert kinds.count("complete") >= 1
    assert all(kind in ("sketch", "complete", FEED) or PART.fullmatch(kind) for kind in kinds), kinds


def sample_of(mapping: Path) -> Path:
    [sample] = [path for path in (ROOT / "samples").iterdir() if path.name.split(".", 1)[0] == mapping.stem]
    return sample


def validate(path: Path, capsys, line: int) -> None:
    code = cli.run(["validate", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), f"the example on line {line} of config/README.md: {err}"


FEED = "feed of config/service.yaml"
MAPPINGS = [example for example in examples() if example[1] not in ("sketch", FEED)]
FEEDS = [example for example in examples() if example[1] == FEED]


@pytest.mark.parametrize("line, kind, body", MAPPINGS, ids=[f"line {line}" for line, _, _ in MAPPINGS])
def test_every_mapping_example_validates(line: int, kind: str, body: str, tmp_path: Path, capsys):
    target = tmp_path / f"readme_line_{line}.yaml"
    if kind == "complete":
        target.write_text(body, encoding="utf-8")
        validate(target, capsys, line)
        return
    found = PART.fullmatch(kind)
    assert found, kind
    shipped = ROOT / found.group(1)
    mapping = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    part = yaml.safe_load(body)
    assert isinstance(part, dict) and part, f"config/README.md line {line}: not a mapping part"
    mapping.update(part)
    target.write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    validate(target, capsys, line)
    # and it reads the shipped sample: every column it names is there
    code = cli.run(["preview", "--json", str(target), str(sample_of(shipped))])
    out, err = capsys.readouterr()
    assert code in (0, 1), f"the example on line {line} of config/README.md: {err}"


def test_the_sketch_names_only_mapping_keys():
    [sketch] = [body for _, kind, body in examples() if kind == "sketch"]
    keys = [found.group(1) for found in re.finditer(r"^(\w+):", sketch, re.MULTILINE)]
    assert set(keys) == set(mapping_json_schema()["properties"]) - {"$schema"}, keys  # every key, and only keys


@pytest.mark.parametrize("line, kind, body", FEEDS, ids=[f"line {line}" for line, _, _ in FEEDS])
def test_every_feed_example_loads_in_a_service_configuration(line: int, kind: str, body: str, tmp_path: Path) -> None:
    from batch.config.service import load_service_config

    feed = {"name": "billing", "inbox": str(tmp_path / "inbox"),
            "mapping": str(ROOT / "config" / "mappings" / "finnish_cp1252.yaml"), **yaml.safe_load(body)}
    service = {"api": {"base_url": "https://ropo24.fi/rest", "cid": "1", "apicode": "${ROPO_APICODE}"},
               "feeds": [feed]}
    target = tmp_path / "service.yaml"
    target.write_text(json.dumps(service), encoding="utf-8")
    loaded = load_service_config(target)  # a ConfigError names the problem
    assert set(yaml.safe_load(body)) <= set(loaded.config.feeds[0].model_fields_set), f"line {line}"
