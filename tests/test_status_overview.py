"""`status` and the console's feeds page look at every feed's inbox (files waiting in processing/,
the lease marker): side by side, so that servers that do not answer cost one timeout, not one
per feed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.config.service import load_service_config
from batch.service.supervisor import feed_overview
from tests.service_helpers import write_config


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung SSH server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def overview_seconds(tmp_path: Path, sandbox, sshd, port: int, feeds: int) -> tuple[float, list[dict]]:
    config = write_config(tmp_path / f"etc{feeds}", sandbox, [
        {"name": f"hung{n}", "inbox": f"sftp://{sshd.user}@127.0.0.1:{port}/inbox{n}",
         "private_key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts)} for n in range(feeds)])
    loaded = load_service_config(config)
    started = time.monotonic()
    rows = feed_overview(loaded, None)
    return time.monotonic() - started, rows


def test_the_inboxes_of_an_overview_are_looked_at_side_by_side(
        tmp_path: Path, sandbox, sshd, silent_server: int) -> None:
    one, [row] = overview_seconds(tmp_path, sandbox, sshd, silent_server, 1)
    assert row["in_processing"] is None and "inbox" in row
    assert "error" in row and "127.0.0.1" in row["error"]
    six, rows = overview_seconds(tmp_path, sandbox, sshd, silent_server, 6)
    assert [r["feed"] for r in rows] == [f"hung{n}" for n in range(6)]  # in the configuration's order
    assert all("error" in r for r in rows)
    # one by one, six hung servers cost six timeouts; side by side about one
    assert six < 2 * one, (one, six)
