"""Shared pytest configuration. Fixtures live in plugin modules, one per area."""

import os
from pathlib import Path

pytest_plugins = [
    "tests.fixtures_browser",
    "tests.fixtures_clock",
    "tests.fixtures_http",
    "tests.fixtures_pg",
    "tests.fixtures_pipeline",
    "tests.fixtures_sftp",
]

# Subprocesses (`python -m batch ...`) must run this tree, whatever else is installed
# and whatever their working directory is.
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
