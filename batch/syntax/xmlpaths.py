"""XPath expressions of a mapping, compiled once into fast extractors.

Most mappings use plain child paths ('Code', 'p:Invoices/p:Invoice', '@id', 'Place/@code').
lxml's ElementPath (`find`) evaluates those several times faster than a full XPath engine, and
it understands a default namespace; anything else (functions, predicates with XPath syntax,
axes) goes to `etree.XPath`, where a default namespace needs an explicit prefix.
"""

from __future__ import annotations

import importlib
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


def compile_row_extractor(
    exprs: list[str], namespaces: dict[str, str], groups: list[tuple[str, list[str]]] | None = None
) -> Callable[[etree._Element], list]:
    """element -> [text of each expression] + [[parts of each element found] for each group].

    One pass over the element's children serves every expression that names a direct child
    ('Customer', 'UsagePlace/@code': the first such child, as findtext finds it) and every group
    whose path is a plain child path ('inv:Invoices/inv:Invoice': every element findall finds, in
    its order); attributes of the element itself ('@id') are read directly, and anything else
    goes through compile_text_extractor / compile_element_finder.

    The pass is written out as the source of one function for these expressions (as
    transform.fastpath writes the mapping out), with the tags compared in plain loops: per record,
    lxml's tag-filtered iterators cost more to set up than a record has children, and a general
    loop over a plan costs more than the record's values (bench/bench_mapping.py: this form reads
    the ERP export's records ~2 us faster than findtext/iterchildren did).
    """
    constants: dict[str, Any] = {}

    def const(value: Any) -> str:
        name = f"_k{len(constants)}"
        constants[name] = value
        return name

    lines: list[str] = []
    results: list[str] = []
    firsts: list[str] = []  # flags: the first child of a tag answers
    branches: dict[str, list[str]] = {}  # child tag -> statements run for each such child
    for slot, expr in enumerate(exprs):
        expr = expr.strip()
        var = f"v{slot}"
        results.append(var)
        attribute = _ATTRIBUTE.fullmatch(expr)
        child, attr = (None, None) if attribute else _direct_child(expr, namespaces)
        if attribute:
            lines.append(f"    {var} = e.get({const(_attribute_name(attribute.group(1), namespaces))})")
        elif child is not None:
            lines.append(f"    {var} = None")
            flag = f"s{slot}"
            firsts.append(flag)
            value = "(c.text or '')" if attr is None else f"c.get({const(attr)})"
            branches.setdefault(child, []).extend([f"if not {flag}:", f"    {flag} = True", f"    {var} = {value}"])
        else:
            lines.append(f"    {var} = {const(compile_text_extractor(expr, namespaces))}(e)")
    for number, (element, parts) in enumerate(groups or ()):
        var = f"g{number}"
        results.append(var)
        extract_parts = const(compile_row_extractor(parts, namespaces))
        tags = _plain_steps(element, namespaces)
        if tags is None:
            find = const(compile_element_finder(element, namespaces))
            lines.append(f"    {var} = [{extract_parts}(found) for found in {find}(e)]")
            continue
        lines.append(f"    {var} = []")
        body = [f"{var}.append({extract_parts}(c))"] if len(tags) == 1 else []
        if len(tags) > 1:
            # deeper steps: nested loops below the first, in findall's order
            indent, node = "", "c"
            for depth, tag in enumerate(tags[1:], 1):
                body += [f"{indent}for c{depth} in {node}:", f"{indent}    if c{depth}.tag == {const(tag)}:"]
                indent, node = indent + "        ", f"c{depth}"
            body.append(f"{indent}{var}.append({extract_parts}({node}))")
        branches.setdefault(tags[0], []).extend(body)
    source = ["def extract(e):"]
    source += [f"    {flag} = False" for flag in firsts]
    source += lines
    if branches:
        source += ["    for c in e:", "        t = c.tag"]
        for number, (tag, body) in enumerate(branches.items()):
            source.append(f"        {'if' if number == 0 else 'elif'} t == {const(tag)}:")
            source += [f"            {statement}" for statement in body]
    source.append(f"    return [{', '.join(results)}]")
    namespace: dict[str, Any] = dict(constants)
    exec(compile("\n".join(source), "<xml row extractor>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["extract"]


def row_plan(exprs: list[str], namespaces: dict[str, str], groups: list[tuple[str, list[str]]] | None = None) -> tuple:
    """What compile_row_extractor reads, as data for the compiled reader (_xmlrows.Plan):
    (slots, [(slot, own attribute)], [(slot, child tag, child attribute or None)],
    [(slot, extractor of anything else)], [(slot, plain steps or None, finder or None, part plan)]).
    The expressions are sorted exactly as compile_row_extractor sorts them."""
    own: list[tuple[int, str]] = []
    children: list[tuple[int, str, str | None]] = []
    python: list[tuple[int, Extractor]] = []
    for slot, expr in enumerate(exprs):
        expr = expr.strip()
        attribute = _ATTRIBUTE.fullmatch(expr)
        child, attr = (None, None) if attribute else _direct_child(expr, namespaces)
        if attribute:
            own.append((slot, _attribute_name(attribute.group(1), namespaces)))
        elif child is not None:
            children.append((slot, child, attr))
        else:
            python.append((slot, compile_text_extractor(expr, namespaces)))
    planned: list[tuple] = []
    for number, (element, parts) in enumerate(groups or ()):
        tags = _plain_steps(element, namespaces)
        finder = None if tags is not None else compile_element_finder(element, namespaces)
        planned.append((len(exprs) + number, tags, finder, row_plan(parts, namespaces)))
    return (len(exprs) + len(planned), own, children, python, planned)


def compiled_row_extractor(
    exprs: list[str], namespaces: dict[str, str], groups: list[tuple[str, list[str]]] | None = None
) -> Callable[[etree._Element], list] | None:
    """compile_row_extractor's function read in C (batch/syntax/_xmlrows.pyx: ~0.3 us instead of
    ~2.3 for the ERP export's record, bench/bench_xmlrows.py), or None when that module is not
    built (no C compiler at install, setup.py) or does not read a known record as the Python
    extractor does (it walks lxml's and libxml2's structures: built against other headers than
    the lxml it runs with, it must not be trusted). tests/test_xmlrows.py holds the two equal."""
    compiled = _compiled_module()
    if compiled is None:
        return None
    try:
        return compiled.RowExtractor(row_plan(exprs, namespaces, groups))
    except ValueError:  # more values than it reads in one record
        return None


_SELF_CHECK_XML = (
    b'<r xmlns="urn:a" xmlns:b="urn:b" id="1" b:id="2"><x>t<![CDATA[c]]><y/>u</x><b:x k="v">w</b:x>'
    b"<g><i n='1'><v>a</v></i><i n='2'/></g><x>second</x></r>"
)
_SELF_CHECK_PLAN = (["@id", "@b:id", "x", "b:x", "b:x/@k", "z"], {"": "urn:a", "b": "urn:b"},
                    [("g/i", ["@n", "v"])])
_compiled_state: list[Any] = []  # [the module or None], once a process


def _compiled_module() -> Any:
    if not _compiled_state:
        try:
            module: Any = importlib.import_module("batch.syntax._xmlrows")  # present only where it was built
            element = etree.fromstring(_SELF_CHECK_XML)
            exprs, namespaces, groups = _SELF_CHECK_PLAN
            expected = compile_row_extractor(exprs, namespaces, groups)(element)
            if module.RowExtractor(row_plan(exprs, namespaces, groups))(element) != expected:
                module = None
        except ImportError:
            module = None
        _compiled_state.append(module)
    return _compiled_state[0]


def _plain_steps(expr: str, namespaces: dict[str, str]) -> list[str] | None:
    """'inv:Invoices/inv:Invoice' -> its steps as Clark tags; None for anything but a plain child path."""
    expr = expr.strip()
    if not _SIMPLE_PATH.fullmatch(expr):
        return None
    steps = expr[2:] if expr.startswith("./") else expr
    return [_clark(step, namespaces, element=True) for step in steps.split("/")]


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
    tags = _plain_steps(expr, namespaces)
    if tags is not None:
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
    clark = _attribute_name(name, namespaces)
    return lambda element: element.get(clark)


def _attribute_name(name: str, namespaces: dict[str, str]) -> str:
    """'p:name' -> '{uri}name'; an unprefixed attribute is in no namespace."""
    if ":" in name:
        prefix, local = name.split(":", 1)
        return f"{{{namespaces[prefix]}}}{local}"
    return name


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
