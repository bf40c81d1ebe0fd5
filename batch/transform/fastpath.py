"""A mapping compiled into one straight-line function for records that are valid. Pure.

Most records of a nightly export are fine, and for them the general mapper (one method call
per field, errors collected on the way) spends most of its time on dispatch. This module
writes the mapping out as the source of a single function — the way dataclasses and attrs
generate their methods — that returns the finished event, or None as soon as anything is
off. A None sends the record through the general mapper, which finds and explains every
problem, so error messages come from one place only. The test suite checks that both paths
agree on arbitrary input.

The same mapping is also written out column by column, for a whole chunk at once
(`build_fast_chunk_mapper`): each step (strip, the printable and empty checks, a value map, a
pattern, a time, a whole number) runs over one column with `map`, `all` and list
comprehensions, whose loops run in C, instead of once per value in Python bytecode; the events
are built by one comprehension at the end. It returns the events of every row, or None as
soon as any value of the chunk is off; the chunk then goes row by row (the row function above,
and for what that refuses, the general mapper). It takes only what the row function takes, so
the three agree: a record is an event from the chunk function only if the row function would
make the same event of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import accumulate, chain, repeat
from typing import Any

from batch.transform.events import EVENT_KEYS

FastMapper = Callable[[list], "dict[str, Any] | None"]
# rows of one chunk -> the event of every row, or None (some row needs the row-by-row path)
FastChunkMapper = Callable[[list], "list[dict[str, Any]] | None"]


class _Source:
    """Collects generated lines and the constants they refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}

    def const(self, value: Any, hint: str) -> str:
        name = f"_{hint}{len(self.constants)}"
        self.constants[name] = value
        return name

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)


def build_fast_mapper(
    *,
    columns: int | None,
    fields: list[tuple[str, Any, Any]],
    invoices: dict | None,
    statuses: tuple[str, ...],
    not_disconnected: str,
    default_description: dict[str, str],
    generate_id: Callable[[dict], str] | None,
) -> FastMapper:
    """fields: (event key, compiled _Value, getter description) in contract order.

    A getter description is ('column', index) | ('const', text) | ('template', [(literal, index|None)]).
    invoices: None, or {'mode': 'columns'|'elements', 'parts': [(key, _Value, getter description)],
    'separators': [...], 'group': index}.
    columns: the record's expected field count (CSV), or None (XML: values may be None).
    """
    src = _Source()
    xml = columns is None
    src.add(0, "def fast(row):")
    if columns is not None:
        src.add(1, f"if len(row) != {columns}: return None")
    present: list[str] = []
    for key, value, getter in fields:
        var = f"f_{key}"
        _emit_get(src, 1, var, getter, xml)
        _emit_clean(src, 1, var, value)
        present.append(key)
    if invoices is not None:
        _emit_invoices(src, 1, invoices, xml)
    # description by status
    if "description" in present and default_description:
        table = src.const(dict(default_description), "desc")
        src.add(1, f"if f_description is None: f_description = {table}.get(f_status)")
    elif default_description:
        table = src.const(dict(default_description), "desc")
        src.add(1, f"f_description = {table}.get(f_status)")
        present.append("description")
    # business rules that construction does not already guarantee
    if "status" in present:
        vocabulary = src.const(frozenset(statuses), "vocab")
        src.add(1, f"if f_status is not None and f_status not in {vocabulary}: return None")
        description = "f_description" if "description" in present else "None"
        src.add(1, f"if f_status == {not_disconnected!r} and not {description}: return None")
    # the event, keys in the contract's order, empty optional values left out
    src.add(1, "e = {}")
    always = {key for key, value, _ in fields if value.required or value.default is not None}
    for key in EVENT_KEYS:
        if key == "invoices" and invoices is not None:
            src.add(1, "e['invoices'] = inv")
        elif key in always:
            src.add(1, f"e[{key!r}] = f_{key}")
        elif key in present:
            src.add(1, f"if f_{key} is not None: e[{key!r}] = f_{key}")
    if generate_id is not None:
        maker = src.const(generate_id, "genid")
        src.add(1, f"e = {{'id': {maker}(e), **e}}")
    src.add(1, "return e")
    namespace: dict[str, Any] = dict(src.constants)
    exec(compile("\n".join(src.lines), "<fast mapper>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["fast"]


def _emit_get(src: _Source, indent: int, var: str, getter: tuple, xml: bool) -> None:
    kind = getter[0]
    if kind == "column":
        src.add(indent, f"{var} = row[{getter[1]}]")
        if xml:
            src.add(indent, f"if {var} is None: {var} = ''")
    elif kind == "const":
        src.add(indent, f"{var} = {getter[1]!r}")
    elif kind == "template":
        pieces = []
        for literal, position in getter[1]:
            if literal:
                pieces.append(repr(literal))
            if position is not None:
                pieces.append(f"(row[{position}] or '')" if xml else f"row[{position}]")
        src.add(indent, f"{var} = {' + '.join(pieces) or repr('')}")
    else:  # no source: only a default can fill it
        src.add(indent, f"{var} = ''")


def _emit_clean(src: _Source, indent: int, var: str, value: Any, nonempty: bool = False) -> None:
    """Mirror of mapping._Value.clean for the success path; `return None` wherever clean raises.

    `nonempty`: an empty value is an error whatever the spec says (an item between separators).
    """
    if value.trim or nonempty:
        src.add(indent, f"{var} = {var}.strip()")
    # a control character (or a tab, a non-breaking space...) goes the general way, which decides
    src.add(indent, f"if not {var}.isprintable(): return None")
    src.add(indent, f"if not {var}:")
    if nonempty:
        src.add(indent + 1, "return None")
        body_indent = indent
    elif value.default is not None:
        src.add(indent + 1, f"{var} = {value.default!r}")
        body_indent = indent
    elif value.required:
        src.add(indent + 1, "return None")
        body_indent = indent
    else:
        src.add(indent + 1, f"{var} = None")
        src.add(indent, "else:")
        src.add(indent + 1, "pass")
        body_indent = indent + 1
    if value.map is not None:
        table = src.const(value.map, "map")
        lookup = f"{var}.casefold()" if value.fold else var
        src.add(body_indent, f"{var} = {table}.get({lookup})")
        if value.map_default is None:
            src.add(body_indent, f"if {var} is None: return None")
        else:
            src.add(body_indent, f"if {var} is None: {var} = {value.map_default!r}")
    if value.pattern is not None:
        pattern = src.const(value.pattern, "pat")
        src.add(body_indent, f"if not {pattern}({var}): return None")
    if value.converter is not None:
        convert = src.const(value.converter.convert_text, "conv")
        src.add(body_indent, f"{var} = {convert}({var})")
        src.add(body_indent, f"if {var} is None: return None")
    if value.integer:
        # the general path also accepts spaces inside and a sign: leave those to it
        src.add(body_indent, f"if not ({var}.isdigit() and {var}.isascii()): return None")
        src.add(body_indent, f"{var} = int({var})")


def _emit_invoices(src: _Source, indent: int, invoices: dict, xml: bool) -> None:
    parts = invoices["parts"]
    if invoices["mode"] == "elements":
        src.add(indent, "inv = []")
        src.add(indent, f"for el in row[{invoices['group']}]:")
        for position, (key, value, _) in enumerate(parts):
            var = f"i_{key}"
            src.add(indent + 1, f"{var} = el[{position}]")
            src.add(indent + 1, f"if {var} is None: {var} = ''")
            _emit_clean(src, indent + 1, var, value)
        _emit_invoice_append(src, indent + 1, parts)
        return
    # columns: paired cells split on their separators
    for (key, _, getter), separator in zip(parts, invoices["separators"]):
        raw = f"c_{key}"
        _emit_get(src, indent, raw, getter, xml)
        src.add(indent, f"{raw} = {raw}.strip()")
        src.add(indent, f"{raw} = {raw}.split({separator!r}) if {raw} else []")
    first = f"c_{parts[0][0]}"
    for key, _, _ in parts[1:]:
        src.add(indent, f"if len(c_{key}) != len({first}): return None")
    src.add(indent, "inv = []")
    names = [f"c_{key}" for key, _, _ in parts]
    src.add(indent, f"for {', '.join(f'i_{key}' for key, _, _ in parts)}, in zip({', '.join(names)}):")
    for key, value, _ in parts:
        var = f"i_{key}"
        # an empty item between separators is an error in the general path
        _emit_clean(src, indent + 1, var, value, nonempty=True)
    _emit_invoice_append(src, indent + 1, parts)


def _emit_invoice_append(src: _Source, indent: int, parts: list) -> None:
    src.add(indent, "d = {}")
    for key, _, _ in parts:
        src.add(indent, f"if i_{key} is not None: d[{key!r}] = i_{key}")
    src.add(indent, "inv.append(d)")


# --- column by column, a chunk at a time ---------------------------------------------------------


def build_fast_chunk_mapper(
    *,
    columns: int | None,
    fields: list[tuple[str, Any, Any]],
    invoices: dict | None,
    statuses: tuple[str, ...],
    not_disconnected: str,
    default_description: dict[str, str],
    generate_id: Callable[[dict], str] | None,
) -> FastChunkMapper:
    """The arguments of build_fast_mapper; the function made takes a chunk's rows and returns
    their events (in row order), or None when any row is not a plain valid record.

    Column lists are named `f_<key>` (fields), `c_<key>` (invoice cells), `i_<key>` (invoice
    items, all rows' items in one list). A flag `o_<key>` says that an optional column holds
    empty values (None in the list): those events lose that key after they are built. Deleting
    a key keeps the order of the others, so the dict is the one the row function builds.
    """
    src = _Source()
    xml = columns is None
    src.add(0, "def fast_chunk(rows):")
    src.add(1, "if not rows: return []")
    if columns is not None:
        src.add(1, f"if set(map(len, rows)) != {src.const({columns}, 'width')}: return None")
    src.add(1, "n = len(rows)")
    src.add(1, "cols = list(zip(*rows))")
    present: list[str] = []
    optional: set[str] = set()  # keys whose list may hold None
    for key, value, getter in fields:
        var = f"f_{key}"
        _emit_column_get(src, var, getter, xml)
        if _emit_column_clean(src, var, value):
            optional.add(key)
        present.append(key)
    if invoices is not None:
        _emit_column_invoices(src, invoices, xml)
    if default_description:
        table = src.const(dict(default_description), "desc")
        if "description" not in present:
            src.add(1, f"f_description = list(map({table}.get, f_status))")
            src.add(1, "o_description = None in f_description")
            present.append("description")
            optional.add("description")
        elif "description" in optional:
            src.add(1, "if o_description:")
            src.add(2, f"f_description = [d if d is not None else {table}.get(s) "
                       "for d, s in zip(f_description, f_status)]")
            src.add(2, "o_description = None in f_description")
    if "status" in present:
        # None: an optional status left empty, which the row function lets through
        vocabulary = src.const(frozenset(statuses) | {None}, "vocab")
        src.add(1, f"if not {vocabulary}.issuperset(f_status): return None")
        if "description" in present:
            # all(f_description): every event has a description, the usual case, checked in C
            src.add(1, f"if {not_disconnected!r} in f_status and not all(f_description) and not all("
                       f"d for s, d in zip(f_status, f_description) if s == {not_disconnected!r}): return None")
        else:
            src.add(1, f"if {not_disconnected!r} in f_status: return None")
    keys = [key for key in EVENT_KEYS if key in present or (key == "invoices" and invoices is not None)]
    names = ["inv" if key == "invoices" else f"f_{key}" for key in keys]
    items = ", ".join(f"{key!r}: v{i}" for i, key in enumerate(keys))
    targets = "".join(f"v{i}, " for i in range(len(keys)))
    src.add(1, f"events = [{{{items}}} for {targets}in zip({', '.join(names)})]")
    for key in keys:
        if key in optional:
            _emit_drop_empty(src, 1, f"o_{key}", "events", f"f_{key}", key)
    if generate_id is not None:
        maker = src.const(generate_id, "genid")
        src.add(1, f"events = [{{'id': {maker}(e), **e}} for e in events]")
    src.add(1, "return events")
    namespace: dict[str, Any] = {"accumulate": accumulate, "chain": chain, "repeat": repeat, **src.constants}
    exec(compile("\n".join(src.lines), "<fast chunk mapper>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["fast_chunk"]


def _emit_column_get(src: _Source, var: str, getter: tuple, xml: bool) -> None:
    """The column of raw values; in XML a missing element or attribute (None) reads as ''."""
    kind = getter[0]
    if kind == "column":
        src.add(1, f"{var} = [v or '' for v in cols[{getter[1]}]]" if xml else f"{var} = cols[{getter[1]}]")
    elif kind == "const":
        src.add(1, f"{var} = [{getter[1]!r}] * n")
    elif kind == "template":
        pieces: list[str] = []
        sources: list[str] = []
        for literal, position in getter[1]:
            if literal:
                pieces.append(repr(literal))
            if position is not None:
                name = f"t{len(sources)}"
                pieces.append(f"({name} or '')" if xml else name)
                sources.append(f"cols[{position}]")
        if not sources:
            src.add(1, f"{var} = [{' + '.join(pieces) or repr('')}] * n")
        else:
            targets = "".join(f"t{i}, " for i in range(len(sources)))
            src.add(1, f"{var} = [{' + '.join(pieces)} for {targets}in zip({', '.join(sources)})]")
    else:
        src.add(1, f"{var} = [''] * n")


def _emit_column_clean(src: _Source, var: str, value: Any, nonempty: bool = False) -> bool:
    """Mirror of _emit_clean over a whole column: `return None` where the row function would
    return None for any value of it. Returns True when the list may hold None (an optional,
    empty value), with the flag o_<name> set at run time; that is only for values that go
    through no map, pattern, time or number (a column that needs those and has empty values
    goes row by row)."""
    flag = "o_" + var.split("_", 1)[1]
    if value.trim or nonempty:
        src.add(1, f"{var} = list(map(str.strip, {var}))")
    # one check for the column: a text is printable when each of its characters is, so the values
    # joined are printable exactly when every value is (and ''.join runs in C: ~2x faster)
    src.add(1, f"if not ''.join({var}).isprintable(): return None")
    processed = value.map is not None or value.pattern is not None or value.converter is not None or value.integer
    may_be_empty = False
    if nonempty or (value.default is None and (value.required or processed)):
        src.add(1, f"if not all({var}): return None")
    elif value.default is not None:
        src.add(1, f"if not all({var}): {var} = [v or {value.default!r} for v in {var}]")
    else:
        src.add(1, f"{flag} = not all({var})")
        src.add(1, f"if {flag}: {var} = [v or None for v in {var}]")
        may_be_empty = True
    if value.map is not None:
        table = src.const(value.map, "map")
        keys = f"map(str.casefold, {var})" if value.fold else var
        if value.map_default is None:
            src.add(1, f"{var} = list(map({table}.get, {keys}))")
            src.add(1, f"if None in {var}: return None")
        else:
            src.add(1, f"{var} = list(map({table}.get, {keys}, repeat({value.map_default!r})))")
    if value.pattern is not None:
        column_pattern = _column_pattern(value.spec.pattern)
        if column_pattern is not None:
            pattern = src.const(column_pattern, "colpat")
            src.add(1, f"lines = '\\n'.join({var})")
            src.add(1, f"if lines.count('\\n') != len({var}) - 1 or not {pattern}(lines): return None")
        else:
            pattern = src.const(value.pattern, "pat")
            src.add(1, f"if not all(map({pattern}, {var})): return None")
    if value.converter is not None:
        # the whole column at once: its common case is looked up in C loops (see convert_column)
        convert = src.const(value.converter.convert_column, "conv")
        src.add(1, f"{var} = {convert}({var})")
        src.add(1, f"if None in {var}: return None")
    if value.integer:
        src.add(1, f"if not (all(map(str.isdigit, {var})) and all(map(str.isascii, {var}))): return None")
        src.add(1, f"{var} = list(map(int, {var}))")
    return may_be_empty


def _emit_column_invoices(src: _Source, invoices: dict, xml: bool) -> None:
    """`inv`: each row's list of invoice dicts, made from all rows' items at once."""
    parts = invoices["parts"]
    if invoices["mode"] == "elements":
        group = f"cols[{invoices['group']}]"
        src.add(1, f"counts = list(map(len, {group}))")
        src.add(1, f"found = list(chain.from_iterable({group}))")
        for position, (key, _, _) in enumerate(parts):
            src.add(1, f"i_{key} = [p[{position}] or '' for p in found]")
        nonempty = False
    else:
        # columns: paired cells split on their separators
        separators = invoices["separators"]
        for key, _, getter in parts:
            cells = f"c_{key}"
            _emit_column_get(src, cells, getter, xml)
            src.add(1, f"{cells} = list(map(str.strip, {cells}))")
        indent = 1
        if all(len(separator) == 1 for separator in separators):
            # the usual case, every cell holding invoices and one-character separators: a cell
            # splits into its separators plus one items, and the cells of a column joined by
            # the separator split into exactly all their items, in order (a one-character
            # separator cannot straddle two cells): one join and one split a column, in C
            src.add(1, f"if {' and '.join(f'all(c_{key})' for key, _, _ in parts)}:")
            first, first_separator = parts[0][0], separators[0]
            src.add(2, f"counts = list(map(str.count, c_{first}, repeat({first_separator!r})))")
            for (key, _, _), separator in zip(parts[1:], separators[1:]):
                src.add(2, f"if list(map(str.count, c_{key}, repeat({separator!r}))) != counts: return None")
            src.add(2, "counts = [k + 1 for k in counts]")
            for (key, _, _), separator in zip(parts, separators):
                src.add(2, f"i_{key} = {separator!r}.join(c_{key}).split({separator!r})")
            src.add(1, "else:")
            indent = 2
        for (key, _, _), separator in zip(parts, separators):
            src.add(indent, f"c_{key} = [v.split({separator!r}) if v else [] for v in c_{key}]")
        src.add(indent, f"counts = list(map(len, c_{parts[0][0]}))")
        for key, _, _ in parts[1:]:
            src.add(indent, f"if list(map(len, c_{key})) != counts: return None")
        for key, _, _ in parts:
            src.add(indent, f"i_{key} = list(chain.from_iterable(c_{key}))")
        nonempty = True  # an empty item between separators is an error in the general path
    optional = [key for key, value, _ in parts if _emit_column_clean(src, f"i_{key}", value, nonempty)]
    items = ", ".join(f"{key!r}: v{i}" for i, (key, _, _) in enumerate(parts))
    targets = "".join(f"v{i}, " for i in range(len(parts)))
    src.add(1, f"found = [{{{items}}} for {targets}in zip({', '.join(f'i_{key}' for key, _, _ in parts)})]")
    for key in optional:
        _emit_drop_empty(src, 1, f"o_{key}", "found", f"i_{key}", key)
    src.add(1, "ends = list(accumulate(counts))")
    src.add(1, "inv = [found[start:end] for start, end in zip([0] + ends, ends)]")


def _emit_drop_empty(src: _Source, indent: int, flag: str, dicts: str, values: str, key: str) -> None:
    src.add(indent, f"if {flag}:")
    src.add(indent + 1, f"for d, v in zip({dicts}, {values}):")
    src.add(indent + 2, f"if v is None: del d[{key!r}]")


# A pattern made only of these atoms, each once or {n} times: ASCII letters, digits and '_', \d,
# and classes of them ([0-9A-F], [A-Za-z_]) — such as GSRN's '\d{18}' or 'FI\d{16}'.
_ATOM = r"(?:[A-Za-z0-9_]|\\d|\[(?:[A-Za-z0-9_](?:-[A-Za-z0-9_])?)+\])(?:\{[0-9]{1,3}\})?"
_FIXED_ASCII = re.compile(f"(?:{_ATOM})+")


def _column_pattern(pattern: str | None) -> Callable[[str], Any] | None:
    r"""For a simple pattern, a check of a whole column at once: values joined by line breaks
    -> does each line match the pattern? None for any other pattern.

    Why: RE2 (the pattern language, config.mapping.compile_pattern) costs ~0.55 us a value
    through its Python binding, and the GSRN check was the largest step of the CSV mapping after
    times; Python's `re` checks a column of 128 in one call at ~0.05 us a value. Why it is the
    same answer: for these atoms RE2 and `re` with re.ASCII match the very same strings (ASCII
    characters and classes, \d = [0-9] in both, exact counts), and with no alternation and no
    variable repetition `re` cannot backtrack more than once a line. No atom matches a line
    break (every class lies within '0'..'z'), so with no line break inside a value (the caller
    checks) the lines are exactly the values.
    """
    if pattern is None or not _FIXED_ASCII.fullmatch(pattern):
        return None
    return re.compile(f"(?:{pattern})(?:\n(?:{pattern}))*", re.ASCII).fullmatch
