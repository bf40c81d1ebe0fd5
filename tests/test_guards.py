"""Guards that keep the documentation and the committed artefacts in step with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from batch.cli.commands import main

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> set[str]:
    """The commands named in the README's command table (rows "| `usageplace-batch NAME ...` |")."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `usageplace-batch ([a-z][a-z-]*)", text, flags=re.MULTILINE))


def test_every_cli_command_appears_in_the_readme_command_table() -> None:
    commands = set(main.commands)
    assert commands, "the click group has no commands"
    missing = sorted(commands - readme_commands())
    assert not missing, f"README.md's command table lacks: {missing}"
    unknown = sorted(readme_commands() - commands)
    assert not unknown, f"README.md's command table names commands that do not exist: {unknown}"


def test_committed_mapping_schema_equals_the_schema_command_output() -> None:
    printed = subprocess.run([sys.executable, "-m", "batch", "schema"], capture_output=True, timeout=60, check=True)
    committed = (ROOT / "config" / "mapping.schema.json").read_bytes()
    assert committed == printed.stdout, (
        "config/mapping.schema.json is stale: run `usageplace-batch schema -o config/mapping.schema.json`")


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in fixture modules (tests/fixtures_*.py, conftest.py, service_helpers.py)."""
    offenders = [f"{path.name}:{number}" for path in sorted((ROOT / "tests").glob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.match(r"\s*(from tests\.test_\w+ import|import tests\.test_)", line)]
    assert not offenders, f"imports from test modules (move the helper to a fixture module): {offenders}"


def test_the_readme_layout_table_names_every_package_and_module_of_batch() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("Layout of `batch/`"):].split("\n\n")[1]  # the paragraph after the intro
    named = set(re.findall(r"^\| `([a-z_]+(?:\.py|/))`|, `([a-z_]+(?:\.py|/))`", table, flags=re.MULTILINE))
    named = {name for pair in named for name in pair if name}
    on_disk = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in (ROOT / "batch").iterdir()
        if not path.name.startswith("_") and path.name != "data" and (path.is_dir() or path.suffix == ".py")
    }
    assert named == on_disk
