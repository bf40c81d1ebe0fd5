"""Compressed exports: a gzip or zip stream -> the stream of the export inside it, inflated as it
is read (never whole into memory), with limits against zip bombs.

A compressed file is recognised by its first bytes, whatever it is called: `export.csv.gz`,
`export.zip` and an `export.csv` that is really gzip are read alike. A workbook (.xlsx, itself a
zip) or an old binary .xls that reaches a text or XML reader is refused with a sentence that
says what the file is, instead of a decoding error that would send the administrator looking
at encodings.

Limits: the inflated size (max_inflated_mb) and, past INFLATED_FLOOR, the ratio of inflated to
compressed bytes (max_ratio). Both are counted on what is actually inflated, not on what a zip
declares (a zip's declared sizes are checked first too: a bomb is refused before it inflates).
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, cast

from batch.config.mapping import CompressionOptions
from batch.transform.magic import sniff
from batch.transform.readers import FileError

# Below this many inflated bytes the ratio is not checked: a small export of near-identical
# lines may inflate 300 times and harms nobody.
INFLATED_FLOOR = 16 << 20
_BLOCK = 1 << 16

# A zip's central directory, as its end record gives it, is checked before zipfile reads it:
# zipfile holds a ZipInfo per entry (400,000 entries took 3.6 s and 270 MB). An export zip holds
# one file and a workbook a few dozen parts; the byte bound covers an end record that lies about
# the count (zipfile reads the directory by its size).
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_DIRECTORY_BYTES = 4 << 20
_END_RECORD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END_RECORD = b"PK\x06\x06"


@contextmanager
def opened_export(stream: BinaryIO, options: CompressionOptions | None) -> Iterator[BinaryIO]:
    """The export inside `stream`: `stream` itself when it is not compressed, else the inflated
    gzip data or zip member, as a buffered stream that counts what it inflates. The caller's
    stream is left open."""
    ours = not hasattr(stream, "peek")
    buffered = cast(io.BufferedReader, io.BufferedReader(cast(Any, stream)) if ours else stream)
    try:
        with _inside(buffered, options or CompressionOptions()) as export:
            yield export
    finally:
        if ours:
            try:
                buffered.detach()  # collecting our wrapper would close the caller's stream
            except ValueError:
                pass


@contextmanager
def _inside(buffered: io.BufferedReader, options: CompressionOptions) -> Iterator[BinaryIO]:
    kind = sniff(buffered.peek(8)[:8])
    if kind is None:
        yield cast(BinaryIO, buffered)
        return
    if kind == "xls":
        raise FileError(
            "the file is an old Excel workbook (.xls), not text: save it as .xlsx (and use format: xlsx) or as CSV"
        )
    size = _size(buffered)
    if kind == "gzip":
        inflated = cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb"))
        compressed = size
        what = "the gzip data"
    else:
        archive = _open_zip(buffered)
        if _is_workbook(archive):
            raise _workbook_error()
        info = _member(archive, options)
        _refuse_encrypted(info)
        compressed = info.compress_size
        what = f"zip member {info.filename!r}"
        check_declared(info, options, what)
        inflated = archive.open(info)
    counted = _Counted(inflated, compressed, options, what)
    reader = io.BufferedReader(counted, _BLOCK)
    try:
        # a gzip or zip inside: the export was compressed twice, which we do not unwrap
        if sniff(reader.peek(8)[:8]) in ("gzip", "zip"):
            raise FileError(f"{what} holds another compressed file: compress the export once", None)
        yield reader
    finally:
        try:
            reader.detach()
        except ValueError:
            pass
        inflated.close()


def _workbook_error() -> FileError:
    return FileError(
        "the file is an Excel workbook (.xlsx), not text: set format: xlsx in the mapping (see config/README.md, "
        "'Workbooks')",
        None,
    )


def _is_workbook(archive: zipfile.ZipFile) -> bool:
    names = set(archive.namelist())
    return "xl/workbook.xml" in names or "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names)


def _size(stream: IO[bytes]) -> int | None:
    """The compressed size of a seekable stream from where it stands, or None."""
    try:
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
    except (OSError, ValueError, AttributeError):
        return None
    return end - here


def check_zip_directory(stream: IO[bytes]) -> None:
    """FileError when the zip's end record says its directory lists more than MAX_ZIP_ENTRIES
    entries or holds more than MAX_ZIP_DIRECTORY_BYTES; nothing when it cannot be found (zipfile
    then says what is wrong). The stream is left where it was."""
    here = stream.tell()
    try:
        end = stream.seek(0, io.SEEK_END)
        start = max(0, end - (22 + 0xFFFF + 20))  # the end record, a comment of at most 64 KB, a zip64 locator
        stream.seek(start)
        tail = stream.read(end - start)
        at = tail.rfind(_END_RECORD)
        if at < 0 or len(tail) - at < 22:
            return
        entries, size = struct.unpack_from("<HI", tail, at + 10)
        if (entries == 0xFFFF or size == 0xFFFFFFFF) and tail[at - 20:at - 16] == _ZIP64_LOCATOR:
            (offset,) = struct.unpack_from("<Q", tail, at - 20 + 8)
            stream.seek(offset)
            record = stream.read(56)
            if len(record) == 56 and record.startswith(_ZIP64_END_RECORD):
                entries, size = struct.unpack_from("<QQ", record, 32)
    finally:
        stream.seek(here)
    if entries > MAX_ZIP_ENTRIES or size > MAX_ZIP_DIRECTORY_BYTES:
        raise FileError(f"the zip file's directory lists {entries:,} entries in {size:,} bytes: more than the "
                        f"{MAX_ZIP_ENTRIES:,} entries or {MAX_ZIP_DIRECTORY_BYTES:,} bytes read (an export zip holds "
                        "one file, a workbook a few dozen parts)", None)


def _open_zip(stream: IO[bytes]) -> zipfile.ZipFile:
    if not stream.seekable():
        raise FileError("the file is a zip file, which can only be read from a file that allows seeking", None)
    check_zip_directory(stream)
    try:
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FileError(f"the file starts like a zip file but cannot be read as one: {exc}", None) from None


def _member(archive: zipfile.ZipFile, options: CompressionOptions) -> zipfile.ZipInfo:
    files = [info for info in archive.infolist() if not info.is_dir()]
    names = [info.filename for info in files]
    if options.member is None:
        if len(files) == 1:
            return files[0]
        listed = _names(names)
        if not files:
            raise FileError("the file is an empty zip: it holds no file", None)
        raise FileError(
            f"the zip holds {len(files)} files ({listed}): say which one to read with compression.member "
            "(a name or a pattern such as 'export_*.csv')",
            None,
        )
    pattern = options.member
    # a pattern matches the member's name, with or without its folders in the zip
    chosen = [
        info for info in files
        if fnmatch.fnmatchcase(info.filename, pattern) or fnmatch.fnmatchcase(info.filename.rsplit("/", 1)[-1], pattern)
    ]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise FileError(f"the zip has no member that matches compression.member {pattern!r}: it holds {_names(names)}")
    raise FileError(
        f"the zip has {len(chosen)} members that match compression.member {pattern!r} "
        f"({_names([info.filename for info in chosen])}): make the pattern match one"
    )


def _names(names: list[str]) -> str:
    from batch.transform.records import short_list

    return short_list(names) or "nothing"


def _refuse_encrypted(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise FileError(f"zip member {info.filename!r} is encrypted; send it without a password", None)


def _limits_hint() -> str:
    return "if the export is genuine, raise compression.max_inflated_mb / compression.max_ratio in the mapping"


def check_declared(info: zipfile.ZipInfo, options: CompressionOptions, what: str) -> None:
    """The sizes a zip declares, checked before anything is inflated."""
    limit = options.max_inflated_mb << 20
    if info.file_size > limit:
        raise FileError(
            f"{what} would inflate to {info.file_size:,} bytes, more than compression.max_inflated_mb "
            f"({options.max_inflated_mb} MB): refused as a possible zip bomb; {_limits_hint()}"
        )
    if info.file_size > INFLATED_FLOOR and info.file_size > options.max_ratio * max(info.compress_size, 1):
        raise FileError(
            f"{what} would inflate {info.file_size // max(info.compress_size, 1):,} times "
            f"({info.compress_size:,} bytes to {info.file_size:,}), more than compression.max_ratio "
            f"({options.max_ratio}): refused as a possible zip bomb; {_limits_hint()}"
        )


class _Counted(io.RawIOBase):
    """Reads an inflating stream and stops with FileError once it passes a limit."""

    def __init__(self, inflated: IO[bytes], compressed: int | None, options: CompressionOptions, what: str):
        self.inflated = inflated
        self.compressed = compressed
        self.options = options
        self.what = what
        self.count = 0
        self.limit = options.max_inflated_mb << 20

    def readable(self) -> bool:
        return True

    # Seeking (back to the start, in practice) inflates again from the beginning: gzip and zip
    # members both allow it on a seekable file. The readers use it on their error path only, to
    # find the line of an undecodable byte (readers._line_of_decode_error).
    def seekable(self) -> bool:
        return self.inflated.seekable()

    def tell(self) -> int:
        return self.inflated.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            position = self.inflated.seek(offset, whence)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise FileError(f"{self.what} is damaged: {exc} (was the upload cut short?)", None) from None
        self.count = position  # the limits count what is inflated from the start
        return position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self.inflated.read(len(buffer))
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            # a truncated upload, a bad CRC: the file itself is broken
            raise FileError(f"{self.what} is damaged: {exc} (was the upload cut short?)", None) from None
        self.count += len(data)
        if self.count > self.limit:
            raise FileError(
                f"{self.what} inflates to more than compression.max_inflated_mb ({self.options.max_inflated_mb} MB): "
                f"refused as a possible zip bomb; {_limits_hint()}"
            )
        if (
            self.compressed is not None
            and self.count > INFLATED_FLOOR
            and self.count > self.options.max_ratio * max(self.compressed, 1)
        ):
            raise FileError(
                f"{self.what} inflates to more than compression.max_ratio ({self.options.max_ratio}) times its "
                f"compressed size of {self.compressed:,} bytes: refused as a possible zip bomb; {_limits_hint()}"
            )
        buffer[: len(data)] = data
        return len(data)
