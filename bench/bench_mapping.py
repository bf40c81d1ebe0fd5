"""Mapping throughput: read + map + validate + JSON-serialise, on large generated exports.

    python bench/bench_mapping.py            # 1,000,000-record CSV and 200,000-record XML
    python bench/bench_mapping.py --small    # 100,000 / 20,000, for a quick look

Each phase runs in a fresh subprocess so that its peak RSS is its own. The last line printed is
one JSON object with csv_records_per_s, csv_peak_rss_mb, xml_records_per_s, xml_peak_rss_mb.
Targets on a 2-core machine: CSV >= 150,000 records/s within 400 MB; XML >= 60,000 records/s
within 300 MB.
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
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSV_MAPPING = ROOT / "config" / "mappings" / "finnish_cp1252.yaml"
XML_MAPPING = ROOT / "config" / "mappings" / "erp_export.yaml"
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


def run_phase(mapping_path: Path, data_path: Path) -> dict:
    """Read + map + validate + serialise every record, as the pipeline does before journaling."""
    from batch.config.mapping import load_mapping
    from batch.extract import mapped_file
    from batch.jsonenc import dumps_event
    from batch.mapping import CompiledMapping

    compiled = CompiledMapping(load_mapping(mapping_path))
    valid = invalid = serialised_bytes = 0
    started = time.perf_counter()
    for records in mapped_file(compiled, data_path):
        for record in records:
            if record.event is not None:
                valid += 1
                serialised_bytes += len(dumps_event(record.event))
            else:
                invalid += 1
    elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "records": valid + invalid,
        "invalid": invalid,
        "seconds": round(elapsed, 3),
        "records_per_s": round((valid + invalid) / elapsed),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "json_bytes": serialised_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="100k CSV / 20k XML records")
    parser.add_argument("--phase", nargs=2, metavar=("MAPPING", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(Path(args.phase[0]), Path(args.phase[1]))))
        return

    csv_records, xml_records = (100_000, 20_000) if args.small else (1_000_000, 200_000)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-mapping-") as tmp:
        for kind, mapping, generate, count in (
            ("csv", CSV_MAPPING, generate_csv, csv_records),
            ("xml", XML_MAPPING, generate_xml, xml_records),
        ):
            data = Path(tmp) / f"export.{kind}"
            generate(data, count)
            size_mb = data.stat().st_size / 1e6
            child = subprocess.run(
                [sys.executable, __file__, "--phase", str(mapping), str(data)],
                check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            results[kind] = figures
            print(
                f"{kind}: {figures['records']:,} records ({size_mb:.0f} MB, {size_mb * 1e6 / count:.0f} B/record) "
                f"in {figures['seconds']} s = {figures['records_per_s']:,} records/s, "
                f"peak RSS {figures['peak_rss_mb']} MB, invalid {figures['invalid']}"
            )
            data.unlink()
    summary = {
        "csv_records_per_s": results["csv"]["records_per_s"],
        "csv_peak_rss_mb": results["csv"]["peak_rss_mb"],
        "xml_records_per_s": results["xml"]["records_per_s"],
        "xml_peak_rss_mb": results["xml"]["peak_rss_mb"],
        "csv_records": results["csv"]["records"],
        "xml_records": results["xml"]["records"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
