"""The UsageplaceEvent contract and the business rules on top of it. Pure: no I/O.

The published schema makes every property optional and typed (strings; invoices an array of
{jobid: integer, invoicenumber: string}). The guide adds: time is 'YYYY-MM-DD HH:MM:SS', and a
'not disconnected' event must say why in its description. This check is hand-written because it
runs for every record (a generic JSON-Schema validator costs ~50 µs a record); the test suite
checks its output against the contract with a real JSON-Schema validator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EVENT_KEYS = ("id", "usageplacecode", "customernumber", "contract_no", "invoices", "time", "status", "description")
STRING_KEYS = ("id", "usageplacecode", "customernumber", "contract_no", "time", "status", "description")
TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@dataclass(frozen=True)
class Rules:
    statuses: tuple[str, ...]
    not_disconnected: str
    required: frozenset[str]


@dataclass(frozen=True)
class Violation:
    field: str
    message: str


def check_event(event: dict, rules: Rules) -> list[Violation]:
    """Every way `event` breaks the contract or the business rules (empty list: valid)."""
    problems: list[Violation] = []
    for key in event:
        if key not in EVENT_KEYS:
            problems.append(Violation(key, "is not a UsageplaceEvent property"))
    for key in STRING_KEYS:
        value = event.get(key)
        if value is None:
            if key in rules.required:
                problems.append(Violation(key, "is required but empty"))
        elif not isinstance(value, str):
            problems.append(Violation(key, f"must be text, not {type(value).__name__}"))
        elif value == "" and key in rules.required:
            problems.append(Violation(key, "is required but empty"))
    time = event.get("time")
    if isinstance(time, str) and time and not TIME_PATTERN.fullmatch(time):
        problems.append(Violation("time", "must be written as YYYY-MM-DD HH:MM:SS"))
    status = event.get("status")
    if isinstance(status, str) and status and status not in rules.statuses:
        problems.append(Violation("status", f"must be one of {', '.join(rules.statuses)}"))
    if status == rules.not_disconnected and not event.get("description"):
        problems.append(
            Violation("description", "is required for a not-disconnected event: say why the disconnection was not done")
        )
    invoices = event.get("invoices")
    if invoices is not None:
        problems.extend(_check_invoices(invoices))
    return problems


def _check_invoices(invoices: object) -> list[Violation]:
    if not isinstance(invoices, list):
        return [Violation("invoices", "must be a list")]
    problems = []
    for index, invoice in enumerate(invoices):
        where = f"invoices[{index}]"
        if not isinstance(invoice, dict):
            problems.append(Violation(where, "must be an object with invoicenumber and jobid"))
            continue
        for key in invoice:
            if key not in ("invoicenumber", "jobid"):
                problems.append(Violation(f"{where}.{key}", "is not an invoice property"))
        number = invoice.get("invoicenumber")
        if number is not None and not isinstance(number, str):
            problems.append(Violation(f"{where}.invoicenumber", "must be text"))
        jobid = invoice.get("jobid")
        if jobid is not None and (not isinstance(jobid, int) or isinstance(jobid, bool)):
            problems.append(Violation(f"{where}.jobid", "must be a whole number"))
    return problems
