"""Mapping throughput as a user gets it, next to the bare readers, on the same generated files.

    python bench/bench_mapping.py            # 1,000,000-record CSV and 200,000-record XML
    python bench/bench_mapping.py --small    # 100,000 / 20,000, for a quick look

"ours" is exactly what production runs between reading a file and the journal's INSERT: the
file's sha256 (`pipeline.file_digest`), then `Processor._record` (reader, mapping, validation,
each record's `NewEvent` with the JSON text stored and sent (and a generated id's hash), batches of
`JOURNAL_BATCH`) into a journal whose `record_events` stops where SQLite starts: it builds the
very INSERT parameters `Journal.record_events` builds (`journal.events_insert_params`), but
executes no SQL. Next to it, on the same
file: pandas' C reader alone (CSV, chunks of 65,536 rows, every column as text) and lxml's
`iterparse` alone (XML, each record element cleared when it ends). Absolute figures drift between
machines; the targets are ratios from one run: ours >= 0.33 of each reader alone, peak RSS
<= 400 MB (CSV) and <= 300 MB (XML). Rates are records per second of the phase's own CPU time
(each phase is single-threaded, so on an idle machine that is its wall time): on a shared
machine, wall time depends on what else runs, and the ratio of two phases run a minute apart
would measure the neighbours. Wall seconds are printed too.

For a breakdown, a third phase runs our own reader alone (`extract.mapped_chunks`' reader with
the mapping's options, no mapping): what is left of "ours" is mapping, validation and the
journal's parameters. It is printed and in the JSON (`csv_our_reader_per_s`,
`xml_our_reader_per_s`), not part of the targets; so is the CPU the XML parser process took a
record within "ours" (`xml_parser_process_us`: parse, read the values, write them to the pipe).

Each phase runs in a fresh subprocess so that its peak RSS is its own. The last line printed is
one JSON object: csv_records_per_s, csv_reader_only_per_s, xml_records_per_s,
xml_reader_only_per_s, csv_peak_rss_mb, xml_peak_rss_mb, the two ratios and pass/fail.

Workbooks are an extra figure, outside pass/fail: the production path on a 100,000-row .xlsx
(20,000 with --small; the dialect of samples/workbook_billing.xlsx) as xlsx_records_per_s and
xlsx_peak_rss_mb, next to the two readers it was chosen between, each alone on the same file:
openpyxl in read-only mode (what production uses) and python-calamine (null when not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CSV_MAPPING = ROOT / "config" / "mappings" / "finnish_cp1252.yaml"
XML_MAPPING = ROOT / "config" / "mappings" / "erp_export.yaml"
XLSX_MAPPING = ROOT / "config" / "mappings" / "workbook_billing.yaml"
STATUS_CODES = ("K", "KY", "EK")


def generate_csv(path: Path, records: int) -> None:
    """The Finnish billing dialect of samples/finnish_cp1252.csv, ~130 bytes a record."""
    with open(path, "w", encoding="cp1252", newline="") as out:
        out.write("KATKAISUTAPAHTUMAT;Energiayhtiö Oy\r\nAjettu;6.2.2024 02:00\r\n")
        out.write("Tapahtumatunnus;Käyttöpaikka;Asiakasnro;Sopimusnro;Pvm;Klo;Tila;Laskunumerot;Toimeksiannot;Selite\r\n")
        lines = []
        start = datetime(2024, 1, 1)
        for i in range(records):
            # events spread over a year, (nearly) all at different seconds: no cache flatters this
            moment = start + timedelta(seconds=(i * 31_557_599) // records)
            code = STATUS_CODES[i % 3]
            reason = ("Katkaistu etäyhteydellä", "Kytketty maksun jälkeen", "Mittari lukitussa tilassa")[i % 3]
            lines.append(
                f"KT-{i:09d};6430075720{i:08d};ASIAKAS-{i % 999999:06d};SOP-{i % 777777}b;"
                f"{moment.day}.{moment.month}.{moment.year};{moment.hour}:{moment.minute:02d}:{moment.second:02d};"
                f"{code};{5000000 + i},{6000000 + i};"
                f"{100 + i % 9000},{200 + i % 9000};{reason}\r\n"
            )
            if len(lines) == 10_000:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))
        out.write(f"YHTEENSÄ;{records}\r\n")


def generate_xml(path: Path, records: int) -> None:
    """The ERP dialect of samples/erp_export.xml."""
    statuses = ("disconnected", "connected", "notdisconnected")
    with open(path, "w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write('<Export xmlns="urn:example:erp:usageplace:1" xmlns:inv="urn:example:erp:invoice:1">\n<Events>\n')
        parts = []
        start = datetime(2024, 1, 1)
        for i in range(records):
            moment = start + timedelta(seconds=(i * 31_557_599) // records)
            status = statuses[i % 3]
            description = "<Description>Gate locked</Description>" if status == "notdisconnected" else ""
            parts.append(
                f'<Event id="ERP-{i:09d}"><UsagePlace code="6430075720{i:08d}"/><Customer>X-{i % 99999}</Customer>'
                f"<ContractNo>{i % 77777}a</ContractNo><Time>{moment:%Y-%m-%dT%H:%M:%S}+02:00</Time>"
                f"<Status>{status}</Status>{description}<inv:Invoices>"
                f'<inv:Invoice jobid="{9000 + i % 1000}"><inv:Number>{800000 + i}</inv:Number></inv:Invoice>'
                f"</inv:Invoices></Event>\n"
            )
            if len(parts) == 10_000:
                out.write("".join(parts))
                parts = []
        out.write("".join(parts))
        out.write("</Events>\n</Export>\n")


PANDAS_CHUNK_ROWS = 65_536
XML_RECORD_TAG = "{urn:example:erp:usageplace:1}Event"
CSV_SKIP_LINES = 2  # the two preamble lines above the header (see generate_csv)
TARGET_RATIO = 0.33
TARGET_RSS_MB = {"csv": 400.0, "xml": 300.0}


def generate_xlsx(path: Path, records: int) -> None:
    """The billing workbook of samples/workbook_billing.xlsx: instructions, a title row, date-time
    and number cells; written by openpyxl's streaming writer."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    book.create_sheet("Ohjeet").append(["Kirjaa tapahtumat välilehdelle Tapahtumat."])
    sheet = book.create_sheet("Tapahtumat")
    sheet.append(["Katkaisut ja kytkennät 2024"])
    sheet.append(["Tunnus", "Käyttöpaikka", "Asiakas", "Aika", "Tila", "Lasku", "Työ", "Selite"])
    start = datetime(2024, 1, 1)
    for i in range(records):
        moment = WriteOnlyCell(sheet, start + timedelta(seconds=(i * 31_557_599) // records))
        moment.number_format = "d.m.yyyy h:mm:ss"
        code = STATUS_CODES[i % 3]
        sheet.append([f"XL-{i:09d}", f"6430075720{i:08d}", f"B-{i % 999999:06d}", moment, code,
                      5000000 + i, 100 + i % 9000, "Mittari lukitussa tilassa" if code == "EK" else None])
    book.save(path)


class ParamsOnlyJournal:
    """The journal as `Processor._record` uses it, up to SQLite: `record_events` builds the
    INSERT parameters with the production function and keeps only counts (counted with loops
    that run in C, so that the bench's own bookkeeping is not charged to production)."""

    def __init__(self) -> None:
        self.records = self.invalid = self.filtered = 0

    def record_events(self, file_id: int, events: Any) -> int:
        from batch.store.journal import EventState, events_insert_params, to_text, utc_now

        params = events_insert_params(file_id, events, to_text(utc_now()))
        self.invalid += list(map(itemgetter(7), params)).count(EventState.INVALID)
        self.records += len(params)
        return len(params)

    def set_filtered(self, file_id: int, filtered: int) -> None:
        self.filtered = filtered  # one UPDATE a file in the journal: nothing to build before SQLite


def ours(mapping_path: Path, data_path: Path) -> dict[str, Any]:
    """file digest + read + map + validate + serialise, through the pipeline's own code."""
    from batch.config.api import DeliverySettings
    from batch.config.mapping import load_mapping
    from batch.pipeline import FeedRuntime, Processor, Progress, file_digest

    feed = FeedRuntime.build("bench", load_mapping(mapping_path))  # once per feed, not per file
    journal = ParamsOnlyJournal()
    processor = Processor(journal, None, DeliverySettings())  # type: ignore[arg-type]  # no delivery here
    with timed() as took:
        file_digest(data_path)
        processor._record(data_path, 1, feed, Progress())
    return {"records": journal.records, "invalid": journal.invalid, **took}


def our_reader_alone(mapping_path: Path, data_path: Path) -> dict[str, Any]:
    """Our reader alone, as extract.mapped_chunks calls it (chunks of records, nothing mapped)."""
    from batch.config.mapping import load_mapping
    from batch.transform.gctune import fewer_collections
    from batch.transform.mapping import CompiledMapping
    from batch.transform.readers import read_csv, read_xml

    compiled = CompiledMapping(load_mapping(mapping_path))
    mapping = compiled.mapping
    records = 0
    with timed() as took, open(data_path, "rb") as stream, fewer_collections():
        if mapping.xml is not None:
            chunks = read_xml(stream, mapping.xml, compiled.xml_plan())
        else:
            assert mapping.csv is not None
            chunks = read_csv(stream, mapping.csv, compiled.required_columns())
        for chunk in chunks:
            records += len(chunk)
    return {"records": records, **took}


def pandas_alone(data_path: Path) -> dict[str, Any]:
    """pandas' C parser over the CSV in chunks, every column as text; nothing else."""
    import pandas as pd

    rows = 0
    with timed() as took:
        frames = pd.read_csv(data_path, sep=";", encoding="cp1252", skiprows=CSV_SKIP_LINES, header=0, dtype=str,
                             keep_default_na=False, engine="c", chunksize=PANDAS_CHUNK_ROWS)
        with frames:
            for frame in frames:
                rows += len(frame)
    return {"records": rows - 1, **took}  # - 1: the footer line (YHTEENSÄ;n)


def iterparse_alone(data_path: Path) -> dict[str, Any]:
    """lxml's iterparse over the XML, clearing each record element (and what came before it)."""
    from lxml import etree

    records = 0
    with timed() as took, open(data_path, "rb") as stream:
        for _, element in etree.iterparse(stream, events=("end",), tag=XML_RECORD_TAG):
            records += 1
            element.clear(keep_tail=True)
            while element.getprevious() is not None:
                del element.getparent()[0]
    return {"records": records, **took}


def openpyxl_alone(data_path: Path) -> dict[str, Any]:
    """openpyxl's read-only reader over the records' sheet, every cell's value; nothing else."""
    from openpyxl import load_workbook

    rows = 0
    with timed() as took:
        book = load_workbook(data_path, read_only=True, data_only=True)
        for _ in book["Tapahtumat"].iter_rows(min_row=3, values_only=True):
            rows += 1
        book.close()
    return {"records": rows, **took}


def calamine_alone(data_path: Path) -> dict[str, Any]:
    """python-calamine over the same sheet (it loads the whole sheet before the first row)."""
    from python_calamine import CalamineWorkbook

    rows = 0
    with timed() as took, open(data_path, "rb") as stream:
        book = CalamineWorkbook.from_filelike(stream)
        for _ in book.get_sheet_by_name("Tapahtumat").iter_rows():
            rows += 1
    return {"records": rows - 2, **took}  # - 2: the title and the header


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """Fills in the CPU seconds (`seconds`) and wall seconds (`wall_seconds`) of the block.

    CPU counts the child processes the block waited for: XML is parsed in one
    (batch.transform.xmlprocess), and its work is part of the production path's cost; their
    share is `child_seconds` too."""
    took: dict[str, float] = {}
    own, children, wall = *_cpu_seconds(), time.perf_counter()
    yield took
    own_after, children_after = _cpu_seconds()
    took["seconds"] = own_after - own + children_after - children
    took["child_seconds"] = round(children_after - children, 3)
    took["wall_seconds"] = round(time.perf_counter() - wall, 3)


def _cpu_seconds() -> tuple[float, float]:
    """This process's CPU time, and that of its children that have ended and been waited for."""
    times = os.times()
    return times.user + times.system, times.children_user + times.children_system


def run_phase(phase: str, mapping_path: Path, data_path: Path) -> dict[str, Any]:
    if phase == "ours":
        figures = ours(mapping_path, data_path)
    elif phase == "reader":
        figures = our_reader_alone(mapping_path, data_path)
    elif phase == "pandas":
        figures = pandas_alone(data_path)
    elif phase == "openpyxl":
        figures = openpyxl_alone(data_path)
    elif phase == "calamine":
        figures = calamine_alone(data_path)
    else:
        figures = iterparse_alone(data_path)
    figures["records_per_s"] = round(figures["records"] / figures["seconds"])
    figures["seconds"] = round(figures["seconds"], 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures


def in_subprocess(phase: str, mapping: Path, data: Path) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--phase", phase, str(mapping), str(data)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)},
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="100k CSV / 20k XML records")
    parser.add_argument("--phase", nargs=3, metavar=("PHASE", "MAPPING", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase[0], Path(args.phase[1]), Path(args.phase[2]))))
        return

    csv_records, xml_records = (100_000, 20_000) if args.small else (1_000_000, 200_000)
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mapping-") as tmp:
        for kind, mapping, generate, count, reader in (
            ("csv", CSV_MAPPING, generate_csv, csv_records, "pandas"),
            ("xml", XML_MAPPING, generate_xml, xml_records, "iterparse"),
        ):
            data = Path(tmp) / f"export.{kind}"
            generate(data, count)
            size_mb = data.stat().st_size / 1e6
            mine = in_subprocess("ours", mapping, data)
            alone = in_subprocess(reader, mapping, data)
            our_reader = in_subprocess("reader", mapping, data)
            ratio = mine["records_per_s"] / alone["records_per_s"]
            # CPU microseconds a record: our reader, and the rest of the production path
            read_us = 1e6 / our_reader["records_per_s"]
            rest_us = 1e6 / mine["records_per_s"] - read_us
            # XML: what the parser process cost a record (it reads, extracts the values, writes JSON)
            child_us = mine["child_seconds"] * 1e6 / mine["records"]
            print(f"{kind}: {count:,} records ({size_mb:.0f} MB, {size_mb * 1e6 / count:.0f} B/record); "
                  f"production path {mine['records_per_s']:,} records/s ({mine['seconds']} s CPU, "
                  f"{mine['wall_seconds']} s wall, peak RSS {mine['peak_rss_mb']} MB, invalid {mine['invalid']}); "
                  f"{reader} alone {alone['records_per_s']:,} records/s ({alone['seconds']} s CPU, "
                  f"{alone['wall_seconds']} s wall, peak RSS {alone['peak_rss_mb']} MB); "
                  f"ratio {ratio:.2f}; of a record's {1e6 / mine['records_per_s']:.1f} us, our reader "
                  f"{read_us:.1f} us ({our_reader['records_per_s']:,} records/s alone), mapping, validation and "
                  f"journal parameters {rest_us:.1f} us"
                  + (f"; the parser process {child_us:.1f} us of the record's" if child_us else ""))
            summary.update({
                f"{kind}_records_per_s": mine["records_per_s"],
                f"{kind}_reader_only_per_s": alone["records_per_s"],
                f"{kind}_ratio": round(ratio, 3),
                f"{kind}_peak_rss_mb": mine["peak_rss_mb"],
                f"{kind}_our_reader_per_s": our_reader["records_per_s"],
                f"{kind}_parser_process_us": round(child_us, 2),
                f"{kind}_records": mine["records"],
                f"{kind}_pass": ratio >= TARGET_RATIO and mine["peak_rss_mb"] <= TARGET_RSS_MB[kind],
            })
            data.unlink()
        summary.update(bench_xlsx(Path(tmp), 20_000 if args.small else 100_000))
    summary["pass"] = summary["csv_pass"] and summary["xml_pass"]
    print(json.dumps(summary))


def bench_xlsx(tmp: Path, count: int) -> dict[str, Any]:
    """The workbook figures: production path, and openpyxl and python-calamine alone."""
    import importlib.util

    data = tmp / "export.xlsx"
    generate_xlsx(data, count)
    size_mb = data.stat().st_size / 1e6
    mine = in_subprocess("ours", XLSX_MAPPING, data)
    readers = {"openpyxl": in_subprocess("openpyxl", XLSX_MAPPING, data)}
    if importlib.util.find_spec("python_calamine") is not None:
        readers["calamine"] = in_subprocess("calamine", XLSX_MAPPING, data)
    data.unlink()
    print(f"xlsx: {count:,} rows ({size_mb:.1f} MB); production path {mine['records_per_s']:,} records/s "
          f"({mine['seconds']} s CPU, peak RSS {mine['peak_rss_mb']} MB, invalid {mine['invalid']}); "
          + "; ".join(f"{name} alone {alone['records_per_s']:,} records/s ({alone['seconds']} s CPU, "
                      f"peak RSS {alone['peak_rss_mb']} MB)" for name, alone in readers.items()))
    figures: dict[str, Any] = {
        "xlsx_records_per_s": mine["records_per_s"],
        "xlsx_peak_rss_mb": mine["peak_rss_mb"],
        "xlsx_records": mine["records"],
    }
    for name in ("openpyxl", "calamine"):
        alone = readers.get(name)
        figures[f"xlsx_{name}_only_per_s"] = alone and alone["records_per_s"]
        figures[f"xlsx_{name}_only_peak_rss_mb"] = alone and alone["peak_rss_mb"]
    return figures


if __name__ == "__main__":
    main()
