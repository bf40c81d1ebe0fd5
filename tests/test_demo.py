"""`usageplace-batch demo`: the first Quick start command, run the way a new user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_receipt(path: Path, encoding: str, delimiter: str) -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def test_demo_runs_every_sample_through_the_service(tmp_path):
    workspace = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "batch", "demo", "--workspace", str(workspace)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    samples = sorted(path.name for path in (ROOT / "samples").iterdir())
    for name in samples:
        feed = name.split(".", 1)[0]
        assert (workspace / "inbox" / feed / "archive" / name).is_file()  # claimed, processed, archived
        assert (workspace / "inbox" / feed / "outbox" / f"{name}.receipt.json").is_file()
        assert name in done.stdout

    finnish = read_receipt(workspace / "inbox/finnish_cp1252/outbox/finnish_cp1252.csv.receipt.csv", "cp1252", ";")
    assert [row["outcome"] for row in finnish] == ["accepted", "rejected", "accepted", "accepted"]
    assert "not known to Ropo One" in finnish[1]["message"]

    invalid = read_receipt(workspace / "inbox/invalid_records/outbox/invalid_records.csv.receipt.csv", "cp1252", ";")
    assert [row["outcome"] for row in invalid].count("invalid") == 9
    assert any("'31.2.2024 7:10:00'" in row["message"] for row in invalid)

    again = json.loads((workspace / "inbox/erp_export/outbox/erp_export-again.xml.receipt.json").read_text())
    assert again["state"] == "skipped" and "same content as 'erp_export.xml'" in again["error"]

    accepted = [json.loads(line) for line in (workspace / "sandbox" / "accepted.jsonl").read_text().splitlines()]
    # every valid event once (16, 3 + 3 of record_types.csv and invoice_pairs.csv, and 11 of the gzip,
    # zip, EBCDIC and workbook samples); the rejected one and the re-drop not at all
    assert len(accepted) == 33
    assert len({event["id"] for event in accepted}) == 33

    status = subprocess.run(
        [sys.executable, "-m", "batch", "status", "--config", str(workspace / "service.yaml"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    files = [row for row in map(json.loads, status.stdout.splitlines()) if row["kind"] == "file"]
    assert {file["file"] for file in files} == set(samples) | {"erp_export-again.xml"}

    # errors as data (issue 11, point 8): every sample's invalid records show field, column and value
    cells = ("line", "outcome", "field", "source", "value", "title", "detail")
    assert [tuple(row[key] for key in cells) for row in invalid if row["outcome"] == "invalid"] == [
        ("3", "invalid", "status", "column 'Tila'", "X", "", ""),
        ("4", "invalid", "time", "template '{Pvm} {Klo}'", "31.2.2024 7:10:00", "", ""),
        ("5", "invalid", "usageplacecode", "column 'Käyttöpaikka'", "", "", ""),
        ("6", "invalid", "description", "column 'Selite'", "", "", ""),
        ("7", "invalid", "invoices[0].jobid", "column 'Toimeksiannot'", "30O6", "", ""),
        ("8", "invalid", "id", "column 'Tapahtumatunnus'", "VR-1", "", ""),
        ("9", "invalid", "(record)", "", "", "", ""),
        ("10", "invalid", "invoices", "column 'Laskunumerot' + column 'Toimeksiannot'", "", "", ""),
        ("11", "invalid", "time", "template '{Pvm} {Klo}'", "12.3.2024 25:00:00", "", ""),
    ]
    pairs = read_receipt(workspace / "inbox/invoice_pairs/outbox/invoice_pairs.csv.receipt.csv", "utf-8", ";")
    assert [tuple(row[key] for key in cells) for row in pairs if row["outcome"] == "invalid"] == [
        ("5", "invalid", "invoices[1]", "column 'Laskut'", "594321", "", "")]
    book = read_receipt(workspace / "inbox/workbook_billing/outbox/workbook_billing.xlsx.receipt.csv", "utf-8", ",")
    assert [tuple(row[key] for key in cells) for row in book if row["outcome"] == "invalid"] == [
        ("7", "invalid", "time", "column 'Aika'", "2024-03-31 03:30:00", "", "")]
    # a workbook's position is a row of a sheet: `line` is the row, the message names the sheet
    assert [row["message"] for row in book if row["outcome"] == "invalid"] == [
        "row 7 of sheet 'Tapahtumat': time (column 'Aika' = '2024-03-31 03:30:00'): 2024-03-31 03:30:00 does not "
        "exist in Europe/Helsinki: the clocks move forward from 03:00 to 04:00 on 2024-03-31, skipping that time"]
    book_summary = json.loads(
        (workspace / "inbox/workbook_billing/outbox/workbook_billing.xlsx.receipt.json").read_text("utf-8"))
    assert book_summary["sheet"] == "Tapahtumat"
    assert [(p["line"], p["position"]) for p in book_summary["problems"]] == [(7, "row 7 of sheet 'Tapahtumat'")]
    # a rejected event keeps Ropo One's problem title and detail
    assert [tuple(row[key] for key in cells) for row in finnish if row["outcome"] == "rejected"] == [
        ("5", "rejected", "", "", "", "Unprocessable event", "The usage place is not known to Ropo One")]
    for receipt in workspace.glob("inbox/*/outbox/*.receipt.json"):
        summary = json.loads(receipt.read_text("utf-8"))
        for problem in summary.get("problems", []):
            assert problem["outcome"] in ("invalid", "rejected")
            if problem["outcome"] == "invalid":
                assert problem["errors"] and all(error["field"] and error["message"] for error in problem["errors"])

    # the rejected-rows files: written only where something was invalid or rejected, the original
    # records in the original dialect and encoding (a workbook's as a UTF-8 CSV)
    rejected = sorted(path.name for path in workspace.glob("inbox/*/outbox/*.rejected.*"))
    assert rejected == ["finnish_cp1252.csv.rejected.csv", "invalid_records.csv.rejected.csv",
                        "invoice_pairs.csv.rejected.csv", "workbook_billing.xlsx.rejected.csv"]
    finnish_rejected = workspace / "inbox/finnish_cp1252/outbox/finnish_cp1252.csv.rejected.csv"
    assert finnish_rejected.read_bytes().decode("cp1252") == (
        "KATKAISUTAPAHTUMAT;Energiayhtiö Oy\r\nAjettu;6.2.2024 02:00\r\n"
        "Tapahtumatunnus;Käyttöpaikka;Asiakasnro;Sopimusnro;Pvm;Klo;Tila;Laskunumerot;Toimeksiannot;Selite\r\n"
        "KT-2024-0002;643007572062443689;A123457;555556b;5.2.2024;14:05:10;KY;594301;1240;\r\n"
        "YHTEENSÄ;4\r\n")
    assert (workspace / "inbox/workbook_billing/outbox/workbook_billing.xlsx.rejected.csv").read_bytes().decode() == (
        "Tunnus,Käyttöpaikka,Asiakas,Aika,Tila,Lasku,Työ,Selite\r\n"
        "XL-704,643007572062493032,B-7004,2024-03-31 03:30:00,K,594320,1250,\r\n")
    # dropped again, each is read by the feed's own mapping: its invalid records, the same errors
    for name, mapping, invalid_again in [
            ("invalid_records.csv.rejected.csv", "invalid_records.yaml", 8),  # VR-1 of line 8 is now the first
            ("invoice_pairs.csv.rejected.csv", "invoice_pairs.yaml", 1),
            ("finnish_cp1252.csv.rejected.csv", "finnish_cp1252.yaml", 0)]:
        feed = name.split(".", 1)[0]
        preview = subprocess.run(
            [sys.executable, "-m", "batch", "preview", str(ROOT / "config/mappings" / mapping),
             str(workspace / "inbox" / feed / "outbox" / name), "--json", "--errors-only"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert preview.returncode == (1 if invalid_again else 0), preview.stderr
        assert len(preview.stdout.splitlines()) == invalid_again
