"""Shared pytest configuration. Fixtures live in plugin modules, one per area."""

pytest_plugins = [
    "tests.fixtures_http",
    "tests.fixtures_sftp",
]
