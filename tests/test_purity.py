"""Mapping and validation are pure: no I/O library imported, directly or by importing them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_imports import forbidden, imported_modules

IO_MODULES = {
    "os", "io", "pathlib", "socket", "sqlite3", "subprocess", "shutil", "tempfile", "requests", "urllib",
    "http", "paramiko", "watchdog",
}
PURE = {
    "batch.transform.mapping": IO_MODULES | {"lxml"},
    "batch.transform.events": IO_MODULES | {"lxml"},
    "batch.syntax.timeparse": IO_MODULES,
    "batch.transform.records": IO_MODULES,
    "batch.transform.jsonenc": IO_MODULES | {"lxml"},  # the one event encoder, used by mapping's generated ids
    # generated straight-line code for batch.transform.mapping; part of the same pure path
    "batch.transform.fastpath": IO_MODULES | {"lxml"},
}
NOT_LOADED = [
    "requests", "paramiko", "sqlite3", "watchdog", "urllib3", "http.client", "batch.store.journal", "batch.delivery.ropo", "batch.inbox",
]


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
from .. import errors
def later():
    import sqlite3
    from lxml import etree
    __import__("socket")
    importlib.import_module("requests")
    return open("x")
"""
    names = imported_modules(source, "batch.store")
    assert forbidden(names, IO_MODULES | {"lxml"}) == [
        "<builtin open>", "io", "io.BytesIO", "lxml", "lxml.etree", "os.path", "requests", "socket", "sqlite3",
    ]
    assert "batch.store.journal" in names
    assert "batch.errors" in names


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
