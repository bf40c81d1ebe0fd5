"""XPath expressions of a mapping, compiled once into fast extractors.

Most mappings use plain child paths ('Code', 'p:Invoices/p:Invoice', '@id', 'Place/@code').
lxml's ElementPath (`find`) evaluates those several times faster than a full XPath engine, and
it understands a default namespace; anything else (functions, predicates with XPath syntax,
axes) goes to `etree.XPath`, where a default namespace needs an explicit prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lxml import etree

Extractor = Callable[[etree._Element], "str | None"]

_SIMPLE_STEP = r"(?:[A-Za-z_][\w.-]*:)?[A-Za-z_][\w.-]*"
_SIMPLE_PATH = re.compile(rf"(?:\./)?{_SIMPLE_STEP}(?:/{_SIMPLE_STEP})*")
_ATTRIBUTE = re.compile(rf"@({_SIMPLE_STEP})")


def xpath_problem(expr: str, namespaces: dict[str, str]) -> str | None:
    """Why `expr` cannot be used (None: it can)."""
    try:
        compile_text_extractor(expr, namespaces)
    except (etree.XPathSyntaxError, etree.XPathEvalError, SyntaxError, KeyError) as exc:
        return f"not a usable XPath: {exc}"
    for prefix in re.findall(r"(?<![\w@:'\"])([A-Za-z_][\w.-]*):(?![:/])", _strip_strings(expr)):
        if prefix not in namespaces:
            return f"namespace prefix '{prefix}' is not declared in xml.namespaces"
    if _LEAVES_RECORD.search(_strip_strings(expr)):
        return (
            "looks outside the record ('..', a path from '/', or a parent, ancestor, preceding or following "
            "axis): records are streamed, and the rest of the document is released as it is read"
        )
    return None


# '..', an absolute path (a '/' that starts the expression or follows an operator, '(' or ','),
# or an axis that leaves the record element
_LEAVES_RECORD = re.compile(
    r"\.\.|(?:^|[(,|\[=<>!+\s])\s*/|\b(?:parent|ancestor|ancestor-or-self|preceding|preceding-sibling|following|following-sibling)\s*::"
)


def _strip_strings(expr: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", expr)


def _element_namespaces(namespaces: dict[str, str]) -> dict:
    result: dict[str | None, str] = {prefix: uri for prefix, uri in namespaces.items() if prefix}
    if namespaces.get(""):
        result[None] = namespaces[""]
    return result


def _xpath_namespaces(namespaces: dict[str, str]) -> dict[str, str]:
    return {prefix: uri for prefix, uri in namespaces.items() if prefix}


def compile_text_extractor(expr: str, namespaces: dict[str, str]) -> Extractor:
    """element -> text of the first match (None when nothing matches)."""
    element_ns = _element_namespaces(namespaces)
    expr = expr.strip()
    attribute = _ATTRIBUTE.fullmatch(expr)
    if attribute:
        return _attribute_getter(attribute.group(1), namespaces)
    if "/@" in expr:
        path, _, attr = expr.rpartition("/@")
        if _SIMPLE_PATH.fullmatch(path) and re.fullmatch(_SIMPLE_STEP, attr):
            get_attr = _attribute_getter(attr, namespaces)

            def path_attribute(element: etree._Element) -> str | None:
                found = element.find(path, element_ns)
                return None if found is None else get_attr(found)

            return path_attribute
    if _SIMPLE_PATH.fullmatch(expr):
        return lambda element: element.findtext(expr, None, element_ns)
    compiled = etree.XPath(expr, namespaces=_xpath_namespaces(namespaces), smart_strings=False)

    def general(element: etree._Element) -> str | None:
        return _first_text(compiled(element))

    return general


def compile_row_extractor(exprs: list[str], namespaces: dict[str, str]) -> Callable[[etree._Element], list]:
    """element -> [text of each expression]; one pass over the children serves every expression
    that names a direct child ('Customer', 'UsagePlace/@code'), the commonest case by far."""
    plans: list[tuple[str, Any]] = []
    for expr in exprs:
        expr = expr.strip()
        child, attr = _direct_child(expr, namespaces)
        if child is not None:
            plans.append(("child", (child, attr)))
        else:
            plans.append(("other", compile_text_extractor(expr, namespaces)))
    wants_children = any(kind == "child" for kind, _ in plans)

    def extract(element: etree._Element) -> list:
        children: dict[str, etree._Element] = {}
        if wants_children:
            for node in element:
                tag = node.tag
                if tag not in children and isinstance(tag, str):
                    children[tag] = node
        row: list[Any] = []
        for kind, how in plans:
            if kind == "child":
                node = children.get(how[0])
                if node is None:
                    row.append(None)
                elif how[1] is None:
                    row.append(node.text or "")
                else:
                    row.append(node.get(how[1]))
            else:
                row.append(how(element))
        return row

    return extract


def _direct_child(expr: str, namespaces: dict[str, str]) -> tuple[str | None, str | None]:
    """'p:Name' or 'Name/@attr' -> (Clark tag, Clark attribute or None); (None, None) otherwise."""
    path, attr = expr, None
    if "/@" in expr:
        path, _, attr = expr.rpartition("/@")
        if not re.fullmatch(_SIMPLE_STEP, attr):
            return None, None
    if path.startswith("./"):
        path = path[2:]
    if not re.fullmatch(_SIMPLE_STEP, path):
        return None, None
    return _clark(path, namespaces, element=True), (_clark(attr, namespaces, element=False) if attr else None)


def _clark(name: str, namespaces: dict[str, str], element: bool) -> str:
    """'p:Name' -> '{uri}Name'; unprefixed element names take the default namespace, attributes none."""
    if ":" in name:
        prefix, local = name.split(":", 1)
        return f"{{{namespaces[prefix]}}}{local}"
    if element and namespaces.get(""):
        return f"{{{namespaces['']}}}{name}"
    return name


def compile_element_finder(expr: str, namespaces: dict[str, str]) -> Callable[[etree._Element], list]:
    """element -> every element the path matches (for repeated elements such as invoices)."""
    expr = expr.strip()
    if _SIMPLE_PATH.fullmatch(expr):
        steps = expr[2:] if expr.startswith("./") else expr
        tags = [_clark(step, namespaces, element=True) for step in steps.split("/")]
        return _child_walker(tags)
    compiled = etree.XPath(expr, namespaces=_xpath_namespaces(namespaces))
    return lambda element: [node for node in compiled(element) if isinstance(node, etree._Element)]


def _child_walker(tags: list[str]) -> Callable[[etree._Element], list]:
    """What findall('A/B') finds, in the same order, by lxml's C-level child filter rather
    than ElementPath (a quarter faster on a record's invoice elements)."""
    if len(tags) == 1:
        only = tags[0]
        return lambda element: list(element.iterchildren(only))
    first, rest = tags[0], tags[1:]

    def walk(element: etree._Element) -> list:
        level = list(element.iterchildren(first))
        for tag in rest:
            found: list = []
            for parent in level:
                found.extend(parent.iterchildren(tag))
            level = found
        return level

    return walk


def _attribute_getter(name: str, namespaces: dict[str, str]) -> Extractor:
    if ":" in name:
        prefix, local = name.split(":", 1)
        name = f"{{{namespaces[prefix]}}}{local}"
    return lambda element: element.get(name)


def _first_text(result: object) -> str | None:
    if isinstance(result, list):
        if not result:
            return None
        result = result[0]
    if isinstance(result, etree._Element):
        return result.text or ""
    if isinstance(result, bool):
        return "true" if result else "false"
    if isinstance(result, float):
        return str(int(result)) if result.is_integer() else str(result)
    return None if result is None else str(result)


def clark_steps(record_path: str, namespaces: dict[str, str]) -> list[tuple[bool, str]]:
    """'/p:A//B' -> [(False, '{uri}A'), (True, '{default}B')]; True means 'at any depth below'."""
    steps = []
    for match in re.finditer(r"(//?)([^/]+)", record_path):
        descendant, name = match.group(1) == "//", match.group(2)
        if ":" in name:
            prefix, local = name.split(":", 1)
            if prefix not in namespaces:
                raise KeyError(f"namespace prefix '{prefix}' is not declared in xml.namespaces")
            tag = f"{{{namespaces[prefix]}}}{local}"
        else:
            tag = f"{{{namespaces['']}}}{name}" if namespaces.get("") else name
        steps.append((descendant, tag))
    return steps
