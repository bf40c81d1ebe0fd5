"""Generated XML records for the property tests of the record readers: the Python extractor
against lxml's own find/XPath (test_readers) and the compiled reader against the Python
extractor (test_xmlrows)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


def xml_elements(depth: int, *, tags: Sequence[str], texts: Sequence[str], attribute_names: Sequence[str],
                 values: Sequence[str], tails: Sequence[str], max_attributes: int) -> st.SearchStrategy[str]:
    """Markup of one element nested up to `depth` deep: a tag of `tags` (the tag 'N' declares
    xmlns="", no namespace), up to `max_attributes` attributes, a text or none, up to four
    children, and a tail after it."""
    text = st.one_of(st.none(), st.sampled_from(texts))
    attributes = st.dictionaries(st.sampled_from(attribute_names), st.sampled_from(values), max_size=max_attributes)
    children = (st.lists(xml_elements(depth - 1, tags=tags, texts=texts, attribute_names=attribute_names,
                                      values=values, tails=tails, max_attributes=max_attributes), max_size=4)
                if depth > 0 else st.just([]))

    def render(parts: tuple[str, dict[str, str], str | None, list[str], str]) -> str:
        tag, attrs, inner, kids, after = parts
        attrs_text = "".join(f' {name}="{value}"' for name, value in attrs.items())
        declare = ' xmlns=""' if tag == "N" else ""
        return f"<{tag}{declare}{attrs_text}>{inner or ''}{''.join(kids)}</{tag}>{after}"

    return st.tuples(st.sampled_from(tags), attributes, text, children, st.sampled_from(tails)).map(render)
