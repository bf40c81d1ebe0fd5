"""YAML loading that remembers where every key came from.

PyYAML's safe loader gives plain data but forgets line numbers and silently keeps the last of
two equal keys. Configuration errors must point at the file, line and key at fault, so this
module composes the node tree, converts it to plain data itself, and keeps a map from each
key path to its position. Pydantic's error locations are then translated back to lines.

Every problem a YAML file can have is a ConfigError with file, line and key, never another
exception (a hot reload must be able to refuse any file): only plain values (text, numbers,
true/false, null, dates), lists and mappings are accepted; any other tag (``!custom``,
``!!python/...``, ``!!binary``, ``!!set``) is refused, and a value its tag cannot hold
(``2024-02-30``, ``!!int abc``) is a problem at its line. Anchors and aliases work for small
repeated pieces, but what aliases may add is capped (MAX_ALIAS_EXPANSION nodes, MAX_DEPTH
levels, no alias inside its own anchor): a "billion laughs" file is refused before it is
expanded.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from batch.errors import ConfigurationError
from batch.fsutil import read_regular_file

KeyPath = tuple  # tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {_bounded(self.message)}"


# Characters of one line of a problem: pydantic and the model checks quote what was written
# ("(got '...')", "format '...'", "unknown encoding '...'"), and a megabyte value must not
# become a megabyte line in `validate`, the service log on every refused reload, or /healthz.
PROBLEM_LINE_LIMIT = 300


def _bounded(message: str) -> str:
    return "\n".join(line if len(line) <= PROBLEM_LINE_LIMIT else line[:PROBLEM_LINE_LIMIT] + "..."
                     for line in message.split("\n"))


class ConfigError(ConfigurationError):
    """A configuration file that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class LoadedYaml:
    file: str
    data: Any
    positions: dict[KeyPath, tuple[int, int]]  # key path -> (line, column), both 1-based
    # False for files that hold (references to) secrets: no problem quotes what was written
    echo_values: bool = True

    def position(self, path: KeyPath) -> tuple[int | None, int | None]:
        """Position of the deepest existing prefix of `path` (a missing key points at its parent)."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found:
                return found
        return (None, None)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        line, column = self.position(path)
        return ConfigProblem(self.file, line, column, format_path(path), message)


def format_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def load_yaml_text(text: str, file: str, *, echo_values: bool = True) -> LoadedYaml:
    """Parse YAML into plain data with positions. `echo_values=False`: problems never quote a value."""
    try:
        node = _compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        if not isinstance(exc, _Refused):
            reason = f"not valid YAML: {reason}"
        raise ConfigError([ConfigProblem(file, line, column, "", reason)]) from None
    positions: dict[KeyPath, tuple[int, int]] = {}
    problems: list[ConfigProblem] = []
    if node is None:
        return LoadedYaml(file, None, positions, echo_values)
    data = _to_data(node, (), positions, problems, file, echo_values)
    if problems:
        raise ConfigError(problems)
    return LoadedYaml(file, data, positions, echo_values)


def load_yaml_file(path: str | Path, *, echo_values: bool = True) -> LoadedYaml:
    path = Path(path)
    try:
        text = read_regular_file(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), None, None, "", "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), None, None, "", f"cannot read: {exc.strerror}")]) from None
    return load_yaml_text(text, str(path), echo_values=echo_values)


# What aliases may add to a document: enough for anchors that repeat a few small pieces (a status
# map in several fields), far below a "billion laughs" file (6 levels of 9 aliases: 531,441 nodes).
MAX_ALIAS_EXPANSION = 20_000  # nodes, summed over every alias use
MAX_DEPTH = 64  # nested lists and mappings, aliases expanded


class _Refused(yaml.composer.ComposerError):
    """Valid YAML that this loader will not expand (too deep, too many aliases, a loop)."""


class _Loader(yaml.SafeLoader):
    """The safe loader's composer, made to refuse what would be costly to expand.

    Sizes are known bottom-up while composing (a node's children are complete before the node,
    and an alias can only name a complete node unless it sits inside its own anchor), so the
    check costs one pass over the nodes as written, never over their expansion."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._expanded = 0
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height) once expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            assert node is not None  # an alias event composes to the node its anchor names
            self._count_alias(node, mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(
                None, None, f"lists and mappings nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None  # the stubs allow None; PyYAML returns a node for every event taken here
        self._size[id(node)] = self._measure(node)
        return node

    def _count_alias(self, node: yaml.Node, mark: Any) -> None:
        size = self._size.get(id(node))
        if size is None:  # the anchored node is still being composed: it would contain itself
            raise _Refused(None, None, "an alias inside the node its anchor names (a loop)", mark)
        nodes, height = size
        self._expanded += nodes
        if self._expanded > MAX_ALIAS_EXPANSION:
            raise _Refused(
                None, None,
                f"aliases expand to more than {MAX_ALIAS_EXPANSION} nodes (this one to {nodes}); "
                "anchors and aliases are for small repeated pieces",
                mark,
            )
        if self._depth + height > MAX_DEPTH:
            raise _Refused(
                None, None, f"lists and mappings nested deeper than {MAX_DEPTH} levels (aliases expanded)", mark
            )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            return (1, 0)
        sizes = [self._size[id(child)] for child in children]
        return (1 + sum(n for n, _ in sizes), 1 + max((h for _, h in sizes), default=0))


def _compose(text: str) -> yaml.Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _to_data(
    node: yaml.Node, path: KeyPath, positions: dict, problems: list, file: str, echo: bool = True
) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    refused = _refused_tag(node)
    if refused:
        problems.append(_problem_at(file, node, path, refused))
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(_problem_at(file, key_node, path, "YAML merge keys (<<) are not supported here"))
                continue
            if not isinstance(key_node, yaml.ScalarNode) or _refused_tag(key_node):
                problems.append(_problem_at(file, key_node, path, "keys must be plain text"))
                continue
            try:
                key = _construct_scalar(key_node)
            except _CONSTRUCT_ERRORS as exc:
                problems.append(_problem_at(file, key_node, path, _construct_problem(key_node, exc, echo)))
                continue
            if isinstance(key, (int, float)) and not isinstance(key, bool):
                # keys are names or codes: '01', '010' and '0x1F' as written, not 1, 8 and 31
                key = str(key_node.value)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(_problem_at(file, key_node, path, "keys must be plain text"))
                continue
            if key in result:
                first = positions.get(path + (key,), ("?",))[0]
                problems.append(
                    _problem_at(file, key_node, path + (key,), f"duplicate key (first given on line {first})")
                )
                continue
            result[key] = _to_data(value_node, path + (key,), positions, problems, file, echo)
            # the key's own line, not its value's: that is where a person looks
            positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(item, path + (i,), positions, problems, file, echo) for i, item in enumerate(node.value)]
    try:
        return _construct_scalar(node)
    except _CONSTRUCT_ERRORS as exc:
        problems.append(_problem_at(file, node, path, _construct_problem(node, exc, echo)))
        return None


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML_TAG + name for name in ("str", "int", "float", "bool", "null", "timestamp")}
# Constructing a plain value raises ValueError (2024-02-30, !!int abc, a 5,000-digit number) or, for
# an explicit tag on a value it does not fit (!!timestamp abc, !!int ''), whatever PyYAML trips on.
_CONSTRUCT_ERRORS = (Exception,)
_EXPLAINED_ERRORS = (yaml.YAMLError, ValueError, OverflowError)  # their text says what is wrong


def _refused_tag(node: yaml.Node) -> str | None:
    """Why the node's tag is not accepted, or None: plain values, lists and mappings only."""
    if isinstance(node, yaml.MappingNode):
        allowed = node.tag == _YAML_TAG + "map"
    elif isinstance(node, yaml.SequenceNode):
        allowed = node.tag == _YAML_TAG + "seq"
    else:
        allowed = node.tag in _SCALAR_TAGS
    if allowed:
        return None
    shown = "!!" + node.tag[len(_YAML_TAG):] if node.tag.startswith(_YAML_TAG) else node.tag
    if node.tag in _SCALAR_TAGS or node.tag in (_YAML_TAG + "map", _YAML_TAG + "seq"):
        return f"the YAML tag {shown} does not fit this value (a {_node_kind(node)})"
    return (f"the YAML tag {shown} is not accepted: only plain values (text, numbers, true/false, null, "
            "dates), lists and mappings")


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "list" if isinstance(node, yaml.SequenceNode) else "plain value"


def _construct_problem(node: yaml.Node, exc: Exception, echo: bool) -> str:
    """One line for a value its (explicit or implied) tag cannot hold, e.g. the date 2024-02-30."""
    kind = node.tag[len(_YAML_TAG):] if node.tag.startswith(_YAML_TAG) else node.tag
    what = {"timestamp": "a date/time", "int": "an integer", "float": "a number"}.get(kind, kind)
    reason = getattr(exc, "problem", None) or str(exc) if isinstance(exc, _EXPLAINED_ERRORS) else ""
    value = f" {node.value!r}" if echo and len(str(node.value)) <= 80 else ""
    hint = "; put it in quotes if it is meant as text" if kind == "timestamp" else ""
    return f"the value{value} is not {what}" + (f" ({reason})" if reason else "") + hint


def _construct_scalar(node: yaml.Node) -> Any:
    """Resolve a scalar as yaml.safe_load would, except that only true/false are booleans.

    YAML 1.1 also reads yes/no/on/off/y/n as booleans, which turns a status code such as NO or
    OFF into False behind an administrator's back; YAML 1.2 dropped that and so do we.
    """
    if node.tag == _BOOL_TAG and str(node.value).lower() not in ("true", "false"):
        return str(node.value)
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _problem_at(file: str, node: yaml.Node, path: KeyPath, message: str) -> ConfigProblem:
    return ConfigProblem(file, node.start_mark.line + 1, node.start_mark.column + 1, format_path(path), message)


def validate_model(model: type[BaseModel], loaded: LoadedYaml, context: dict | None = None) -> Any:
    """Validate loaded YAML against a pydantic model; every error comes back with its line."""
    try:
        return model.model_validate(loaded.data, context=context)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, loaded, model)) from None


def problems_from_validation(exc: ValidationError, loaded: LoadedYaml, model: type[BaseModel]) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(model, loc)
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] in ("value_error", "assertion_error"):
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        elif loaded.echo_values and "input" in error and not isinstance(error["input"], (dict, list)) \
                and not _is_secret_path(loc):
            message = f"{message} (got {error['input']!r})"
        problems.append(loaded.problem(loc, message))
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return problems


_SECRET_WORDS = ("apicode", "token", "password", "passphrase", "secret")


def _is_secret_path(loc: KeyPath) -> bool:
    """Never echo what was written under a secret's key: it may be the secret itself."""
    return any(isinstance(part, str) and any(word in part.lower() for word in _SECRET_WORDS) for part in loc)


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the chosen union member's name (e.g. 'str', 'function-after[...]') into locations
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "list[str]", "dict[str,str]"})


def _did_you_mean(model: type[BaseModel], loc: KeyPath) -> str:
    owner = _model_at(model, loc[:-1])
    if owner is None or not loc:
        return ""
    known = sorted(field.alias or name for name, field in owner.model_fields.items())
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (allowed here: {', '.join(known)})"


def _model_at(model: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """Walk model fields along `path` to find which model a key belongs to."""
    import typing

    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _model_in_annotation(field.annotation, typing)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in_annotation(annotation: Any, typing: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in_annotation(arg, typing)
        if found is not None:
            return found
    return None
