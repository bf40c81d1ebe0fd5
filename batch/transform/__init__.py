"""A file's bytes to events: readers, records, mapping and its fast path, the event encoder.

The pure part of the flow. Nothing here opens a file, a socket or a database: a reader takes a
stream, the mapper takes records, and `tests/test_purity.py` keeps it so. This package imports
nothing when imported (mapping must stay importable without the I/O stack)."""
