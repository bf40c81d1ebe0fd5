"""A sample export -> what it looks like (encoding, delimiter, header) and a mapping to start from.

The playground's "new mapping": an administrator uploads one file the legacy system exports and
gets a first mapping to edit, with what was detected shown. Containers are told by their first
bytes (batch.transform.magic, as the readers do) and unwrapped by the readers' own code
(batch.transform.compressed); a byte order mark wins as it does in the readers
(readers.detect_encoding). Everything else here is a guess from the first lines, and the
proposal says so in its comments: the preview beside the editor shows at once what it makes.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from batch.config.mapping import CompressionOptions
from batch.errors import ConfigurationError
from batch.syntax.timeparse import compile_format
from batch.transform.compressed import check_zip_directory, opened_export
from batch.transform.magic import sniff
from batch.transform.readers import FileError, detect_encoding

HEAD_BYTES = 64 << 10  # what is looked at of the (inflated) export
SAMPLE_LINES = 60
DELIMITERS = (";", ",", "\t", "|")
# Formats tried on the sample's time column, most specific first (batch.syntax.timeparse codes).
TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M",
    "%Y%m%d%H%M%S", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%Y-%m-%d", "%d.%m.%Y",
)
# Column names (lower case, in several languages the exports use) that suggest an event field.
FIELD_HINTS: dict[str, tuple[str, ...]] = {
    "id": ("event_id", "eventid", "tapahtumatunnus", "tapahtuma_id", "id", "tunnus"),
    "usageplacecode": ("usageplacecode", "usage_place", "usageplace", "käyttöpaikka", "kayttopaikka", "gsrn",
                       "meteringpoint", "metering_point"),
    "customernumber": ("customernumber", "customer", "asiakasnro", "asiakasnumero", "asiakas"),
    "contract_no": ("contract_no", "contract", "sopimusnro", "sopimus"),
    "time": ("time", "timestamp", "aika", "aikaleima", "date", "pvm", "datetime"),
    "status": ("status", "state", "tila"),
    "description": ("description", "selite", "kuvaus", "text", "note"),
}


@dataclass
class Detected:
    """What the sample looks like. `format` is csv, xml, xlsx or unknown."""

    format: str
    container: str | None = None  # gzip or zip, unwrapped
    encoding: str | None = None
    delimiter: str | None = None
    header_line: int | None = None  # 1-based; None: no header row found
    columns: list[str] = field(default_factory=list)
    skip_lines: int = 0  # banner lines above the first record of a file without a header
    skip_footer: int = 0
    rows: list[list[str]] = field(default_factory=list)  # the first records, as read
    record_element: str | None = None  # XML: the most repeated element
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "container": self.container, "encoding": self.encoding,
            "delimiter": self.delimiter, "header_line": self.header_line, "columns": self.columns,
            "skip_lines": self.skip_lines, "skip_footer": self.skip_footer, "rows": self.rows[:10],
            "record_element": self.record_element, "notes": self.notes,
        }


def detect_sample(data: bytes) -> Detected:
    """What `data` (a whole sample file: a zip's directory is at its end) looks like."""
    kind = sniff(data[:8])
    if kind == "xls":
        return Detected("unknown", notes=["an old binary Excel workbook (.xls): save it as .xlsx or CSV"])
    if kind == "zip" and _is_workbook(data):
        return Detected("xlsx", container=None, notes=["an Excel workbook: rows of its first sheet, header on row 1"])
    try:
        with opened_export(io.BytesIO(data), CompressionOptions()) as export:
            head = export.read(HEAD_BYTES)
    except FileError as exc:
        return Detected("unknown", container=kind, notes=[f"cannot be unwrapped: {exc}"])
    detected = _detect_text(head, truncated=len(head) == HEAD_BYTES)
    detected.container = kind
    return detected


def _is_workbook(data: bytes) -> bool:
    try:
        stream = io.BytesIO(data)
        check_zip_directory(stream)
        with zipfile.ZipFile(stream) as archive:
            return "xl/workbook.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, FileError):
        return False


def _detect_text(head: bytes, truncated: bool) -> Detected:
    if _looks_like_ebcdic(head):
        return Detected("unknown", encoding="cp037", notes=[
            "looks like EBCDIC (no line ends; EBCDIC spaces and digits): a mainframe export needs format: fixed "
            "with its record layout (fixed: encoding cp037, cp500 or cp1140)"])
    encoding, note = _encoding(head, truncated)
    text = head.decode(encoding, errors="replace")
    if truncated:  # the last line may be cut
        text = text[: max(text.rfind("\n"), 0)]
    if text.lstrip("\ufeff \t\r\n").startswith("<"):
        detected = Detected("xml", encoding=encoding, record_element=_record_element(text))
        detected.notes.append("XML: the record element is a guess (the most repeated element)")
        return detected
    detected = _csv_layout(text, truncated)
    detected.encoding = encoding
    if note:
        detected.notes.insert(0, note)
    return detected


def _looks_like_ebcdic(head: bytes) -> bool:
    """EBCDIC text: no ASCII line ends, and its spaces (0x40) and digits (0xF0-0xF9) are common."""
    if not head or b"\n" in head or b"\r" in head:
        return False
    common = head.count(b"\x40") + sum(head.count(bytes([digit])) for digit in range(0xF0, 0xFA))
    return common > len(head) // 4


def _encoding(head: bytes, truncated: bool) -> tuple[str, str | None]:
    with_bom = detect_encoding(head, "utf-8")
    if with_bom != "utf-8-sig" or head.startswith(codecs.BOM_UTF8):
        return with_bom, "a byte order mark says " + with_bom
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (truncated and exc.start >= len(head) - 3):  # not just a character cut at the end
            try:
                head.decode("cp1252")
                return "cp1252", "not UTF-8; Windows-1252 (cp1252) reads it: check the letters in the preview"
            except UnicodeDecodeError:
                return "iso-8859-15", "neither UTF-8 nor cp1252; ISO-8859-15 reads it: check the letters in the preview"
    if head.isascii():
        return "utf-8", "ASCII only: UTF-8 reads it (so would any ASCII-compatible encoding)"
    return "utf-8", None


def _csv_layout(text: str, truncated: bool) -> Detected:
    lines = text.splitlines()[: SAMPLE_LINES if truncated else None]
    best: tuple[int, int, str] | None = None  # (lines of the usual width, width, delimiter)
    for delimiter in DELIMITERS:
        widths = [_width(line, delimiter) for line in lines if line.strip()]
        usual, count = Counter(widths).most_common(1)[0] if widths else (1, 0)
        if usual > 1 and (best is None or (count, usual) > best[:2]):
            best = (count, usual, delimiter)
    if best is None:
        return Detected("unknown", notes=["no delimiter splits the lines into columns (;  ,  tab  |): "
                                          "a fixed-width export needs a fixed: layout"])
    _, usual, delimiter = best
    record_lines = [i for i, line in enumerate(lines) if line.strip() and _width(line, delimiter) == usual]
    first, last = record_lines[0], record_lines[-1]
    first_row = _split(lines[first], delimiter)
    detected = Detected("csv", delimiter=delimiter)
    if not truncated:
        detected.skip_footer = sum(1 for line in lines[last + 1:] if line.strip())
    if all(cell.strip() and not _looks_like_value(cell) for cell in first_row):
        detected.header_line = first + 1
        detected.columns = [cell.strip() for cell in first_row]
        data = record_lines[1:]
    else:
        detected.skip_lines = first
        detected.columns = [f"column{i + 1}" for i in range(usual)]
        detected.notes.append("no header row found: the columns are named column1, column2, …")
        data = record_lines
    detected.rows = [_split(lines[i], delimiter) for i in data[:20]]
    return detected


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _width(line: str, delimiter: str) -> int:
    return len(_split(line, delimiter))


_VALUE = re.compile(r"[\d\s.,:/+-]+")


def _looks_like_value(cell: str) -> bool:
    """A number, date or time: a data cell, not a column name."""
    return bool(_VALUE.fullmatch(cell.strip()))


def _record_element(text: str) -> str | None:
    """The first element, in document order, that repeats: the outermost of the repeated ones."""
    tags = Counter(name for _, name in re.findall(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]", text))
    return next((name for name, count in tags.items() if count > 1), None)


# --- the proposed mapping ------------------------------------------------------------------------


def proposed_mapping(detected: Detected, name: str, sample_name: str) -> str:
    """A first mapping for the sample: the detected layout, and each event field from the column
    whose name suggests it (the rest left for the administrator, in comments)."""
    lines = [
        "# yaml-language-server: $schema=../mapping.schema.json",
        "#",
        f"# Started from the sample {_comment(sample_name)}: check every field in the preview.",
        *(f"# {_comment(note)}" for note in detected.notes),
        f"name: {_quoted(name)}",
    ]
    if detected.format == "xml":
        element = detected.record_element or "Record"
        lines += ["format: xml", "xml:", f"  record_path: {_quoted('//' + element)}", "", "fields:",
                  "  id: {xpath: \"@id\"}", "  usageplacecode: {xpath: UsagePlace}", "  time: {xpath: Time}",
                  "  status: {xpath: Status}", ""]
        return "\n".join(lines)
    if detected.format == "xlsx":
        lines += ["format: xlsx", "", "fields:", "  usageplacecode: {column: UsagePlace}", "  time: {column: Time}",
                  "  status: {column: Status}", ""]
        return "\n".join(lines)
    lines += ["format: csv", *_csv_block(detected), "time_zone: Europe/Helsinki", "", "fields:"]
    lines += _csv_fields(detected)
    return "\n".join(lines) + "\n"


def _csv_block(detected: Detected) -> list[str]:
    """The mapping's `csv:` block for the detected layout."""
    lines = ["csv:", f"  encoding: {detected.encoding or 'utf-8'}",
             f"  delimiter: {_quoted(detected.delimiter or ',')}"]
    if detected.header_line is not None:
        if detected.header_line != 1:
            lines.append(f"  header_line: {detected.header_line}")
    elif detected.columns:
        lines += ["  header_line: null", f"  columns: [{', '.join(_quoted(c) for c in detected.columns)}]"]
        if detected.skip_lines:
            lines.append(f"  skip_lines: {detected.skip_lines}")
    if detected.skip_footer:
        lines.append(f"  skip_footer: {detected.skip_footer}")
    if detected.container is not None:
        lines += [f"# a {detected.container} file: read as it is inflated, whatever its name"]
    return lines


class TemplateMismatch(ConfigurationError):
    """The template cannot take the sample's layout; the message says why."""


def mapping_from_template(template: str, template_name: str, detected: Detected, name: str, sample_name: str) -> str:
    """Another mapping (`template`, e.g. a feed of the same legacy system) with the sample's
    layout: its `name` and its `csv:` block replaced by what was detected, everything else
    (fields, invoices, keep, comments) as it was written. Only for a CSV sample and a CSV template."""
    if detected.format != "csv":
        raise TemplateMismatch(f"the sample is not a CSV export ({detected.format}): start from the blank template")
    try:
        root = yaml.compose(template, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise TemplateMismatch(f"the template {template_name} is not valid YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode):
        raise TemplateMismatch(f"the template {template_name} is not a mapping file")
    lines = template.splitlines()
    spans: dict[str, tuple[int, int]] = {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.start_mark.column == 0:
            end = value.end_mark.line + (1 if value.end_mark.column > 0 else 0)
            while end - 1 > key.start_mark.line and _blank_or_comment(lines[end - 1]):
                end -= 1  # blank and comment lines above the next key belong to it
            spans[str(key.value)] = (key.start_mark.line, end)
            if key.value == "format" and isinstance(value, yaml.ScalarNode) and value.value != "csv":
                raise TemplateMismatch(f"the template {template_name} reads {value.value} files and the sample is "
                                       "a CSV export: start from the blank template or a CSV feed's mapping")
    edits = [  # (first line, line after the last, the new lines)
        (*spans["name"], [f"name: {_quoted(name)}"]) if "name" in spans else (0, 0, [f"name: {_quoted(name)}"]),
    ]
    if "csv" in spans:
        edits.append((*spans["csv"], _csv_block(detected)))
    else:  # after `format:` (or at the top): the template reads CSV with the defaults
        after = spans["format"][1] if "format" in spans else 0
        edits.append((after, after, _csv_block(detected)))
    for start, end, new in sorted(edits, key=lambda edit: (edit[0], edit[1]), reverse=True):  # bottom to top
        lines[start:end] = new
    head = [f"# Started from the mapping {_comment(template_name)} with the layout of the sample "
            f"{_comment(sample_name)}: check every field in the preview.",
            f"# The sample's columns: {_comment(', '.join(detected.columns))}"]
    head += [f"# {_comment(note)}" for note in detected.notes]
    at = 1 if lines and lines[0].startswith("# yaml-language-server:") else 0  # the editor's modeline stays first
    lines[at:at] = head
    return "\n".join(lines) + "\n"


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _csv_fields(detected: Detected) -> list[str]:
    chosen = _columns_for_fields(detected.columns)
    out: list[str] = []
    for name in FIELD_HINTS:
        column = chosen.get(name)
        if column is None:
            if name in ("usageplacecode", "time", "status"):  # required: the administrator must choose
                known = f"columns: {_comment(', '.join(detected.columns))}" if detected.columns else "no columns read"
                placeholder = detected.columns[0] if detected.columns else name
                out += [f"  {name}:", f"    column: {_quoted(placeholder)}   # which column? {known}"]
            continue
        out += [f"  {name}:", f"    column: {_quoted(column)}"]
        values = _values(detected, column)
        if name == "time":
            found = _time_format(values)
            if found:
                out.append(f"    formats: [{_quoted(found)}]")
            else:
                out.append(f"    formats: [\"%Y-%m-%d %H:%M:%S\"]   # no usual format fits e.g. {_comment(values[:1])}")
        if name == "status":
            codes = sorted(set(values))[:12]
            if codes and not set(codes) <= {"connected", "disconnected", "not_disconnected"}:
                out.append(f"    # values in the sample: {_comment(', '.join(codes))}; "
                           "map each to connected / disconnected / not_disconnected:")
                out += ["    # map:"] + [f"    #   {_quoted(code)}: disconnected" for code in codes[:3]]
    return out


def _columns_for_fields(columns: list[str]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    taken: set[str] = set()
    for name, hints in FIELD_HINTS.items():
        for hint in hints:  # the most telling hint first, over all columns
            found = next((c for c in columns if c not in taken and c.lower().replace(" ", "") == hint), None)
            found = found or next((c for c in columns if c not in taken and hint in c.lower() and len(hint) > 2), None)
            if found:
                chosen[name] = found
                taken.add(found)
                break
    return chosen


def _values(detected: Detected, column: str) -> list[str]:
    index = detected.columns.index(column)
    return [row[index].strip() for row in detected.rows if index < len(row) and row[index].strip()]


def _time_format(values: list[str]) -> str | None:
    if not values:
        return None
    for fmt in TIME_FORMATS:
        pattern = compile_format(fmt)
        if all(pattern.fullmatch(value) for value in values):
            return fmt
    return None


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's)."""
    return json.dumps(text, ensure_ascii=False)


def _comment(text: object) -> str:
    """Text from the sample inside a YAML comment: one line, no control characters."""
    return "".join(c if c.isprintable() else " " for c in str(text))[:200]
