"""The local inbox on real folders, with watchdog's inotify observer and in polling mode."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.inotify import InotifyObserver

from batch.config.inbox import InboxSettings
from batch.inbox.base import Candidate, Claimed, UnsafeNameError
from batch.inbox.local import LocalInbox
from tests.fixtures_sftp import wait_until


def settings(root: Path, **overrides: Any) -> InboxSettings:
    fields: dict[str, Any] = {"inbox": str(root), "min_age_seconds": 60, "poll_interval_seconds": 0.1}
    fields.update(overrides)
    return InboxSettings(**fields)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def inboxes() -> Iterator[list[LocalInbox]]:
    made: list[LocalInbox] = []
    yield made
    for inbox in made:
        inbox.close()


def make(inboxes: list[LocalInbox], root: Path, **overrides: Any) -> LocalInbox:
    inbox = LocalInbox(settings(root, **overrides))
    inboxes.append(inbox)
    return inbox


def names(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates]


def scan_until(inbox: LocalInbox, name: str, timeout: float = 30.0) -> Candidate:
    return wait_until(lambda: next((c for c in inbox.scan() if c.name == name), None), timeout, what=f"{name} ready")


# ---------------------------------------------------------------- native: events


def test_native_close_write_makes_ready_without_age_wait(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root)  # min_age 60 s: only the close event can make it ready in time
    assert inbox.native
    assert inbox.scan() == []
    (root / "a.csv").write_bytes(b"x;y\n1;2\n")
    assert wait_until(lambda: inbox.wait(5.0), 30, what="wake-up on close-write")
    candidate = scan_until(inbox, "a.csv")
    assert candidate.size == 8


def test_native_wait_returns_early_on_an_event(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root)
    timer = threading.Timer(0.2, lambda: (root / "b.csv").write_text("1\n"))
    timer.start()
    started = time.monotonic()
    assert inbox.wait(60.0) is True
    assert time.monotonic() - started < 30
    timer.join()


def test_native_growing_file_is_not_ready_until_closed(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root)
    with open(root / "big.csv", "wb") as f:
        for i in range(40):
            f.write(b"%d;payload\n" % i)
            f.flush()
            assert "big.csv" not in names(inbox.scan())
            time.sleep(0.01)
    candidate = scan_until(inbox, "big.csv")
    assert candidate.size == (root / "big.csv").stat().st_size


def test_native_moved_in_from_outside_and_renamed_from_temp_name(root: Path, tmp_path: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root)
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("a\n")
    os.rename(outside, root / "moved.csv")
    scan_until(inbox, "moved.csv")

    with open(root / "renamed.csv.part", "w") as f:
        f.write("b\n")
    assert "renamed.csv.part" not in names(inbox.scan())
    os.rename(root / "renamed.csv.part", root / "renamed.csv")
    scan_until(inbox, "renamed.csv")
    assert all(not c.name.endswith(".part") for c in inbox.scan())


def test_native_start_up_scan_finds_files_that_arrived_while_down(root: Path, inboxes: list[LocalInbox]) -> None:
    (root / "old1.csv").write_text("1\n")
    (root / "old2.xml").write_text("<a/>\n")
    os.utime(root / "old2.xml", (1000, 1000))
    inbox = make(inboxes, root, min_age_seconds=0.3)
    # No events for these: the age rule applies (two observations 0.3 s apart).
    assert inbox.scan() == []
    # Oldest first.
    wait_until(lambda: names(inbox.scan()) == ["old2.xml", "old1.csv"], 30, what="both old files, oldest first")


def test_ready_on_close_can_be_turned_off(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, ready_on_close=False)
    (root / "a.csv").write_text("1\n")
    assert wait_until(lambda: inbox.wait(5.0), 30, what="wake-up")
    assert inbox.scan() == []  # 60 s age rule still pending


# ---------------------------------------------------------------- polling


def test_polling_growing_file_is_not_picked_up_then_is_once_stable(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=1.0)
    assert not inbox.native
    started = time.monotonic()
    with open(root / "slow.csv", "wb") as f:
        i = 0
        while time.monotonic() - started < 2.5:  # grows for longer than min_age
            f.write(b"%d;row\n" % i)
            f.flush()
            i += 1
            assert "slow.csv" not in names(inbox.scan())
            time.sleep(0.05)
    final_size = (root / "slow.csv").stat().st_size
    candidate = scan_until(inbox, "slow.csv")
    assert candidate.size == final_size
    assert inbox.wait(0.05) is False  # polling: no events, just the interval


def test_polling_drop_claim_read_archive(root: Path, tmp_path: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=0.2)
    (root / "feed.csv").write_text("id\n1\n")
    candidate = scan_until(inbox, "feed.csv")
    claimed = inbox.claim(candidate)
    assert claimed is not None and claimed.name == "feed.csv"
    assert not (root / "feed.csv").exists()
    path = inbox.open_local(claimed, tmp_path / "staging")
    assert path == root / "processing" / "feed.csv" and path.read_text() == "id\n1\n"
    assert inbox.finish(claimed, ok=True) == "feed.csv"
    assert (root / "archive" / "feed.csv").read_text() == "id\n1\n"
    assert inbox.claim(candidate) is None  # already gone


# ---------------------------------------------------------------- markers


def test_marker_feed(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=0, marker_suffixes=[".done", ".ok"])
    (root / "m.csv").write_text("1\n")
    assert inbox.scan() == [] and inbox.scan() == []  # no marker: not ready, whatever its age
    (root / "m.csv.ok").write_bytes(b"")
    [candidate] = inbox.scan()
    assert (candidate.name, candidate.marker) == ("m.csv", "m.csv.ok")
    claimed = inbox.claim(candidate)
    assert claimed is not None and claimed.marker == "m.csv.ok"
    assert sorted(os.listdir(root / "processing")) == ["m.csv", "m.csv.ok"]
    assert inbox.finish(claimed, ok=False) == "m.csv"
    assert sorted(os.listdir(root / "error")) == ["m.csv", "m.csv.ok"]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == []


# ---------------------------------------------------------------- claims across processes


def _claim_worker(root: str, barrier: Any, results: Any) -> None:
    inbox = LocalInbox(settings(Path(root), mode="polling", min_age_seconds=0))
    taken: list[str] = []
    barrier.wait(timeout=60)
    while True:
        candidates = inbox.scan()
        if not candidates:
            break
        for candidate in candidates:
            claimed = inbox.claim(candidate)
            if claimed is not None:
                taken.append(claimed.source_name)
    inbox.close()
    results.put(taken)


def test_two_processes_claim_each_file_exactly_once(root: Path) -> None:
    all_names = {f"f{i:03d}.csv" for i in range(60)}
    for name in all_names:
        (root / name).write_text(name)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    workers = [ctx.Process(target=_claim_worker, args=(str(root), barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    taken = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    first, second = set(taken[0]), set(taken[1])
    assert len(taken[0]) == len(first) and len(taken[1]) == len(second)
    assert first.isdisjoint(second)
    assert first | second == all_names
    assert set(os.listdir(root / "processing")) == all_names
    for name in all_names:
        assert (root / "processing" / name).read_text() == name


# ---------------------------------------------------------------- archive, receipts, names, resume


def test_archive_name_clash_gets_a_timestamp_and_nothing_is_overwritten(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=0)
    archived = []
    for content in ("first\n", "second\n", "third\n"):
        (root / "daily.csv").write_text(content)
        [candidate] = inbox.scan()
        claimed = inbox.claim(candidate)
        assert claimed is not None
        archived.append(inbox.finish(claimed, ok=True))
    assert archived[0] == "daily.csv"
    assert len(set(archived)) == 3
    for name in archived[1:]:
        assert re.fullmatch(r"daily\.\d{8}T\d{6}Z(-\d+)?\.csv", name), name
    contents = sorted((root / "archive" / n).read_text() for n in archived)
    assert contents == ["first\n", "second\n", "third\n"]


def test_claim_into_processing_never_overwrites_a_left_over(root: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=0)
    (root / "processing" / "x.csv").write_text("left over\n")
    (root / "x.csv").write_text("new\n")
    [candidate] = inbox.scan()
    claimed = inbox.claim(candidate)
    assert claimed is not None and claimed.name != "x.csv" and claimed.source_name == "x.csv"
    assert (root / "processing" / "x.csv").read_text() == "left over\n"
    assert (root / "processing" / claimed.name).read_text() == "new\n"


def test_receipt_is_written_atomically(root: Path, tmp_path: Path, inboxes: list[LocalInbox]) -> None:
    inbox = make(inboxes, root, mode="polling")
    events: list[Any] = []

    class Recorder:
        def dispatch(self, event: Any) -> None:
            events.append(event)

    observer = InotifyObserver(generate_full_events=True)
    observer.schedule(Recorder(), str(root / "outbox"), recursive=False)  # type: ignore[arg-type]  # needs dispatch()
    observer.start()
    try:
        receipt = tmp_path / "local-receipt.csv"
        receipt.write_bytes(b"row;accepted\n" * 400_000)
        inbox.put_receipt(receipt, "feed.receipt.csv")
        final = str(root / "outbox" / "feed.receipt.csv")
        moved = wait_until(
            lambda: [e for e in list(events) if e.event_type == "moved" and e.dest_path == final], 30, what="rename"
        )
    finally:
        observer.stop()
        observer.join()
    assert os.path.basename(moved[0].src_path).startswith(".")  # written under a temporary dotfile name
    # The final name was never created or written to directly.
    assert not [e for e in events if e.src_path == final and e.event_type in ("created", "modified", "closed")]
    assert (root / "outbox" / "feed.receipt.csv").read_bytes() == receipt.read_bytes()
    assert os.listdir(root / "outbox") == ["feed.receipt.csv"]
    receipt.write_text("replaced\n")
    inbox.put_receipt(receipt, "feed.receipt.csv")
    assert (root / "outbox" / "feed.receipt.csv").read_text() == "replaced\n"


def test_names_that_leave_the_inbox_are_refused(root: Path, tmp_path: Path, inboxes: list[LocalInbox], caplog: pytest.LogCaptureFixture) -> None:
    inbox = make(inboxes, root, mode="polling", min_age_seconds=0)
    secret = tmp_path / "secret.csv"
    secret.write_text("not yours\n")
    (root / "link.csv").symlink_to(secret)
    (root / "bad\nname.csv").write_text("1\n")
    (root / "back\\slash.csv").write_text("1\n")
    (root / "good.csv").write_text("1\n")
    with caplog.at_level(logging.ERROR, logger="batch.inbox.local"):
        assert names(inbox.scan()) == ["good.csv"]
        inbox.scan()
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2  # each bad name reported once, not on every scan
    assert any("control characters" in m for m in refused) and any("separator" in m for m in refused)

    for bad in ("../secret.csv", "/etc/passwd", "a/../../secret.csv", ".."):
        with pytest.raises(UnsafeNameError):
            inbox.claim(Candidate(bad, 1, 1.0))
        with pytest.raises(UnsafeNameError):
            inbox.put_receipt(secret, bad)
        with pytest.raises(UnsafeNameError):
            inbox.finish(Claimed(bad, bad, 1, 1.0), ok=True)
        with pytest.raises(UnsafeNameError):
            inbox.open_local(Claimed(bad, bad, 1, 1.0), tmp_path)
    with pytest.raises(UnsafeNameError):
        inbox.claim(Candidate("good.csv", 1, 1.0, marker="../secret.csv"))
    assert secret.read_text() == "not yours\n"
    assert sorted(os.listdir(tmp_path)) == ["inbox", "secret.csv"]


def test_resume_lists_what_a_previous_run_left_in_processing(root: Path, tmp_path: Path, inboxes: list[LocalInbox]) -> None:
    first = make(inboxes, root, mode="polling", min_age_seconds=0, marker_suffixes=[".done"])
    for i, name in enumerate(("b.csv", "a.csv", "c.csv")):
        (root / name).write_text(name)
        os.utime(root / name, (1000 + i, 1000 + i))
        (root / f"{name}.done").write_text("")
    claimed = [first.claim(c) for c in first.scan()[:2]]
    assert all(claimed)
    first.close()

    second = make(inboxes, root, mode="polling", min_age_seconds=0, marker_suffixes=[".done"])
    resumed = second.resume()
    assert [(c.name, c.marker) for c in resumed] == [("b.csv", "b.csv.done"), ("a.csv", "a.csv.done")]
    for c in resumed:
        assert second.open_local(c, tmp_path / "staging").read_text() == c.name
        second.finish(c, ok=True)
    assert second.resume() == []
    assert names(second.scan()) == ["c.csv"]


# ---------------------------------------------------------------- receipts through the inbox interface


def test_a_local_receipt_is_written_into_the_outbox_and_needs_no_publishing(
        inboxes: list[LocalInbox], root: Path, tmp_path: Path) -> None:
    from batch.fsutil import OwnFolderPath

    inbox = make(inboxes, root, min_age_seconds=0)
    receipts = inbox.receipt_dir(tmp_path / "staging")
    assert receipts == root / "outbox" and isinstance(receipts, OwnFolderPath)  # never through a symlink (D19)
    receipt = receipts / "a.csv.receipt.csv"
    receipt.write_text("r\n")

    def fence(path: Path) -> None:
        raise AssertionError(f"nothing to put in the outbox, nothing to check: {path}")

    assert inbox.publish_receipt([receipt], fence) == [str(receipt)]
    assert receipt.read_text() == "r\n" and not (tmp_path / "staging").exists()
    (root / "b.csv").write_text("1\n")
    (candidate,) = inbox.scan()
    claimed = inbox.claim(candidate)
    assert claimed is not None
    local = inbox.open_local(claimed, tmp_path / "staging")
    inbox.release_local(local)  # the file itself, in processing/: it stays
    assert local == root / "processing" / "b.csv" and local.read_text() == "1\n"
