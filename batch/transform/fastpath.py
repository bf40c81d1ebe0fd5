"""A mapping compiled into one straight-line function for records that are valid. Pure.

Most records of a nightly export are fine, and for them the general mapper (one method call
per field, errors collected on the way) spends most of its time on dispatch. This module
writes the mapping out as the source of a single function — the way dataclasses and attrs
generate their methods — that returns the finished event, or None as soon as anything is
off. A None sends the record through the general mapper, which finds and explains every
problem, so error messages come from one place only. The test suite checks that both paths
agree on arbitrary input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batch.transform.events import EVENT_KEYS

FastMapper = Callable[[list], "dict[str, Any] | None"]


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
