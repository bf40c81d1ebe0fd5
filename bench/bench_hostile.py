"""Hostile-input figures (issue 7): memory on XML whatever it holds, time of a catastrophic pattern.

    python bench/bench_hostile.py           # ~1-2 minutes on a 2-core machine

1. Peak RSS of read + map on the D1 file: 20 MB of <j>x</j> elements around one record
   (663 MB before the reader released what is not a record).
2. Peak RSS and speed of read + map on a well-formed 200 MB XML export (bench_mapping's ERP
   dialect).
3. Peak RSS on 87 MB of distinct element names (`<j0/><j1/>…`, D1's last gap): libxml2 keeps
   every distinct name, so this took the reading process to 488 MB, for good; the file is now
   parsed in a child process that refuses it past its memory budget.
4. What the D4 pattern '(a+)+$' costs a record whose value it does not match, for a 35- and a
   100,000-character value (Python's `re` took minutes for 35; RE2 is linear in the value).

Each measurement runs the production code (batch.transform.extract.mapped_file, the path the pipeline and
`preview` read with) in a fresh child process, whose peak RSS is its VmHWM (ru_maxrss would
carry the parent's peak over the fork). XML is parsed in a process of its own
(batch.transform.xmlprocess); its peak is printed next to the reader's ("parser"). The last line
printed is one JSON object.
Targets: every peak, the reader's and the parser's, <= 150 MB; a pattern's cost per record
bounded (printed as the bound).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_mapping import XML_MAPPING, generate_xml  # noqa: E402

RSS_TARGET_MB = 150
PATTERN = "(a+)+$"
# a record's pattern check may cost at most this per character of its value (RE2: linear)
PATTERN_BOUND_US_PER_CHAR = 0.05
PATTERN_BOUND_US_FIXED = 20.0

JUNK_MAPPING = """\
format: xml
xml: {record_path: //Event}
fields:
  id: {xpath: "@id"}
  usageplacecode: {xpath: Place}
  time: {xpath: Time}
  status: {xpath: Status, map: {D: disconnected}}
"""
PATTERN_MAPPING = """\
format: csv
fields:
  id: {column: id}
  usageplacecode: {column: place, pattern: "%s"}
  time: {column: time}
  status: {column: status, map: {D: disconnected}}
"""


def write_junk(path: Path) -> None:
    """The D1 reproduction from the issue, byte for byte."""
    path.write_text(
        "<Export><Junk>" + "<j>x</j>" * 2500000 + '</Junk><Events><Event id="1"><Place>643007572062440001</Place>'
        "<Time>2024-02-05 06:30:00</Time><Status>D</Status></Event></Events></Export>"
    )


def write_xml_export(path: Path, megabytes: int) -> int:
    """bench_mapping's ERP export, grown to `megabytes`; returns the record count."""
    per_record = 400  # close enough for a first try; corrected by the size written
    records = megabytes * 1_000_000 // per_record
    generate_xml(path, records)
    size = path.stat().st_size
    if size < megabytes * 1_000_000:
        records = int(records * megabytes * 1_000_000 / size) + 1
        generate_xml(path, records)
    return records


def write_distinct_names(path: Path, megabytes: int) -> None:
    """`<Export><Junk><j0/><j1/>…</Junk>` and one record after it: `megabytes` of distinct element names."""
    with open(path, "w") as out:
        out.write("<Export><Junk>")
        written = start = 0
        while written < megabytes * 1_000_000:
            part = "".join(f"<j{n}/>" for n in range(start, start + 10_000))
            out.write(part)
            written, start = written + len(part), start + 10_000
        out.write('</Junk><Events><Event id="1"><Place>643007572062440001</Place>'
                  "<Time>2024-02-05 06:30:00</Time><Status>D</Status></Event></Events></Export>")


def write_pattern_file(path: Path, value: str, count: int) -> None:
    with open(path, "w") as out:
        out.write("id,place,time,status\n")
        for i in range(count):
            out.write(f"{i},{value},2024-02-05 06:30:00,D\n")


def phase(mapping_text: str, data: Path) -> dict:
    """In the child: read + map every record of `data`; records, seconds, peak RSS (this process's
    and the XML parser process's), and the file error if the file is refused."""
    import logging

    from batch.config.mapping import load_mapping_text
    from batch.transform.extract import mapped_file
    from batch.transform.mapping import CompiledMapping
    from batch.transform.readers import FileError

    parser_peaks: list[float] = []

    class ParserFigures(logging.Handler):  # xmlprocess logs the parser process's peak when it ends
        def emit(self, record: logging.LogRecord) -> None:
            parser_peaks.append(getattr(record, "xml_child_peak_rss_mb"))  # noqa: B009  # set by extra=

    logger = logging.getLogger("batch.transform.xmlprocess")
    logger.addHandler(ParserFigures())
    logger.setLevel(logging.DEBUG)
    compiled = CompiledMapping(load_mapping_text(mapping_text))
    valid = invalid = 0
    error = None
    started = time.perf_counter()
    try:
        for records in mapped_file(compiled, data):
            for record in records:
                if record.ok:
                    valid += 1
                else:
                    invalid += 1
    except FileError as exc:
        error = str(exc)
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return {
        "valid": valid, "invalid": invalid, "seconds": round(seconds, 3), "error": error,
        "peak_rss_mb": round(int(match.group(1)) / 1024, 1),
        "parser_peak_rss_mb": round(max(parser_peaks), 1) if parser_peaks else None,
    }


def in_child(mapping_text: str, data: Path) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--phase", mapping_text, str(data)],
        check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=600,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", nargs=2, metavar=("MAPPING_TEXT", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase[0], Path(args.phase[1]))))
        return

    summary: dict = {"rss_target_mb": RSS_TARGET_MB}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        junk = Path(tmp) / "junk.xml"
        write_junk(junk)
        figures = in_child(JUNK_MAPPING, junk)
        assert figures["valid"] == 1, figures
        print(f"D1 junk file ({junk.stat().st_size / 1e6:.0f} MB, 2,500,000 non-record elements, 1 record): "
              f"peak RSS {figures['peak_rss_mb']} MB (parser {figures['parser_peak_rss_mb']} MB) "
              f"in {figures['seconds']} s")
        summary["d1_junk_peak_rss_mb"] = figures["peak_rss_mb"]
        summary["d1_junk_parser_peak_rss_mb"] = figures["parser_peak_rss_mb"]
        junk.unlink()

        names = Path(tmp) / "names.xml"
        write_distinct_names(names, 87)
        figures = in_child(JUNK_MAPPING, names)
        assert figures["error"] is not None and "more than 64 MB of memory" in figures["error"], figures
        print(f"D1 distinct names ({names.stat().st_size / 1e6:.0f} MB of <j0/><j1/>...): refused in "
              f"{figures['seconds']} s, peak RSS {figures['peak_rss_mb']} MB "
              f"(parser {figures['parser_peak_rss_mb']} MB; 488 MB in one process before): {figures['error']}")
        summary["d1_names_peak_rss_mb"] = figures["peak_rss_mb"]
        summary["d1_names_parser_peak_rss_mb"] = figures["parser_peak_rss_mb"]
        names.unlink()

        export = Path(tmp) / "export.xml"
        records = write_xml_export(export, 200)
        size_mb = export.stat().st_size / 1e6
        figures = in_child(XML_MAPPING.read_text(), export)
        assert figures["valid"] + figures["invalid"] == records, figures
        rate = round(records / figures["seconds"])
        print(f"well-formed XML export ({size_mb:.0f} MB, {records:,} records): peak RSS {figures['peak_rss_mb']} MB "
              f"(parser {figures['parser_peak_rss_mb']} MB), {figures['seconds']} s = {rate:,} records/s")
        summary.update(xml_export_mb=round(size_mb), xml_export_peak_rss_mb=figures["peak_rss_mb"],
                       xml_export_parser_peak_rss_mb=figures["parser_peak_rss_mb"], xml_export_records_per_s=rate)
        export.unlink()

        for label, value, count in (("35", "a" * 35 + "!", 20_000), ("100k", "a" * 100_000 + "!", 200)):
            data = Path(tmp) / f"pattern-{label}.csv"
            write_pattern_file(data, value, count)
            figures = in_child(PATTERN_MAPPING % PATTERN, data)
            assert figures["invalid"] == count, figures
            per_record = figures["seconds"] / count * 1e6
            bound = PATTERN_BOUND_US_FIXED + PATTERN_BOUND_US_PER_CHAR * len(value)
            print(f"D4 pattern {PATTERN!r} against a {len(value):,}-character value: {per_record:,.1f} us a record "
                  f"(read + map + pattern; bound {bound:,.0f} us = {PATTERN_BOUND_US_FIXED:g} + "
                  f"{PATTERN_BOUND_US_PER_CHAR:g} per character)")
            summary[f"d4_pattern_us_per_record_{label}"] = round(per_record, 1)
            summary[f"d4_pattern_bound_us_{label}"] = round(bound)

    peaks = [value for key, value in summary.items() if key.endswith("peak_rss_mb")]
    summary["ok"] = (
        all(peak is not None and peak <= RSS_TARGET_MB for peak in peaks)
        and summary["d4_pattern_us_per_record_35"] <= summary["d4_pattern_bound_us_35"]
        and summary["d4_pattern_us_per_record_100k"] <= summary["d4_pattern_bound_us_100k"]
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
