"""What an edit of a mapping changes: the current and the edited mapping over the same files.

Both mappings read every file through the production path (batch.transform.extract.mapped_file,
what the pipeline and `preview` use), so a record's outcome here is the one the service would
give it. The two streams of mapped records come in file order and are joined on the record's
line: a record both mappings make is compared (outcome, and each event field or problem), a
line only one of them makes is a record the other leaves out (its `keep` rule, or it reads the
file differently).

Memory does not grow with the files: records are compared as they stream by and dropped; what
is kept is counts and the first `sample` changed records (before and after).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from batch.transform.extract import mapped_file
from batch.transform.mapping import CompiledMapping, MappingRun, ValidChunk
from batch.transform.readers import FileError

DEFAULT_SAMPLE = 50  # changed records shown before/after

VALID, INVALID, FILTERED, NOT_READ = "valid", "invalid", "filtered", "not read"

# (line, event or None, problems or None) as a mapping made it
_Record = tuple[int, "dict[str, Any] | None", "list[Any] | None"]


@dataclass
class SideCounts:
    """What one mapping made of one file."""

    valid: int = 0
    invalid: int = 0
    filtered: int = 0  # left out by the mapping's `keep` rule
    error: str | None = None  # the file as a whole could not be read with this mapping

    @property
    def records(self) -> int:
        return self.valid + self.invalid

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "valid": self.valid, "invalid": self.invalid, "filtered": self.filtered,
                "error": self.error}


@dataclass
class FileDiff:
    name: str
    before: SideCounts = field(default_factory=SideCounts)
    after: SideCounts = field(default_factory=SideCounts)
    changed: int = 0  # records whose outcome, event or problems differ

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "before": self.before.as_dict(), "after": self.after.as_dict(),
                "changed": self.changed}


@dataclass
class MappingDiff:
    files: list[FileDiff] = field(default_factory=list)
    compared: int = 0  # records (lines) looked at, over all files
    changed: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (before, after) -> records, changes only
    fields: Counter[str] = field(default_factory=Counter)  # event field -> records in which it changed
    samples: list[dict[str, Any]] = field(default_factory=list)
    sample_limit: int = DEFAULT_SAMPLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": [f.as_dict() for f in self.files],
            "compared": self.compared,
            "changed": self.changed,
            "outcomes": [{"before": b, "after": a, "records": n} for (b, a), n in self.outcomes.most_common()],
            "fields": [{"field": name, "records": n} for name, n in self.fields.most_common()],
            "samples": self.samples,
            "sample_limit": self.sample_limit,
        }


def diff_files(
    before: CompiledMapping, after: CompiledMapping, files: Sequence[tuple[str, Path]], sample: int = DEFAULT_SAMPLE,
) -> MappingDiff:
    """Map every file (its shown name, its path) with both mappings and tell what differs."""
    result = MappingDiff(sample_limit=sample)
    for name, path in files:
        result.files.append(_diff_file(before, after, name, path, result))
    return result


def _diff_file(before: CompiledMapping, after: CompiledMapping, name: str, path: Path, result: MappingDiff) -> FileDiff:
    diff = FileDiff(name)
    run_before, run_after = before.start(), after.start()
    old = _Side(_records(before, path, run_before, diff.before), before, diff.before)
    new = _Side(_records(after, path, run_after, diff.after), after, diff.after)
    while old.head is not None or new.head is not None:
        if new.head is None or (old.head is not None and old.head[0] < new.head[0]):
            assert old.head is not None
            _compare(result, diff, name, old.head, None, old, new)
            old.advance()
        elif old.head is None or new.head[0] < old.head[0]:
            _compare(result, diff, name, None, new.head, old, new)
            new.advance()
        else:
            _compare(result, diff, name, old.head, new.head, old, new)
            old.advance()
            new.advance()
    diff.before.filtered, diff.after.filtered = run_before.filtered, run_after.filtered
    return diff


class _Side:
    """One mapping's records of a file, one at a time (`head`: the next, or None at the end)."""

    def __init__(self, records: Iterator[_Record], compiled: CompiledMapping, counts: SideCounts):
        self._records = records
        self._keeps = compiled.keep is not None
        self._counts = counts
        self.head: _Record | None = None
        self.advance()

    @property
    def absent(self) -> str:
        """What a line this mapping does not make is: left out by its `keep` rule, or not read
        (no keep rule, or the file could not be read with it)."""
        return FILTERED if self._keeps and self._counts.error is None else NOT_READ

    def advance(self) -> None:
        self.head = next(self._records, None)


def _records(compiled: CompiledMapping, path: Path, run: MappingRun, counts: SideCounts) -> Iterator[_Record]:
    try:
        for chunk in mapped_file(compiled, path, run=run):
            if isinstance(chunk, ValidChunk):
                counts.valid += len(chunk)
                yield from zip(chunk.lines, chunk.events, repeat(None))
                continue
            for record in chunk:
                if record.ok:
                    counts.valid += 1
                else:
                    counts.invalid += 1
                yield record.line, record.event, record.errors
    except FileError as exc:
        counts.error = str(exc)
    except OSError as exc:  # gone since it was listed (the service archives and prunes meanwhile), unreadable
        counts.error = f"cannot read the file: {exc.strerror or exc}"


def _compare(result: MappingDiff, diff: FileDiff, name: str, old: _Record | None, new: _Record | None,
             old_side: _Side, new_side: _Side) -> None:
    result.compared += 1
    if old is not None and new is not None:
        if old[1] is not None and old[1] == new[1]:
            return  # the common case: the same event
        if old[1] is None and new[1] is None and _problems(old[2]) == _problems(new[2]):
            return
    was = _outcome(old, old_side)
    now = _outcome(new, new_side)
    changed_fields = _changed_fields(old, new)
    diff.changed += 1
    result.changed += 1
    if was != now:
        result.outcomes[(was, now)] += 1
    result.fields.update(changed_fields)
    if len(result.samples) < result.sample_limit:
        line = (old or new)[0]  # type: ignore[index]  # one of the two is there
        result.samples.append({
            "file": name, "line": line, "fields": changed_fields,
            "before": _shown(old, was), "after": _shown(new, now),
        })


def _outcome(record: _Record | None, side: _Side) -> str:
    if record is None:
        return side.absent
    return VALID if record[1] is not None else INVALID


def _problems(errors: list[Any] | None) -> list[tuple[str, str]]:
    return [(error.field, error.describe()) for error in errors or ()]


def _changed_fields(old: _Record | None, new: _Record | None) -> list[str]:
    """The event fields that changed: of two events, those whose values differ; of an event and
    an invalid record, the fields with a problem (what made the outcome change); of two invalid
    records, those whose problems differ. A record that one side leaves out changes its outcome
    only."""
    if old is None or new is None:
        return []
    if old[1] is not None and new[1] is not None:
        before, after = old[1], new[1]
    elif old[1] is not None or new[1] is not None:
        return sorted({error.field for error in (old[2] or new[2] or ())})
    else:
        before, after = _by_field(old[2]), _by_field(new[2])
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def _by_field(errors: list[Any] | None) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for error in errors or ():
        values.setdefault(error.field, []).append(error.describe())
    return values


def _shown(record: _Record | None, outcome: str) -> dict[str, Any]:
    if record is None:
        return {"outcome": outcome}
    if record[1] is not None:
        return {"outcome": outcome, "event": record[1]}
    return {"outcome": outcome, "problems": [error.as_dict() for error in record[2] or ()]}


# --- preview -------------------------------------------------------------------------------------


@dataclass
class Preview:
    counts: SideCounts
    records: list[dict[str, Any]]  # the first `limit`: {"line", "event"} or {"line", "problems"}
    sheet: str | None = None  # a workbook's: lines are its rows


def preview_file(compiled: CompiledMapping, path: Path, limit: int = 200) -> Preview:
    """The events (or problems) `compiled` makes of the file, as `preview --json` shows them; the
    first `limit` records are kept, every record counted."""
    counts = SideCounts()
    run = compiled.start()
    shown: list[dict[str, Any]] = []
    for line, event, errors in _records(compiled, path, run, counts):
        if len(shown) < limit:
            shown.append(_previewed(line, event, errors))
    counts.filtered = run.filtered
    return Preview(counts, shown, run.sheet)


def _previewed(line: int, event: dict[str, Any] | None, errors: list[Any] | None) -> dict[str, Any]:
    if event is not None:
        return {"line": line, "event": event}
    return {"line": line, "problems": [error.as_dict() for error in errors or ()]}

