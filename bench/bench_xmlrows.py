"""The compiled record reader (batch/syntax/_xmlrows.pyx) against the Python
extractor, on the ERP export of bench_mapping (issue 9).

    PYTHONPATH=$PWD python3 bench/bench_xmlrows.py [--records N]

1. One record element, timeit: microseconds a call of each extractor.
2. The whole file through readers.read_xml in this process (no parser process, no mapping),
   each extractor in turn, three rounds alternating, best CPU time of each; lxml's iterparse
   alone over the same file as the reference.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batch.config.mapping import load_mapping  # noqa: E402
from batch.syntax import xmlpaths  # noqa: E402
from batch.transform import readers  # noqa: E402
from batch.transform.mapping import CompiledMapping  # noqa: E402
from bench.bench_mapping import XML_MAPPING, generate_xml, iterparse_alone  # noqa: E402


def one_record(plan, namespaces: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.xml"
        generate_xml(path, 3)
        record = etree.parse(str(path), etree.XMLParser(**readers.PARSER_OPTIONS)).getroot()[0][1]
    python = xmlpaths.compile_row_extractor(plan.texts, namespaces, plan.groups)
    compiled = xmlpaths.compiled_row_extractor(plan.texts, namespaces, plan.groups)
    assert compiled is not None, "the extension is not built (python3 setup.py build_ext --inplace)"
    assert compiled(record) == python(record)
    result = {}
    calls = 200_000
    for name, extract in (("python", python), ("compiled", compiled)):
        names = {"extract": extract, "record": record}
        best = min(timeit.repeat("extract(record)", number=calls, repeat=5, globals=names))
        result[f"{name}_us"] = round(best / calls * 1e6, 3)
    return result


def whole_file(data: Path, mapping, plan, compiled: bool) -> tuple[float, int]:
    real = readers.compiled_row_extractor
    if not compiled:
        readers.compiled_row_extractor = lambda *args: None
    try:
        records = 0
        started = time.process_time()
        with open(data, "rb") as stream:
            for chunk in readers.read_xml(stream, mapping.xml, plan):
                records += len(chunk)
        return time.process_time() - started, records
    finally:
        readers.compiled_row_extractor = real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    compiled_mapping = CompiledMapping(load_mapping(XML_MAPPING))
    mapping = compiled_mapping.mapping
    plan = compiled_mapping.xml_plan()
    namespaces = dict(mapping.xml.namespaces)
    summary: dict = {"records": args.records, **one_record(plan, namespaces)}
    print(f"one record: Python extractor {summary['python_us']} us, compiled {summary['compiled_us']} us")
    with tempfile.TemporaryDirectory(prefix="bench-xmlrows-") as tmp:
        data = Path(tmp) / "export.xml"
        generate_xml(data, args.records)
        best = {"python": float("inf"), "compiled": float("inf"), "iterparse": float("inf")}
        for _ in range(3):
            for name in ("python", "compiled"):
                seconds, records = whole_file(data, mapping, plan, name == "compiled")
                assert records == args.records
                best[name] = min(best[name], seconds)
            best["iterparse"] = min(best["iterparse"], iterparse_alone(data)["seconds"])
    for name, seconds in best.items():
        summary[f"{name}_file_us"] = round(seconds / args.records * 1e6, 2)
    print(f"read_xml in process, a record: Python extractor {summary['python_file_us']} us, compiled "
          f"{summary['compiled_file_us']} us; iterparse alone {summary['iterparse_file_us']} us")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
