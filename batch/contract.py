"""The Ropo One API contract, shipped inside the package as data.

Pure: reads only the packaged JSON through importlib.resources (no network, no ../shared).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

CONTRACT_FILE = "ropo-one-usageplace.openapi.json"

# Values the published guide documents for UsageplaceEvent.status; the value for a
# "not disconnected" event is agreed per implementation project (configurable in mappings).
STATUS_CONNECTED = "connected"
STATUS_DISCONNECTED = "disconnected"
DEFAULT_STATUS_NOT_DISCONNECTED = "not_disconnected"


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    text = resources.files("batch").joinpath("data").joinpath(CONTRACT_FILE).read_text("utf-8")
    return json.loads(text)


def component_schema(name: str) -> dict[str, Any]:
    """A schema from components/schemas with its $refs resolved inline (JSON Schema 2020-12)."""
    schemas = openapi_document()["components"]["schemas"]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                return resolve(schemas[ref.rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schemas[name])
