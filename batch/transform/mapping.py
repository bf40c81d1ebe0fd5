"""Records -> UsageplaceEvent dicts, or the precise reasons a record cannot become one. Pure.

A Mapping (the administrator's YAML) is compiled once into small functions, one per field, so
that the per-record work is plain dictionary and string operations. `MappingRun` holds what
one file needs across chunks: the ids seen so far (duplicates within a file are errors) and,
for invoices given one row per invoice, the event still being assembled.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Any

from batch.config.mapping import (
    DEFAULT_REQUIRED,
    EVENT_FIELDS,
    INVOICE_FIELDS,
    IdSpec,
    InvoicePairs,
    KeepRule,
    Mapping,
    TimeSpec,
    ValueSpec,
    compile_groups,
    compile_pattern,
    template_parts,
)
from batch.syntax.timeparse import TimeConverter
from batch.transform.events import EVENT_KEYS, Rules, check_event
from batch.transform.fastpath import FastChunkMapper, FastMapper, build_fast_chunk_mapper, build_fast_mapper
from batch.transform.jsonenc import event_bytes
from batch.transform.records import LISTED_NAMES, Chunk, XmlPlan, line_word, short_list

_MISSING = object()  # a column that the record does not have (too few fields)
# shared by valid records, which are made by the hundred thousand: immutable, so never changed by mistake
# shared by the valid records of the fast path; a tuple, so that an append fails loudly instead of
# giving every such record the error (records with errors get a list of their own)
_NO_ERRORS: Any = ()
NO_PARTIAL: Any = MappingProxyType({})
_VALUE_PREVIEW = 80
# A record reports at most this many problems; the last one counts the others.
MAX_ERRORS_PER_RECORD = 10
_event_id = itemgetter("id")


@dataclass(slots=True)
class RecordError:
    line: int
    field: str
    source: str | None
    value: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "source": self.source, "value": self.value, "message": self.message}

    def describe(self) -> str:
        """The problem without its line: "status (column 'Tila' = 'X'): value is not in the map ..."."""
        text = self.field
        if self.source:
            text += f" ({self.source}"
            text += f" = {_preview(self.value)})" if self.value is not None else ")"
        return f"{text}: {self.message}"

    def __str__(self) -> str:
        return f"line {self.line}: {self.describe()}"


@dataclass(slots=True)
class MappedRecord:
    line: int
    event: dict[str, Any] | None
    errors: list[RecordError] = field(default_factory=list)
    # what could be read of an invalid record (id, usageplacecode, status), for receipts
    partial: Any = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.event is not None


class ValidChunk:
    """A chunk whose records are all valid, as the chunk path maps it: lines, event ids and events
    in three lists, no MappedRecord made per record. The pipeline journals the lists as they are
    (journal.ValidEvents); iterating gives the MappedRecords (preview, and any other reader of
    `extract.mapped_chunks`), the same records the row path would give."""

    __slots__ = ("lines", "ids", "events")

    def __init__(self, lines: list[int], ids: list[str], events: list[dict[str, Any]]) -> None:
        self.lines, self.ids, self.events = lines, ids, events

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self) -> Iterator[MappedRecord]:
        return map(MappedRecord, self.lines, self.events, repeat(_NO_ERRORS), repeat(NO_PARTIAL))


#: What mapping one chunk gives: its records, or for an all-valid chunk the same in columns.
MappedChunk = list[MappedRecord] | ValidChunk


def _preview(value: str | None) -> str:
    if value is None:
        return "none"
    text = value if len(value) <= _VALUE_PREVIEW else value[:_VALUE_PREVIEW] + "…"
    return repr(text)


# D23: the contract's fields are plain strings. A control character in one is refused with the
# record (never sent, never written raw into a receipt): NUL, ESC, the other C0 controls, DEL
# and the C1 range. Tabs and line breaks are text only in the free-text description; in an id,
# code, number, time or status they are refused as well (those at the ends are trimmed first).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BREAK = re.compile(r"[\t\n\r]")
MULTILINE_FIELDS = frozenset({"description"})
# UEInvoice pairs an invoice number with the Ropo One job id it belongs to; the contract types
# both and marks neither required, but half a pair cannot be matched to anything.
INVOICE_PART_EMPTY = "is required but empty: an invoice needs both its invoicenumber and its jobid"


def _control_problem(value: str, multiline: bool) -> str | None:
    """Why `value` cannot be sent as it is (None: it can). Called only for values that are not
    str.isprintable(), which is False for every character either pattern finds."""
    found = _CONTROL.search(value)
    if found is not None:
        return (f"contains the control character {_escaped(found.group())} at position {found.start() + 1}; "
                "control characters are refused")
    found = None if multiline else _BREAK.search(value)
    if found is not None:
        return (f"contains a tab or line break ({_escaped(found.group())} at position {found.start() + 1}); "
                "only description may hold them")
    return None


def _escaped(char: str) -> str:
    return f"\\x{ord(char):02x}"


class _Problem(Exception):
    """One field's value is unusable: message plus the raw value at fault."""

    def __init__(self, message: str, value: str | None):
        self.message = message
        self.value = value


# --- compiling one value spec --------------------------------------------------------------------

Getter = Callable[[list], Any]  # row -> raw value (str | None | _MISSING)
_Origin = dict[str, tuple[str | None, Any]]  # event field -> (source label, raw value)


def _source_label(spec: ValueSpec, is_xml: bool) -> str | None:
    if spec.column is not None:
        return f"column '{spec.column}'"
    if spec.xpath is not None:
        return f"xpath '{spec.xpath}'"
    if spec.template is not None:
        return f"template '{spec.template}'"
    if spec.const is not None:
        return "const"
    return None


def _getter(spec: ValueSpec, index: dict[str, int]) -> Getter:
    if spec.const is not None:
        constant = str(spec.const)
        return lambda row: constant
    if spec.template is not None:
        parts = [(literal, index[name] if name else None) for literal, name in template_parts(spec.template)]

        def template(row: list) -> Any:
            out: list[Any] = []
            for literal, position in parts:
                out.append(literal)
                if position is not None:
                    value = row[position] if position < len(row) else _MISSING
                    if value is _MISSING:
                        return _MISSING
                    out.append(value or "")
            return "".join(out)

        return template
    sources = spec.sources()
    if not sources:
        return lambda row: None
    position = index[sources[0]]
    return lambda row: row[position] if position < len(row) else _MISSING


class _Value:
    """A compiled ValueSpec: raw value -> cleaned, mapped, typed value (None when empty)."""

    def __init__(self, name: str, spec: ValueSpec, required: bool, is_xml: bool,
                 converter: TimeConverter | None = None, integer: bool = False, empty: str | None = None):
        self.name = name
        self.empty = empty or "is required but empty"
        self.spec = spec
        self.required = required
        self.source = _source_label(spec, is_xml)
        self.trim = spec.trim
        self.default = None if spec.default is None else str(spec.default)
        # value -> does it match the whole pattern (RE2: linear time, see config.mapping)
        self.pattern = compile_pattern(spec.pattern) if spec.pattern else None
        self.map = None
        if spec.map is not None:
            self.map = {(k.casefold() if spec.map_ignore_case else k): v for k, v in spec.map.items()}
        self.fold = spec.map_ignore_case
        self.map_default = spec.map_default
        self.converter: TimeConverter | None = converter
        self.integer = integer
        self.multiline = name in MULTILINE_FIELDS

    def clean(self, raw: Any) -> Any:
        """raw -> final value, or None for an empty optional value; raises _Problem."""
        if raw is _MISSING:
            raise _Problem("the record has fewer fields than the header", None)
        value = raw
        if value is not None and self.trim:
            value = value.strip()
        if value and not value.isprintable():
            reason = _control_problem(value, self.multiline)
            if reason is not None:
                raise _Problem(reason, raw)
        if not value:
            if self.default is None:
                if self.required:
                    raise _Problem(self.empty, raw)
                return None
            value = self.default
        if self.map is not None:
            mapped = self.map.get(value.casefold() if self.fold else value)
            if mapped is None:
                if self.map_default is None:
                    known = short_list(list(self.spec.map or ()), 2 * LISTED_NAMES)  # set: self.map is made of it
                    raise _Problem(f"value is not in the map (expected one of {known})", raw)
                mapped = self.map_default
            value = mapped
        if self.pattern is not None and not self.pattern(value):
            raise _Problem(f"does not match the pattern {self.spec.pattern!r}", raw)
        if self.converter is not None:
            converted, reason = self.converter.convert(value)
            if converted is None:
                raise _Problem(reason or "not a date/time", raw)
            return converted
        if self.integer:
            text = value.replace(" ", "").replace("\u00a0", "")
            if not (text.isdigit() or (text[:1] in "+-" and text[1:].isdigit())) or not text.isascii():
                raise _Problem("expected a whole number", raw)
            try:
                return int(text)
            except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
                raise _Problem("expected a whole number (this one has too many digits)", raw) from None
        return value


# --- the compiled mapping ------------------------------------------------------------------------


class CompiledMapping:
    """A checked Mapping turned into per-field functions; reusable for any number of files."""

    def __init__(self, mapping: Mapping):
        self.mapping = mapping
        self.is_xml = mapping.format == "xml"
        self.rules = Rules(
            statuses=mapping.status_vocabulary(),
            not_disconnected=mapping.statuses.not_disconnected,
            required=frozenset(
                name for name in EVENT_FIELDS if _is_required(name, getattr(mapping.fields, name))
            ),
        )
        self.field_specs: list[tuple[str, ValueSpec]] = [
            (name, spec) for name in EVENT_FIELDS if (spec := getattr(mapping.fields, name)) is not None
        ]
        id_spec = mapping.fields.id
        self.generate_id = isinstance(id_spec, IdSpec) and id_spec.generate
        self.id_prefix = id_spec.prefix if isinstance(id_spec, IdSpec) else ""
        self.invoices = mapping.invoices
        description = mapping.fields.description
        self.default_description = dict(description.default_by_status or {}) if description else {}
        self.keep = mapping.keep
        self.keeps = _keep_test(mapping.keep) if mapping.keep is not None else None
        pairs = mapping.invoices.pairs if mapping.invoices is not None else None
        self.pairs = pairs
        self.split_pair = _pair_splitter(pairs) if pairs is not None else None

    def id_source_label(self) -> str | None:
        """Where event ids come from, as error messages name it (None when generated)."""
        spec = self.mapping.fields.id
        if spec is None or self.generate_id:
            return None
        return _source_label(spec, self.is_xml)

    # what the readers must deliver
    def sources(self) -> list[str]:
        names: list[str] = [self.keep.source()] if self.keep is not None else []
        for _, spec in self.field_specs:
            names += spec.sources()
        if self.invoices is not None and self.invoices.mode != "elements":
            for part in (self.invoices.invoicenumber, self.invoices.jobid):
                if part is not None:
                    names += part.sources()
            if self.invoices.pairs is not None:
                names.append(self.invoices.pairs.source())
        return list(dict.fromkeys(names))

    def required_columns(self) -> list[str]:
        return self.sources()

    def xml_plan(self) -> XmlPlan:
        groups = []
        if self.invoices is not None and self.invoices.mode == "elements":
            number = self.invoices.invoicenumber  # always given in elements mode (checked at load)
            parts = [(number.xpath or "") if number is not None else ""]
            parts.append(self.invoices.jobid.xpath if self.invoices.jobid and self.invoices.jobid.xpath else "")
            groups.append((self.invoices.element or "", [p for p in parts if p]))
        return XmlPlan(texts=self.sources(), groups=groups)

    def start(self) -> MappingRun:
        return MappingRun(self)


def _is_required(name: str, spec: ValueSpec | None) -> bool:
    if spec is not None and spec.required is not None:
        return spec.required
    return name in DEFAULT_REQUIRED


@dataclass
class _Bound:
    """A compiled mapping bound to one file's column layout."""

    columns: list[str]
    fields: list[tuple[str, _Value, Getter]]
    invoice_parts: list[tuple[_Value, Getter]]  # invoicenumber[, jobid] for columns/rows modes
    invoice_group: int | None  # index of the repeated-element group (elements mode)
    invoice_values: list[_Value]
    fast: FastMapper | None = None  # see batch.transform.fastpath
    fast_chunk: FastChunkMapper | None = None  # the same, column by column for a whole chunk
    pair_cell: Getter | None = None  # pairs mode: the cell with every invoice of the event


class MappingRun:
    """Maps the records of one file, chunk after chunk. Not thread-safe; one per file."""

    def __init__(self, compiled: CompiledMapping):
        self.compiled = compiled
        self._bound: _Bound | None = None
        self._seen_ids: dict[str, int] = {}
        self._open: MappedRecord | None = None  # rows mode: the event still collecting invoices
        self._open_origin: _Origin = {}  # ...and where its values came from (its first row)
        self.filtered = 0  # records left out by the mapping's `keep` rule
        self.sheet: str | None = None  # a workbook's sheet: positions are its rows (records.position)

    # -- public ---------------------------------------------------------------------------------

    def map_chunk(self, chunk: Chunk) -> list[MappedRecord]:
        """The records of the chunk, in file order."""
        records = self.mapped(chunk)
        return records if isinstance(records, list) else list(records)

    def mapped(self, chunk: Chunk) -> MappedChunk:
        """The records of the chunk: a ValidChunk when all are valid (the common case, no object
        made per record), else the list of MappedRecords."""
        self.sheet = chunk.sheet  # once a chunk: records carry only their line (row) number
        if self.compiled.keeps is not None:
            chunk = self._kept(chunk)  # once a chunk, before (and outside) the per-record paths
        bound = self._bind(chunk.columns)
        if bound.fast_chunk is not None and not chunk.broken:
            records = self._all_valid(bound.fast_chunk, chunk)
            if records is not None:
                return records
        out: list[MappedRecord] = []
        rows_mode = self.compiled.invoices is not None and self.compiled.invoices.mode == "rows"
        fast = bound.fast
        seen = self._seen_ids
        for line, row in zip(chunk.lines, chunk.rows):
            if fast is not None and not (chunk.broken and line in chunk.broken):
                try:
                    event = fast(row)
                except Exception:  # noqa: BLE001 - the general path below is the authority
                    event = None
                # a repeated id goes the general way, which reports it
                if event is not None:
                    event_id = event.get("id")
                    if not event_id or event_id not in seen:
                        if event_id:
                            seen[event_id] = line
                        out.append(MappedRecord(line, event, _NO_ERRORS, NO_PARTIAL))
                        continue
            broken = chunk.broken.get(line) if chunk.broken else None
            if broken is not None:
                record = MappedRecord(line, None, [RecordError(line, "(record)", None, None, broken)])
                out.extend(self._close_open() if rows_mode else ())
                out.append(record)
                continue
            if not self.compiled.is_xml and len(row) != len(bound.columns):
                shape = _shape_problem(row, bound.columns)
                if shape is not None:
                    record = MappedRecord(line, None, [RecordError(line, "(record)", None, None, shape)])
                    out.extend(self._close_open() if rows_mode else ())
                    out.append(_with_span(record, chunk.spans))
                    continue
            record, invoice, origin = self._map_row(bound, line, row)
            if rows_mode:
                out.extend(self._collect(record, invoice, origin))
            else:
                out.append(_with_span(self._finish(record, origin), chunk.spans))
        return out

    def _all_valid(self, fast_chunk: FastChunkMapper, chunk: Chunk) -> ValidChunk | None:
        """The records of a chunk in which every record is valid and every id new, or None.

        The common case, done in bulk: the mapping runs column by column (fastpath's chunk
        function) and the id check is set operations, loops that run in C. Any doubt — a record
        the fast mapper does not take, a missing or repeated id — returns None, and the chunk
        goes record by record.
        """
        try:
            events = fast_chunk(chunk.rows)
        except Exception:  # noqa: BLE001 - the record-by-record path finds and explains it
            return None
        if events is None:
            return None
        try:
            ids = list(map(_event_id, events))
        except KeyError:  # an optional id left empty
            return None
        seen = self._seen_ids
        known = len(seen)
        # one look-up an id: setdefault adds a new id and leaves a known one (and its first line)
        # as it is, so the dict grew by one an id exactly when every id is new
        deque(map(seen.setdefault, ids, chunk.lines), maxlen=0)
        if len(seen) != known + len(ids):
            # a repeated id: take back the ids this chunk added, which are the newest keys (a dict
            # keeps insertion order), and go record by record
            for event_id in list(islice(reversed(seen), len(seen) - known)):
                del seen[event_id]
            return None
        return ValidChunk(chunk.lines, ids, events)

    def _kept(self, chunk: Chunk) -> Chunk:
        """The chunk without the records that the `keep` rule leaves out (counted in `filtered`).

        A record is left out whatever its number of fields: a line too short to have the rule's
        column at all is another record type. A line that could not be split into fields (broken
        quoting) is kept, to be reported: its record type cannot be read. A line with a problem
        whose fields could be read (a fixed-width line longer than the layout) is judged by the
        rule like any other: left out if it is another record type, reported if it is kept."""
        keeps = self.compiled.keeps
        assert keeps is not None and self.compiled.keep is not None
        position = chunk.columns.index(self.compiled.keep.source())
        broken = chunk.broken
        lines: list[int] = []
        rows: list[list] = []
        for line, row in zip(chunk.lines, chunk.rows):
            if broken and line in broken and position >= len(row):
                pass
            elif position >= len(row) or row[position] is None or not keeps(row[position]):
                continue
            lines.append(line)
            rows.append(row)
        dropped = len(chunk.lines) - len(lines)
        if not dropped:
            return chunk
        self.filtered += dropped
        kept = Chunk(chunk.columns, lines, rows, sheet=chunk.sheet)
        if broken or chunk.spans:
            taken = set(lines)
            kept.broken = {line: why for line, why in broken.items() if line in taken}
            kept.spans = {line: last for line, last in chunk.spans.items() if line in taken}
        return kept

    def finish(self) -> list[MappedRecord]:
        """Records still held back at the end of the file (rows mode)."""
        return self._close_open()

    # -- binding ------------------------------------------------------------------------------------

    def _bind(self, columns: list[str]) -> _Bound:
        if self._bound is not None and self._bound.columns is columns:
            return self._bound
        compiled = self.compiled
        index = {name: i for i, name in reversed(list(enumerate(columns)))}
        fields = []
        for name, spec in compiled.field_specs:
            if name == "id" and compiled.generate_id:
                continue
            converter = None
            if isinstance(spec, TimeSpec):
                mapping = compiled.mapping
                converter = TimeConverter(
                    spec.formats, spec.source_time_zone or mapping.time_zone, mapping.time_zone
                )
            value = _Value(name, spec, name in compiled.rules.required, compiled.is_xml, converter)
            fields.append((name, value, _getter(spec, index)))
        parts, values, group = [], [], None
        invoices = compiled.invoices
        if invoices is not None:
            specs = [("invoicenumber", invoices.invoicenumber, False), ("jobid", invoices.jobid, True)]
            for name, part, integer in specs:
                if part is None:
                    continue
                # an invoice is a pair: half of one (a number without its job id) is refused
                # unless the mapping says `required: false` for that part
                required = part.required is not False
                value = _Value(f"invoices.{name}", part, required, compiled.is_xml, integer=integer,
                               empty=INVOICE_PART_EMPTY if required else None)
                values.append(value)
                if invoices.mode != "elements":
                    parts.append((value, _getter(part, index)))
            if invoices.mode == "elements":
                group = index[invoices.element or ""]
        pair_cell = None
        if compiled.pairs is not None:
            # both parts come from one cell: they are named after it, and both are required
            label = _source_label(ValueSpec(column=compiled.pairs.column, xpath=compiled.pairs.xpath), compiled.is_xml)
            for name, integer in (("invoicenumber", False), ("jobid", True)):
                value = _Value(f"invoices.{name}", ValueSpec(), True, compiled.is_xml, integer=integer,
                               empty=INVOICE_PART_EMPTY)
                value.source = label
                values.append(value)
            pair_cell = _getter(ValueSpec(column=compiled.pairs.source()), index)
        self._bound = _Bound(columns, fields, parts, group, values, pair_cell=pair_cell)
        fast = self._fast_mapper(self._bound, index)
        if fast is not None:
            self._bound.fast, self._bound.fast_chunk = fast
        return self._bound

    def _fast_mapper(self, bound: _Bound, index: dict[str, int]) -> tuple[FastMapper, FastChunkMapper] | None:
        """The generated mappers (one row; a chunk column by column), or None where there are none."""
        compiled = self.compiled
        invoices = compiled.invoices
        if invoices is not None and invoices.mode in ("rows", "pairs"):
            return None  # merging rows needs the general path's state; pairs are split there only
        fields = [(name, value, _getter_description(value.spec, index)) for name, value, _ in bound.fields]
        invoice_plan = None
        if invoices is not None:
            specs = [s for s in (invoices.invoicenumber, invoices.jobid) if s is not None]
            invoice_plan = {
                "mode": invoices.mode,
                "parts": [
                    (
                        value.name.split(".", 1)[1],
                        value,
                        ("element",) if invoices.mode == "elements" else _getter_description(spec, index),
                    )
                    for value, spec in zip(bound.invoice_values, specs)
                ],
                "separators": [spec.split or "," for spec in specs],
                "group": bound.invoice_group,
            }
        prefix = compiled.id_prefix
        plan: dict[str, Any] = dict(
            columns=None if compiled.is_xml else len(bound.columns),
            fields=fields,
            invoices=invoice_plan,
            statuses=compiled.rules.statuses,
            not_disconnected=compiled.rules.not_disconnected,
            default_description=compiled.default_description,
            generate_id=(lambda event: prefix + content_id(event)) if compiled.generate_id else None,
        )
        return build_fast_mapper(**plan), build_fast_chunk_mapper(**plan)

    # -- one row ------------------------------------------------------------------------------------

    def _map_row(self, bound: _Bound, line: int, row: list) -> tuple[MappedRecord, dict | None, _Origin]:
        """The record, its invoice (rows mode) and where each field's value came from (for the
        contract checks' messages, which must quote this row's value)."""
        event: dict[str, Any] = {}
        errors: list[RecordError] = []
        origin: _Origin = {}
        for name, value, get in bound.fields:
            raw = get(row)
            origin[name] = (value.source, raw)
            try:
                cleaned = value.clean(raw)
            except _Problem as problem:
                errors.append(RecordError(line, name, value.source, _text(problem.value), problem.message))
                continue
            if cleaned is not None:
                event[name] = cleaned
        if "description" not in event and self.compiled.default_description:
            default = self.compiled.default_description.get(event.get("status", ""))
            if default is not None:
                event["description"] = default
        invoice = None
        if self.compiled.invoices is not None:
            mode = self.compiled.invoices.mode
            if mode == "columns":
                event["invoices"] = self._split_invoices(bound, line, row, errors)
            elif mode == "elements":
                event["invoices"] = self._element_invoices(bound, line, row, errors)
            elif mode == "pairs":
                event["invoices"] = self._pair_invoices(bound, line, row, errors)
            else:
                invoice = self._row_invoice(bound, line, row, errors)
        record = MappedRecord(line, event, errors)
        record.partial = {k: event[k] for k in ("id", "usageplacecode", "status") if k in event}
        record.event = event
        return record, invoice, origin

    def _finish(self, record: MappedRecord, origin: _Origin) -> MappedRecord:
        """Generate the id, check the contract and business rules, catch repeated ids."""
        event = record.event
        assert event is not None
        if self.compiled.generate_id:
            event["id"] = self.compiled.id_prefix + content_id(event)
            record.partial["id"] = event["id"]
        ordered = {key: event[key] for key in EVENT_KEYS if key in event}
        if not record.errors:
            for violation in check_event(ordered, self.compiled.rules):
                source, raw = origin.get(violation.field, (None, None))
                record.errors.append(RecordError(record.line, violation.field, source, _text(raw), violation.message))
        event_id = ordered.get("id")
        if event_id:
            # membership, not line equality: records of a one-line XML file all share line 1
            first = self._seen_ids.get(event_id)
            if first is None:
                self._seen_ids[event_id] = record.line
            else:
                # the id as mapped (trimmed), like every other place that names an event id
                record.errors.append(
                    RecordError(record.line, "id", self.compiled.id_source_label(), event_id,
                                duplicate_id_message(first, self.sheet))
                )
        record.event = None if record.errors else ordered
        if len(record.errors) > MAX_ERRORS_PER_RECORD:
            record.errors = _capped(record.errors)
        return record

    # -- invoices -----------------------------------------------------------------------------------

    def _split_invoices(self, bound: _Bound, line: int, row: list, errors: list[RecordError]) -> list[dict]:
        invoices = self.compiled.invoices
        assert invoices is not None  # called only for a mapping with invoices
        separator_of = {
            "invoicenumber": invoices.invoicenumber.split if invoices.invoicenumber else None,
            "jobid": invoices.jobid.split if invoices.jobid else None,
        }
        columns: list[tuple[_Value, list[str]]] = []
        for value, get in bound.invoice_parts:
            raw = get(row)
            if raw is _MISSING:
                errors.append(
                    RecordError(line, value.name, value.source, None, "the record has fewer fields than the header"))
                return []
            text = (raw or "").strip()
            separator = separator_of[value.name.split(".", 1)[1]] or ","
            items = [item for item in text.split(separator)] if text else []
            if text and not all(item.strip() for item in items):
                errors.append(RecordError(line, value.name, value.source, raw,
                                          f"has an empty item between '{separator}' separators"))
                return []
            columns.append((value, items))
        counts = {len(items) for _, items in columns}
        if len(counts) > 1:
            detail = ", ".join(f"{value.name} has {len(items)}" for value, items in columns)
            errors.append(
                RecordError(line, "invoices", " + ".join(v.source or "" for v, _ in columns), None,
                            f"paired invoice columns differ in length ({detail})")
            )
            return []
        return self._invoice_dicts(line, [(value, items) for value, items in columns], errors)

    def _pair_invoices(self, bound: _Bound, line: int, row: list, errors: list[RecordError]) -> list[dict]:
        """pairs mode: '594294:1234,594295:1235' -> items -> (number, job id) -> cleaned invoices."""
        pairs, split_pair = self.compiled.pairs, self.compiled.split_pair
        assert pairs is not None and split_pair is not None and bound.pair_cell is not None
        number, job = bound.invoice_values
        raw = bound.pair_cell(row)
        if raw is _MISSING:
            errors.append(RecordError(line, "invoices", number.source, None,
                                      "the record has fewer fields than the header"))
            return []
        text = (raw or "").strip()
        if not text:
            return []
        items = [item.strip() for item in text.split(pairs.split)]
        if not all(items):
            errors.append(RecordError(line, "invoices", number.source, raw,
                                      f"has an empty item between '{pairs.split}' separators"))
            return []
        numbers, jobs = [], []
        for position, item in enumerate(items):
            both = split_pair(item)
            if both is None:
                expected = (f"does not match the pattern {pairs.pattern!r}" if pairs.pattern is not None else
                            f"is not {pairs.first}{pairs.separator}{_other_part(pairs.first)} "
                            f"(an invoice number and a job id separated by '{pairs.separator}')")
                errors.append(RecordError(line, f"invoices[{position}]", number.source, item, expected))
                return []
            numbers.append(both[0])
            jobs.append(both[1])
        return self._invoice_dicts(line, [(number, numbers), (job, jobs)], errors)

    def _element_invoices(self, bound: _Bound, line: int, row: list, errors: list[RecordError]) -> list[dict]:
        elements = row[bound.invoice_group] if bound.invoice_group is not None else []
        columns = [(value, [parts[i] for parts in elements]) for i, value in enumerate(bound.invoice_values)]
        return self._invoice_dicts(line, columns, errors)

    def _invoice_dicts(self, line: int, columns: list[tuple[_Value, list]], errors: list[RecordError]) -> list[dict]:
        if not columns:
            return []
        invoices: list[dict] = [{} for _ in columns[0][1]]
        for value, items in columns:
            key = value.name.split(".", 1)[1]
            for position, raw in enumerate(items):
                try:
                    cleaned = value.clean(raw)
                except _Problem as problem:
                    errors.append(
                        RecordError(line, f"invoices[{position}].{key}", value.source, _text(problem.value),
                                    problem.message)
                    )
                    continue
                if cleaned is not None:
                    invoices[position][key] = cleaned
        return invoices

    def _row_invoice(self, bound: _Bound, line: int, row: list, errors: list[RecordError]) -> dict | None:
        raws = [(value, get(row)) for value, get in bound.invoice_parts]
        if all(raw is not _MISSING and not (raw or "").strip() for _, raw in raws):
            return None  # a row without an invoice (an event that has none)
        invoice: dict[str, Any] = {}
        for value, raw in raws:
            try:
                cleaned = value.clean(raw)
            except _Problem as problem:
                errors.append(RecordError(line, value.name, value.source, _text(problem.value), problem.message))
                continue
            if cleaned is not None:
                invoice[value.name.split(".", 1)[1]] = cleaned
        return invoice or None

    # -- rows mode: merging consecutive rows of one event -------------------------------------------

    def _collect(self, record: MappedRecord, invoice: dict | None, origin: _Origin) -> list[MappedRecord]:
        event = record.event or {}
        event_id = event.get("id")
        current = self._open
        if current is not None and event_id and current.event is not None and current.event.get("id") == event_id:
            self._merge_into(current, record, invoice, origin)
            return []
        closed = self._close_open()
        record.event = event
        event["invoices"] = [invoice] if invoice else []
        self._open, self._open_origin = record, origin
        return closed

    def _merge_into(self, current: MappedRecord, record: MappedRecord, invoice: dict | None,
                    origin: _Origin) -> None:
        assert current.event is not None and record.event is not None
        for key, value in record.event.items():
            if key != "invoices" and current.event.get(key, value) != value:
                # the event is reported on its first line: the message names the line that differs
                current.errors.append(
                    RecordError(record.line, key, origin.get(key, (None,))[0], _text(value),
                                f"{line_word(self.sheet)} {record.line} differs from {line_word(self.sheet)} "
                                f"{current.line} of the same event id "
                                f"({_preview(_text(current.event[key]))})")
                )
        current.errors.extend(record.errors)
        if invoice:
            current.event["invoices"].append(invoice)

    def _close_open(self) -> list[MappedRecord]:
        if self._open is None:
            return []
        record, origin = self._open, self._open_origin
        self._open, self._open_origin = None, {}
        return [self._finish(record, origin)]


def _keep_test(rule: KeepRule) -> Callable[[str], bool]:
    """The `keep` rule as value -> keep the record?"""
    trim = rule.trim
    if rule.equals is not None:
        wanted = rule.equals
        return (lambda value: value.strip() == wanted) if trim else (lambda value: value == wanted)
    if rule.one_of is not None:
        allowed = frozenset(rule.one_of)
        return (lambda value: value.strip() in allowed) if trim else (lambda value: value in allowed)
    matches = compile_pattern(rule.pattern or "")  # RE2: linear in the value, see config.mapping
    return (lambda value: matches(value.strip())) if trim else matches


def _other_part(part: str) -> str:
    return "jobid" if part == "invoicenumber" else "invoicenumber"


def _pair_splitter(pairs: InvoicePairs) -> Callable[[str], tuple[str, str] | None]:
    """An item of a pairs cell -> (invoice number, job id), or None when it is not one."""
    if pairs.pattern is not None:
        groups = compile_groups(pairs.pattern, INVOICE_FIELDS)  # RE2, see config.mapping

        def matched(item: str) -> tuple[str, str] | None:
            found = groups(item)
            return None if found is None else (found["invoicenumber"], found["jobid"])

        return matched
    separator, number_first = pairs.separator or ":", pairs.first == "invoicenumber"

    def split(item: str) -> tuple[str, str] | None:
        parts = item.split(separator)
        if len(parts) != 2:
            return None
        return (parts[0], parts[1]) if number_first else (parts[1], parts[0])

    return split


def _with_span(record: MappedRecord, spans: dict[int, int]) -> MappedRecord:
    """An invalid record that runs over several lines says so: the lines after its first are in
    it, not lost (most often a quote that was not closed where it should have been)."""
    last = spans.get(record.line) if spans else None
    if last is not None and record.errors:
        record.errors.append(
            RecordError(record.line, "(record)", None, None,
                        f"the record runs over lines {record.line}-{last}: is a quote not closed?")
        )
    return record


def _capped(errors: list[RecordError]) -> list[RecordError]:
    """The first problems of a record and a count of the rest (10,000 bad invoice items must
    not make one receipt row megabytes long)."""
    kept = errors[: MAX_ERRORS_PER_RECORD - 1]
    rest = len(errors) - len(kept)
    kept.append(RecordError(kept[-1].line, "(record)", None, None, f"and {rest:,} more problems in this record"))
    return kept


def duplicate_id_message(first_line: int, sheet: str | None = None) -> str:
    return f"event id is used again (first on {line_word(sheet)} {first_line})"


def _getter_description(spec: ValueSpec, index: dict[str, int]) -> tuple:
    """How batch.transform.fastpath reads a value: the same choices as _getter, as data."""
    if spec.const is not None:
        return ("const", str(spec.const))
    if spec.template is not None:
        return (
            "template",
            [(literal, index[name] if name else None) for literal, name in template_parts(spec.template)],
        )
    sources = spec.sources()
    return ("column", index[sources[0]]) if sources else ("none",)


def _shape_problem(row: list, columns: list[str]) -> str | None:
    """A CSV record with fewer fields than the header, or extra fields that are not empty."""
    if len(row) < len(columns):
        missing = short_list(columns[len(row):])
        return f"the record has {len(row)} fields but the header has {len(columns)} (no value for {missing})"
    if any(value.strip() for value in row[len(columns):]):
        return (f"the record has {len(row)} fields but the header has {len(columns)}: "
                "is a delimiter inside an unquoted value?")
    return None


def _text(value: Any) -> str | None:
    if value is None or value is _MISSING:
        return None
    return value if isinstance(value, str) else str(value)


def content_id(event: dict[str, Any]) -> str:
    """The id of an event that has none in the file: the same content always gives the same id.

    sha256 over the event's JSON without its id (``jsonenc.event_bytes`` with sorted keys), as
    32 hex characters. The file name, line and record order do not enter it, so a record that comes
    again in another file gets the same id — and is recognised as a duplicate.
    """
    # the mappers call this before the event has an id: then there is nothing to leave out
    body = {key: value for key, value in event.items() if key != "id"} if "id" in event else event
    return hashlib.sha256(event_bytes(body, sorted_keys=True)).hexdigest()[:32]
