"""Hardening (issue 7): what a careless operator or an uploader puts straight into processing/.

A file copied (or still being written) into processing/ was never claimed by this tool: it must
pass the readiness rules of a new arrival before it is resumed ("nothing half-written is ever
picked up"), while what this tool claimed, or what the journal knows as begun, is resumed at
once. Entries that are not regular files (symlinks, FIFOs, folders named like data files) and
huge numbers of entries are ignored with one clear log line and never block the feed.
Local folders, a real OpenSSH sshd, the sandbox as Ropo One; readiness on a test clock."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.config.inbox import InboxSettings
from batch.inbox.base import Claimed, Inbox
from batch.inbox.local import LocalInbox
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceThread, export, ids, run_once, write_config

HALF = b"id,place,time,status,note\nH-1,643007572062450001,2024-02-05 06:30:00,disconn"
REST = b"ected,note 1\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Began:
    """The worker's question to the journal, answered from a set; counts the questions."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.known = known or set()
        self.asked: list[str] = []

    def __call__(self, claimed: Claimed) -> bool:
        self.asked.append(claimed.name)
        return claimed.name in self.known


def names(found: list[Claimed]) -> list[str]:
    return [claimed.name for claimed in found]


def waiting_line(where: str, count: int, shown: str, rule: str) -> str:
    return (f"{where}: processing/ holds {count} file(s) this tool did not claim ({shown}): each is left where "
            f"it is until it is ready like a new arrival ({rule}); put files into the inbox folder, never into "
            "processing/")


AGE_RULE = "it has not changed for 10 s"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def local(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., LocalInbox]]:
    made: list[LocalInbox] = []

    def make(**overrides: Any) -> LocalInbox:
        fields: dict[str, Any] = {"inbox": str(tmp_path / "inbox"), "min_age_seconds": 10,
                                  "poll_interval_seconds": 0.1, "mode": "polling", **overrides}
        (tmp_path / "inbox").mkdir(exist_ok=True)
        inbox = LocalInbox(InboxSettings(**fields), clock=clock)
        made.append(inbox)
        return inbox

    yield make
    for inbox in made:
        inbox.close()


# --------------------------------------------------------------------------- the rule, local


def test_a_half_written_file_in_processing_is_not_taken_until_ready_local(
        local: Callable[..., LocalInbox], tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    inbox = local()
    growing = tmp_path / "inbox" / "processing" / "h.csv"
    growing.write_bytes(HALF)
    with caplog.at_level(logging.INFO):
        assert inbox.resume(began=Began()) == []
    assert inbox.waiting_in_processing == ("h.csv",)
    assert waiting_line(f"inbox {tmp_path / 'inbox'}", 1, "h.csv", AGE_RULE) in caplog.text
    clock.now += 9
    with growing.open("ab") as out:  # still being written
        out.write(REST)
    clock.now += 9
    assert inbox.resume(began=Began()) == []
    clock.now += 10
    caplog.clear()
    with caplog.at_level(logging.INFO):
        [claimed] = inbox.resume(began=Began())
    assert claimed.name == "h.csv" and claimed.size == len(HALF + REST)
    assert inbox.waiting_in_processing == ()
    assert (f"inbox {tmp_path / 'inbox'}: taking h.csv from processing/: this tool did not claim it, and it is "
            f"ready now ({AGE_RULE})") in caplog.text


def test_what_this_tool_claimed_or_the_journal_began_is_resumed_at_once(
        local: Callable[..., LocalInbox], tmp_path: Path) -> None:
    inbox = local(min_age_seconds=0, ready_on_close=False)
    (tmp_path / "inbox" / "mine.csv").write_bytes(HALF + REST)
    [candidate] = inbox.scan()
    assert inbox.claim(candidate) is not None
    (tmp_path / "inbox" / "processing" / "journaled.csv").write_bytes(HALF + REST)
    began = Began({"journaled.csv"})
    assert sorted(names(inbox.resume(began=began))) == ["journaled.csv", "mine.csv"]
    assert began.asked == ["journaled.csv"]  # the file this inbox claimed needs no question
    # a new process (a restart): only the journal's word counts
    again = local(min_age_seconds=0, ready_on_close=False)
    assert sorted(names(again.resume(began=Began({"mine.csv", "journaled.csv"})))) == ["journaled.csv", "mine.csv"]
    unknown = local(min_age_seconds=0, ready_on_close=False)
    assert unknown.resume(began=Began()) == []  # min_age 0: still a second of stability there
    assert unknown.waiting_in_processing == ("journaled.csv", "mine.csv")


def test_a_file_in_processing_of_a_marker_feed_waits_for_its_marker(
        local: Callable[..., LocalInbox], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inbox = local(marker_suffixes=[".done"])
    processing = tmp_path / "inbox" / "processing"
    (processing / "m.csv").write_bytes(HALF + REST)
    with caplog.at_level(logging.INFO):
        assert inbox.resume(began=Began()) == []
    assert waiting_line(f"inbox {tmp_path / 'inbox'}", 1, "m.csv", "its marker (.done) is beside it") in caplog.text
    (processing / "m.csv.done").write_bytes(b"")
    [claimed] = inbox.resume(began=Began())
    assert (claimed.name, claimed.marker) == ("m.csv", "m.csv.done")


def test_the_feed_is_not_blocked_by_a_file_growing_in_processing(tmp_path: Path, sandbox,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    growing = inbox / "processing" / "h.csv"
    growing.write_bytes(HALF)
    # files dropped in the inbox are ready when moved in (inotify); the one in processing/ needs an hour
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 3600}])
    with ServiceThread(config) as runner:
        runner.wait_log("processing/ holds 1 file(s) this tool did not claim (h.csv)")
        staged = tmp_path / "a.csv"
        staged.write_bytes(export("A", 3))
        os.rename(staged, inbox / "a.csv")
        wait_until(lambda: (inbox / "archive" / "a.csv").exists(), what="a.csv archived")
        with growing.open("ab") as out:
            out.write(REST)
        assert set(sandbox.accepted_ids) == ids("A", 3)
    assert growing.read_bytes() == HALF + REST  # left where it is, never read as half a file
    with sqlite3.connect(tmp_path / "var" / "journal.sqlite3") as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM files")] == ["a.csv"]


def test_a_file_copied_into_processing_is_taken_once_it_is_stable_run_once(tmp_path: Path, sandbox,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / "c.csv").write_bytes(export("C", 2))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    code, runner = run_once(config)
    assert code == 0, runner.logs.text
    assert "processing/ holds 1 file(s) this tool did not claim (c.csv)" in runner.logs.text
    assert "taking c.csv from processing/" in runner.logs.text
    assert set(sandbox.accepted_ids) == ids("C", 2)
    assert (inbox / "archive" / "c.csv").exists()


# --------------------------------------------------------------------------- the neighbours


def test_symlinks_fifos_and_folders_in_processing_are_ignored_with_one_line(
        local: Callable[..., LocalInbox], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inbox = local(min_age_seconds=0, ready_on_close=False)
    processing = tmp_path / "inbox" / "processing"
    secret = tmp_path / "secret.csv"
    secret.write_text("not yours\n")
    (processing / "link.csv").symlink_to(secret)
    os.mkfifo(processing / "pipe.csv")
    (processing / "dir.csv").mkdir()
    (tmp_path / "inbox" / "real.csv").write_bytes(HALF + REST)
    [candidate] = inbox.scan()
    assert inbox.claim(candidate) is not None
    with caplog.at_level(logging.INFO):
        assert names(inbox.resume(began=Began())) == ["real.csv"]  # never blocks on the FIFO
        [claimed] = inbox.resume(began=Began())
    line = (f"inbox {tmp_path / 'inbox'}: processing/ holds 3 entries that are not a regular file (a symbolic "
            "link, FIFO, folder or device: dir.csv, link.csv, pipe.csv); ignored, never read or followed: "
            "remove them")
    assert caplog.text.count(line) == 1  # once, not at every resume
    assert inbox.finish(claimed, ok=True) == "real.csv"
    assert os.path.islink(processing / "link.csv") and secret.read_text() == "not yours\n"


def test_a_huge_number_of_entries_in_processing_is_one_line_and_one_question_each(
        local: Callable[..., LocalInbox], tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    inbox = local()
    processing = tmp_path / "inbox" / "processing"
    for i in range(20_000):
        (processing / f"f{i:05}.csv").write_bytes(b"")
    for i in range(5_000):
        os.symlink("/etc/passwd", processing / f"l{i:05}.csv")
    began = Began()
    with caplog.at_level(logging.INFO):
        assert inbox.resume(began=began) == []
        assert inbox.resume(began=began) == []
    assert len(began.asked) == 20_000  # the journal is asked once per name, not at every round
    assert caplog.text.count("this tool did not claim") == 1
    assert waiting_line(f"inbox {tmp_path / 'inbox'}", 20_000, "f00000.csv, f00001.csv, f00002.csv, f00003.csv, "
                        "f00004.csv and 19995 more", AGE_RULE) in caplog.text
    assert "processing/ holds 5000 entries that are not a regular file" in caplog.text
    assert "l00000.csv, l00001.csv, l00002.csv, l00003.csv, l00004.csv and 4995 more" in caplog.text
    clock.now += 10
    assert len(inbox.resume(began=began)) == 20_000


# --------------------------------------------------------------------------- SFTP (a real sshd)


@pytest.fixture
def sftp(sftp_settings: Callable[..., InboxSettings], clock: FakeClock) -> Iterator[Callable[..., Inbox]]:
    from batch.inbox.sftp import SftpInbox

    made: list[SftpInbox] = []

    def make(**overrides: Any) -> SftpInbox:
        inbox = SftpInbox(sftp_settings(**{"min_age_seconds": 10, **overrides}), clock=clock)
        made.append(inbox)
        return inbox

    yield make
    for inbox in made:
        inbox.close()


def test_a_half_written_file_in_processing_is_not_taken_until_ready_sftp(
        sftp: Callable[..., Inbox], remote_inbox: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    inbox = sftp()
    inbox.scan()  # connects, creates processing/
    growing = remote_inbox / "processing" / "h.csv"
    growing.write_bytes(HALF)
    os.symlink("/etc/passwd", remote_inbox / "processing" / "link.csv")
    (remote_inbox / "processing" / "dir.csv").mkdir()
    with caplog.at_level(logging.INFO):
        assert inbox.resume(began=Began()) == []
    where = inbox.location.display  # type: ignore[attr-defined]
    assert waiting_line(where, 1, "h.csv", AGE_RULE) in caplog.text
    assert (f"{where}: processing/ holds 2 entries that are not a regular file (a symbolic link, FIFO, folder or "
            "device: dir.csv, link.csv); ignored") in caplog.text
    clock.now += 9
    with growing.open("ab") as out:
        out.write(REST)
    clock.now += 9
    assert inbox.resume(began=Began()) == []
    clock.now += 10
    [claimed] = inbox.resume(began=Began())
    assert (claimed.name, claimed.size) == ("h.csv", len(HALF + REST))
    # known to the journal: at once, without the wait
    (remote_inbox / "processing" / "k.csv").write_bytes(HALF)
    assert sorted(names(inbox.resume(began=Began({"k.csv"})))) == ["h.csv", "k.csv"]


def test_what_this_tool_claimed_over_sftp_is_resumed_at_once(sftp: Callable[..., Inbox], remote_inbox: Path) -> None:
    inbox = sftp(min_age_seconds=0)
    (remote_inbox / "r.csv").write_bytes(HALF + REST)
    [candidate] = inbox.scan()
    assert inbox.claim(candidate) is not None
    assert names(inbox.resume(began=Began())) == ["r.csv"]


def test_the_service_leaves_a_file_growing_in_processing_alone_over_sftp(
        sshd, remote_inbox: Path, dropper, sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    (remote_inbox / "processing").mkdir()
    growing = remote_inbox / "processing" / "h.csv"
    growing.write_bytes(HALF)
    feed = {"name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts), "marker_suffixes": [".done"], "poll_interval_seconds": 0.1,
            "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1}
    config = write_config(tmp_path / "etc", sandbox, [feed])
    with ServiceThread(config) as runner:
        runner.wait_log("processing/ holds 1 file(s) this tool did not claim (h.csv)")
        dropper.put_with_marker("a.csv", export("A", 3))
        wait_until(lambda: (remote_inbox / "archive" / "a.csv").exists(), what="a.csv archived")
        assert growing.exists() and set(sandbox.accepted_ids) == ids("A", 3)
        with growing.open("ab") as out:  # the writer finishes, then says so with its marker
            out.write(REST)
        (remote_inbox / "processing" / "h.csv.done").write_bytes(b"")
        wait_until(lambda: (remote_inbox / "archive" / "h.csv").exists(), what="h.csv archived")
        runner.wait_log("taking h.csv from processing/: this tool did not claim it, and it is ready now "
                        "(its marker (.done) is beside it)")
    assert set(sandbox.accepted_ids) == ids("A", 3) | {"H-1"}


def test_the_service_goes_on_past_symlinks_fifos_and_folders_in_processing(tmp_path: Path, sandbox,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    inbox = tmp_path / "inbox"
    processing = inbox / "processing"
    processing.mkdir(parents=True)
    os.symlink("/etc/passwd", processing / "link.csv")
    os.mkfifo(processing / "pipe.csv")
    (processing / "dir.csv").mkdir()
    (inbox / "a.csv").write_bytes(export("A", 2))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    code, runner = run_once(config)
    assert code == 0, runner.logs.text
    assert (f"inbox {inbox}: processing/ holds 3 entries that are not a regular file (a symbolic link, FIFO, folder "
            "or device: dir.csv, link.csv, pipe.csv); ignored, never read or followed: remove them") in runner.logs.text
    assert set(sandbox.accepted_ids) == ids("A", 2)
    assert sorted(os.listdir(processing)) == ["dir.csv", "link.csv", "pipe.csv"]
    assert os.listdir(inbox / "error") == []
