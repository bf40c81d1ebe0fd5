"""The compiled record reader (batch/syntax/_xmlrows.pyx) gives exactly the values
the Python extractor (xmlpaths.compile_row_extractor) gives, which test_readers checks against
lxml's own find/findall/XPath. Skipped when the extension is not built
(`python3 setup.py build_ext --inplace`)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from lxml import etree

from batch.syntax.xmlpaths import compile_row_extractor, compiled_row_extractor
from batch.transform.readers import PARSER_OPTIONS
from tests.fixtures_xml import xml_elements

pytest.importorskip("batch.syntax._xmlrows")

NAMESPACES = {"": "urn:u", "inv": "urn:i", "u": "urn:u", "n": "urn:n"}
# unprefixed names are in urn:u; <N xmlns=""> is in no namespace (unreachable by a plain name
# when a default namespace is set, so it must never match), n:A is another namespace's A
_TAGS = ["A", "B", "inv:C", "u:A", "n:A", "N"]
_EXPRS = ["A", "B", "inv:C", "u:A", "n:A", "@id", "@inv:n", "@u:id", "@dflt", "A/@id", "A/@u:id", "A/@dflt",
          "inv:C/@n", "B/@inv:n", "./A", "A/B", "string(u:B)", "count(u:A)", "u:A[2]", "@missing", "B/@missing"]
_GROUPS = ["A", "inv:C", "A/B", "./B/inv:C", "A/B/A", "u:B[@id]", "u:A", "B"]
_PARTS = [["@id", "A"], [".", "B/@id"], ["inv:C"], [], ["A/@dflt", "@u:id", "B"]]
_TEXTS = ["", " x ", "y", "&amp;", "&#233;€", "<![CDATA[c]]>z", "<![CDATA[]]>", "<![CDATA[]]><![CDATA[]]>",
          "<!-- c -->t", "a<?pi x?>b", "&e;", "a&e;b"]
_VALUES = ["1", "", "v", "a&amp;b", "&#10;x", "x&e;y"]


def _xml_element(depth: int) -> st.SearchStrategy[str]:
    return xml_elements(depth, tags=_TAGS, texts=_TEXTS, attribute_names=["id", "n", "inv:n", "u:id", "dflt"],
                        values=_VALUES, tails=["", "t", "<!-- c -->", "<?pi x?>", "&e;"], max_attributes=3)


# entities are declared in an internal subset here (the reader refuses a DOCTYPE, but the
# values must still agree on entity reference nodes and on a DTD's default attribute values)
_DOCTYPE = '<!DOCTYPE E [<!ENTITY e "E"><!ATTLIST A dflt CDATA "dv"><!ATTLIST E dflt CDATA "de">]>'


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_reader_gives_what_the_python_extractor_gives(data):
    body = data.draw(st.lists(_xml_element(2), max_size=6).map("".join))
    exprs = data.draw(st.lists(st.sampled_from(_EXPRS), max_size=8))
    groups = data.draw(st.lists(st.tuples(st.sampled_from(_GROUPS), st.sampled_from(_PARTS)), max_size=3))
    doctype = data.draw(st.booleans())
    # the reader's parser turns CDATA into text (strip_cdata's default); kept, it makes a text of
    # several nodes (CDATA, text, CDATA), which .text joins
    strip_cdata = data.draw(st.booleans())
    if not doctype:
        body = body.replace("&e;", "&amp;")
    xml = (f"{_DOCTYPE if doctype else ''}<E xmlns='urn:u' xmlns:u='urn:u' xmlns:inv='urn:i' xmlns:n='urn:n' "
           f"id='r' inv:n='q'>{body}</E>")
    record = etree.fromstring(xml.encode(), etree.XMLParser(strip_cdata=strip_cdata, **PARSER_OPTIONS))
    compiled = compiled_row_extractor(exprs, NAMESPACES, groups)
    assert compiled is not None
    assert compiled(record) == compile_row_extractor(exprs, NAMESPACES, groups)(record)


def test_erp_record_values():
    namespaces = {"": "urn:example:erp:usageplace:1", "inv": "urn:example:erp:invoice:1"}
    exprs = ["@id", "UsagePlace/@code", "Customer", "ContractNo", "Status", "Description"]
    groups = [("inv:Invoices/inv:Invoice", ["inv:Number", "@jobid"])]
    record = etree.fromstring(
        b'<Event xmlns="urn:example:erp:usageplace:1" xmlns:inv="urn:example:erp:invoice:1" id="ERP-1">'
        b'<UsagePlace code="643"/><Customer>X-1</Customer><ContractNo/><Status>conn<![CDATA[ected]]></Status>'
        b'<inv:Invoices><inv:Invoice jobid="9001"><inv:Number>800001</inv:Number></inv:Invoice>'
        b'<inv:Invoice><inv:Number>800002</inv:Number></inv:Invoice></inv:Invoices></Event>'
    )
    extract = compiled_row_extractor(exprs, namespaces, groups)
    assert extract is not None
    assert extract(record) == [
        "ERP-1", "643", "X-1", "", "connected", None, [["800001", "9001"], ["800002", None]]
    ]


def test_reader_refuses_what_is_not_an_element():
    extract = compiled_row_extractor(["A"], {})
    assert extract is not None
    with pytest.raises(TypeError):
        extract("<A/>")
