# cython: language_level=3, boundscheck=False, wraparound=False
"""A record's values read straight from libxml2's nodes: the XML parser process's hot loop.

xmlpaths.compile_row_extractor reads a record through lxml's Python API: one proxy object and
one new tag string for each child element. This module walks the same nodes in C and gives the
same list, for the plan xmlpaths.row_plan describes:

    (slots, own attributes, direct children, Python slots, groups)

- own attribute  (slot, clark):            element.get(clark)
- direct child   (slot, tag, attr|None):   the first child with that tag: (c.text or '') or c.get(attr)
- Python slot    (slot, extractor):        extractor(element), for anything else
- group          (slot, steps|None, finder|None, subplan):
      every element the plain child path `steps` finds, in findall's order (or finder(element) for
      another path), each read by subplan

It reads what lxml reads: `.text` is lxml's _collectText (text and CDATA nodes up to the first
other node; None when there are none, '' when they are all empty), `.get()` is libxml2's
xmlGetNsProp (first attribute of that name in no namespace, or in that namespace); values that
are not one text node go through lxml's own attributeValueFromNsName.
"""

from libc.string cimport strcmp
from libc.stdlib cimport malloc, free

cimport lxml.includes.etreepublic as cetree
from lxml.includes cimport tree
from lxml.includes.tree cimport const_xmlChar, xmlNode, xmlAttr

cetree.import_lxml__etree()

cdef enum:
    MAX_SLOTS = 256

cdef enum RuleKind:
    CHILD_TEXT = 0
    CHILD_ATTR = 1
    GROUP = 2


cdef struct Name:
    const char* href  # NULL: no namespace
    const char* local


cdef struct Rule:
    int kind
    int slot
    Name tag          # the direct child's tag (the group's first step)
    Name attr         # CHILD_ATTR: the attribute
    int group         # GROUP: index into Plan.groups


cdef inline bint _name_is(const_xmlChar* name, tree.xmlNs* ns, Name* want) noexcept:
    if strcmp(<const char*>name, want.local) != 0:
        return False
    if want.href is NULL:
        return ns is NULL
    return ns is not NULL and ns.href is not NULL and strcmp(<const char*>ns.href, want.href) == 0


cdef inline xmlNode* _text_or_skip(xmlNode* c_node) noexcept:
    # lxml's _textNodeOrSkip
    while c_node is not NULL:
        if c_node.type == tree.XML_TEXT_NODE or c_node.type == tree.XML_CDATA_SECTION_NODE:
            return c_node
        elif c_node.type == tree.XML_XINCLUDE_START or c_node.type == tree.XML_XINCLUDE_END:
            c_node = c_node.next
        else:
            return NULL
    return NULL


cdef object _collect_text(xmlNode* c_node):
    # lxml's _collectText (apihelpers.pxi), line for line
    cdef Py_ssize_t count = 0
    cdef const_xmlChar* c_text = NULL
    cdef xmlNode* cur
    cur = c_node = _text_or_skip(c_node)
    while cur is not NULL:
        if cur.content[0] != 0:
            c_text = cur.content
        count += 1
        cur = _text_or_skip(cur.next)
    if c_text is NULL:
        return '' if count > 0 else None
    if count == 1:
        return (<const char*>c_text).decode('UTF-8')
    result = b''
    while c_node is not NULL:
        result += <const char*>c_node.content
        c_node = _text_or_skip(c_node.next)
    return (<bytes>result).decode('UTF-8')


cdef object _attribute(xmlNode* c_node, Name* want):
    # xmlGetNsProp's lookup; a value of one text node is read here, anything else by lxml
    cdef xmlAttr* c_attr = c_node.properties
    cdef xmlNode* value
    while c_attr is not NULL:
        if _name_is(c_attr.name, c_attr.ns, want):
            value = c_attr.children
            if value is not NULL and value.next is NULL and (
                    value.type == tree.XML_TEXT_NODE or value.type == tree.XML_CDATA_SECTION_NODE):
                return (<const char*>value.content).decode('UTF-8')
            return cetree.attributeValueFromNsName(c_node, <const_xmlChar*>want.href, <const_xmlChar*>want.local)
        c_attr = c_attr.next
    if c_node.doc is not NULL and (c_node.doc.intSubset is not NULL or c_node.doc.extSubset is not NULL):
        # a DTD may give the attribute a default value
        return cetree.attributeValueFromNsName(c_node, <const_xmlChar*>want.href, <const_xmlChar*>want.local)
    return None


cdef class Plan:
    cdef int slots
    cdef list keep            # the bytes the Name pointers point into
    cdef Name* own            # own attributes
    cdef int* own_slots
    cdef int n_own
    cdef Rule* rules          # direct children and plain groups, matched in one pass
    cdef int n_rules
    cdef list python          # [(slot, extractor)]
    cdef list groups          # [(slot, [Name as (href, local)] steps, finder or None, Plan)]
    cdef Name** group_steps   # per group: its steps after the first
    cdef int* group_depth
    cdef int n_steps          # group_steps entries allocated
    cdef list group_plans
    cdef list finder_groups   # [(slot, finder, Plan)]
    cdef bint needs_proxy     # Python slots read the lxml element

    def __cinit__(self):
        self.own = NULL
        self.own_slots = NULL
        self.rules = NULL
        self.group_steps = NULL
        self.group_depth = NULL
        self.n_own = self.n_rules = self.n_steps = 0

    def __dealloc__(self):
        cdef int i
        free(self.own)
        free(self.own_slots)
        free(self.rules)
        if self.group_steps is not NULL:
            for i in range(self.n_steps):
                free(self.group_steps[i])
            free(self.group_steps)
        free(self.group_depth)

    def __init__(self, spec):
        slots, own, children, python, groups = spec
        if slots > MAX_SLOTS:
            raise ValueError(f"more than {MAX_SLOTS} values in a record")
        self.slots = slots
        self.keep = []
        self.python = list(python)
        self.needs_proxy = bool(self.python)
        self.n_own = len(own)
        self.own = <Name*>malloc(max(1, self.n_own) * sizeof(Name))
        self.own_slots = <int*>malloc(max(1, self.n_own) * sizeof(int))
        for i, (slot, clark) in enumerate(own):
            self.own_slots[i] = slot
            self._name(clark, &self.own[i])
        plain = [g for g in groups if g[1] is not None]
        self.finder_groups = [(slot, finder, Plan(sub)) for slot, steps, finder, sub in groups if steps is None]
        self.n_rules = len(children) + len(plain)
        self.rules = <Rule*>malloc(max(1, self.n_rules) * sizeof(Rule))
        self.group_plans = []
        self.group_steps = <Name**>malloc(max(1, len(plain)) * sizeof(Name*))
        self.group_depth = <int*>malloc(max(1, len(plain)) * sizeof(int))
        if (self.own is NULL or self.own_slots is NULL or self.rules is NULL or self.group_steps is NULL
                or self.group_depth is NULL):
            raise MemoryError()
        r = 0
        for slot, tag, attr in children:
            self.rules[r].kind = CHILD_TEXT if attr is None else CHILD_ATTR
            self.rules[r].slot = slot
            self._name(tag, &self.rules[r].tag)
            if attr is not None:
                self._name(attr, &self.rules[r].attr)
            r += 1
        for g, (slot, steps, _, sub) in enumerate(plain):
            self.rules[r].kind = GROUP
            self.rules[r].slot = slot
            self.rules[r].group = g
            self._name(steps[0], &self.rules[r].tag)
            self.group_depth[g] = len(steps) - 1
            self.group_steps[g] = <Name*>malloc(max(1, len(steps) - 1) * sizeof(Name))
            if self.group_steps[g] is NULL:
                raise MemoryError()
            self.n_steps += 1
            for d, step in enumerate(steps[1:]):
                self._name(step, &self.group_steps[g][d])
            self.group_plans.append(Plan(sub))
            r += 1

    cdef _name(self, str clark, Name* out):
        if clark.startswith("{"):
            href, _, local = clark[1:].partition("}")
            b_href = href.encode("utf-8")
            self.keep.append(b_href)
            out.href = <const char*>b_href
        else:
            local = clark
            out.href = NULL
        b_local = local.encode("utf-8")
        self.keep.append(b_local)
        out.local = <const char*>b_local

    cdef list read(self, cetree._Document doc, xmlNode* c_node, object element):
        cdef list row = [None] * self.slots
        cdef unsigned char seen[MAX_SLOTS]
        cdef int i
        cdef Rule* rule
        cdef xmlNode* child
        for i in range(self.n_own):
            row[self.own_slots[i]] = _attribute(c_node, &self.own[i])
        for i in range(self.n_rules):
            seen[self.rules[i].slot] = 0
            if self.rules[i].kind == GROUP:
                row[self.rules[i].slot] = []
        if self.needs_proxy and element is None:
            element = cetree.elementFactory(doc, c_node)
        for slot, extractor in self.python:
            row[slot] = extractor(element)
        child = c_node.children
        while child is not NULL:
            if child.type == tree.XML_ELEMENT_NODE:
                for i in range(self.n_rules):
                    rule = &self.rules[i]
                    if not _name_is(child.name, child.ns, &rule.tag):
                        continue
                    if rule.kind == GROUP:
                        self._walk(doc, child, rule.group, 0, <list>row[rule.slot])
                    elif not seen[rule.slot]:
                        seen[rule.slot] = 1
                        if rule.kind == CHILD_TEXT:
                            text = _collect_text(child.children)
                            row[rule.slot] = '' if text is None else text
                        else:
                            row[rule.slot] = _attribute(child, &rule.attr)
            child = child.next
        if self.finder_groups:
            if element is None:
                element = cetree.elementFactory(doc, c_node)
            for slot, finder, plan in self.finder_groups:
                row[slot] = [(<Plan>plan).read(doc, (<cetree._Element>found)._c_node, found)
                             for found in finder(element)]
        return row

    cdef _walk(self, cetree._Document doc, xmlNode* c_node, int group, int depth, list out):
        # the deeper steps of a plain group path, in findall's order
        cdef xmlNode* child
        if depth == self.group_depth[group]:
            out.append((<Plan>self.group_plans[group]).read(doc, c_node, None))
            return
        child = c_node.children
        while child is not NULL:
            if child.type == tree.XML_ELEMENT_NODE and _name_is(child.name, child.ns, &self.group_steps[group][depth]):
                self._walk(doc, child, group, depth + 1, out)
            child = child.next


cdef class RowExtractor:
    """extract(element) -> list, as xmlpaths.compile_row_extractor's function gives it."""
    cdef Plan plan

    def __init__(self, spec):
        self.plan = Plan(spec)

    def __call__(self, cetree._Element element not None):
        return self.plan.read(element._doc, element._c_node, element)
