"""Helpers for the service tests: a mapping, export files, configurations, and a service run
in a thread (in-process) or as a real `usageplace-batch run` subprocess."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from batch.config.service import load_service_config
from batch.sandbox.server import Sandbox
from batch.service.logs import JsonFormatter, RedactingFilter
from batch.service.supervisor import Service
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until

MAPPING = """\
format: csv
csv: {encoding: utf-8, delimiter: ","}
fields:
  id: {column: id}
  usageplacecode: {column: place}
  time: {column: time, formats: ["%Y-%m-%d %H:%M:%S"]}
  status: {column: status}
  description: {column: note}
"""

# The same, with a constant description: a visible difference in what Ropo One receives.
MAPPING_V2 = MAPPING.replace("description: {column: note}", "description: {const: mapping-v2}")

# A mapping with a mistake: an unknown key (`colum`).
MAPPING_BROKEN = MAPPING.replace("usageplacecode: {column: place}", "usageplacecode: {colum: place}")


def export(prefix: str, count: int, *, place_base: int = 643007572062450000) -> bytes:
    """A CSV export of `count` valid records with ids PREFIX-1 .. PREFIX-count."""
    lines = ["id,place,time,status,note"]
    for i in range(1, count + 1):
        lines.append(f"{prefix}-{i},{place_base + i % 50},2024-02-05 06:30:00,disconnected,note {i}")
    return ("\n".join(lines) + "\n").encode()


def ids(prefix: str, count: int) -> set[str]:
    return {f"{prefix}-{i}" for i in range(1, count + 1)}


def write_config(base: Path, sandbox: Sandbox, feeds: list[dict[str, Any]], **top: Any) -> Path:
    """A service.yaml in `base` (mapping.yaml beside it unless a feed names another)."""
    base.mkdir(parents=True, exist_ok=True)
    mapping = base / "mapping.yaml"
    if not mapping.exists():
        mapping.write_text(MAPPING)
    config: dict[str, Any] = {
        "api": {"base_url": sandbox.base_url, "cid": sandbox.cid, "apicode": "${" + APICODE_ENV + "}",
                "connect_timeout": 2.0, "read_timeout": 5.0},
        "delivery": {"max_in_flight": 4, "backoff_base": 0.05, "backoff_cap": 0.5, "backoff_jitter": 0.0},
        "journal": str(base / "var" / "journal.sqlite3"),
        "staging_dir": str(base / "var" / "staging"),
        "feeds": [{"mapping": "mapping.yaml", "min_age_seconds": 0.3, "poll_interval_seconds": 0.1,
                   "patterns": ["*.csv"], **feed} for feed in feeds],
    }
    config.update(top)
    path = base / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class LogCapture(logging.Handler):
    """Collects formatted records (JSON lines) through the service's redacting filter."""

    def __init__(self, redactor: RedactingFilter) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(redactor)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock2:
            self.lines.append(line)

    @property
    def text(self) -> str:
        with self._lock2:
            return "\n".join(self.lines)

    def messages(self) -> list[str]:
        with self._lock2:
            return [json.loads(line)["message"] for line in self.lines]


class ServiceThread:
    """A Service running in a thread of the test process, with its log captured."""

    def __init__(self, config: Path, *, once: bool = False, reload_interval: float = 0.2) -> None:
        self.redactor = RedactingFilter()
        self.logs = LogCapture(self.redactor)
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self.logs)
        root.setLevel(logging.INFO)
        self.service = Service(load_service_config(config), once=once, reload_interval=reload_interval,
                               redactor=self.redactor)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="service-under-test", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.service.run()

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> int | None:
        self.service.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not stop"
        root = logging.getLogger()
        root.removeHandler(self.logs)
        root.setLevel(self._level)
        return self.exit_code

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        wait_until(lambda: text in self.logs.text, timeout, what=f"log line containing {text!r}")


def run_once(config: Path) -> tuple[int, ServiceThread]:
    """`run --once` in-process; returns the exit code and the runner (for its logs)."""
    runner = ServiceThread(config, once=True)
    with runner:
        runner.thread.join(120)
    return runner.exit_code if runner.exit_code is not None else -1, runner


class ServiceProcess:
    """A real `usageplace-batch run` subprocess; its stderr (the log) goes to a file."""

    def __init__(self, config: Path, log: Path, *extra: str, env: dict[str, str] | None = None,
                 wrap: Sequence[str] = ()) -> None:
        """`wrap`: a command that execs the service (e.g. one that gives it a host name of its own)."""
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - the child writes to it until stop()
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "batch", "run", "--config", str(config), "--reload-interval", "0.2",
             *extra],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._out, env={**os.environ, **(env or {})},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        def found() -> bool:
            if self.proc.poll() is not None and text not in self.text():
                raise AssertionError(f"service exited {self.proc.returncode} before logging {text!r}:\n{self.text()}")
            return text in self.text()

        wait_until(found, timeout, what=f"log line containing {text!r}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()


def receipt(outbox: Path, name: str) -> dict[str, Any]:
    return json.loads((outbox / f"{name}.receipt.json").read_text())


def capture_stream() -> io.StringIO:
    return io.StringIO()
