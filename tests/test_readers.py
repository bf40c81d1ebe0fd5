"""batch.transform.readers: binary streams -> chunks of records with their line numbers, and hostile input."""

from __future__ import annotations

import codecs
import io
import resource
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from batch.config.mapping import CsvOptions, XmlOptions
from batch.transform.readers import FileError, detect_encoding, read_csv, read_xml
from batch.transform.records import XmlPlan
from tests.fixtures_xml import xml_elements

CANARY = "CANARY-7f3a9c0e-do-not-leak"


def csv_rows(data: bytes, required=("a", "b"), chunk_size=5000, stream=None, **options):
    """Every (line, row) the CSV reader yields, plus the chunks' broken-record reasons."""
    opts = CsvOptions(**options)
    lines, rows, broken, columns = [], [], {}, None
    for chunk in read_csv(stream or io.BytesIO(data), opts, list(required), chunk_size):
        columns = chunk.columns
        lines += chunk.lines
        rows += chunk.rows
        broken.update(chunk.broken)
    return columns, list(zip(lines, rows)), broken


def xml_rows(data: bytes, record_path="//E", texts=("@id",), groups=(), namespaces=None, chunk_size=5000):
    opts = XmlOptions(record_path=record_path, namespaces=namespaces or {})
    plan = XmlPlan(texts=list(texts), groups=list(groups))
    out = []
    for chunk in read_xml(io.BytesIO(data), opts, plan, chunk_size):
        out += list(zip(chunk.lines, chunk.rows))
    return out


def file_error(fn, *args, **kwargs) -> FileError:
    with pytest.raises(FileError) as info:
        fn(*args, **kwargs)
    return info.value


# --- CSV dialects -----------------------------------------------------------------------------------


def test_delimiter_and_line_numbers():
    columns, rows, broken = csv_rows(b"a;b\n1;2\n3;4\n", delimiter=";")
    assert columns == ["a", "b"]
    assert rows == [(2, ["1", "2"]), (3, ["3", "4"])]
    assert broken == {}


def test_tab_delimiter_without_quoting():
    _, rows, _ = csv_rows(b'a\tb\n"x\ty"\t"z\n', delimiter="\t", quotechar=None)
    assert rows == [(2, ['"x', 'y"', '"z'])]


def test_quoted_fields_hold_delimiters_quotes_and_line_breaks():
    data = b'a,b\n"1,5","say ""hi"""\n"multi\nline\r\nvalue",x\n3,4\n'
    _, rows, _ = csv_rows(data)
    assert rows == [
        (2, ["1,5", 'say "hi"']),
        (3, ["multi\nline\r\nvalue", "x"]),
        (6, ["3", "4"]),  # the record after a three-line record starts on line 6
    ]


def test_other_quote_and_escape_characters():
    _, rows, _ = csv_rows(b"a;b\n'x;y';z\n", delimiter=";", quotechar="'")
    assert rows == [(2, ["x;y", "z"])]
    _, rows, _ = csv_rows(b'a,b\n"x\\"y",z\\,w\n', escapechar="\\", doublequote=False)
    assert rows == [(2, ['x"y', "z,w"])]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_crlf_and_lf_give_the_same_records(newline):
    data = newline.join([b"a,b", b"1,2", b'"x' + newline + b'y",3', b""])
    _, rows, _ = csv_rows(data)
    assert rows == [(2, ["1", "2"]), (3, ["x" + newline.decode() + "y", "3"])]


def test_header_at_a_given_line_skips_banner_lines():
    data = b"EXPORT banner;;\nrun 6.2.2024\na;b\n1;2\n"
    _, rows, _ = csv_rows(data, delimiter=";", header_line=3)
    assert rows == [(4, ["1", "2"])]


def test_header_names_are_trimmed():
    columns, _, _ = csv_rows(b" a , b \n1,2\n")
    assert columns == ["a", "b"]


def test_headerless_file_with_columns_and_banner():
    data = b"banner one\nbanner two\n1,2\n3,4\n"
    columns, rows, _ = csv_rows(data, header_line=None, columns=["a", "b"], skip_lines=2)
    assert columns == ["a", "b"]
    assert rows == [(3, ["1", "2"]), (4, ["3", "4"])]


def test_columns_rename_a_header_row():
    columns, rows, _ = csv_rows(b"X,Y\n1,2\n", columns=["a", "b"])
    assert columns == ["a", "b"] and rows == [(2, ["1", "2"])]


def test_footer_lines_are_dropped_and_blank_lines_ignored():
    data = b"a,b\n1,2\n\n3,4\nTOTAL,2\nEND\n\n"
    _, rows, _ = csv_rows(data, skip_footer=2)
    assert rows == [(2, ["1", "2"]), (4, ["3", "4"])]


def test_blank_lines_can_be_kept():
    _, rows, _ = csv_rows(b"a,b\n1,2\n\n3,4\n", skip_blank_lines=False)
    assert rows == [(2, ["1", "2"]), (3, []), (4, ["3", "4"])]


def test_footer_larger_than_the_file_leaves_no_records():
    assert csv_rows(b"a,b\n1,2\n", skip_footer=3)[1] == []


def test_chunks_are_bounded_and_keep_order():
    data = b"a,b\n" + b"".join(f"{i},x\n".encode() for i in range(10))
    sizes, lines = [], []
    for chunk in read_csv(io.BytesIO(data), CsvOptions(), ["a"], chunk_size=3):
        sizes.append(len(chunk))
        lines += chunk.lines
    assert sizes == [3, 3, 3, 1]
    assert lines == list(range(2, 12))


def test_footer_is_held_back_across_chunks():
    data = b"a,b\n" + b"".join(f"{i},x\n".encode() for i in range(6)) + b"TOTAL,6\n"
    _, rows, _ = csv_rows(data, chunk_size=2, skip_footer=1)
    assert [row[0] for _, row in rows] == [str(i) for i in range(6)]


def test_stream_is_handed_back_open():
    stream = io.BytesIO(b"a,b\n1,2\n")
    csv_rows(b"", stream=stream)
    assert not stream.closed


class _Pipe(io.RawIOBase):
    """A non-seekable byte stream, like a socket or an SFTP download."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self._data.read(min(len(buffer), 7))  # short reads, too
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_streams_are_read():
    data = "a;b\nä;ö\n".encode("cp1252")
    _, rows, _ = csv_rows(b"", stream=_Pipe(data), delimiter=";", encoding="cp1252")
    assert rows == [(2, ["ä", "ö"])]


def test_non_seekable_stream_with_a_bad_byte_is_still_a_file_error():
    error = file_error(csv_rows, b"", stream=_Pipe(b"a,b\n1,\xff\n"))
    assert "cannot decode the file as utf-8-sig" in error.message


# --- encodings --------------------------------------------------------------------------------------

TEXT = "a;b\nKäyttöpaikka;Selite – ok €\n"


@pytest.mark.parametrize(
    "configured, data",
    [
        ("utf-8", TEXT.encode("utf-8")),
        ("utf-8", codecs.BOM_UTF8 + TEXT.encode("utf-8")),
        ("utf-8-sig", codecs.BOM_UTF8 + TEXT.encode("utf-8")),
        ("utf-16", TEXT.encode("utf-16")),  # Python writes a BOM
        ("utf-16", codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be")),
        ("utf-16", codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le")),
        ("utf-16-le", TEXT.encode("utf-16-le")),
        ("cp1252", TEXT.encode("cp1252")),
        # a byte order mark wins over the configured encoding
        ("cp1252", codecs.BOM_UTF8 + TEXT.encode("utf-8")),
        ("iso-8859-1", codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le")),
    ],
)
def test_encodings(configured, data):
    columns, rows, _ = csv_rows(data, delimiter=";", encoding=configured)
    assert columns == ["a", "b"]
    assert rows == [(2, ["Käyttöpaikka", "Selite – ok €"])]


def test_iso_8859_1():
    data = "a;b\nKäyttöpaikka;Ä\n".encode("iso-8859-1")
    assert csv_rows(data, delimiter=";", encoding="iso-8859-1")[1] == [(2, ["Käyttöpaikka", "Ä"])]


def test_detect_encoding():
    assert detect_encoding(codecs.BOM_UTF8 + b"a", "cp1252") == "utf-8-sig"
    assert detect_encoding(codecs.BOM_UTF16_LE + b"a\x00", "utf-8") == "utf-16"
    assert detect_encoding(codecs.BOM_UTF16_BE + b"\x00a", "utf-8") == "utf-16"
    assert detect_encoding(b"abcd", "UTF8") == "utf-8-sig"
    assert detect_encoding(b"abcd", "cp1252") == "cp1252"


def test_wrong_encoding_names_the_line_of_the_first_bad_byte():
    data = b"a,b\n1,x\n2,y\n3,z\n" + "4,café\n".encode("cp1252") + b"5,w\n"
    error = file_error(csv_rows, data)
    assert error.line == 5
    assert str(error) == (
        "line 5: cannot decode the file as utf-8-sig: bytes e9 0a 35 2c are not valid "
        "(is the file cp1252 or iso-8859-1 rather than utf-8?)"
    )


def test_wrong_encoding_far_into_the_file():
    # past the first 64 KiB block and with multi-byte characters before it
    good = "".join(f"{i},ää€\n" for i in range(1, 9000)).encode()
    data = b"a,b\n" + good + b"9999,caf\xe9\n"
    error = file_error(csv_rows, data, chunk_size=100)
    assert error.line == 9001


def test_wrong_encoding_after_a_bom():
    data = codecs.BOM_UTF8 + b"a,b\n1,2\n3,\xff\n"
    assert file_error(csv_rows, data).line == 3


def test_wrong_encoding_in_utf16():
    data = codecs.BOM_UTF16_LE + "a,b\n1,2\n3,".encode("utf-16-le") + b"\x00\xdc" + "\n".encode("utf-16-le")
    error = file_error(csv_rows, data, encoding="utf-16")
    assert error.line == 3 and "cannot decode the file as utf-16" in error.message


@pytest.mark.parametrize("bad_line", [2, 700, 2500, 2501, 4000])
def test_wrong_encoding_line_at_block_boundaries(bad_line):
    # three-byte characters make the 64 KiB blocks split characters; the bad byte's line is exact
    rows = [f"{i},€€€€€€€€€\n".encode() for i in range(2, 5000)]
    rows[bad_line - 2] = rows[bad_line - 2].replace("€".encode(), b"\x80", 1)
    error = file_error(csv_rows, b"a,b\n" + b"".join(rows))
    assert error.line == bad_line


def test_utf16_without_bom_is_a_clear_file_error():
    data = "a,b\n1,2\n".encode("utf-16-le")
    error = file_error(csv_rows, data, encoding="utf-16")
    assert error.line == 1
    assert "UTF-16 stream does not start with BOM" in error.message
    assert "use utf-16-le or utf-16-be" in error.message


def test_utf16_without_bom_read_as_utf8_is_refused_at_the_header():
    data = "a,b\n1,2\n".encode("utf-16-le")
    error = file_error(csv_rows, data)
    assert error.line == 1
    assert error.message.startswith("missing columns 'a', 'b': the header row (line 1) has ")
    assert error.message.endswith("Check the delimiter, header_line and encoding in the mapping.")


def test_truncated_utf16_is_a_file_error():
    data = "a,b\n1,2\n".encode("utf-16") + b"\x41"
    error = file_error(csv_rows, data, encoding="utf-16")
    assert "cannot decode the file as utf-16" in error.message


# --- CSV: file-level problems -------------------------------------------------------------------------


def test_empty_file():
    error = file_error(csv_rows, b"")
    assert (error.line, error.message) == (1, "the file is empty: no header row")


def test_empty_file_with_a_header_further_down():
    error = file_error(csv_rows, b"", header_line=3)
    assert error.message == "the file ends before line 3, where the records should start"


def test_header_only_file_has_no_records():
    assert list(read_csv(io.BytesIO(b"a,b\r\n"), CsvOptions(), ["a", "b"])) == []


def test_headerless_file_of_banners_only_has_no_records():
    assert csv_rows(b"x\ny\n", header_line=None, columns=["a", "b"], skip_lines=2)[1] == []


def test_missing_column_names_what_the_header_has():
    error = file_error(csv_rows, b"a;b\n1;2\n", required=("a", "c"), delimiter=";")
    assert error.line == 1
    assert error.message == (
        "missing column 'c': the header row (line 1) has 'a', 'b'. "
        "Check the delimiter, header_line and encoding in the mapping."
    )


def test_wrong_delimiter_shows_the_whole_header():
    error = file_error(csv_rows, b"a;b\n1;2\n", required=("a", "b"))
    assert error.message == (
        "missing columns 'a', 'b': the header row (line 1) has 'a;b'. "
        "Check the delimiter, header_line and encoding in the mapping."
    )


def test_missing_column_among_configured_columns():
    error = file_error(csv_rows, b"1,2\n", header_line=None, columns=["a", "b"], required=("a", "z"))
    assert error.message.startswith("missing column 'z': the configured columns has 'a', 'b'.")


def test_a_required_column_twice_in_the_header():
    error = file_error(csv_rows, b"a,b,a\n1,2,3\n")
    assert (error.line, error.message) == (1, "column 'a' appears more than once in the header")


def test_a_broken_header():
    error = file_error(csv_rows, b'a,"b\n')
    assert error.line == 1 and error.message.startswith("cannot read the header row:")


# --- CSV: hostile records ---------------------------------------------------------------------------


def test_unclosed_quote_is_a_broken_record_at_its_line():
    data = b'a,b\n1,2\n3,"never closed\n4,5\n6,7\n'
    _, rows, broken = csv_rows(data)
    assert rows[0] == (2, ["1", "2"])
    swallowed = "not read as a record: it is inside the quoted value of line 3 (is a quote on line 3 not closed?)"
    assert broken == {
        3: "cannot split the record into fields: unexpected end of data; a quoted value on this line runs on to "
        "line 5 (is a quote not closed?)",
        4: swallowed,
        5: swallowed,
    }
    assert [line for line, _ in rows] == [2, 3, 4, 5]  # every line accounted for (D13)


def test_a_huge_single_field_is_refused_without_reading_it_all_into_one_record():
    huge = b"x" * 1_500_000
    data = b"a,b\n1,2\n3," + huge + b"\n4,5\n"
    _, rows, broken = csv_rows(data)
    assert broken == {3: "cannot split the record into fields: field larger than field limit (1000000)"}
    assert rows[0] == (2, ["1", "2"]) and rows[-1] == (4, ["4", "5"])


def test_a_huge_quoted_field():
    data = b'a,b\n1,"' + b"y" * 1_200_000 + b'"\n4,5\n'
    _, rows, broken = csv_rows(data)
    assert list(broken) == [2]
    assert rows[-1] == (3, ["4", "5"])


def test_nul_bytes_are_kept_as_data_and_do_not_break_the_file():
    data = b"a,b\n1,2\n3,x\x00y\n\x00,5\n6,7\n"
    _, rows, broken = csv_rows(data)
    assert broken == {}
    assert rows == [(2, ["1", "2"]), (3, ["3", "x\x00y"]), (4, ["\x00", "5"]), (5, ["6", "7"])]


def test_quote_after_a_closing_quote_is_a_broken_record():
    _, rows, broken = csv_rows(b'a,b\n"x"y,2\n3,4\n')
    assert list(broken) == [2] and rows[-1] == (3, ["3", "4"])


def test_many_fields_and_long_lines_stay_fast():
    data = b"a,b\n" + b",".join([b"v"] * 50_000) + b"\n" + b"1,2\n" * 20_000
    started = time.perf_counter()
    _, rows, _ = csv_rows(data)
    assert len(rows) == 20_001
    assert time.perf_counter() - started < 5


# --- XML ---------------------------------------------------------------------------------------------

NS_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Export xmlns="urn:u" xmlns:inv="urn:i">
  <Events>
    <Event id="1">
      <Place code="P1"/>
      <Customer> C1 </Customer>
      <inv:Invoices>
        <inv:Invoice jobid="7"><inv:Number>100</inv:Number></inv:Invoice>
        <inv:Invoice jobid="8"><inv:Number>101</inv:Number></inv:Invoice>
      </inv:Invoices>
    </Event>
    <Other><Event id="nested-not-a-record"/></Other>
    <Event id="2"><Customer/><inv:Invoices/></Event>
  </Events>
</Export>
"""
NAMESPACES = {"": "urn:u", "inv": "urn:i"}


def test_xml_default_namespace_attributes_children_and_repeated_elements():
    rows = xml_rows(
        NS_XML,
        record_path="/Export/Events/Event",
        texts=["@id", "Place/@code", "Customer", "Missing"],
        groups=[("inv:Invoices/inv:Invoice", ["inv:Number", "@jobid"])],
        namespaces=NAMESPACES,
    )
    assert rows == [
        (4, ["1", "P1", " C1 ", None, [["100", "7"], ["101", "8"]]]),
        (13, ["2", None, "", None, []]),
    ]


@pytest.mark.parametrize("path", ["inv:Invoices/inv:Invoice", "inv:Invoice", "./inv:Invoices/inv:Invoice/inv:Number",
                                  "Invoices/Invoice", "inv:Invoices"])
def test_repeated_elements_are_found_as_findall_finds_them(path):
    from lxml import etree

    from batch.syntax.xmlpaths import compile_element_finder

    # several parent groups, a comment and a processing instruction between them, an element
    # of the same local name in another namespace, nesting that must not be searched
    record = etree.fromstring(
        "<Event xmlns='urn:u' xmlns:inv='urn:i'><inv:Invoices><inv:Invoice n='1'><inv:Number>1</inv:Number>"
        "<inv:Invoice n='nested'/></inv:Invoice><!-- c --><?pi x?><Invoice n='u'/><inv:Invoice n='2'/></inv:Invoices>"
        "<Customer/><inv:Invoices><inv:Invoice n='3'><inv:Number>3a</inv:Number><inv:Number>3b</inv:Number>"
        "</inv:Invoice></inv:Invoices><inv:Invoice n='direct'/></Event>")
    found = compile_element_finder(path, NAMESPACES)(record)
    expected = record.findall(path, {None: "urn:u", "inv": "urn:i"})
    assert found == expected and (found or path == "Invoices/Invoice")


# A record's values as lxml's own ElementPath and XPath give them: what the one-pass row
# extractor (xmlpaths.compile_row_extractor) must give, whatever the record holds.
_TAGS = ["A", "B", "inv:C", "u:A"]
_EXPRS = ["A", "B", "inv:C", "u:A", "@id", "@inv:n", "A/@id", "inv:C/@n", "B/@inv:n", "./A", "A/B", "string(u:B)",
          "count(u:A)", "u:A[2]", "@missing"]
_GROUPS = ["A", "inv:C", "A/B", "./B/inv:C", "A/B/A", "u:B[@id]", "u:A"]
_PARTS = [["@id", "A"], [".", "B/@id"], ["inv:C"], []]


def _xml_element(depth: int) -> st.SearchStrategy[str]:
    return xml_elements(depth, tags=_TAGS, texts=["", " x ", "y", "&amp;", "<![CDATA[c]]>z"],
                        attribute_names=["id", "n", "inv:n"], values=["1", "", "v"],
                        tails=["", "t", "<!-- c -->", "<?pi x?>"], max_attributes=2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_row_extractor_gives_what_lxml_finds(data):
    from lxml import etree

    from batch.syntax.xmlpaths import compile_row_extractor

    body = data.draw(st.lists(_xml_element(2), max_size=6).map("".join))
    exprs = data.draw(st.lists(st.sampled_from(_EXPRS), max_size=6))
    groups = data.draw(st.lists(st.tuples(st.sampled_from(_GROUPS), st.sampled_from(_PARTS)), max_size=3))
    namespaces = {"": "urn:u", "inv": "urn:i", "u": "urn:u"}
    record = etree.fromstring(f"<E xmlns='urn:u' xmlns:u='urn:u' xmlns:inv='urn:i' id='r' inv:n='q'>{body}</E>",
                              etree.XMLParser(remove_comments=True, remove_pis=True))
    element_ns = {None: "urn:u", "inv": "urn:i", "u": "urn:u"}
    xpath_ns = {"inv": "urn:i", "u": "urn:u"}

    def expected_text(element, expr: str):
        if expr.startswith("@"):
            name = expr[1:]
            return element.get("{urn:i}n" if name == "inv:n" else name)
        if expr in ("string(u:B)", "count(u:A)", "u:A[2]", "."):
            result = element.xpath(expr, namespaces=xpath_ns)
            if isinstance(result, list):
                return (result[0].text or "") if result else None
            if isinstance(result, float):
                return str(int(result))
            return result
        if "/@" in expr:
            path, _, name = expr.rpartition("/@")
            found = element.find(path, element_ns)
            return None if found is None else found.get("{urn:i}n" if name == "inv:n" else name)
        return element.findtext(expr, None, element_ns)

    def expected_found(element, path: str):
        if path == "u:B[@id]":
            return element.xpath(path, namespaces=xpath_ns)
        return element.findall(path, element_ns)

    expected = [expected_text(record, expr) for expr in exprs]
    expected += [[[expected_text(found, part) for part in parts] for found in expected_found(record, path)]
                 for path, parts in groups]
    assert compile_row_extractor(exprs, namespaces, groups)(record) == expected


def test_xml_descendant_record_path_matches_at_any_depth():
    rows = xml_rows(NS_XML, record_path="//Event", namespaces=NAMESPACES)
    assert [row[0] for _, row in rows] == ["1", "nested-not-a-record", "2"]


def test_xml_prefixed_record_path_for_the_default_namespace():
    rows = xml_rows(NS_XML, record_path="/u:Export/u:Events/u:Event", namespaces={"u": "urn:u", "inv": "urn:i"})
    assert [row[0] for _, row in rows] == ["1", "2"]


def test_xml_without_namespace_config_matches_nothing_in_a_namespaced_file():
    assert xml_rows(NS_XML, record_path="//Event") == []


def test_xml_general_xpath_expressions():
    data = b"<r><E id='1'><A>x</A><A>y</A><B n='3'/></E></r>"
    rows = xml_rows(data, texts=["count(A)", "A[2]", "string(B/@n)", "boolean(C)"])
    assert rows == [(1, ["2", "y", "3", "false"])]


def test_xml_chunks():
    data = b"<r>" + b"".join(f"<E id='{i}'/>\n".encode() for i in range(7)) + b"</r>"
    opts = XmlOptions(record_path="/r/E")
    sizes = [len(c) for c in read_xml(io.BytesIO(data), opts, XmlPlan(texts=["@id"]), chunk_size=3)]
    assert sizes == [3, 3, 1]


def test_xml_utf16_with_bom():
    text = '<?xml version="1.0" encoding="UTF-16"?><r><E id="ä"/></r>'
    assert xml_rows(text.encode("utf-16")) == [(1, ["ä"])]


def test_xml_cp1252_declared():
    data = '<?xml version="1.0" encoding="windows-1252"?>\n<r><E id="€ä"/></r>'.encode("cp1252")
    assert xml_rows(data) == [(2, ["€ä"])]


def test_xml_empty_root_has_no_records():
    assert xml_rows(b"<r/>") == []


@pytest.mark.parametrize(
    "data, line, message",
    [
        (b"", None, "not well-formed XML: no element found"),
        (b"<r><E id='1'>", 1, "not well-formed XML: Premature end of data in tag E line 1"),
        (b"<r>\n<E id='1'></F>\n</r>", 2, "not well-formed XML: Opening and ending tag mismatch: E line 2 and F"),
        (b"<r>\n<E id='&undefined;'/></r>", 2, "not well-formed XML: Entity 'undefined' not defined"),
        (b"<r>\n<E id='1'>&undefined;</E></r>", 2, "not well-formed XML: Entity 'undefined' not defined"),
        (b"   ", 1, "not well-formed XML: Start tag expected, '<' not found"),
        (b"\xff\xfe\x00garbage", 1, None),
    ],
)
def test_xml_broken_files_are_file_errors(data, line, message):
    error = file_error(xml_rows, data)
    assert error.line == line
    if message is not None:
        assert error.message == message
    else:
        assert error.message.startswith("not well-formed XML:")


def test_xml_error_of_one_file_never_shows_in_the_next():
    file_error(xml_rows, b"<r>\n\n<E id='1'>&first;</E></r>")
    error = file_error(xml_rows, b"")
    assert (error.line, error.message) == (None, "not well-formed XML: no element found")


def test_xml_records_before_a_syntax_error_are_yielded_then_the_error():
    data = b"<r>" + b"<E id='x'/>\n" * 5 + b"<E id='y'></r>"
    opts = XmlOptions(record_path="//E")
    chunks = read_xml(io.BytesIO(data), opts, XmlPlan(texts=["@id"]), chunk_size=2)
    assert len(next(chunks)) == 2
    with pytest.raises(FileError):
        list(chunks)


# --- hostile XML ------------------------------------------------------------------------------------

DOCTYPE_MESSAGE = (
    "the XML has a DOCTYPE; documents with DTDs or entity declarations are refused "
    "(they can expand to gigabytes or read local files). Export without a DOCTYPE."
)


def billion_laughs(prefix: str = "") -> bytes:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    )
    return (f'<?xml version="1.0"?>\n{prefix}<!DOCTYPE r [{entities}]>\n<r><E id="&j;"/></r>\n').encode()


def quadratic_blowup(prefix: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?>\n{prefix}<!DOCTYPE r [<!ENTITY a "{"x" * 100_000}">]>\n'
        f'<r><E id="1"><A>{"&a;" * 50_000}</A></E></r>\n'
    ).encode()


def external_entity(path, prefix: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?>\n{prefix}<!DOCTYPE r [<!ENTITY x SYSTEM "file://{path}">]>\n'
        f'<r><E id="1"><A>&x;</A></E></r>\n'
    ).encode()


# a DOCTYPE the quick look at the head of the file cannot see: behind a long comment, or behind a
# comment that looks like an element start tag
HIDING = ["", "<!--" + "pad " * 5000 + "-->\n", "<!-- <a --> "]


def _peak_memory_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _assert_refused(data: bytes, texts=("@id", "A")):
    before = _peak_memory_kib()
    started = time.perf_counter()
    with pytest.raises(FileError) as info:
        xml_rows(data, texts=texts)
    assert time.perf_counter() - started < 2
    assert _peak_memory_kib() - before < 200_000  # no blow-up (KiB)
    return info.value


@pytest.mark.parametrize("prefix", HIDING, ids=["plain", "behind-long-comment", "behind-tag-like-comment"])
def test_billion_laughs_is_refused(prefix):
    error = _assert_refused(billion_laughs(prefix))
    assert error.message == DOCTYPE_MESSAGE or "amplification" in error.message


@pytest.mark.parametrize("prefix", HIDING, ids=["plain", "behind-long-comment", "behind-tag-like-comment"])
def test_quadratic_blowup_is_refused(prefix):
    error = _assert_refused(quadratic_blowup(prefix))
    assert error.message == DOCTYPE_MESSAGE or "amplification" in error.message


@pytest.mark.parametrize("prefix", HIDING, ids=["plain", "behind-long-comment", "behind-tag-like-comment"])
def test_external_entity_is_refused_and_never_read(tmp_path, prefix):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    error = _assert_refused(external_entity(secret, prefix))
    assert error.message == DOCTYPE_MESSAGE
    assert error.line == 1
    assert CANARY not in str(error)


def test_external_dtd_and_parameter_entities_are_refused(tmp_path):
    secret = tmp_path / "secret.dtd"
    secret.write_text(f'<!ENTITY leak "{CANARY}">')
    for data in [
        f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file://{secret}"><r><E id="&leak;"/></r>'.encode(),
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><r><E id="&leak;"/></r>'.encode(),
        b'<?xml version="1.0"?><!doctype r><r><E id="1"/></r>',
        b'<?xml version="1.0"?>\n<?pi <a?>\n<!DOCTYPE r><r><E id="1"/></r>',
    ]:
        error = _assert_refused(data)
        assert error.message == DOCTYPE_MESSAGE, data
        assert CANARY not in str(error)


def test_utf16_doctype_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    text = external_entity(secret).decode().replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
    assert _assert_refused(text.encode("utf-16")).message == DOCTYPE_MESSAGE
    assert _assert_refused(text.encode("utf-16-le")).message == DOCTYPE_MESSAGE


def test_deeply_nested_xml_is_refused():
    data = b"<r>" + b"<x>" * 100_000 + b"</x>" * 100_000 + b"</r>"
    error = _assert_refused(data)
    assert error.message.startswith("not well-formed XML: Excessive depth in document: 256")


def test_a_huge_text_node_is_refused():
    data = b"<r><E id='1'><A>" + b"x" * 12_000_000 + b"</A></E></r>"
    error = _assert_refused(data)  # inside a record: the record is too large first
    assert error.message.startswith("the record that starts here is larger than 1 MB")
    error = _assert_refused(b"<r><A>" + b"x" * 12_000_000 + b"</A><E id='1'/></r>")
    assert error.message.startswith("not well-formed XML:")


def test_xinclude_is_not_processed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    data = (
        f'<r xmlns:xi="http://www.w3.org/2001/XInclude"><E id="1"><A>'
        f'<xi:include href="file://{secret}" parse="text"/></A></E></r>'
    ).encode()
    rows = xml_rows(data, texts=["@id", "A", "string(A)"])
    assert CANARY not in repr(rows)
