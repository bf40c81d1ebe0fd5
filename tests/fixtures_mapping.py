"""Mapping texts and helpers shared by the mapping-configuration tests."""

from __future__ import annotations

import textwrap

import pytest

from batch.config.mapping import load_mapping_text
from batch.config.yamlload import ConfigError

MINIMAL = """\
format: csv
fields:
  usageplacecode: {column: code}
  time: {column: t}
  status: {column: s}
"""


def mapping_problems(text: str, file: str = "m.yaml") -> list[str]:
    """The problems a mapping text is refused with (it must be refused)."""
    with pytest.raises(ConfigError) as info:
        load_mapping_text(textwrap.dedent(text), file)
    return [str(p) for p in info.value.problems]
