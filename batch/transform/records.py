"""What readers hand to the mapper: chunks of raw records with their line numbers. Pure.

A record's position is its line number in the file (XML: its start tag's line; records without
separators: the record's number) — an integer, which the journal keys and orders on. A workbook
record's position is a row of one sheet: the integer is the row as Excel numbers it, and the
chunk names the sheet once (Chunk.sheet), never each record; position() writes either for people.

Also the one rule for naming many things in a message (short_list): an error names a few and
counts the rest, so that a file with 100,000 columns cannot make every record's error 1 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Chunk:
    """A batch of records. rows[i] holds the values named by `columns`, read from line lines[i]."""

    columns: list[str]
    lines: list[int] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    # line -> why the record could not even be split into fields (broken quoting)
    broken: dict[int, str] = field(default_factory=dict)
    # line -> last physical line, for records that run over several lines (quoted line breaks)
    spans: dict[int, int] = field(default_factory=dict)
    # a workbook's: the sheet the rows are on (lines are then its row numbers); None for text
    sheet: str | None = None

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class XmlPlan:
    """What to take from each XML record element: texts by XPath, and repeated groups of parts."""

    texts: list[str]
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (element xpath, part xpaths)


# How many names one message lists before it only counts the rest.
LISTED_NAMES = 5


def short_list(names: list, limit: int = LISTED_NAMES) -> str:
    """"'a', 'b', 'c'" — or "'a', 'b', 'c', 'd', 'e' and 99,995 more" past `limit` names."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit:,} more"


def position(line: int, sheet: str | int | None = None) -> str:
    """Where a record is, as a person looks for it: "line 7"; on a workbook's sheet "row 7 of
    sheet 'Tapahtumat'" (or "row 7 of sheet 2" when only the sheet's position is known)."""
    if sheet is None:
        return f"line {line}"
    return f"row {line} of sheet {sheet!r}" if isinstance(sheet, str) else f"row {line} of sheet {sheet}"


def line_word(sheet: str | int | None) -> str:
    """What a position counts, for messages that stay within one file: "line", or a sheet's "row"."""
    return "line" if sheet is None else "row"
