"""A mapping's text -> its problems, each with the line (and column) an editor marks.

The mapping playground checks the text as it is typed. The problems are exactly those that
`usageplace-batch validate` prints for the same text saved as a file (the same loader,
batch.config.mapping.load_mapping_text: YAML syntax errors at their line, pydantic errors at the
line of the key they name, the cross-field rules at theirs), so that what the browser shows
and what the service refuses at reload never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batch.config.mapping import Mapping, load_mapping_text
from batch.config.yamlload import PROBLEM_LINE_LIMIT, ConfigError, ConfigProblem

# A mapping is a page or two of YAML; a megabyte in the editor is a mistake (a pasted export).
MAX_MAPPING_CHARS = 1 << 20


@dataclass(frozen=True)
class Problem:
    line: int | None
    column: int | None
    key: str
    message: str
    text: str  # the line `validate` prints: "FILE:LINE:COLUMN: KEY: MESSAGE"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "key": self.key, "message": self.message,
                "text": self.text}


@dataclass(frozen=True)
class Checked:
    mapping: Mapping | None  # None when there are problems
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return self.mapping is not None


def check_mapping_text(text: str, file: str) -> Checked:
    """The mapping `text` would make as the file named `file`, or every problem it has."""
    if len(text) > MAX_MAPPING_CHARS:
        return Checked(None, [_problem(ConfigProblem(
            file, None, None, "", f"the mapping is {len(text):,} characters long; at most {MAX_MAPPING_CHARS:,}"))])
    # `validate` reads a file as utf-8-sig: a byte order mark pasted in is not part of the YAML
    text = text.removeprefix("\ufeff")
    try:
        return Checked(load_mapping_text(text, file), [])
    except ConfigError as exc:
        return Checked(None, [_problem(problem) for problem in exc.problems])


def _problem(problem: ConfigProblem) -> Problem:
    message = problem.message
    if len(message) > PROBLEM_LINE_LIMIT:  # as `validate` cuts it: a pasted megabyte is no message
        message = message[:PROBLEM_LINE_LIMIT] + "..."
    return Problem(problem.line, problem.column, problem.path, message, str(problem))
