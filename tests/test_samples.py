"""Every sample under samples/ previewed with its mapping: the exact events, and the contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import openapi_schema_validator
import pytest

from batch.cli import commands as cli
from batch.config.mapping import load_mapping
from batch.contract import component_schema, openapi_document
from batch.transform.extract import mapped_chunks
from batch.transform.mapping import CompiledMapping

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "samples").iterdir() if p.is_file())
MAPPINGS = ROOT / "config" / "mappings"

SCHEMA = component_schema("UsageplaceEvent")
VALIDATORS = [
    jsonschema.Draft202012Validator(SCHEMA),
    openapi_schema_validator.OAS31Validator(SCHEMA),
]


def mapping_for(sample: Path) -> Path:
    return MAPPINGS / f"{sample.name.split('.', 1)[0]}.yaml"  # finnish_gzip.csv.gz -> finnish_gzip.yaml


def preview(sample: Path) -> list[tuple[int, dict | None, list[dict]]]:
    compiled = CompiledMapping(load_mapping(mapping_for(sample)))
    out = []
    with open(sample, "rb") as stream:
        for records in mapped_chunks(compiled, stream):
            out += [(r.line, r.event, [e.as_dict() for e in r.errors]) for r in records]
    return out


def content_id(event: dict) -> str:
    """The documented rule, written out independently: sha256 of the id-less event's canonical JSON."""
    body = {k: v for k, v in event.items() if k != "id"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def test_every_sample_has_a_mapping_and_every_mapping_a_sample():
    assert SAMPLES, "no samples"
    assert sorted(mapping_for(s).name for s in SAMPLES) == sorted(p.name for p in MAPPINGS.glob("*.yaml"))
    assert openapi_document()["openapi"].startswith("3.1")


# (line, the event or None, the errors as `preview --json` prints them)
Expected = list[tuple[int, "dict[str, Any] | None", list[dict[str, Any]]]]

FINNISH: Expected = [
    (4, {"id": "KT-2024-0001", "usageplacecode": "643007572062443672", "customernumber": "A123456", "contract_no": "555555b",
         "invoices": [{"invoicenumber": "594294", "jobid": 1234}, {"invoicenumber": "594295", "jobid": 1235}],
         "time": "2024-02-05 06:30:00", "status": "disconnected", "description": "Käyttöpaikka katkaistu"}, []),
    (5, {"id": "KT-2024-0002", "usageplacecode": "643007572062443689", "customernumber": "A123457", "contract_no": "555556b",
         "invoices": [{"invoicenumber": "594301", "jobid": 1240}],
         "time": "2024-02-05 14:05:10", "status": "connected", "description": "Käyttöpaikka kytketty"}, []),
    (6, {"id": "KT-2024-0003", "usageplacecode": "643007572062443696", "customernumber": "A123458", "contract_no": "555557c",
         "invoices": [], "time": "2024-02-06 08:00:00", "status": "not_disconnected",
         "description": "Mittari ei ollut saavutettavissa"}, []),
    # ' A123459 ' is trimmed, status 'k' is found ignoring case
    (7, {"id": "KT-2024-0004", "usageplacecode": "643007572062443703", "customernumber": "A123459", "contract_no": "555558d",
         "invoices": [{"invoicenumber": "594410", "jobid": 1250}, {"invoicenumber": "594411", "jobid": 1251},
                      {"invoicenumber": "594412", "jobid": 1252}],
         "time": "2024-02-06 09:15:00", "status": "disconnected", "description": "Käyttöpaikka katkaistu"}, []),
]

ERP: Expected = [
    (5, {"id": "ERP-501", "usageplacecode": "643007572062460001", "customernumber": "X-3001", "contract_no": "77001a",
         "invoices": [{"invoicenumber": "810001", "jobid": 9001}, {"invoicenumber": "810002", "jobid": 9002}],
         "time": "2024-02-05 06:30:00", "status": "disconnected", "description": "Usage place disconnected"}, []),
    # 12:00Z is 14:00 in Helsinki; an empty <inv:Invoices/> is an empty list
    (16, {"id": "ERP-502", "usageplacecode": "643007572062460018", "customernumber": "X-3002", "contract_no": "77002a",
          "invoices": [], "time": "2024-02-05 14:00:00", "status": "connected", "description": "Reconnected after payment"}, []),
    (25, {"id": "ERP-503", "usageplacecode": "643007572062460025", "customernumber": "X-3003", "contract_no": "77003a",
          "invoices": [{"invoicenumber": "810010", "jobid": 9010}], "time": "2024-02-05 15:20:00",
          "status": "not_disconnected", "description": "Dog on the premises, technician could not enter"}, []),
]

MDS7: Expected = [
    # two rows of M-88101 merged into one event with both invoices
    (4, {"id": "M-88101", "usageplacecode": "643007572062440001", "customernumber": "C-0042", "contract_no": "K-777",
         "invoices": [{"invoicenumber": "700100", "jobid": 51}, {"invoicenumber": "700101", "jobid": 52}],
         "time": "2024-03-01 07:45:00", "status": "disconnected", "description": "Usage place disconnected"}, []),
    (6, {"id": "M-88102", "usageplacecode": "643007572062440018", "customernumber": "C-0043", "contract_no": "K-778",
         "invoices": [], "time": "2024-03-01 09:10:00", "status": "connected", "description": "Payment received"}, []),
    (7, {"id": "M-88103", "usageplacecode": "643007572062440025", "customernumber": "C-0044", "contract_no": "K-779",
         "invoices": [{"invoicenumber": "700120", "jobid": 55}], "time": "2024-03-01 11:20:00",
         "status": "not_disconnected", "description": "Locked gate, no access to the meter"}, []),
]

UTF8_ISO_WITHOUT_IDS = [
    # +02:00 in January is Helsinki time already
    (2, {"usageplacecode": "643007572062450001", "customernumber": "B-1001", "contract_no": "C-9001",
         "invoices": [{"invoicenumber": "1001", "jobid": 71}, {"invoicenumber": "1002", "jobid": 72}],
         "time": "2024-01-04 10:41:40", "status": "disconnected", "description": "Disconnected at the substation, remotely"}),
    # Z -> +02:00; a quoted comment with a line break: the next record starts on line 5
    (3, {"usageplacecode": "643007572062450018", "customernumber": "B-1002", "contract_no": "C-9002", "invoices": [],
         "time": "2024-01-04 10:41:40", "status": "connected",
         "description": "Reconnected after payment\n(customer called support)"}),
    # +03:00 in July is Helsinki summer time; doubled quotes inside quotes
    (5, {"usageplacecode": "643007572062450025", "customernumber": "B-1003", "contract_no": "C-9003",
         "invoices": [{"invoicenumber": "1003", "jobid": 73}], "time": "2024-07-15 23:30:00",
         "status": "not_disconnected", "description": 'Customer has a medical exemption, "life support"'}),
]


def _with_generated_ids(records):
    out: Expected = []
    for line, event in records:
        with_id = {"id": "crm-" + content_id(event), **event}
        out.append((line, with_id, []))
    return out


INVALID = [
    (2, {"id": "VR-1", "usageplacecode": "643007572062470001", "customernumber": "A200001", "contract_no": "600001a",
         "invoices": [{"invoicenumber": "700001", "jobid": 3001}], "time": "2024-03-12 07:00:00", "status": "disconnected",
         "description": "Käyttöpaikka katkaistu"}, []),
    (3, None, [{"field": "status", "source": "column 'Tila'", "value": "X",
                "message": "value is not in the map (expected one of 'K', 'KY', 'EK')"}]),
    (4, None, [{"field": "time", "source": "template '{Pvm} {Klo}'", "value": "31.2.2024 7:10:00",
                "message": "not a real date/time (day is out of range for month)"}]),
    (5, None, [{"field": "usageplacecode", "source": "column 'Käyttöpaikka'", "value": "", "message": "is required but empty"}]),
    (6, None, [{"field": "description", "source": "column 'Selite'", "value": "",
                "message": "is required for a not-disconnected event: say why the disconnection was not done"}]),
    (7, None, [{"field": "invoices[0].jobid", "source": "column 'Toimeksiannot'", "value": "30O6",
                "message": "expected a whole number"}]),
    (8, None, [{"field": "id", "source": "column 'Tapahtumatunnus'", "value": "VR-1",
                "message": "event id is used again (first on line 2)"}]),
    (9, None, [{"field": "(record)", "source": None, "value": None,
                "message": "the record has 5 fields but the header has 10 (no value for 'Klo', 'Tila', 'Laskunumerot', "
                           "'Toimeksiannot', 'Selite')"}]),
    (10, None, [{"field": "invoices", "source": "column 'Laskunumerot' + column 'Toimeksiannot'", "value": None,
                 "message": "paired invoice columns differ in length (invoices.invoicenumber has 2, invoices.jobid has 1)"}]),
    (11, None, [{"field": "time", "source": "template '{Pvm} {Klo}'", "value": "12.3.2024 25:00:00",
                 "message": "not a real date/time (hour must be in 0..23)"}]),
]

MAINFRAME: Expected = [  # line 1 is the HDR record, line 4 is blank, line 6 the TRL record
    (2, {"id": "MF00000101", "usageplacecode": "643007572062480001", "customernumber": "C0000101", "contract_no": "K-000101",
         "invoices": [{"invoicenumber": "700100", "jobid": 51}, {"invoicenumber": "700101", "jobid": 52}],
         "time": "2024-03-06 07:15:00", "status": "disconnected", "description": "Katkaistu mittarilta"}, []),
    (3, {"id": "MF00000102", "usageplacecode": "643007572062480018", "customernumber": "C0000102", "contract_no": "K-000102",
         "invoices": [], "time": "2024-03-06 09:30:15", "status": "connected", "description": "Usage place reconnected"}, []),
    (5, {"id": "MF00000103", "usageplacecode": "643007572062480025", "customernumber": "C0000103", "contract_no": "K-000103",
         "invoices": [{"invoicenumber": "700120", "jobid": 55}], "time": "2024-03-06 11:00:00", "status": "not_disconnected",
         "description": "Asiakas ei päästänyt sisään"}, []),
]

BILLING: Expected = [  # H on line 1, C on lines 3, 5 and 6 (5 and 6 with 2 and 1 fields), T on line 8: filtered
    (2, {"id": "BL-0001", "usageplacecode": "643007572062490001", "customernumber": "A200001",
         "time": "2024-03-07 07:10:00", "status": "disconnected", "description": "Käyttöpaikka katkaistu"}, []),
    (4, {"id": "BL-0002", "usageplacecode": "643007572062490018", "customernumber": "A200002",
         "time": "2024-03-07 08:25:00", "status": "connected", "description": "Asiakas maksoi"}, []),
    (7, {"id": "BL-0003", "usageplacecode": "643007572062490025", "customernumber": "A200003",
         "time": "2024-03-07 09:40:00", "status": "not_disconnected", "description": "Mittari ei ollut saavutettavissa"},
     []),
]

PAIRS: Expected = [
    (2, {"id": "IP-0001", "usageplacecode": "643007572062491001",
         "invoices": [{"invoicenumber": "594294", "jobid": 1234}, {"invoicenumber": "594295", "jobid": 1235}],
         "time": "2024-03-08 06:45:00", "status": "disconnected"}, []),
    (3, {"id": "IP-0002", "usageplacecode": "643007572062491018", "invoices": [], "time": "2024-03-08 07:05:00",
         "status": "connected"}, []),
    # ' 594310 : 1301 ': blanks around items and parts are trimmed
    (4, {"id": "IP-0003", "usageplacecode": "643007572062491025", "invoices": [{"invoicenumber": "594310", "jobid": 1301}],
         "time": "2024-03-08 07:30:00", "status": "disconnected"}, []),
    # half an invoice is never sent
    (5, None, [{"field": "invoices[1]", "source": "column 'Laskut'", "value": "594321",
                "message": "is not invoicenumber:jobid (an invoice number and a job id separated by ':')"}]),
]

# records that a mapping's keep rule leaves out, as preview counts them
FILTERED = {"record_types.csv": 5}
# the Finnish dialect, gzip-compressed: found by its first bytes, nothing in the mapping says so
FINNISH_GZIP: Expected = [
    (4, {"id": "KG-2024-0001", "usageplacecode": "643007572062490001", "customernumber": "A300001", "contract_no": "700001a",
         "invoices": [{"invoicenumber": "594501", "jobid": 2001}, {"invoicenumber": "594502", "jobid": 2002}],
         "time": "2024-03-07 06:30:00", "status": "disconnected", "description": "Käyttöpaikka katkaistu"}, []),
    (5, {"id": "KG-2024-0002", "usageplacecode": "643007572062490018", "customernumber": "A300002", "contract_no": "700002a",
         "invoices": [], "time": "2024-03-07 14:05:10", "status": "connected", "description": "Käyttöpaikka kytketty"}, []),
    (6, {"id": "KG-2024-0003", "usageplacecode": "643007572062490025", "customernumber": "A300003", "contract_no": "700003a",
         "invoices": [{"invoicenumber": "594510", "jobid": 2010}], "time": "2024-03-08 08:00:00",
         "status": "not_disconnected", "description": "Portti lukossa"}, []),
]

ERP_ZIP: Expected = [  # the XML member of the zip chosen by pattern, next to a readme; lines are the member's
    (4, {"id": "ERPZ-601", "usageplacecode": "643007572062491001", "customernumber": "X-4001", "contract_no": "78001a",
         "invoices": [{"invoicenumber": "820001", "jobid": 9101}], "time": "2024-03-04 07:10:00",
         "status": "disconnected", "description": "Usage place disconnected"}, []),
    (14, {"id": "ERPZ-602", "usageplacecode": "643007572062491018", "customernumber": "X-4002", "contract_no": "78002a",
          "invoices": [], "time": "2024-03-04 12:00:00", "status": "connected", "description": "Reconnected after payment"}, []),
]

MAINFRAME_EBCDIC: Expected = [  # cp037, 120-byte records without separators: a line is a record's number
    (2, {"id": "EB00000201", "usageplacecode": "643007572062492001", "customernumber": "C0000201",
         "invoices": [{"invoicenumber": "700200", "jobid": 61}, {"invoicenumber": "700201", "jobid": 62}],
         "time": "2024-03-07 07:15:00", "status": "disconnected", "description": "Katkaistu mittarilta"}, []),
    (3, {"id": "EB00000202", "usageplacecode": "643007572062492018", "customernumber": "C0000202", "invoices": [],
         "time": "2024-03-07 09:30:15", "status": "connected", "description": "Usage place reconnected"}, []),
    (4, {"id": "EB00000203", "usageplacecode": "643007572062492025", "customernumber": "C0000203",
         "invoices": [{"invoicenumber": "700220", "jobid": 65}], "time": "2024-03-07 11:00:00",
         "status": "not_disconnected", "description": "Asiakas ei päästänyt sisään"}, []),
]

WORKBOOK: Expected = [  # sheet 'Tapahtumat' under a title row; a line is the row number; row 5 is blank
    (3, {"id": "XL-701", "usageplacecode": "643007572062493001", "customernumber": "B-7001",
         "invoices": [{"invoicenumber": "594294", "jobid": 1234}], "time": "2024-03-29 06:30:00",
         "status": "disconnected", "description": "Käyttöpaikka katkaistu"}, []),
    (4, {"id": "XL-702", "usageplacecode": "643007572062493018", "customernumber": "B-7002", "invoices": [],
         "time": "2024-03-29 14:05:10", "status": "connected", "description": "Maksu saapui"}, []),
    (6, {"id": "XL-703", "usageplacecode": "643007572062493025", "customernumber": "B-7003",
         "invoices": [{"invoicenumber": "594310", "jobid": 1240}], "time": "2024-04-02 08:00:00",
         "status": "not_disconnected", "description": "Mittari ei saavutettavissa"}, []),
    # a date-time cell in the hour that Helsinki skips when summer time starts
    (7, None, [{"field": "time", "source": "column 'Aika'", "value": "2024-03-31 03:30:00",
                "message": "2024-03-31 03:30:00 does not exist in Europe/Helsinki: the clocks move forward from 03:00 "
                           "to 04:00 on 2024-03-31, skipping that time"}]),
]

SHEETS = {"workbook_billing.xlsx": "Tapahtumat"}  # the sheet whose rows a workbook's records are

EXPECTED = {
    "record_types.csv": BILLING,
    "invoice_pairs.csv": PAIRS,
    "finnish_cp1252.csv": FINNISH,
    "finnish_gzip.csv.gz": FINNISH_GZIP,
    "erp_zip.zip": ERP_ZIP,
    "mainframe_ebcdic.dat": MAINFRAME_EBCDIC,
    "workbook_billing.xlsx": WORKBOOK,
    "mainframe_fixed.txt": MAINFRAME,
    "erp_export.xml": ERP,
    "mds7_rows.txt": MDS7,
    "utf8_iso.csv": _with_generated_ids(UTF8_ISO_WITHOUT_IDS),
    "invalid_records.csv": INVALID,
}


def test_every_sample_has_expected_events():
    assert sorted(EXPECTED) == sorted(s.name for s in SAMPLES)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_events_exactly(sample):
    assert preview(sample) == EXPECTED[sample.name]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_events_validate_against_the_contract(sample):
    events = [event for _, event, _ in preview(sample) if event is not None]
    assert events
    for event in events:
        for validator in VALIDATORS:
            validator.validate(event)
        assert set(event) <= set(SCHEMA["properties"])
        for invoice in event.get("invoices", []):
            assert set(invoice) <= set(SCHEMA["properties"]["invoices"]["items"]["properties"])
            assert type(invoice.get("jobid", 0)) is int


def test_the_contract_validator_would_catch_a_bad_event():
    # guard against a schema that accepts anything
    bad: dict[str, Any]
    for bad in ({"invoices": [{"jobid": "1234"}]}, {"time": 5}, {"invoices": {}}):
        for validator in VALIDATORS:
            assert not validator.is_valid(bad)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_preview_json_of_every_sample(sample, capsys):
    code = cli.run(["preview", "--json", str(mapping_for(sample)), str(sample)])
    out, err = capsys.readouterr()
    expected = EXPECTED[sample.name]
    assert code == (1 if any(event is None for _, event, _ in expected) else 0)
    lines = [json.loads(line) for line in out.splitlines()]
    # a workbook's record is a row of the sheet that "sheet" names
    where = {"sheet": SHEETS[sample.name]} if sample.name in SHEETS else {}
    assert lines == [
        {"record": line, **where, "event": event} if event is not None else {"record": line, **where, "errors": errors}
        for line, event, errors in expected
    ]
    valid = sum(1 for _, event, _ in expected if event is not None)
    filtered = f", {FILTERED[sample.name]} filtered out (keep)" if sample.name in FILTERED else ""
    assert err == f"{sample}: {len(expected)} records, {valid} valid, {len(expected) - valid} invalid{filtered}\n"


def test_same_record_same_id_in_another_file(tmp_path):
    # the utf8_iso feed generates ids: a record re-exported in another file (other position,
    # other neighbours) keeps its id
    original = (ROOT / "samples" / "utf8_iso.csv").read_bytes().split(b"\n")
    header, first = original[0], original[1]
    other = tmp_path / "utf8_iso.csv"
    other.write_bytes(
        header + b"\n" + b"643007572062459999,B-9,C-9,2024-03-01T00:00:00Z,connected,,,later\n" + first + b"\n"
    )
    ids_before = {event["usageplacecode"]: event["id"] for _, event, _ in preview(ROOT / "samples" / "utf8_iso.csv")}
    ids_after = {event["usageplacecode"]: event["id"] for _, event, _ in preview(other)}
    assert ids_after["643007572062450001"] == ids_before["643007572062450001"]
    assert ids_after["643007572062459999"] not in ids_before.values()


def test_samples_in_small_chunks_give_the_same_events():
    for sample in SAMPLES:
        compiled = CompiledMapping(load_mapping(mapping_for(sample)))
        with open(sample, "rb") as stream:
            records = [r for chunk in mapped_chunks(compiled, stream, chunk_size=1) for r in chunk]
        assert [(r.line, r.event, [e.as_dict() for e in r.errors]) for r in records] == EXPECTED[sample.name], sample.name
