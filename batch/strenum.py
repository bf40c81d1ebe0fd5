"""``StrEnum`` on every Python the project allows: 3.11's own, or the same by hand on 3.10.

States (file, event, worker) are enums whose members *are* their words: stored, printed and
compared as plain text. Base layer, so every part can use it.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10 (pyproject allows it): 3.11's StrEnum, by hand
    class StrEnum(str, Enum):
        """Members are their values: str(), format() and comparisons give the plain word."""

        __str__ = str.__str__
        __format__ = str.__format__  # type: ignore[assignment]  # str's format, as 3.11's StrEnum has
