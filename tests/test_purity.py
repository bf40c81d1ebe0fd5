"""Mapping and validation are pure: no I/O library imported, directly or by importing them."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

IO_MODULES = {
    "os", "io", "pathlib", "socket", "sqlite3", "subprocess", "shutil", "tempfile", "requests", "urllib",
    "http", "paramiko", "watchdog",
}
PURE = {
    "batch.mapping": IO_MODULES | {"lxml"},
    "batch.events": IO_MODULES | {"lxml"},
    "batch.timeparse": IO_MODULES,
    "batch.records": IO_MODULES,
    "batch.jsonenc": IO_MODULES | {"lxml"},  # the one event encoder, used by mapping's generated ids
    # generated straight-line code for batch.mapping; part of the same pure path
    "batch.fastpath": IO_MODULES | {"lxml"},
}
NOT_LOADED = [
    "requests", "paramiko", "sqlite3", "watchdog", "urllib3", "http.client", "batch.journal", "batch.ropo", "batch.inbox",
]


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a source file imports: statements anywhere (functions too), and literal dynamic imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
        elif isinstance(node, ast.Name) and node.id == "open":
            names.add(f"<builtin {node.id}>")
    return names


def forbidden(names: set[str], banned: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in banned or n == "<builtin open>")


def module_source(name: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    return Path(spec.origin).read_text(encoding="utf-8"), name.rsplit(".", 1)[0]


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io_library(module):
    source, package = module_source(module)
    assert forbidden(imported_modules(source, package), PURE[module]) == []


def test_the_import_check_sees_every_kind_of_import():
    source = """
import os.path
from io import BytesIO
from . import journal
def later():
    import sqlite3
    from lxml import etree
    __import__("socket")
    importlib.import_module("requests")
    return open("x")
"""
    names = imported_modules(source, "batch")
    assert forbidden(names, IO_MODULES | {"lxml"}) == [
        "<builtin open>", "io", "io.BytesIO", "lxml", "lxml.etree", "os.path", "requests", "socket", "sqlite3",
    ]
    assert "batch.journal" in names


@pytest.mark.parametrize("module", sorted(PURE))
def test_importing_a_pure_module_loads_no_io_machinery(module):
    script = (
        "import json, sys\n"
        f"import {module}\n"
        f"print(json.dumps([m for m in {NOT_LOADED!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == []


def test_the_subprocess_check_would_see_a_loaded_module():
    script = f"import json, sys, sqlite3\nprint(json.dumps([m for m in {NOT_LOADED!r} if m in sys.modules]))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == ["sqlite3"]
