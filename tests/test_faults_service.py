"""Files around faults (issue 8, and D7/D14 of issue 7): a file that fails while resumed, a
journal or a disk that refuses writes, an archive/ that refuses the move, a mapping that
changes under an unfinished file, a second SIGTERM during shutdown. Real sandbox, real
SQLite, real subprocess signals, real read-only and full file systems (loop/tmpfs mounts)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import (
    ServiceProcess,
    ServiceThread,
    export,
    ids,
    receipt,
    run_once,
    write_config,
)


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def drop(inbox: Path, name: str, data: bytes) -> Path:
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    final = inbox / name
    os.rename(tmp, final)
    return final


def journal_of(tmp_path: Path) -> Path:
    return tmp_path / "var" / "journal.sqlite3"


def journal_rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only; the test is skipped with a message otherwise)."""
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------- F10


def test_F10_second_sigterm_during_shutdown_exits_0(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    for trial in range(8):
        service = ServiceProcess(config, tmp_path / f"service{trial}.log")
        service.wait_log("watching 1 feed(s)")
        service.signal(signal.SIGTERM)
        # SIGTERMs keep coming until the process is gone: through the join, the close and the
        # interpreter's shutdown
        while service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                service.signal(signal.SIGTERM)
            time.sleep(0.001)
        assert service.wait(30) == 0, f"trial {trial}: exit {service.proc.returncode}\n{service.text()}"
        log = service.text()  # said once each, however many signals came
        assert log.count("SIGTERM: stopping; files in flight finish") == 1, log
        assert log.count("SIGTERM again: still finishing the files in flight") <= 1, log


# --------------------------------------------------------------------------- F1 / D7


@pytest.mark.slow
def test_F1_file_failing_during_resume_is_retried(tmp_path: Path, sandbox, apicode_env) -> None:
    """SIGTERM mid-file; restart while the token endpoint answers 400; clear the fault after
    "cannot deliver": the file resumes within the promised time, before any newer file."""
    sandbox.set_faults(latency_ms=3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
    drop(inbox, "big.csv", export("B", 3000))
    first = ServiceProcess(config, tmp_path / "first.log")
    wait_until(lambda: len(sandbox.arrivals) >= 1000, 60, what="1,000 arrivals")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.text()
    assert (inbox / "processing" / "big.csv").exists()

    sandbox.set_faults(token_script=[400] * 1000)
    sandbox.revoke_tokens()
    second = ServiceProcess(config, tmp_path / "second.log")
    try:
        second.wait_log("cannot deliver to Ropo One")
        drop(inbox, "newer.csv", export("N", 10))  # must wait behind big.csv
        time.sleep(0.5)
        sandbox.set_faults()
        promised = float(second.text().split("is resumed in ")[1].split(" s")[0])
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), promised + 15, what="big.csv archived")
        wait_until(lambda: (inbox / "archive" / "newer.csv").exists(), 15, what="newer.csv archived")
    finally:
        second.signal(signal.SIGTERM)
        second.wait(30)
    accepted = sandbox.accepted_ids
    assert set(accepted) == ids("B", 3000) | ids("N", 10)
    assert max(accepted.index(i) for i in ids("B", 3000)) < min(accepted.index(i) for i in ids("N", 10))
    assert receipt(inbox / "outbox", "big.csv")["counts"]["accepted"] == 3000


def _fail_recording_after(monkeypatch: pytest.MonkeyPatch, records: int) -> None:
    """A library error half-way through mapping (a stand-in for a bug: a TypeError)."""
    import batch.pipeline as pipeline

    real = pipeline.mapped_file

    def failing(compiled, path, **options):
        seen = 0
        for chunk in real(compiled, path, **options):
            yield chunk
            seen += len(chunk)
            if seen >= records:
                raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(pipeline, "mapped_file", failing)


@pytest.mark.slow
def test_D7_D14_file_that_keeps_failing_goes_to_error_with_receipt_across_restarts(
        tmp_path: Path, sandbox, apicode_env, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_recording_after(monkeypatch, 5200)  # after the first batch of 5,000 was journaled
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
    drop(inbox, "bad.csv", export("X", 6000))
    with ServiceThread(config) as runner:
        runner.wait_log("bad.csv failed (attempt 1 of 3)")
        wait_until(lambda: runner.service.workers["local"].last_error is not None, 5, what="last_error")
        health = runner.service.health()[1]["feeds"]["local"]
        assert health["state"] == "retrying"
        assert health["last_error"] == ("bad.csv: TypeError: unsupported operand type(s) for +: "
                                        "'int' and 'NoneType'")
    assert (inbox / "processing" / "bad.csv").exists()
    # a restart does not start the count again
    assert journal_rows(journal_of(tmp_path), "SELECT attempts FROM file_attempts") == [(1,)]
    drop(inbox, "newer.csv", export("N", 5))
    with ServiceThread(config) as runner:
        runner.wait_log("bad.csv failed (attempt 2 of 3)")
        assert not sandbox.arrivals  # the newer file waits behind the failing one
        runner.wait_log("bad.csv failed 3 time(s)", timeout=30)
        wait_until(lambda: (inbox / "archive" / "newer.csv").exists(), 30, what="newer.csv archived")
    assert (inbox / "error" / "bad.csv").exists()
    summary = receipt(inbox / "outbox", "bad.csv")
    assert summary["state"] == "error"
    assert summary["error"].startswith("failed 3 times: TypeError: unsupported operand")
    # D14: what was journaled before the failure is not left pending
    assert summary["counts"]["pending"] == 0 and summary["counts"]["not_sent"] == summary["records"] == 5120
    rows = journal_rows(journal_of(tmp_path),
                        "SELECT DISTINCT e.state, e.message FROM events e JOIN files f ON f.id = e.file_id"
                        " WHERE f.name = 'bad.csv'")
    assert rows == [("not_sent", "file error: " + summary["error"])]
    csv_text = (inbox / "outbox" / "bad.csv.receipt.csv").read_text()
    assert "file_error" in csv_text
    assert journal_rows(journal_of(tmp_path), "SELECT * FROM file_attempts") == []
    assert set(sandbox.accepted_ids) == ids("N", 5)


# --------------------------------------------------------------------------- F3 / F4: a full outbox


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for block in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return filler


def test_F4_F3_receipt_that_cannot_be_written_is_retried_without_a_wrong_receipt(
        tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0,
                                               "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 0.5}])
    with tmpfs(inbox / "outbox", "64k") as outbox:
        filler = fill(outbox)
        drop(inbox, "full.csv", export("F", 500))
        with ServiceThread(config) as runner:
            runner.wait_log("full.csv: processed, but writing its receipt failed")
            runner.wait_log("(attempt 3)")
            drop(inbox, "next.csv", export("G", 5))  # a delivered file does not hold the feed
            wait_until(lambda: len(sandbox.accepted_ids) == 505, 30, what="next.csv delivered")
            runner.wait_log("next.csv: processed, but writing its receipt failed")
            text = runner.logs.text
            assert (f"writing its receipt failed: cannot write receipt: {outbox}/full.csv.receipt.csv: "
                    "No space left on device (ENOSPC)") in text
            health = runner.service.health()[1]["feeds"]["local"]
            assert "writing its receipt failed" in health["last_error"]
            assert (inbox / "processing" / "full.csv").exists()
            assert "Already processed" not in text
            filler.unlink()
            wait_until(lambda: (inbox / "archive" / "full.csv").exists(), 20, what="full.csv archived")
            wait_until(lambda: (inbox / "archive" / "next.csv").exists(), 20, what="next.csv archived")
        summary = receipt(outbox, "full.csv")
        assert summary["state"] == "done" and summary["counts"]["accepted"] == 500
        assert "already_processed" not in (outbox / "full.csv.receipt.csv").read_text()
        assert receipt(outbox, "next.csv")["counts"]["accepted"] == 5
    states = journal_rows(journal_of(tmp_path), "SELECT name, state, finish_problem FROM files ORDER BY id")
    assert states == [("full.csv", "done", None), ("next.csv", "done", None)]  # no 'skipped' rows
    assert sorted(sandbox.accepted_ids) == sorted(ids("F", 500) | ids("G", 5))
    assert not sandbox.duplicates


# --------------------------------------------------------------------------- F5: archive/ refuses the move


def test_F5_archive_that_refuses_the_move_does_not_hold_the_next_files(
        tmp_path: Path, sandbox, apicode_env) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1) to make archive/ refuse writes (root ignores permissions)")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0,
                                               "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 0.5}])
    with ServiceThread(config) as runner:
        runner.wait_log("watching 1 feed(s)")
        wait_until(lambda: (inbox / "archive").is_dir(), 10, what="archive/")
        if subprocess.run(["chattr", "+i", str(inbox / "archive")], capture_output=True).returncode:
            pytest.skip("this file system does not support the immutable attribute")
        try:
            drop(inbox, "a.csv", export("A", 20))
            runner.wait_log("a.csv: processed, but moving a.csv from processing/ to archive/ failed")
            drop(inbox, "b.csv", export("B", 20))
            wait_until(lambda: (inbox / "outbox" / "b.csv.receipt.json").exists(), 20, what="b.csv delivered")
            assert receipt(inbox / "outbox", "b.csv")["counts"]["accepted"] == 20
            problem = journal_rows(journal_of(tmp_path), "SELECT finish_problem FROM files WHERE name = 'a.csv'")
            assert problem[0][0].startswith("moving a.csv from processing/ to archive/ failed: ")
            assert "Operation not permitted" in problem[0][0]
        finally:
            subprocess.run(["chattr", "-i", str(inbox / "archive")], capture_output=True)
        wait_until(lambda: {p.name for p in (inbox / "archive").iterdir()} == {"a.csv", "b.csv"}, 20,
                   what="both archived")
    assert journal_rows(journal_of(tmp_path), "SELECT name, state, finish_problem FROM files ORDER BY id") == [
        ("a.csv", "done", None), ("b.csv", "done", None)]
    assert not sandbox.duplicates


# --------------------------------------------------------------------------- F2: the journal's disk turns read-only


@contextlib.contextmanager
def ext4_remount_ro(path: Path, image: Path) -> Iterator[dict[str, object]]:
    """A small ext4 (loop device, errors=remount-ro) at `path`; `fail()` triggers an ext4 error
    (the kernel remounts it read-only), `repair()` unmounts, checks and mounts it again."""
    if not _can_mount() or shutil.which("mkfs.ext4") is None or shutil.which("e2fsck") is None:
        pytest.skip("needs root, mount(8), mkfs.ext4 and e2fsck for a loop-mounted ext4")
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    path.mkdir(parents=True, exist_ok=True)

    def mount() -> None:
        done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")

    def device() -> str:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if fields[1] == str(path):
                return Path(fields[0]).name
        raise AssertionError(f"{path} is not mounted")

    def fail() -> None:
        Path(f"/sys/fs/ext4/{device()}/trigger_fs_error").write_text("test: journal disk fault")

    def repair() -> None:
        # what an operator does: unmount, check, mount again. The old file system goes away
        # when its last open file is closed: the service's journal lets go of it when it
        # tries to open the journal again after a pause.
        subprocess.run(["umount", "-l", str(path)], check=True)
        wait_until(lambda: not subprocess.run(["losetup", "-j", str(image)], capture_output=True,
                                              text=True).stdout.strip(), 30, what="the old mount released")
        subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
        mount()

    mount()
    if not Path(f"/sys/fs/ext4/{device()}/trigger_fs_error").exists():
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        pytest.skip("this kernel has no ext4 trigger_fs_error")
    try:
        yield {"fail": fail, "repair": repair}
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_F2_read_only_journal_pauses_the_feed_and_resumes(tmp_path: Path, sandbox, apicode_env) -> None:
    sandbox.set_faults(latency_ms=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with ext4_remount_ro(tmp_path / "var", tmp_path / "var.ext4") as disk:
        config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
        drop(inbox, "big.csv", export("J", 3000))
        with ServiceThread(config) as runner:
            wait_until(lambda: len(sandbox.arrivals) >= 800, 60, what="800 arrivals")
            disk["fail"]()
            sent_before_the_fault = len(sandbox.arrivals)
            runner.wait_log("the journal cannot be used: journal ")
            text = runner.logs.text
            assert f"journal {journal_of(tmp_path)}: cannot " in text
            assert "big.csv stays in processing/; the feed pauses and tries again in" in text
            health = runner.service.health()[1]["feeds"]["local"]
            assert health["state"] == "paused"
            assert health["last_error"].startswith(f"journal {journal_of(tmp_path)}: cannot ")
            time.sleep(1.5)
            assert (inbox / "processing" / "big.csv").exists()
            assert not (inbox / "error").exists() or not list((inbox / "error").iterdir())
            disk["repair"]()
            wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 60, what="big.csv archived")
        summary = receipt(inbox / "outbox", "big.csv")
        assert summary["counts"]["accepted"] + summary["counts"]["duplicate"] == 3000
    assert set(sandbox.accepted_ids) == ids("J", 3000)
    # The journal commits results with synchronous=NORMAL: what was committed since its last
    # durability barrier (an fsync at a WAL checkpoint) may go with a failing disk, as with a
    # power loss (README, "Journal"). Those events are sent again, never lost; nothing sent after
    # the fault, and no event more than once again (the batch in flight at the fault included).
    assert sum(sandbox.duplicates.values()) <= sent_before_the_fault + 4 * 100
    assert max(sandbox.duplicates.values(), default=0) <= 1


# --------------------------------------------------------------------------- SFTP: staging full, outbox refusing


@pytest.fixture
def sftp_feed(tmp_path: Path, sshd, remote_inbox: Path, sandbox, apicode_env):
    def write(**overrides: object) -> Path:
        feed = {"name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}",
                "private_key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts),
                "min_age_seconds": 0.3, "poll_interval_seconds": 0.1, "connect_timeout_seconds": 5,
                "io_timeout_seconds": 10, "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 0.5,
                **overrides}
        return write_config(tmp_path / "etc", sandbox, [feed])

    return write


@pytest.mark.slow
def test_F3_staging_too_small_pauses_names_the_path_and_keeps_nothing(
        tmp_path: Path, dropper, remote_inbox: Path, sftp_feed, sandbox) -> None:
    config = sftp_feed()
    staging = tmp_path / "etc" / "var" / "staging"
    with tmpfs(staging, "32k"):
        dropper.put("big.csv", export("S", 3000))  # about 200 KB
        with ServiceThread(config) as runner:
            runner.wait_log(f"a disk refused a write: cannot download to staging: {staging / 'remote'}/.big.csv.")
            runner.wait_log("(attempt 2)")
            text = runner.logs.text
            assert "No space left on device (ENOSPC); big.csv stays in processing/; the feed pauses" in text
            assert runner.service.health()[1]["feeds"]["remote"]["state"] == "paused"
            assert not [p for p in (staging / "remote").rglob("*") if p.is_file()]  # nothing kept
            assert (remote_inbox / "processing" / "big.csv").exists() and not sandbox.arrivals
            subprocess.run(["mount", "-o", "remount,size=8m", str(staging)], check=True)
            wait_until(lambda: (remote_inbox / "archive" / "big.csv").exists(), 60, what="big.csv archived")
    assert set(sandbox.accepted_ids) == ids("S", 3000)
    assert receipt(remote_inbox / "outbox", "big.csv")["counts"]["accepted"] == 3000


def test_F5_sftp_outbox_that_refuses_the_receipt_does_not_hold_the_next_files(
        dropper, remote_inbox: Path, sftp_feed, sandbox) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1) to make outbox/ refuse writes")
    config = sftp_feed()
    outbox = remote_inbox / "outbox"
    outbox.mkdir(exist_ok=True)
    if subprocess.run(["chattr", "+i", str(outbox)], capture_output=True).returncode:
        pytest.skip("this file system does not support the immutable attribute")
    try:
        with ServiceThread(config) as runner:
            dropper.put("a.csv", export("A", 10))
            runner.wait_log("a.csv: processed, but uploading the receipt a.csv.receipt.csv to the outbox failed")
            dropper.put("b.csv", export("B", 10))
            wait_until(lambda: len(sandbox.accepted_ids) == 20, 30, what="b.csv delivered")
            subprocess.run(["chattr", "-i", str(outbox)], check=True)
            wait_until(lambda: {p.name for p in (remote_inbox / "archive").iterdir()} == {"a.csv", "b.csv"}, 30,
                       what="both archived")
    finally:
        subprocess.run(["chattr", "-i", str(outbox)], capture_output=True)
    assert receipt(outbox, "a.csv")["counts"]["accepted"] == 10
    assert receipt(outbox, "b.csv")["counts"]["accepted"] == 10
    assert not sandbox.duplicates


@pytest.mark.slow
def test_F3_journal_disk_filling_mid_run_pauses_and_resumes(tmp_path: Path, sandbox, apicode_env) -> None:
    sandbox.set_faults(latency_ms=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with tmpfs(tmp_path / "var", "16m") as var:
        config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
        drop(inbox, "big.csv", export("D", 3000))
        with ServiceThread(config) as runner:
            wait_until(lambda: len(sandbox.arrivals) >= 500, 60, what="500 arrivals")
            filler = fill(var)
            runner.wait_log("the journal cannot be used: journal ")
            runner.wait_log("(attempt 2)")
            assert "database or disk is full" in runner.logs.text
            assert (inbox / "processing" / "big.csv").exists()
            assert not (inbox / "error").exists() or not list((inbox / "error").iterdir())
            filler.unlink()
            wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 60, what="big.csv archived")
    assert set(sandbox.accepted_ids) == ids("D", 3000)
    assert sum(sandbox.duplicates.values()) <= 4 * 100


def test_D7_once_runs_count_the_attempts_and_the_third_moves_the_file_to_error(
        tmp_path: Path, sandbox, apicode_env, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_recording_after(monkeypatch, 1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}])
    drop(inbox, "bad.csv", export("X", 10))
    for attempt in (1, 2):
        code, runner = run_once(config)
        assert code == 2
        assert f"bad.csv failed (attempt {attempt} of 3)" in runner.logs.text
        assert (inbox / "processing" / "bad.csv").exists()
    code, runner = run_once(config)
    assert code == 2 and "bad.csv failed 3 time(s)" in runner.logs.text
    assert (inbox / "error" / "bad.csv").exists()
    assert receipt(inbox / "outbox", "bad.csv")["state"] == "error"


# --------------------------------------------------------------------------- D11: the worker never dies


def test_D11_unexpected_error_in_a_feed_loop_is_logged_backed_off_and_retried(
        tmp_path: Path, sandbox, apicode_env, monkeypatch: pytest.MonkeyPatch) -> None:
    from batch.inbox.local import LocalInbox

    real_scan = LocalInbox.scan
    surprises = [TypeError("expected str, bytes or os.PathLike object, not NoneType")] * 2

    def scan(self):
        if surprises:
            raise surprises.pop()
        return real_scan(self)

    monkeypatch.setattr(LocalInbox, "scan", scan)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0,
                                               "reconnect_initial_seconds": 0.5}])
    with ServiceThread(config) as runner:
        runner.wait_log("feed local: unexpected error while scanning the inbox: TypeError: expected str, bytes "
                        "or os.PathLike object, not NoneType; retrying in 0.5 s")
        health = runner.service.health()
        assert health[1]["feeds"]["local"]["state"] == "error"
        assert health[1]["feeds"]["local"]["last_error"] == (
            "scanning the inbox: TypeError: expected str, bytes or os.PathLike object, not NoneType")
        drop(inbox, "after.csv", export("A", 5))
        wait_until(lambda: (inbox / "archive" / "after.csv").exists(), 20, what="after.csv archived")
        assert runner.service.health()[0] and runner.service.workers["local"].is_alive()
    assert set(sandbox.accepted_ids) == ids("A", 5)


def test_F5_F4_archive_move_failing_before_a_restart_is_finished_after_it_with_the_real_receipt(
        tmp_path: Path, sandbox, apicode_env) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr(1) to make archive/ refuse writes (root ignores permissions)")
    inbox = tmp_path / "inbox"
    for folder in ("archive", "processing", "outbox"):
        (inbox / folder).mkdir(parents=True)
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0,
                                               "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 0.5}])
    if subprocess.run(["chattr", "+i", str(inbox / "archive")], capture_output=True).returncode:
        pytest.skip("this file system does not support the immutable attribute")
    try:
        drop(inbox, "a.csv", export("A", 20))
        with ServiceThread(config) as runner:
            runner.wait_log("(attempt 2); it stays in processing/")
    finally:
        subprocess.run(["chattr", "-i", str(inbox / "archive")], capture_output=True)
    assert journal_rows(journal_of(tmp_path), "SELECT count(*) FROM files WHERE finish_problem IS NOT NULL") == [(1,)]
    with ServiceThread(config) as runner:
        wait_until(lambda: (inbox / "archive" / "a.csv").exists(), 20, what="a.csv archived")
        runner.wait_log("a.csv moved to archive/a.csv; the earlier problem is solved")
    assert journal_rows(journal_of(tmp_path), "SELECT name, state, finish_problem FROM files") == [
        ("a.csv", "done", None)]
    assert receipt(inbox / "outbox", "a.csv")["counts"]["accepted"] == 20
    assert "already_processed" not in (inbox / "outbox" / "a.csv.receipt.csv").read_text()
    assert len(sandbox.arrivals) == 20
