"""Imports flow one way: cli -> console -> sandbox -> service -> pipeline -> parts -> config -> base.

A module may import a module of a lower layer, or one of its own package. An import that runs
back up (or sideways between two parts, e.g. the journal importing the API client) fails here,
as `test_purity.py` fails on I/O in the pure transform. Imports inside functions and under
TYPE_CHECKING count too: a lazy import is still a dependency.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_imports import imported_modules

ROOT = Path(__file__).resolve().parents[1] / "batch"

# Lowest first. Modules of one layer that are separate units (not one package) may not import
# each other, except in layer "base", whose order is the order of this list's first entry.
LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["batch", "batch.errors"]),
    ("base", ["batch.backoff", "batch.clock", "batch.strenum", "batch.contract", "batch.redact", "batch.fsutil", "batch.syntax"]),
    ("config", ["batch.config"]),
    ("transform", ["batch.transform"]),
    ("parts", ["batch.store", "batch.delivery", "batch.inbox"]),
    ("pipeline", ["batch.pipeline"]),
    ("service", ["batch.service"]),
    ("sandbox", ["batch.sandbox"]),
    ("console", ["batch.console"]),
    ("cli", ["batch.cli"]),
    ("entry", ["batch.__main__"]),
]


def unit_of(module: str) -> tuple[int, str] | None:
    """(layer index, unit) of a `batch` module: the longest listed prefix that owns it."""
    best: tuple[int, str] | None = None
    for rank, (_, units) in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (rank, unit)
    return best


def upward_imports(module: str, imported: set[str]) -> list[str]:
    """The imports of `module` that break the direction, as 'module -> target (why)'."""
    own = unit_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    problems = []
    for target in sorted(n for n in imported if n == "batch" or n.startswith("batch.")):
        where = unit_of(target)
        if where is None or where[1] == own[1] or where[0] < own[0]:
            continue
        if where[1] == "batch" and target != "batch":
            continue  # "from batch import x" is recorded as batch.x as well; x is judged on its own
        side = "sideways" if where[0] == own[0] else "up"
        problems.append(f"{module} -> {target} ({side}: {LAYERS[own[0]][0]} -> {LAYERS[where[0]][0]})")
    return problems


def batch_modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


@pytest.mark.parametrize(("module", "path"), batch_modules(), ids=[m for m, _ in batch_modules()])
def test_imports_flow_down(module, path):
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    assert upward_imports(module, imported_modules(path.read_text(), package)) == []


def test_an_import_back_up_is_seen():
    source = "from batch.pipeline import Pipeline\nfrom ..delivery import ropo\ndef later():\n    import batch.cli\n"
    names = imported_modules(source, "batch.store")
    assert upward_imports("batch.store.journal", names) == [
        "batch.store.journal -> batch.cli (up: parts -> cli)",
        "batch.store.journal -> batch.delivery (sideways: parts -> parts)",
        "batch.store.journal -> batch.delivery.ropo (sideways: parts -> parts)",
        "batch.store.journal -> batch.pipeline (up: parts -> pipeline)",
        "batch.store.journal -> batch.pipeline.Pipeline (up: parts -> pipeline)",
    ]
    assert upward_imports("batch.pipeline", names) == [
        "batch.pipeline -> batch.cli (up: pipeline -> cli)",
    ]


def test_every_module_has_a_layer():
    assert [m for m, _ in batch_modules() if unit_of(m) is None] == []
