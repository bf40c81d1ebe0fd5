"""One redaction of secrets, and one escaping of what a terminal could act on: pure text functions.

:func:`redact_text` replaces the known secrets (in their usual encodings) and anything that
looks like a credential (a Bearer or Basic authorization, a JWT, an ``apicode=``/``token=``/
``password=`` pair in a form body or query string, the same key in JSON) with ***.
:func:`redact_and_cut` redacts *before* it shortens, so that no cut can leave the head of a
secret behind. The API client (:mod:`batch.delivery.ropo`) applies both to every text it makes
from a server's answer, and the log filter (:mod:`batch.service.logs`) to every log line, so
logs, journal and receipts are redacted alike. Low in the layers, so every part can use it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "***"
CUT_MARK = "..."

# "Authorization: Bearer abc.def" / "bearer abc" / "Basic dXNlcjpwYXNz" -> "Bearer ***"
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=%-]+")
# header.payload.signature, each base64url; a JWT header always starts with eyJ ('{"').
# It starts where a base64url run starts, not inside one (\b would let "eyJ-eyJ-eyJ-..." start
# at every eyJ and rescan the rest of the run each time: quadratic on a server's body).
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_SECRET_KEYS = r"apicode|api_?key|access_token|refresh_token|token|password|passwd|passphrase|secret"
# apicode=abc&cid=1 (a form body or a query string, also URL-encoded: apicode%3Dabc)
_KEY_VALUE = re.compile(rf"(?i)\b({_SECRET_KEYS})(=|%3D)(?:(?!%26)[^&\s\"'<>,;])+")
# "apicode": "abc" and \"apicode\":\"abc\" (JSON, also JSON inside a JSON string)
_JSON_PAIR = re.compile(rf'(?i)(\\?"(?:{_SECRET_KEYS})\\?"\s*:\s*\\?")((?:[^"\\]|\\.)*?)(\\?")')


def _forms(value: str) -> set[str]:
    """A secret as it may appear in a text: itself, URL-encoded, JSON-escaped."""
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the known ``secrets`` (in any of their usual encodings) and anything that
    looks like a credential replaced by ***. The one redaction of logs, journal and receipts."""
    forms = {form for value in secrets if value for form in _forms(value)}
    for form in sorted(forms, key=len, reverse=True):  # longest first: no partial leftovers
        if form in text:
            text = text.replace(form, REDACTED)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _JSON_PAIR.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)


def redact_and_cut(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """:func:`redact_text`, then at most ``limit`` characters (plus "..." when cut).

    Redacting first is the point: a secret that straddles the cut is already *** and
    cannot leave its first characters behind."""
    text = redact_text(text, secrets)
    return text if len(text) <= limit else text[:limit] + CUT_MARK

def escape_unprintable(text: str, keep: str = "") -> str:
    """`text` with every character a terminal could act on written as an escape ('\\x1b',
    '\\x9b', '\\u202e'): C0 and C1 controls, DEL, line/paragraph separators and format
    characters such as bidi overrides, except those in `keep`. File names, record values and
    server texts come from others; they reach terminals through logs and commands alike."""
    if text.isprintable():
        return text
    return "".join(_escaped(char, keep) for char in text)


def _escaped(char: str, keep: str) -> str:
    if char in keep or char.isprintable() or unicodedata.category(char) == "Zs":
        return char  # Zs: no-break and other spaces are harmless
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
