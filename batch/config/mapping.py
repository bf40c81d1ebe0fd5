"""The mapping file: how to read one feed's export and how to build each event field.

An administrator writes one YAML file per feed (see config/README.md). Everything that can be
checked without the data file is checked here, at load, with the file, line and key of each
problem — a wrong mapping must not surface at 2 a.m. on record 40,000.
"""

from __future__ import annotations

import codecs
import copy
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batch.config.yamlload import (
    ConfigError,
    ConfigProblem,
    LoadedYaml,
    load_yaml_file,
    load_yaml_text,
    problems_from_validation,
)
from batch.contract import (
    DEFAULT_STATUS_NOT_DISCONNECTED,
    STATUS_CONNECTED,
    STATUS_DISCONNECTED,
)
from batch.syntax.timeparse import FormatError, compile_format
from batch.syntax.xmlpaths import clark_steps, xpath_problem

EVENT_FIELDS = ("id", "usageplacecode", "customernumber", "contract_no", "time", "status", "description")
INVOICE_FIELDS = ("invoicenumber", "jobid")
DEFAULT_REQUIRED = frozenset({"usageplacecode", "time", "status"})
DEFAULT_TIME_ZONE = "Europe/Helsinki"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(Strict):
    """How a CSV (or other delimited text) export is laid out."""

    encoding: str = Field("utf-8", description="Text encoding; a byte order mark in the file wins (utf-8-sig, utf-16).")
    delimiter: str = Field(",", description="One character; write '\\t' for tab.")
    quotechar: str | None = Field('"', description="One character, or null for files without quoting.")
    escapechar: str | None = Field(None, description="One character that escapes the delimiter/quote, or null.")
    doublequote: bool = Field(True, description="A doubled quote inside a quoted field stands for one quote.")
    header_line: int | None = Field(
        1, ge=1, description="Line number (1-based) of the header row; lines above it are skipped. null: no header."
    )
    columns: list[str] | None = Field(
        None, description="Column names for a file without a header row (needs header_line: null)."
    )
    skip_lines: int = Field(0, ge=0, description="Banner lines before the first data row, for files without a header.")
    skip_footer: int = Field(0, ge=0, description="Trailing lines (summary, record count) that are not records.")
    skip_blank_lines: bool = Field(True, description="Ignore lines that are empty.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        return check_encoding(value)

    @field_validator("delimiter", "quotechar", "escapechar")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"must be exactly one character (got {value!r})")
        return value

    @model_validator(mode="after")
    def _header_or_columns(self) -> CsvOptions:
        if self.header_line is None and not self.columns:
            raise ValueError("a file without a header row (header_line: null) needs 'columns'")
        if self.header_line is not None and self.skip_lines:
            raise ValueError("skip_lines is for files without a header; with a header use header_line to skip banners")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise ValueError("columns has a name twice")
        if self.quotechar is not None and self.quotechar == self.delimiter:
            raise ValueError("quotechar and delimiter must differ")
        return self


class FixedColumn(Strict):
    name: str = Field(..., min_length=1, description="The name fields refer to with 'column:'.")
    start: int = Field(..., ge=1, description="First character of the column (1-based).")
    width: int = Field(..., ge=1, description="Number of characters.")


class FixedOptions(Strict):
    """How a fixed-width export (mainframe / COBOL record layout) is laid out: one record a line,
    or records of `record_length` bytes one after the other, with no line separators."""

    encoding: str = Field(
        "utf-8",
        description="Text encoding; a byte order mark in the file wins. EBCDIC: cp037, cp500, cp1140 (or cp273...).",
    )
    columns: list[FixedColumn] = Field(..., min_length=1, description="The record layout, column by column.")
    record_length: int | None = Field(
        None,
        ge=1,
        description="Bytes per record, for files without line separators (a mainframe dataset, RECFM=F/FB, "
        "LRECL). null: one record a line.",
    )
    skip_lines: int = Field(0, ge=0, description="Banner lines (records, with record_length) before the first record.")
    skip_footer: int = Field(0, ge=0, description="Trailing lines (records, with record_length) that are not records.")
    skip_blank_lines: bool = Field(True, description="Ignore lines (records) that are empty or only blanks.")

    def layout_end(self) -> int:
        """The last character of the layout (1-based): a record may not hold data past it."""
        return max(column.start + column.width - 1 for column in self.columns)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        return check_encoding(value)

    @model_validator(mode="after")
    def _layout(self) -> FixedOptions:
        names = [column.name for column in self.columns]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"column names must be unique: {', '.join(doubled)}")
        spans = sorted((c.start, c.start + c.width - 1, c.name) for c in self.columns)
        for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
            if start <= end:
                raise ValueError(f"columns {name!r} and {other!r} overlap (character {start})")
        if self.record_length is not None and self.record_length < self.layout_end():
            last = max(self.columns, key=lambda c: c.start + c.width)
            raise ValueError(
                f"record_length {self.record_length} is shorter than the layout: column {last.name!r} "
                f"ends at character {self.layout_end()}"
            )
        if self.record_length is not None and _is_multibyte(self.encoding):
            raise ValueError(
                f"record_length counts bytes, and {self.encoding} writes some characters in several: "
                "give a single-byte encoding (cp037, cp500, cp1140, cp1252, iso-8859-1...)"
            )
        return self


def _is_multibyte(encoding: str) -> bool:
    name = codecs.lookup(encoding).name
    return name.startswith(("utf", "gb", "big5", "shift", "euc", "iso2022", "cp932", "cp949", "cp950", "johab"))


class XlsxOptions(Strict):
    """How an Excel workbook (.xlsx) export is laid out: one sheet, a header row, a record a row."""

    sheet: str | int = Field(
        1, description="The sheet the records are on: its name ('Tapahtumat'), or its position (1 = the first)."
    )
    header_row: int = Field(
        1, ge=1, description="Row number (1-based, as Excel shows it) of the header; rows above it are skipped."
    )
    skip_blank_rows: bool = Field(True, description="Ignore rows whose cells are all empty.")
    max_shared_strings_mb: int = Field(
        128,
        ge=1,
        description="Refuse a workbook whose table of shared texts (held in memory while the sheet is read) "
        "inflates to more than this many MB.",
    )

    @field_validator("sheet")
    @classmethod
    def _sheet(cls, value: str | int) -> str | int:
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError("a sheet's position counts from 1 (the first sheet); or give the sheet's name")
        if isinstance(value, str) and not value.strip():
            raise ValueError("give the sheet's name, or its position (1 = the first sheet)")
        return value


class CompressionOptions(Strict):
    """Limits for compressed exports (gzip, zip), and which member of a zip to read. A compressed
    file is recognised by its first bytes whatever it is called; this section is optional."""

    member: str | None = Field(
        None,
        min_length=1,
        description="Zip: the member to read, by name or pattern ('export_*.csv'; * and ? match within a name). "
        "Default: the zip's only file.",
    )
    max_inflated_mb: int = Field(
        2048, ge=1, description="Refuse a file that inflates to more than this many MB (a zip bomb)."
    )
    max_ratio: int = Field(
        200,
        ge=2,
        description="Refuse a file that inflates to more than this many times its compressed size "
        "(checked past 16 MB inflated; text exports inflate 5-20 times, zip bombs 1000).",
    )


class XmlOptions(Strict):
    """How an XML export is laid out."""

    record_path: str = Field(
        ..., description="Path to the record elements: '/p:Root/p:Events/p:Event' or '//p:Event' (no predicates)."
    )
    namespaces: dict[str, str] = Field(
        default_factory=dict,
        description="Prefix -> namespace URI. The key '' names the default namespace, so unprefixed names match it.",
    )

    @field_validator("record_path")
    @classmethod
    def _streamable_path(cls, value: str) -> str:
        if not re.fullmatch(r"(//?[\w.:-]+)+", value) or value.startswith("///"):
            raise ValueError(
                "record_path must be a plain element path such as /Export/Events/Event or //Event "
                "(no predicates, wildcards or functions: records are streamed)"
            )
        return value


class ValueSpec(Strict):
    """Where a value comes from and how it is cleaned; shared by event fields and invoice parts."""

    column: str | None = Field(None, description="CSV column name.")
    xpath: str | None = Field(None, description="XPath relative to the record element (XML feeds).")
    const: str | int | None = Field(None, description="A constant value.")
    template: str | None = Field(
        None, description="Text with {column} (CSV) or {xpath} (XML) placeholders, e.g. '{Date} {Time}'."
    )
    trim: bool = Field(True, description="Strip spaces around the value.")
    map: dict[str, str] | None = Field(None, description="Value map, e.g. {K: disconnected}.")
    map_ignore_case: bool = Field(False, description="Look values up in 'map' without regard to case.")
    map_default: str | None = Field(
        None, description="Used for values that are not in 'map' (otherwise such a value makes the record invalid)."
    )
    default: str | int | None = Field(None, description="Used when the value is empty.")
    required: bool | None = Field(None, description="An empty value makes the record invalid.")
    pattern: str | None = Field(None, description="Regular expression the whole value must match, e.g. '\\d{18}'.")
    split: str | None = Field(None, description="Invoices from paired columns: separator inside the cell, e.g. ','.")

    @field_validator("map", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        # status codes are often numbers (1: disconnected); a map compares text with text
        if isinstance(value, dict):
            return {_as_text(k): _as_text(v) for k, v in value.items()}
        return value

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value is not None:
            names = template_sources(value)
            if not names:
                raise ValueError("a template needs at least one {placeholder}; use 'const' for fixed text")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpec:
        given = [k for k in ("column", "xpath", "const", "template") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of column, xpath, const, template (got {', '.join(given)})")
        if self.map_default is not None and self.map is None:
            raise ValueError("map_default needs a 'map'")
        if self.map_ignore_case and self.map:
            folded = [k.casefold() for k in self.map]
            if len(set(folded)) != len(folded):
                raise ValueError("map has keys that differ only in case, but map_ignore_case is on")
        return self

    def sources(self) -> list[str]:
        if self.column is not None:
            return [self.column]
        if self.xpath is not None:
            return [self.xpath]
        if self.template is not None:
            return template_sources(self.template)
        return []


class TimeSpec(ValueSpec):
    formats: list[str] = Field(
        default_factory=lambda: ["%Y-%m-%d %H:%M:%S"],
        description="Input formats tried in order (strftime codes, %z for offsets like +01:00 or Z).",
    )
    source_time_zone: str | None = Field(
        None, description="Zone of times without an offset (default: the mapping's time_zone)."
    )

    @field_validator("formats")
    @classmethod
    def _valid_formats(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one format")
        for fmt in value:
            try:
                compile_format(fmt)
            except FormatError as exc:
                raise ValueError(f"format {fmt!r}: {exc}") from None
        return value

    @field_validator("source_time_zone")
    @classmethod
    def _valid_zone(cls, value: str | None) -> str | None:
        return check_zone(value) if value is not None else None


class IdSpec(ValueSpec):
    generate: bool = Field(
        False, description="Derive the id from the event's content (same record -> same id in any file)."
    )
    prefix: str = Field("", description="Text put before a generated id.")

    @model_validator(mode="after")
    def _generate_alone(self) -> IdSpec:
        if self.generate and self.sources():
            raise ValueError("generate: true takes no column/xpath/template")
        return self


class DescriptionSpec(ValueSpec):
    default_by_status: dict[str, str] | None = Field(
        None, description="Description used when the record has none, chosen by the event's status."
    )


class Fields(Strict):
    id: IdSpec | None = None
    usageplacecode: ValueSpec | None = None
    customernumber: ValueSpec | None = None
    contract_no: ValueSpec | None = None
    time: TimeSpec | None = None
    status: ValueSpec | None = None
    description: DescriptionSpec | None = None


class InvoicePairs(Strict):
    """mode: pairs — every invoice of the event in one cell, each item a number and a job id.

    `594294:1234,594295:1235`: items split on `split` (','), each item split on `separator`
    (':') into invoice number and job id — or matched whole by `pattern`, a regular expression
    with the named groups `invoicenumber` and `jobid`.
    """

    column: str | None = Field(None, description="The cell that holds the invoices (CSV, fixed-width).")
    xpath: str | None = Field(None, description="The XPath of the text that holds the invoices (XML).")
    split: str = Field(",", min_length=1, description="Separator between invoices in the cell, e.g. ','.")
    separator: str | None = Field(
        None, min_length=1, description="Separator between invoice number and job id inside an item, e.g. ':'."
    )
    first: Literal["invoicenumber", "jobid"] = Field(
        "invoicenumber", description="With 'separator': which part comes first in an item."
    )
    pattern: str | None = Field(
        None,
        description="Instead of 'separator': a regular expression (RE2) an item must match whole, with the named "
        "groups invoicenumber and jobid, e.g. '(?P<invoicenumber>\\d+)/(?P<jobid>\\d+)'.",
    )

    @field_validator("pattern")
    @classmethod
    def _named_groups(cls, value: str | None) -> str | None:
        if value is not None:
            compile_groups(value, INVOICE_FIELDS)
        return value

    @model_validator(mode="after")
    def _one_way(self) -> InvoicePairs:
        sources = [k for k in ("column", "xpath") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError("say where the invoices are: give exactly one of column, xpath")
        if (self.separator is None) == (self.pattern is None):
            raise ValueError("say how an item splits into number and job id: give exactly one of separator, pattern")
        if self.separator is not None and self.separator == self.split:
            raise ValueError("separator and split must differ")
        return self

    def source(self) -> str:
        return self.column if self.column is not None else self.xpath or ""


class Invoices(Strict):
    """Where an event's invoices come from."""

    mode: Literal["columns", "rows", "elements", "pairs"] = Field(
        ...,
        description=(
            "columns: paired cells split on a separator ('1001|1002' with '71|72'); "
            "rows: one row per invoice, rows with the same event id merged into one event; "
            "elements: repeated XML elements; "
            "pairs: number and job id together in one cell ('1001:71,1002:72')."
        ),
    )
    element: str | None = Field(
        None, description="elements: XPath of the repeated invoice element, relative to the record.")
    pairs: InvoicePairs | None = Field(None, description="pairs: the cell and how it splits.")
    invoicenumber: ValueSpec | None = Field(
        None, description="The invoice number (modes columns, rows, elements).")
    jobid: ValueSpec | None = None


class KeepRule(Strict):
    """Which records of the file are mapped at all: a rule on one column (or XPath).

    Billing exports mix record types in one file (`H;...` header, `D;...` detail, `C;...`
    comment, `T;...` trailer lines, each with its own number of fields). The records that do
    not match are left out wherever they are in the file: counted as filtered, never invalid,
    whatever their number of fields.
    """

    column: str | None = Field(None, description="The column the rule looks at (CSV, fixed-width).")
    xpath: str | None = Field(None, description="The XPath the rule looks at, relative to the record (XML).")
    equals: str | None = Field(None, description="Keep the records whose value is exactly this, e.g. 'D'.")
    one_of: list[str] | None = Field(
        None, min_length=1, description="Keep the records whose value is one of these, e.g. ['D', 'd']."
    )
    pattern: str | None = Field(
        None, description="Keep the records whose whole value matches this regular expression (RE2), e.g. 'D\\d?'."
    )
    trim: bool = Field(True, description="Strip spaces around the value before comparing.")

    @field_validator("equals", "one_of", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        # record type codes are often numbers (10: detail); the rule compares text with text
        return [_as_text(v) for v in value] if isinstance(value, list) else _as_text(value)

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value

    @model_validator(mode="after")
    def _one_source_one_test(self) -> KeepRule:
        sources = [k for k in ("column", "xpath") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError("say which value the rule looks at: give exactly one of column, xpath")
        tests = [k for k in ("equals", "one_of", "pattern") if getattr(self, k) is not None]
        if len(tests) != 1:
            raise ValueError("give exactly one of equals, one_of, pattern"
                             + (f" (got {', '.join(tests)})" if tests else ""))
        return self

    def source(self) -> str:
        return self.column if self.column is not None else self.xpath or ""


class Statuses(Strict):
    not_disconnected: str = Field(
        DEFAULT_STATUS_NOT_DISCONNECTED,
        description="Value of 'status' for a usage place that could not be disconnected (agreed with Ropo).",
    )


class Mapping(Strict):
    """One feed's mapping file."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_ref: str | None = Field(None, alias="$schema", description="JSON Schema for editors; ignored.")
    name: str | None = Field(None, description="A short name for the feed (default: the file name).")
    format: Literal["csv", "xml", "fixed", "xlsx"]
    csv: CsvOptions | None = None
    fixed: FixedOptions | None = None
    xml: XmlOptions | None = None
    xlsx: XlsxOptions | None = None
    compression: CompressionOptions | None = Field(
        None, description="Limits for gzip/zip exports and the zip member to read (optional: detected anyway)."
    )
    time_zone: str = Field(DEFAULT_TIME_ZONE, description="Zone that event times are written in.")
    statuses: Statuses = Field(default_factory=Statuses)
    keep: KeepRule | None = Field(
        None, description="Map only the records that match this rule; the others are counted as filtered."
    )
    fields: Fields
    invoices: Invoices | None = None

    @field_validator("time_zone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        return check_zone(value)

    def status_vocabulary(self) -> tuple[str, ...]:
        return (STATUS_CONNECTED, STATUS_DISCONNECTED, self.statuses.not_disconnected)


# --- patterns --------------------------------------------------------------------------------------

# Patterns run on RE2 (google-re2), whose matching time is linear in the value: with Python's
# backtracking `re`, '(a+)+$' against 35 characters held the GIL for minutes and froze the service.
_RE2_LIMITS = (
    "patterns run on RE2, which never backtracks: backreferences (\\1), lookahead (?=, ?!) and "
    "lookbehind (?<=, ?<!) are not available"
)


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """`pattern` -> value -> does the whole value match? Raises ValueError saying why not usable.

    Calls the bound RE2 object rather than the `re2` module's re-like wrapper, which builds a
    Match object on every call (3.3 µs a value against 0.55 µs; Python's `re` takes 0.2 µs).
    """
    import re2

    compiled = _re2(pattern)
    match, anchor = compiled.Match, re2._re2.RE2.Anchor.ANCHOR_BOTH

    def fullmatch(value: str) -> bool:
        data = value.encode("utf-8", "surrogatepass")
        return match(anchor, data, 0, len(data))[0][0] >= 0  # no match: [(-1, -1)]

    return fullmatch


def compile_groups(pattern: str, names: tuple[str, ...]) -> Callable[[str], dict[str, str] | None]:
    """`pattern` (RE2, with a named group for each of `names`) -> value -> {name: text}, or None
    when the whole value does not match. Raises ValueError when a group is missing."""
    import re2

    compiled = _re2(pattern)
    groups = {name.decode("utf-8") if isinstance(name, bytes) else str(name): number
              for name, number in compiled.NamedCapturingGroups()}
    missing = [name for name in names if name not in groups]
    if missing:
        raise ValueError(f"the pattern needs the named group{'s' if len(missing) > 1 else ''} "
                         + ", ".join(f"(?P<{name}>...)" for name in missing))
    match, anchor = compiled.Match, re2._re2.RE2.Anchor.ANCHOR_BOTH
    wanted = [(name, groups[name]) for name in names]

    def parts(value: str) -> dict[str, str] | None:
        data = value.encode("utf-8", "surrogatepass")
        spans = match(anchor, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        return {name: data[spans[number][0]:spans[number][1]].decode("utf-8", "surrogatepass")
                if spans[number][0] >= 0 else "" for name, number in wanted}

    return parts


def _re2(pattern: str) -> Any:
    """The compiled RE2 program of `pattern`; ValueError saying why it is not usable."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the reason goes into the ConfigError, not to stderr
    options.max_mem = 8 << 20  # the compiled program's memory (RE2's default); larger is refused
    compiled = re2._re2.RE2(pattern.encode("utf-8"), options)
    if not compiled.ok():
        reason = compiled.error()
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        if "perl operator" in reason or re.search(r"escape sequence: \\[1-9]", reason):
            raise ValueError(f"not a usable regular expression: {reason} ({_RE2_LIMITS})")
        raise ValueError(f"not a valid regular expression: {reason}")
    return compiled


def _as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, placeholder or None) pairs of a template, in order.

    A placeholder is everything between its braces: '{e:Type}' names the XPath 'e:Type' (or a
    column of that name). str.format would read the ':' as the start of a format spec and the
    '!' as a conversion, and silently look up 'e' instead; a conversion is refused.
    """
    parts: list[tuple[str, str | None]] = []
    try:
        for literal, name, spec, conversion in string.Formatter().parse(template):
            if conversion is not None:
                raise ValueError(f"'!{conversion}' in a placeholder is not supported")
            if name is None:
                parts.append((literal, None))
                continue
            placeholder = f"{name}:{spec}" if spec else name
            if not placeholder:
                raise ValueError("an empty placeholder {} names nothing")
            parts.append((literal, placeholder))
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    return parts


def template_sources(template: str) -> list[str]:
    return [name for _, name in template_parts(template) if name]


def check_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, utf-8-sig, utf-16, cp1252, iso-8859-1)") from None
    return value


def check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (e.g. Europe/Helsinki, UTC)") from None
    return value


_FORMAT_NAMES = {"csv": "a CSV", "xml": "an XML", "fixed": "a fixed-width", "xlsx": "an xlsx"}


@dataclass(frozen=True)
class CrossFieldProblem:
    """A rule that no single key can check, broken: where (the key path) and why."""

    path: tuple[str, ...]
    message: str


# A not-disconnected event must carry the reason from the record (Ropo One asks for it); a
# stock text would fill every such event with the same words and the reason would never be asked for.
NO_STOCK_REASON = (
    "a not-disconnected event needs its own reason from the record (Ropo One requires it), so it gets no "
    "stock description: remove this entry and map description from the export"
)


def mapping_problems(mapping: Mapping) -> list[CrossFieldProblem]:
    """Cross-field rules that no single key can check, each problem with its key path."""
    found: list[tuple[str | tuple[str, ...], str]] = []
    _cross_field_rules(mapping, found)
    return [
        CrossFieldProblem(tuple(path.split(".")) if isinstance(path, str) else path, message)
        for path, message in found
    ]


def _cross_field_rules(mapping: Mapping, problems: list[tuple[str | tuple[str, ...], str]]) -> None:
    """Appends (key path, message). A path is a dotted literal written here, or a tuple where a
    part is the administrator's own key (which may hold a dot): never parsed out of a message."""
    fmt = mapping.format
    if fmt == "csv" and mapping.csv is None:
        mapping = mapping.model_copy(update={"csv": CsvOptions()})
    if fmt == "xml" and mapping.xml is None:
        problems.append(("xml", "an XML feed needs an 'xml' section with record_path"))
    if fmt == "xlsx" and mapping.compression is not None and mapping.compression.member is not None:
        problems.append(
            ("compression.member", "a workbook (.xlsx) is read whole, not by member: remove compression.member"))
    for section in ("csv", "xml", "fixed", "xlsx"):
        if section != fmt and getattr(mapping, section) is not None:
            problems.append(
                (section, f"this is {_FORMAT_NAMES[fmt]} feed (format: {fmt}); remove the '{section}' section"))
    if fmt == "fixed" and mapping.fixed is None:
        problems.append(("fixed", "a fixed-width feed needs a 'fixed' section with its columns"))

    specs: list[tuple[str, ValueSpec]] = [
        (f"fields.{name}", spec) for name in EVENT_FIELDS if (spec := getattr(mapping.fields, name)) is not None
    ]
    if mapping.invoices is not None:
        specs += [
            (f"invoices.{name}", spec)
            for name in INVOICE_FIELDS
            if (spec := getattr(mapping.invoices, name)) is not None
        ]
    if mapping.keep is not None:
        problems.extend(_source_problems("keep", mapping.keep.column, mapping.keep.xpath, mapping))
    for path, spec in specs:
        if fmt != "xml" and spec.xpath is not None:
            problems.append(
                (path, f"'xpath' is for XML feeds; this feed is {_FORMAT_NAMES[fmt].split(' ', 1)[1]}: use 'column'"))
        if fmt == "fixed" and mapping.fixed is not None:
            declared = [column.name for column in mapping.fixed.columns]
            for source in spec.sources():
                if source not in declared:
                    problems.append((path, f"column {source!r} is not in fixed.columns ({', '.join(declared)})"))
        if fmt == "xml" and spec.column is not None:
            problems.append((path, "'column' is for CSV feeds; this feed is XML: use 'xpath'"))
        is_id = isinstance(spec, IdSpec) and spec.generate
        if not is_id and not spec.sources() and spec.const is None and spec.default is None:
            problems.append((path, "say where the value comes from: column, xpath, const or template"))
        if spec.split is not None and not (path.startswith("invoices.") and mapping.invoices is not None
                                           and mapping.invoices.mode == "columns"):
            problems.append((path, "'split' is only for invoices with mode: columns"))

    for name in (n for n in EVENT_FIELDS if n in DEFAULT_REQUIRED):  # a stable order: sets vary per run
        spec = getattr(mapping.fields, name)
        if spec is None:
            problems.append(
                (f"fields.{name}", f"'{name}' is needed for every event: map it (or give a const/default)")
            )

    status = mapping.fields.status
    vocabulary = set(mapping.status_vocabulary())
    if status is not None:
        targets: list[str | int] = list((status.map or {}).values())
        targets += [v for v in (status.map_default, status.const, status.default) if v]
        for value in targets:
            if str(value) not in vocabulary:
                problems.append(
                    ("fields.status", f"status value {value!r} is not one of {', '.join(sorted(vocabulary))}")
                )
    description = mapping.fields.description
    if description is not None and description.default_by_status:
        for key in description.default_by_status:
            where = ("fields", "description", "default_by_status", key)  # the entry itself, whatever it holds
            if key not in vocabulary:
                problems.append((where, f"{key!r} is not a status ({', '.join(sorted(vocabulary))})"))
            elif key == mapping.statuses.not_disconnected:
                problems.append((where, NO_STOCK_REASON))

    if fmt == "xml" and mapping.xml is not None:
        problems.extend(_xpath_problems(mapping.xml, specs, mapping.invoices, mapping.keep))

    invoices = mapping.invoices
    if invoices is not None:
        if invoices.mode == "pairs":
            if invoices.pairs is None:
                problems.append(("invoices.pairs", "mode 'pairs' needs 'pairs' (the cell and how it splits)"))
            else:
                pairs = invoices.pairs
                problems.extend(_source_problems("invoices.pairs", pairs.column, pairs.xpath, mapping))
            for name in INVOICE_FIELDS:
                if getattr(invoices, name) is not None:
                    problems.append((f"invoices.{name}", "mode 'pairs' reads number and job id from the one "
                                                         "cell under 'pairs': remove this"))
        else:
            if invoices.pairs is not None:
                problems.append(("invoices.pairs", f"'pairs' is only for mode 'pairs' (mode is {invoices.mode!r})"))
            if invoices.invoicenumber is None:
                problems.append(("invoices.invoicenumber", "required key is missing"))
        if invoices.mode == "elements":
            if fmt != "xml":
                problems.append(("invoices.mode", "mode 'elements' is for XML feeds; use 'columns' or 'rows'"))
            if not invoices.element:
                problems.append(("invoices.element", "mode 'elements' needs 'element' (XPath of the repeated element)"))
            for name in INVOICE_FIELDS:
                spec = getattr(invoices, name)
                if fmt == "xml" and spec is not None and spec.xpath is None:
                    problems.append(
                        (f"invoices.{name}",
                         "mode 'elements' reads each invoice with 'xpath' (relative to the element)")
                    )
        elif invoices.element is not None:
            problems.append(("invoices.element", f"'element' is only for mode 'elements' (mode is {invoices.mode!r})"))
        if invoices.mode == "columns":
            for name in INVOICE_FIELDS:
                spec = getattr(invoices, name)
                if spec is not None and spec.sources() and spec.split is None:
                    problems.append(
                        (f"invoices.{name}", "mode 'columns' needs 'split' (the separator inside the cell)"))
        if invoices.mode == "rows":
            id_spec = mapping.fields.id
            if id_spec is None or id_spec.generate or not id_spec.sources():
                problems.append(
                    ("invoices.mode", "mode 'rows' merges rows by event id: map fields.id from the file")
                )


def _source_problems(path: str, column: str | None, xpath: str | None,
                     mapping: Mapping) -> list[tuple[str | tuple[str, ...], str]]:
    """A section that reads one value (keep, invoices.pairs): is its column/xpath right for the format?"""
    fmt = mapping.format
    problems: list[tuple[str | tuple[str, ...], str]] = []
    if fmt == "xml" and column is not None:
        problems.append((path, "'column' is for CSV and fixed-width feeds; this feed is XML: use 'xpath'"))
    if fmt != "xml" and xpath is not None:
        kind = _FORMAT_NAMES[fmt].split(" ", 1)[1]
        problems.append((path, f"'xpath' is for XML feeds; this feed is {kind}: use 'column'"))
    if fmt == "fixed" and mapping.fixed is not None and column is not None:
        declared = [c.name for c in mapping.fixed.columns]
        if column not in declared:
            problems.append((path, f"column {column!r} is not in fixed.columns ({', '.join(declared)})"))
    return problems


def _xpath_problems(
    xml: XmlOptions, specs: list[tuple[str, ValueSpec]], invoices: Invoices | None, keep: KeepRule | None
) -> list[tuple[str | tuple[str, ...], str]]:
    problems: list[tuple[str | tuple[str, ...], str]] = []
    try:
        clark_steps(xml.record_path, xml.namespaces)
    except KeyError as exc:
        problems.append(("xml.record_path", str(exc.args[0])))
    expressions = [(path, source) for path, spec in specs for source in spec.sources()]
    if invoices is not None and invoices.element:
        expressions.append(("invoices.element", invoices.element))
    if keep is not None and keep.xpath is not None:
        expressions.append(("keep.xpath", keep.xpath))
    if invoices is not None and invoices.pairs is not None and invoices.pairs.xpath is not None:
        expressions.append(("invoices.pairs.xpath", invoices.pairs.xpath))
    for path, expression in expressions:
        reason = xpath_problem(expression, xml.namespaces)
        if reason:
            problems.append((path, f"{expression!r}: {reason}"))
    return problems


# --- loading -------------------------------------------------------------------------------------


def load_mapping(path: str | Path) -> Mapping:
    """Load and check a mapping file; raises ConfigError listing every problem with its line."""
    return _check(load_yaml_file(path))


def load_mapping_text(text: str, file: str = "<mapping>") -> Mapping:
    return _check(load_yaml_text(text, file))


def _check(loaded: LoadedYaml) -> Mapping:
    if not isinstance(loaded.data, dict):
        raise ConfigError([loaded.problem((), "a mapping file must be a YAML mapping (key: value lines)")])
    try:
        mapping = Mapping.model_validate(loaded.data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, loaded, Mapping)
        raise ConfigError(_with_hidden_problems(problems, loaded)) from None
    cross = _located(mapping_problems(mapping), loaded)
    if cross:
        raise ConfigError(cross)
    if mapping.format == "csv" and mapping.csv is None:
        mapping = mapping.model_copy(update={"csv": CsvOptions()})
    if mapping.format == "xlsx" and mapping.xlsx is None:
        mapping = mapping.model_copy(update={"xlsx": XlsxOptions()})
    return mapping


def _located(problems: list[CrossFieldProblem], loaded: LoadedYaml) -> list[ConfigProblem]:
    located = [loaded.problem(problem.path, problem.message) for problem in problems]
    located.sort(key=lambda p: (p.line or 0, p.column or 0))
    return located


def _with_hidden_problems(problems: list[ConfigProblem], loaded: LoadedYaml, rounds: int = 4) -> list[ConfigProblem]:
    """Add the problems that the first ones hide, so that one `validate` run lists them all.

    pydantic runs a model's own checks only when every key of it is valid, and the cross-field
    rules need a whole Mapping, so a single wrong value would hide e.g. a status map that names
    an unknown status. Validate again without the keys at fault; what is new (and not about a
    removed key) is reported too. Once what is left validates, its cross-field problems count.
    """
    found = list(problems)
    data = copy.deepcopy(loaded.data)
    removed: list[tuple[str, ...]] = []
    to_remove = [_key_of(p.path) for p in problems]
    for _ in range(rounds):
        progress = False
        for key in to_remove:
            if key and _remove_key(data, key):
                removed.append(key)
                progress = True
        if not progress:
            break
        complete = False
        try:
            again = _located(mapping_problems(Mapping.model_validate(data)), loaded)
            complete = True
        except ValidationError as exc:
            again = problems_from_validation(exc, LoadedYaml(loaded.file, data, loaded.positions), Mapping)
        to_remove = []
        for problem in again:
            key = _key_of(problem.path)
            if problem.message == "required key is missing":
                if key in removed and len(key) > 1:
                    to_remove.append(key[:-1])  # let the siblings of a removed required key be checked
                continue
            if problem in found or _about_removed(key, problem.message, removed):
                continue
            found.append(problem)
            to_remove.append(key)
        if complete:
            break
    found.sort(key=lambda p: (p.line or 0, p.column or 0))
    return found


def _key_of(path: str) -> tuple[str, ...]:
    path = re.sub(r"\[\d+\].*$", "", path)  # a list item: the list's key
    return tuple(path.split(".")) if path else ()


def _about_removed(key: tuple[str, ...], message: str, removed: list[tuple[str, ...]]) -> bool:
    """A problem that only exists because a key was taken out (the key itself, or its parent missing it)."""
    for gone in removed:
        if gone[: len(key)] == key and (len(gone) == len(key) or gone[-1] in message or gone[len(key)] in message):
            return True
    return False


def _remove_key(data: Any, key: tuple[str, ...]) -> bool:
    for part in key[:-1]:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    if isinstance(data, dict) and key[-1] in data:
        del data[key[-1]]
        return True
    return False


def mapping_json_schema() -> dict[str, Any]:
    """JSON Schema of the mapping format, for editors (VS Code's YAML extension) and `schema`."""
    schema = Mapping.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "usageplace-batch mapping"
    return schema
