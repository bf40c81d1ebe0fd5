"""Issue 7, D1's last gap: XML memory that grows with the number of DISTINCT names in a file.

libxml2 keeps every distinct element name, attribute name, namespace prefix and URI (and
processing-instruction target, and short or blank text) in a dictionary that lxml shares between
the parsers of a thread and never shrinks: 87 MB of `<j1/><j2/>…` took a process to 488 MB, for
good. A file's XML is now parsed in a child process with a memory budget
(batch.transform.xmlprocess); each test here failed before: the file was accepted and the
process that read it grew to several hundred MB.

Memory is measured in a fresh interpreter (`_MEASURE`), so that this test process's own
dictionary is neither counted nor grown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batch.config.mapping import load_mapping_text
from batch.transform.extract import mapped_chunks, mapped_file
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError

ROOT = Path(__file__).resolve().parent.parent

MAPPING = """\
format: xml
xml: {record_path: //Event}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: Place}
  time: {xpath: Time}
  status: {xpath: Status, map: {D: disconnected}}
"""
EVENT = (
    '<Event id="{i}"><Place>643007572062440001</Place><Time>2024-02-05 06:30:00</Time><Status>D</Status></Event>'
)
BUDGET_ERROR = (
    "line 1: the XML needed more than 64 MB of memory to parse by this line: refused (an export needs a few MB). "
    "This much comes from a great many distinct element, attribute or namespace names, which the XML parser "
    "keeps until the end of the file"
)
# What the process that reads a file (the service, `preview`) may reach: a bare interpreter with
# lxml and the mapping takes ~40 MB. Before the fix these files took it to 250-500 MB.
READER_PEAK_MB = 80
# What the parser process may reach: ~21 MB at start, the 64 MB budget, and the one doubling of
# libxml2's name table that can happen between two checks.
CHILD_PEAK_MB = 160

NAMES = 3_000_000  # of each kind: 20-90 MB of markup, several times the budget's worth of names
KINDS = {
    "distinct_element_names": lambda n: f"<j{n}/>",
    "distinct_attribute_names": lambda n: f"<j a{n}=''/>",
    "distinct_namespace_prefixes": lambda n: f"<j xmlns:p{n}='u'/>",
    "distinct_namespace_uris": lambda n: f"<j xmlns='urn:{n}'/>",
    "distinct_processing_instruction_targets": lambda n: f"<?t{n}?>",
    # libxml2 also keeps blank text shorter than 60 characters: runs of spaces and tabs
    "distinct_blank_texts": lambda n: "<j/> " + format(n, "b").replace("0", " ").replace("1", "\t"),
}


def write_names(path: Path, kind: str) -> None:
    make = KINDS[kind]
    with open(path, "w") as out:
        out.write("<Export><Junk>")
        for start in range(0, NAMES, 10_000):
            out.write("".join(make(n) for n in range(start, start + 10_000)))
        out.write(f"</Junk><Events>{EVENT.format(i=2)}</Events></Export>")


_MEASURE = """\
import json, logging, re, sys
from batch.config.mapping import load_mapping_text
from batch.transform.extract import mapped_file
from batch.transform.mapping import CompiledMapping
from batch.transform.readers import FileError

child_peaks = []
class Figures(logging.Handler):
    def emit(self, record):
        child_peaks.append(record.xml_child_peak_rss_mb)
logger = logging.getLogger("batch.transform.xmlprocess")
logger.addHandler(Figures())
logger.setLevel(logging.DEBUG)

compiled = CompiledMapping(load_mapping_text(sys.argv[1]))
valid, error = 0, None
try:
    for records in mapped_file(compiled, sys.argv[2]):
        valid += sum(1 for record in records if record.ok)
except FileError as exc:
    error = str(exc)
# VmHWM, not ru_maxrss: Linux carries the parent's peak over a fork + exec into ru_maxrss
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"valid": valid, "error": error, "peak_mb": peak_kb / 1024, "child_peaks": child_peaks}))
"""


def measure(path: Path) -> dict:
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, MAPPING, str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )
    return json.loads(child.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_D1_xml_with_millions_of_distinct_names_is_refused_within_a_memory_bound(kind, tmp_path):
    path = tmp_path / f"{kind}.xml"
    write_names(path, kind)
    result = measure(path)
    assert (result["valid"], result["error"]) == (0, BUDGET_ERROR), result
    assert result["peak_mb"] < READER_PEAK_MB, result
    assert len(result["child_peaks"]) == 1 and result["child_peaks"][0] < CHILD_PEAK_MB, result


def test_D1_distinct_names_do_not_stay_in_the_reading_process(tmp_path):
    """Ten files of 200,000 new names each: the reading process does not grow with them."""
    compiled = CompiledMapping(load_mapping_text(MAPPING))
    paths = []
    for i in range(10):
        names = "".join(f"<f{i}n{n} a{i}n{n}='1'/>" for n in range(200_000))
        path = tmp_path / f"f{i}.xml"
        path.write_text(f"<Export><Junk>{names}</Junk><Events>{EVENT.format(i=i)}</Events></Export>")
        paths.append(path)
    before = _resident_mb()
    for i, path in enumerate(paths):
        assert [r.event["id"] for records in mapped_file(compiled, path) for r in records] == [str(i)]
    # parsed in this process, the same files grew it by ~150 MB
    assert _resident_mb() - before < 10


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


# --- the parser process itself -----------------------------------------------------------------------


def test_the_parser_process_gives_what_the_in_process_reader_gives(tmp_path):
    """Records, lines, groups and errors cross the pipe unchanged."""
    compiled = CompiledMapping(load_mapping_text(textwrap.dedent("""\
        format: xml
        xml: {record_path: /Export/Events/Event}
        fields:
          id: {xpath: "@id"}
          usageplacecode: {xpath: Place}
          time: {xpath: Time}
          status: {xpath: Status, map: {D: disconnected}}
          description: {xpath: Note, default: "é ✓"}
        """)))
    events = "\n".join(
        EVENT.format(i=i).replace("</Event>", f"<Note>ü{i} &amp; «x»</Note></Event>" if i % 3 else "</Event>")
        for i in range(1000)
    )
    path = tmp_path / "export.xml"
    filler = "x" * 100_000  # the error is blocks away from the last record
    path.write_bytes(f"<Export>\n<Events>\n{events}\n</Events>\n<!-- {filler} -->\n<broken></Export>".encode())
    outcomes = {}
    for name, in_child in (("child", True), ("here", False)):
        records: list = []
        with open(path, "rb") as stream, pytest.raises(FileError) as info:
            for chunk in mapped_chunks(compiled, stream, xml_in_child=in_child):
                records += chunk
        outcomes[name] = ([(r.line, r.event, r.ok) for r in records], str(info.value))
    assert outcomes["child"] == outcomes["here"]
    assert len(outcomes["child"][0]) == 7 * 128  # the whole chunks read before the error, as before
    assert outcomes["child"][1] == (
        "line 1005: not well-formed XML: Opening and ending tag mismatch: broken line 1005 and Export"
    )


def test_a_reader_that_stops_early_leaves_no_parser_process(tmp_path):
    path = tmp_path / "export.xml"
    path.write_text("<Export><Events>" + "".join(EVENT.format(i=i) for i in range(10_000)) + "</Events></Export>")
    compiled = CompiledMapping(load_mapping_text(MAPPING))
    records = mapped_file(compiled, path)
    assert len(next(records)) == 128
    assert _children() != []
    records.close()  # type: ignore[attr-defined]  # a generator
    assert _children() == []


def _children() -> list[str]:
    """This process's parser children (others, such as a browser test's Playwright driver, may live
    beside them for the whole session)."""
    pid = os.getpid()
    return [child for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if b"batch.transform.xmlprocess" in _cmdline(child)]


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


def test_a_stop_signal_to_the_whole_service_leaves_the_parser_process_to_its_parent(tmp_path):
    """systemd's stop signals every process of the service: the parse must not end as a broken file."""
    path = tmp_path / "export.xml"
    path.write_text("<Export><Events>" + "".join(EVENT.format(i=i) for i in range(20_000)) + "</Events></Export>")
    records = mapped_file(CompiledMapping(load_mapping_text(MAPPING)), path)
    count = len(next(records))
    [child] = _children()
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(int(child), stop)
    count += sum(len(chunk) for chunk in records)
    assert count == 20_000


def test_a_parser_process_that_dies_is_a_file_error_that_says_so(tmp_path):
    path = tmp_path / "export.xml"
    path.write_text("<Export><Events>" + "".join(EVENT.format(i=i) for i in range(100_000)) + "</Events></Export>")
    records = mapped_file(CompiledMapping(load_mapping_text(MAPPING)), path)
    assert len(next(records)) == 128  # the child is now blocked on a full pipe, far from the end
    [child] = _children()
    os.kill(int(child), signal.SIGKILL)
    with pytest.raises(FileError) as info:
        list(records)
    assert str(info.value) == (
        "the XML parser process was killed by signal 9 before the end of the file "
        "(it may use 64 MB; a file that needs more is refused)"
    )
    assert _children() == []


def test_the_parser_process_refuses_a_stream_it_would_read_past(tmp_path):
    """The child reads the file descriptor: a wrapped stream (gzip ...) would be bypassed, so it is refused."""
    import gzip

    path = tmp_path / "export.xml.gz"
    with gzip.open(path, "wb") as out:
        out.write(("<Export><Events>" + EVENT.format(i=1) + "</Events></Export>").encode())
    compiled = CompiledMapping(load_mapping_text(MAPPING))
    with gzip.open(path, "rb") as stream, pytest.raises(TypeError) as info:
        list(mapped_chunks(compiled, stream, xml_in_child=True))
    assert str(info.value) == "read_xml_file needs a file opened with open(path, 'rb'), not GzipFile"
