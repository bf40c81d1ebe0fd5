"""One XML file parsed in a child process with a memory budget; its records come back over a pipe.

Why a process: libxml2 keeps every distinct name it parses (element and attribute names,
namespace prefixes and URIs, processing-instruction targets, short or blank texts) in a
dictionary that lxml shares between all parsers of a thread and never shrinks. 87 MB of
`<j1/><j2/>…` took a process to 488 MB, and it stayed there after the parse and after the thread
ended. No parser option turns the dictionary off, and counting names in Python on every element
would cost the normal path a third of its speed. In a child, the dictionary dies with the child;
the child watches its own peak RSS before each 64 KB block and refuses the file past
`MEMORY_BUDGET_MB`, with the line it had reached, and an address-space limit catches whatever a
single block could still allocate. The parent maps the records while the child parses the next
ones, so the normal path loses little (bench/bench_mapping.py).

The child is a fresh interpreter (`python -m batch.transform.xmlprocess`), not a fork: the
service has threads, and a fork copies their locks mid-use. It reads the file through the
descriptor the parent opened and imports only the reader (~60 ms), not the configuration. It
ignores SIGINT, SIGTERM and SIGHUP from its first instruction on: systemd stops a service by
signalling every process of it, and Ctrl-C reaches a command's whole process group; the parent
decides when its parse ends (it stops reading and kills it), so a stop never looks like a
broken file.

The pipe carries length-prefixed JSON, never pickle: what comes back is data from a hostile
file, handled by a process that parsed it. Messages: ["chunk", lines, rows], then ["done", peak]
or ["error", message, line, peak]. orjson writes and reads them (UTF-8 JSON as the standard
library's: ~0.6 us a record less CPU than json.dumps and json.loads, bench/bench_mapping.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import orjson

from batch.transform.magic import sniff
from batch.transform.records import Chunk, XmlPlan

if TYPE_CHECKING:
    from batch.config.mapping import XmlOptions

log = logging.getLogger(__name__)

# The child's resident memory may grow this much over what it had once its imports were done
# (~21 MB). A 200 MB export grows it by 1-2 MB (one block, one record, one chunk); a 1 MB record
# whose tree costs 30 times its markup stays inside. Past the budget, libxml2's name table can
# still double once before the next check: the child peaked at 134 MB on 87 MB of distinct names.
MEMORY_BUDGET_MB = 64
# Address space the child may add beyond the budget before malloc fails: the hard backstop for
# an allocation between two checks (the checks see RSS; the address space also counts what is
# reserved and untouched).
ADDRESS_SPACE_SLACK_MB = 192
# The longest message the parent accepts: a chunk is cut at 4 MB of the file (readers.MAX_CHUNK_BYTES)
# and JSON adds little to text.
MAX_MESSAGE_BYTES = 64 << 20
_LENGTH = struct.Struct(">I")


class _Failed(Exception):
    """The child's account of a failure: (message, line) as FileError takes them."""


def read_xml_file(
    stream: BinaryIO, options: XmlOptions, plan: XmlPlan, chunk_size: int, name: str = "the file",
    compression: dict[str, Any] | None = None,
) -> Iterator[Chunk]:
    """The records of the XML file open as `stream` (a real file: its descriptor goes to the child),
    as read_xml gives them. Raises readers.FileError as read_xml does, and also when the parse
    passes its memory budget or the child dies."""
    from batch.transform.readers import FileError

    if not isinstance(getattr(stream, "raw", None), io.FileIO):
        # the child reads the descriptor itself: a wrapper (gzip, a decoder) would be bypassed
        raise TypeError(f"read_xml_file needs a file opened with open(path, 'rb'), not {type(stream).__name__}")
    columns = list(plan.texts) + [element for element, _ in plan.groups]
    fd = stream.fileno()
    job = {
        "fd": fd,
        "offset": stream.tell(),
        "record_path": options.record_path,
        "namespaces": dict(options.namespaces),
        "texts": list(plan.texts),
        "groups": [[element, list(parts)] for element, parts in plan.groups],
        "chunk_size": chunk_size,
        "budget_mb": MEMORY_BUDGET_MB,
        "compression": compression,  # the mapping's `compression:` options (CompressionOptions fields)
    }
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            # `trap ""` sets the signals to SIG_IGN, which exec keeps: ignored before Python even starts
            ["/bin/sh", "-c", 'trap "" INT TERM HUP; exec "$0" "$@"', sys.executable, "-m", __name__, json.dumps(job)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,  # a file, not a pipe: nothing the child prints can block it
            pass_fds=(fd,),
            env=_child_environment(),
        )
        assert child.stdout is not None
        finished = False
        try:
            while True:
                message = _receive(child.stdout)
                if message is None:
                    break
                kind = message[0]
                if kind == "chunk":
                    yield Chunk(columns, message[1], message[2])
                elif kind == "done":
                    finished = True
                    _log_figures(name, message[1])
                    break
                else:
                    _log_figures(name, message[3])
                    finished = True
                    raise FileError(message[1], message[2])
        finally:
            if not finished:
                child.kill()  # the caller stopped early, or the child died: do not wait for it
            child.stdout.close()
            status = child.wait()
        if not finished:
            raise FileError(_death(status, errors))


def _child_environment() -> dict[str, str]:
    """The child imports the `batch` this process runs, wherever sys.path found it."""
    root = str(Path(__file__).resolve().parents[2])
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
    return environment


def _receive(pipe: IO[bytes]) -> list[Any] | None:
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > MAX_MESSAGE_BYTES:
        return None
    body = pipe.read(size)
    if len(body) < size:
        return None
    try:
        message = orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError
        return None  # not what our child writes: treated as its death
    return message if isinstance(message, list) and message else None


def _death(status: int, errors: IO[bytes]) -> str:
    """A sentence for a child that ended without saying why (killed, out of memory, crashed)."""
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    errors.seek(0)
    said = errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
    last = f": {said[-1][:200]!r}" if said else ""
    return (
        f"the XML parser process {how} before the end of the file{last} "
        f"(it may use {MEMORY_BUDGET_MB} MB; a file that needs more is refused)"
    )


def _log_figures(name: str, peak_mb: float) -> None:
    log.debug("XML parser process for %s: peak RSS %.1f MB", name, peak_mb, extra={"xml_child_peak_rss_mb": peak_mb})


# --- the child -----------------------------------------------------------------------------------


class _Resident:
    """This process's resident memory in MB, read from /proc/self/statm (a few microseconds).

    Not getrusage's ru_maxrss: a child started by vfork + exec inherits its parent's peak there."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / (1 << 20)

    def now(self) -> float:
        return int(os.pread(self.fd, 200, 0).split()[1]) * self.page_mb


def _peak_mb() -> float:
    """The highest resident memory this process had (VmHWM: its own, not carried over an exec)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def _limit_address_space(extra_mb: int) -> None:
    status = Path("/proc/self/status").read_text()
    size_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmSize:"))
    limit = (size_kb << 10) + (extra_mb << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _budget_error(budget_mb: int) -> str:
    return (
        f"the XML needed more than {budget_mb} MB of memory to parse by this line: refused (an export needs a few MB). "
        "This much comes from a great many distinct element, attribute or namespace names, which the XML parser "
        "keeps until the end of the file"
    )


def _child(job: dict[str, Any], out: IO[bytes]) -> None:
    from batch.transform.readers import FileError, parse_xml

    def send(message: list[Any]) -> None:
        body = orjson.dumps(message)
        out.write(_LENGTH.pack(len(body)) + body)

    budget = job["budget_mb"]
    resident = _Resident()
    ceiling = resident.now() + budget

    def each_block(line: int) -> None:
        if resident.now() > ceiling:
            raise _Failed(_budget_error(budget), line)

    _limit_address_space(budget + ADDRESS_SPACE_SLACK_MB)
    stream = os.fdopen(job["fd"], "rb")
    stream.seek(job["offset"])
    plan = XmlPlan(job["texts"], [(element, parts) for element, parts in job["groups"]])
    line = 1
    try:
        with ExitStack() as unwrapping:
            source: BinaryIO = stream
            if sniff(stream.peek(8)[:8]) is not None:
                # compressed: unwrapped here, so that the parent hands over the file itself
                # (only then is the configuration imported, for the compression options)
                from batch.config.mapping import CompressionOptions
                from batch.transform.compressed import opened_export

                options = CompressionOptions(**(job["compression"] or {}))
                source = unwrapping.enter_context(opened_export(stream, options))
            for chunk in parse_xml(source, job["record_path"], job["namespaces"], plan, job["chunk_size"], each_block):
                line = chunk.lines[-1]
                send(["chunk", chunk.lines, chunk.rows])
    except FileError as exc:
        # libxml2 reports a failed malloc (the address-space limit) as a syntax error
        message = _budget_error(budget) if "Memory allocation failed" in exc.message else exc.message
        send(["error", message, exc.line, _peak_mb()])
    except _Failed as exc:
        send(["error", exc.args[0], exc.args[1], _peak_mb()])
    except MemoryError:
        send(["error", _budget_error(budget), line, _peak_mb()])
    else:
        send(["done", _peak_mb()])
    out.flush()


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not into the message stream
    try:
        _child(json.loads(sys.argv[1]), out)
    except BrokenPipeError:
        pass  # the parent stopped reading: it has what it wants
    except BaseException:
        traceback.print_exc()
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
