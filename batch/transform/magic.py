"""What a file is, by its first bytes: gzip, zip, an old Excel workbook, or none of these.

Its own small module, importing nothing, so that the XML parser's child process
(batch.transform.xmlprocess) can tell a compressed file without importing the configuration.
"""

from __future__ import annotations

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an old Excel (.xls) or Word file


def sniff(head: bytes) -> str | None:
    """'gzip', 'zip', 'xls' or None (not a container we know) from a file's first 8 bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
        return "zip"
    if head.startswith(OLE2_MAGIC):
        return "xls"
    return None
