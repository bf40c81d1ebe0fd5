"""Readers: a binary stream of an export -> chunks of records with their line numbers.

CSV and XML here; fixed-width records in fixed.py, workbooks in workbook.py, and compressed
files are unwrapped before any of them by compressed.py (extract.py chooses).

CSV is tokenised by the standard library's C `csv` reader rather than pandas: it streams, it
knows the physical line where every record starts even when quoted fields hold line breaks,
and on this machine it parses ~1.0M rows/s against pandas' ~0.7M. XML is fed block by block to
lxml's pull parser, hardened (no DTD, no entities, no network: a DOCTYPE is refused outright);
after each block everything that is neither the pending record nor one of its ancestors is
released, so memory follows the block and the record, never the document.

Everything a reader cannot get past (wrong encoding, missing columns, broken XML) raises
FileError with a sentence a person understands and, where known, the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from lxml import etree

from batch.errors import InputFileError
from batch.syntax.xmlpaths import clark_steps, compile_row_extractor, compiled_row_extractor
from batch.transform.records import LISTED_NAMES, Chunk, XmlPlan, short_list

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

    # for annotations only: batch.config.mapping (pydantic) costs 0.2 s to import, and the XML
    # parser process (batch.transform.xmlprocess) imports this module and should start fast
    from batch.config.mapping import CsvOptions, FixedOptions, XmlOptions

# Records per chunk. Small on purpose: a chunk's rows and the events mapped from them stay in
# the CPU's L2 cache while they are worked on; at 5,000 (~9 MB) they did not, and mapping a
# large CSV took 45 % longer (bench/bench_mapping.py). Callers that write in bulk batch chunks.
DEFAULT_CHUNK_SIZE = 128
# A field longer than this is almost always an unclosed quote that swallowed the file.
MAX_FIELD_CHARS = 1_000_000

csv.field_size_limit(MAX_FIELD_CHARS)


class FileError(InputFileError):
    """The file as a whole cannot be used."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


# --- encodings -----------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def detect_encoding(head: bytes, configured: str) -> str:
    """A byte order mark wins over the configured encoding; utf-8 also accepts a BOM."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return "utf-8-sig" if codecs.lookup(configured).name == "utf-8" else configured


def _buffered(stream: BinaryIO) -> io.BufferedReader:
    if hasattr(stream, "peek"):
        return cast(io.BufferedReader, stream)  # peek() is all that is needed of a BufferedReader
    # the streams handed here (files, BytesIO, SFTP files) all have readinto()
    return io.BufferedReader(stream)  # type: ignore[arg-type]  # BinaryIO does not declare readinto()


def _unwrap(buffered: BinaryIO, original: BinaryIO) -> None:
    """Detach our own buffer from the caller's stream: collecting it would close their stream."""
    if buffered is not original:
        try:
            buffered.detach()  # type: ignore[attr-defined]  # ours: the BufferedReader _buffered made
        except ValueError:
            pass


def _decode_error(exc: UnicodeDecodeError, stream: BinaryIO, encoding: str, start: int) -> FileError:
    line = _line_of_decode_error(stream, encoding, start)
    bad = exc.object[exc.start : exc.start + 4].hex(" ")
    hint = " (is the file cp1252 or iso-8859-1 rather than utf-8?)" if "utf" in encoding else ""
    return FileError(f"cannot decode the file as {encoding}: bytes {bad} are not valid{hint}", line)


def _line_of_decode_error(stream: BinaryIO, encoding: str, start: int) -> int | None:
    """Second pass on the error path only: find the line of the first undecodable byte."""
    try:
        stream.seek(start)
    except (OSError, ValueError, AttributeError):
        return None
    decoder = codecs.getincrementaldecoder(encoding)()
    lines = 0
    while True:
        block = stream.read(1 << 16)
        state = decoder.getstate()
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError:
            # exc.start counts from what the codec saw (after a BOM, with bytes held over from the
            # previous block), not from `block`: replay this block a byte at a time instead
            decoder.setstate(state)
            for i in range(len(block)):
                try:
                    lines += decoder.decode(block[i : i + 1], final=False).count("\n")
                except UnicodeDecodeError:
                    break
            return lines + 1
        lines += text.count("\n")
        if not block:
            return None


# --- CSV -----------------------------------------------------------------------------------------


def read_csv(
    stream: BinaryIO,
    options: CsvOptions,
    required_columns: list[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[Chunk]:
    return decoded(stream, options, lambda text: _csv_chunks(text, options, required_columns, chunk_size))


def decoded(
    stream: BinaryIO, options: CsvOptions | FixedOptions, body: Callable[[io.TextIOWrapper], Iterator[Chunk]]
) -> Iterator[Chunk]:
    """Decode `stream` as the options say and run `body(text)`; decoding problems become FileError."""
    original, stream = stream, _buffered(stream)
    start = stream.tell() if stream.seekable() else 0
    encoding = detect_encoding(stream.peek(4)[:4], options.encoding)
    text = io.TextIOWrapper(stream, encoding=encoding, newline="", errors="strict")
    try:
        yield from body(text)
    except UnicodeDecodeError as exc:
        raise _decode_error(exc, stream, encoding, start) from None
    except UnicodeError as exc:  # e.g. utf-16 without a byte order mark
        raise FileError(
            f"cannot decode the file as {encoding}: {exc} (for utf-16 without a BOM use utf-16-le or utf-16-be)", 1
        ) from None
    finally:
        try:
            text.detach()  # hand the caller's stream back open
        except ValueError:
            pass  # the caller closed it already
        _unwrap(stream, original)


def _csv_reader(text: io.TextIOWrapper, options: CsvOptions) -> CsvReader:
    return csv.reader(
        text,
        delimiter=options.delimiter,
        quotechar=options.quotechar or '"',
        quoting=csv.QUOTE_NONE if options.quotechar is None else csv.QUOTE_MINIMAL,
        escapechar=options.escapechar,
        doublequote=options.doublequote,
        strict=True,
    )


def _csv_chunks(text: io.TextIOWrapper, options: CsvOptions, required: list[str], chunk_size: int) -> Iterator[Chunk]:
    skipped = (options.header_line - 1) if options.header_line else options.skip_lines
    for _ in range(skipped):
        if not text.readline():
            raise FileError(f"the file ends before line {skipped + 1}, where the records should start")
    reader = _csv_reader(text, options)
    if options.header_line:
        header = _read_header(reader, skipped)
        if options.columns:
            header = list(options.columns)
    else:
        header = list(options.columns or [])
    _check_columns(header, required, options.header_line)
    yield from _record_chunks(reader, header, skipped, options.skip_blank_lines, options.skip_footer, chunk_size)


def _record_chunks(
    reader: CsvReader, header: list[str], skipped: int, skip_blank: bool, footer: int, chunk_size: int
) -> Iterator[Chunk]:
    """Every record after the header, with the line where it starts, in chunks.

    The last `footer` records are held back at each chunk's end and dropped at the end of
    the file. A record whose quoting is broken is kept as an empty row plus the reason
    (chunk.broken), and reading goes on with the next line: one bad record never stops the
    others. A broken record that ran over several lines (an unclosed quote reads on until it
    finds another quote, or the end of the file) becomes one broken record per physical line,
    so that the receipt accounts for every line; a record that is not broken but runs over
    several lines is noted in chunk.spans, for its errors to mention. This loop runs a million
    times for a large export, so it is kept flat.
    """
    lines: list[int] = []
    rows: list[list] = []
    broken: dict[int, str] = {}
    spans: dict[int, int] = {}
    previous_end = reader.line_num
    while True:
        try:
            for row in reader:
                line = skipped + previous_end + 1
                end = reader.line_num
                if end - previous_end > 1:
                    spans[line] = skipped + end
                previous_end = end
                if not row and skip_blank:
                    continue
                lines.append(line)
                rows.append(row)
                if len(lines) >= chunk_size + footer:
                    yield _take(header, lines, rows, broken, spans, len(lines) - footer)
                    lines, rows = lines[-footer:] if footer else [], rows[-footer:] if footer else []
                    broken = {line: why for line, why in broken.items() if line in lines}
                    spans = {line: last for line, last in spans.items() if line in lines}
            break
        except csv.Error as exc:
            line = skipped + previous_end + 1
            last = skipped + max(reader.line_num, previous_end + 1)
            previous_end = reader.line_num
            for one, why in _broken_lines(line, last, str(exc)):
                broken[one] = why
                lines.append(one)
                rows.append([])
    keep = len(lines) - footer
    if keep > 0:
        yield _take(header, lines, rows, broken, spans, keep)


def _broken_lines(first: int, last: int, reason: str) -> Iterator[tuple[int, str]]:
    """(line, why) for each physical line of a record the csv module could not split."""
    if last == first:
        yield first, f"cannot split the record into fields: {reason}"
        return
    yield first, (
        f"cannot split the record into fields: {reason}; a quoted value on this line runs on to line {last} "
        "(is a quote not closed?)"
    )
    for line in range(first + 1, last + 1):
        yield line, (f"not read as a record: it is inside the quoted value of line {first} "
                     f"(is a quote on line {first} not closed?)")


def _take(
    header: list[str], lines: list[int], rows: list[list], broken: dict[int, str], spans: dict[int, int], count: int
) -> Chunk:
    taken = lines[:count] if count < len(lines) else lines
    chunk = Chunk(header, taken, rows[:count] if count < len(rows) else rows)
    if broken:
        chunk.broken = {line: why for line, why in broken.items() if line <= taken[-1]}
    if spans:
        chunk.spans = {line: last for line, last in spans.items() if line <= taken[-1]}
    return chunk


def _read_header(reader: CsvReader, skipped: int) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise FileError("the file is empty: no header row", skipped + 1) from None
    except csv.Error as exc:
        raise FileError(f"cannot read the header row: {exc}", skipped + 1) from None
    return [name.strip().lstrip("\ufeff") for name in header]


def _check_columns(header: list[str], required: list[str], header_line: int | None) -> None:
    present = set(header)
    missing = [name for name in dict.fromkeys(required) if name not in present]
    if missing:
        found = short_list(header, 2 * LISTED_NAMES) or "nothing"
        where = f"the header row (line {header_line})" if header_line else "the configured columns"
        raise FileError(
            f"missing column{'s' if len(missing) > 1 else ''} {short_list(missing)}: "
            f"{where} has {found}. Check the delimiter, header_line and encoding in the mapping.",
            header_line,
        )
    counts = Counter(header)
    doubled = sorted({name for name in required if counts[name] > 1})
    if doubled:
        raise FileError(f"column {short_list(doubled)} appears more than once in the header", header_line)


# --- XML -----------------------------------------------------------------------------------------


_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)


def read_xml(
    stream: BinaryIO, options: XmlOptions, plan: XmlPlan, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Chunk]:
    """The records of an XML export, parsed in this process.

    libxml2 keeps every distinct name it meets (elements, attributes, namespaces) in a table that
    lives as long as the thread: a hostile file of millions of names grows this process for good.
    Whole files from an inbox go through batch.transform.xmlprocess, which runs this parse in a
    child process with a memory budget; this in-process form is for what is already trusted or
    small (tests, the mapping playground)."""
    return parse_xml(stream, options.record_path, dict(options.namespaces), plan, chunk_size)


def parse_xml(
    stream: BinaryIO,
    record_path: str,
    namespaces: dict[str, str],
    plan: XmlPlan,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    each_block: Callable[[int], None] | None = None,
) -> Iterator[Chunk]:
    """read_xml with the options spelt out; `each_block(line)` is called before each block is
    parsed, with the line the block starts on (the parser process checks its memory there)."""
    original, stream = stream, _buffered(stream)
    try:
        yield from _xml_chunks(stream, record_path, namespaces, plan, chunk_size, each_block)
    finally:
        _unwrap(stream, original)


# The parser is fed blocks of this size; after each block, everything that is neither a pending
# record nor an ancestor of one is released, so memory follows the block, not the document.
XML_BLOCK = 1 << 16
# A record element whose markup spans more than this is refused rather than held whole
# (a real record is a few hundred bytes; libxml2's tree costs up to ~30 times the markup).
MAX_RECORD_BYTES = 1 << 20
# libxml2's limit for one text or attribute value without XML_PARSE_HUGE (XML_MAX_TEXT_LENGTH).
# In push mode it buffers an unfinished tag whole before it checks that limit (a 200 MB
# attribute cost 418 MB), so the reader refuses a run this long without a '<' itself.
MAX_MARKUP_RUN = 10_000_000 + XML_BLOCK
# Before the first element there are only comments, processing instructions and blanks.
MAX_PROLOG_BYTES = 1 << 20
# A chunk is handed on early once its records span this much of the file, so that what one
# chunk holds follows the file's bytes, not chunk_size times the largest record (1 MB).
MAX_CHUNK_BYTES = 4 << 20

PARSER_OPTIONS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,  # keeps libxml2's depth (256) and text-node (10 MB) limits
    remove_comments=True,
    remove_pis=True,
)


class _Blocks:
    """The stream in blocks, with the line count before each and a guard against long runs
    without markup (which libxml2 would buffer whole and then report on the wrong line)."""

    def __init__(self, stream: io.BufferedReader, each_block: Callable[[int], None] | None = None):
        self.stream = stream
        self.each_block = each_block
        self.position = 0  # bytes handed out so far
        self.lines = 0  # newlines in them
        self.run = 0  # bytes since the last '<'
        self.run_line = 1  # line of that '<'

    def __iter__(self) -> Iterator[bytes]:
        while True:
            block = self.stream.read(XML_BLOCK)
            if not block:
                return
            last = block.rfind(b"<")
            if last < 0:
                self.run += len(block)
                if self.run > MAX_MARKUP_RUN:
                    raise FileError(
                        f"not well-formed XML: more than {MAX_MARKUP_RUN - XML_BLOCK:,} characters without markup "
                        "from this line on (an attribute value, text or tag longer than the XML parser accepts)",
                        self.run_line,
                    )
            else:
                self.run = len(block) - last - 1
                self.run_line = self.lines + block.count(b"\n", 0, last) + 1
            if self.each_block is not None:
                self.each_block(self.lines + 1)
            self.lines += block.count(b"\n")
            self.position += len(block)
            yield block


def _xml_chunks(
    stream: io.BufferedReader,
    record_path: str,
    namespaces: dict[str, str],
    plan: XmlPlan,
    chunk_size: int,
    each_block: Callable[[int], None] | None,
) -> Iterator[Chunk]:
    _refuse_doctype(stream.peek(1 << 16))
    steps = clark_steps(record_path, namespaces)
    record_tag = steps[-1][1]
    matches_path = path_matcher(steps)
    # the compiled reader when it is built (batch/syntax/_xmlrows.pyx), the same values in Python when not
    extract = compiled_row_extractor(plan.texts, namespaces, plan.groups) or compile_row_extractor(
        plan.texts, namespaces, plan.groups
    )
    columns = list(plan.texts) + [element for element, _ in plan.groups]
    blocks = _Blocks(stream, each_block)
    chunk = Chunk(columns)
    chunk_since = 0  # where the chunk's first record was read
    parser = None
    try:
        root_tag, head = _root_tag(blocks)
        if root_tag is None:
            return
        parser = etree.XMLPullParser(
            events=("start", "end"), tag=list(dict.fromkeys((root_tag, record_tag))), **PARSER_OPTIONS
        )
        root: etree._Element | None = None
        pending: etree._Element | None = None  # the record element being read
        pending_since = 0
        feeding = iter(blocks)
        while True:
            block = head.pop(0) if head else next(feeding, None)
            broken = None  # the records read before a syntax error are still handed on
            try:
                if block is None:
                    parser.close()
                else:
                    parser.feed(block)
            except etree.XMLSyntaxError as exc:
                broken = exc
            for event, element in parser.read_events():
                if event == "start":
                    if root is None:
                        root = element
                        _refuse_parsed_dtd(element)
                    if element.tag == record_tag and matches_path(element):
                        if pending is not None:
                            raise _nested_record_error(element, pending)
                        pending, pending_since = element, blocks.position
                    continue
                if pending is None or element is not pending:
                    continue
                pending = None
                row = extract(element)
                if not chunk.lines:
                    chunk_since = blocks.position
                chunk.lines.append(element.sourceline or 0)
                chunk.rows.append(row)
                _release(element)
                if len(chunk.lines) >= chunk_size or blocks.position - chunk_since > MAX_CHUNK_BYTES:
                    yield chunk
                    chunk = Chunk(columns)
            if broken is not None:
                raise broken
            if block is None:
                break
            if pending is not None and blocks.position - pending_since > MAX_RECORD_BYTES + XML_BLOCK:
                raise FileError(
                    f"the record that starts here is larger than {MAX_RECORD_BYTES >> 20} MB; "
                    "records that large are refused (is record_path the record element?)",
                    pending.sourceline,
                )
            if root is not None:
                _prune(root, pending)
    except etree.XMLSyntaxError as exc:
        # this parse's errors (exc.error_log also holds earlier files')
        raise _syntax_error(exc, parser.feed_error_log if parser is not None else []) from None
    if chunk.lines:
        yield chunk


def _root_tag(blocks: _Blocks) -> tuple[str | None, list[bytes]]:
    """The document element's tag, read by a throw-away parser, and the blocks it took to find it
    (to be fed again). A DOCTYPE is refused here, so a document without records is refused too.
    A syntax error after the root's start tag is left to the real parse (records before it count)."""
    probe = etree.XMLPullParser(events=("start",), **PARSER_OPTIONS)
    head: list[bytes] = []
    for block in blocks:
        head.append(block)
        try:
            probe.feed(block)
        except etree.XMLSyntaxError as exc:
            error = exc
        else:
            error = None
        for _, element in probe.read_events():
            _refuse_parsed_dtd(element)
            return element.tag, head
        if error is not None:
            raise _syntax_error(error, probe.feed_error_log)
        if blocks.position > MAX_PROLOG_BYTES:
            raise FileError(f"the XML has no element in its first {MAX_PROLOG_BYTES >> 20} MB", 1)
    try:
        probe.close()
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(exc, probe.feed_error_log) from None
    return None, head


def _syntax_error(exc: etree.XMLSyntaxError, log: Sequence[Any]) -> FileError:
    line = exc.lineno or (log[0].line if len(log) else None)
    return FileError(f"not well-formed XML: {_syntax_message(exc, log)}", line or None)


def _prune(root: etree._Element, pending: etree._Element | None) -> None:
    """Release every finished element that is not an ancestor of the pending record.

    The elements still open are the chain of last children from the root; every earlier child
    is finished. Each level keeps only its last child (open, or finished but bounded by one),
    so what stays is one element per level, and the pending record whole.
    """
    node = root
    while node is not pending:
        count = len(node)
        if count == 0:
            return
        if count > 1:
            del node[: count - 1]
        node = node[0]


def _nested_record_error(inner: etree._Element, outer: etree._Element) -> FileError:
    name = etree.QName(inner).localname
    return FileError(
        f"a <{name}> record inside the <{name}> record that starts on line {outer.sourceline}: nested records are "
        "refused (neither could be mapped whole); give record_path as an absolute path such as /Export/Events/Event",
        inner.sourceline,
    )


def _refuse_doctype(head: bytes) -> None:
    probe = head
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        probe = head.decode("utf-16", errors="ignore").encode("ascii", errors="ignore")
    elif b"\x00" in head[:4]:
        probe = head.replace(b"\x00", b"")
    # only the prolog matters: stop at the first element start tag (comments may hold '<a')
    probe = re.sub(rb"<!--.*?(?:-->|$)", b"", probe, flags=re.DOTALL)
    prolog_end = re.search(rb"<[A-Za-z_]", probe)
    if _DOCTYPE.search(probe[: prolog_end.start()] if prolog_end else probe):
        raise _doctype_error()


def _refuse_parsed_dtd(element: etree._Element) -> None:
    docinfo = element.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _doctype_error()


def _doctype_error() -> FileError:
    return FileError(
        "the XML has a DOCTYPE; documents with DTDs or entity declarations are refused "
        "(they can expand to gigabytes or read local files). Export without a DOCTYPE.",
        1,
    )


def path_matcher(steps: list[tuple[bool, str]]) -> Callable[[etree._Element], bool]:
    """Does an element's chain of ancestors match the record path?"""
    if len(steps) == 1 and steps[0][0]:
        return lambda element: True  # '//Event': the parser's tag filter already chose
    if not any(descendant for descendant, _ in steps):
        return _absolute_matcher([tag for _, tag in steps])
    import re2

    from batch.config.mapping import compile_pattern

    # on RE2: with backtracking, each '//' step multiplied the work by the depth (256 at most)
    fullmatch = compile_pattern(
        "".join(("\x00(?:[^\x00]*\x00)*?" if descendant else "\x00") + re2.escape(tag) for descendant, tag in steps)
    )

    def matches(element: etree._Element) -> bool:
        chain = [element.tag]
        parent = element.getparent()
        while parent is not None:
            chain.append(parent.tag)
            parent = parent.getparent()
        return fullmatch("\x00" + "\x00".join(reversed(chain)))

    return matches


def _absolute_matcher(tags: list[str]) -> Callable[[etree._Element], bool]:
    expected = list(reversed(tags))
    # records are siblings: once a parent is known to sit on the path, its next children need
    # only the identity check (lxml keeps one proxy per node while we hold a reference to it)
    verified: list[etree._Element | None] = [None]

    def matches(element: etree._Element) -> bool:
        parent = element.getparent()
        if parent is not None and parent is verified[0]:
            return True
        node = element
        for tag in expected:
            if node is None or node.tag != tag:
                return False
            node = node.getparent()
        if node is None:
            verified[0] = parent
            return True
        return False

    return matches


def _release(element: etree._Element) -> None:
    """Free what has been mapped: the record's content. Its empty shell stays until the block
    ends, when _prune drops it with every finished sibling: a block holds a bounded number of
    shells, and deleting them there (one slice a level) costs less than looking for them here,
    record by record (~0.5 us a record, bench/bench_mapping.py)."""
    element.clear(keep_tail=True)


def _syntax_message(exc: etree.XMLSyntaxError, log: Sequence[Any]) -> str:
    message = str(exc.msg or exc)
    if message == "no element found" and len(log):
        message = log[0].message  # iterparse's summary hides the cause (e.g. an undefined entity)
    return re.sub(r", line \d+, column \d+$", "", message)
