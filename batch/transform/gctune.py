"""Garbage-collector tuning for bulk mapping."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fewer_collections(threshold: int = 50_000) -> Iterator[None]:
    """Mapping allocates millions of small dicts that live on; CPython's cyclic collector,
    at its default threshold of 700 allocations, rescans them over and over and doubles the
    time per record (12 -> 6 us measured). Nothing here makes reference cycles, so collect
    less often while a file is mapped, and restore the setting afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(max(threshold, previous[0]), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
