"""The SFTP inbox against a real OpenSSH sshd, with drops made by the real `sftp` client."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.inotify import InotifyObserver

from batch.config.inbox import InboxSettings
from batch.inbox.base import Candidate, HostKeyError, InboxError, InboxUnavailable, UnsafeNameError
from batch.inbox.sftp import SftpInbox
from tests.fixtures_sftp import Dropper, wait_until
from tests.sshd import Sshd, keygen

Settings = Callable[..., InboxSettings]


@pytest.fixture
def inboxes() -> Iterator[list[SftpInbox]]:
    made: list[SftpInbox] = []
    yield made
    for inbox in made:
        inbox.close()


@pytest.fixture
def make(sftp_settings: Settings, inboxes: list[SftpInbox]) -> Callable[..., SftpInbox]:
    def factory(**overrides: Any) -> SftpInbox:
        inbox = SftpInbox(sftp_settings(**overrides))
        inboxes.append(inbox)
        return inbox

    return factory


def scan_until(inbox: SftpInbox, name: str, timeout: float = 30.0) -> Candidate:
    return wait_until(lambda: next((c for c in inbox.scan() if c.name == name), None), timeout, what=f"{name} ready")


def payload(size: int, seed: str = "") -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += i.to_bytes(8, "big") + block  # numbered blocks: reordering would show
        i += 1
    return bytes(out[:size])


def take(inbox: SftpInbox, candidate: Candidate, staging: Path) -> bytes:
    claimed = inbox.claim(candidate)
    assert claimed is not None
    data = inbox.open_local(claimed, staging).read_bytes()
    inbox.finish(claimed, ok=True)
    return data


# ---------------------------------------------------------------- the four drop styles


def test_plain_put(make: Callable[..., SftpInbox], dropper: Dropper, remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make()
    data = payload(300_000, "plain")
    dropper.put("plain.csv", data)
    candidate = scan_until(inbox, "plain.csv")
    assert candidate.size == len(data)
    assert take(inbox, candidate, tmp_path / "staging") == data
    assert (remote_inbox / "archive" / "plain.csv").read_bytes() == data
    assert not (remote_inbox / "plain.csv").exists()


def test_put_under_temporary_name_then_rename(make: Callable[..., SftpInbox], dropper: Dropper, tmp_path: Path) -> None:
    inbox = make(min_age_seconds=0)  # no age wait at all: only the temporary name protects the upload
    data = payload(8_000_000, "renamed")
    seen: list[Candidate] = []

    def poll() -> Candidate | None:
        found = inbox.scan()
        seen.extend(found)
        return next((c for c in found if c.name == "renamed.csv"), None)

    upload = threading.Thread(target=dropper.put_then_rename, args=("renamed.csv", data))
    upload.start()
    try:
        candidate = wait_until(poll, 60, interval=0.005, what="renamed.csv")
    finally:
        upload.join(60)
    assert {c.name for c in seen} == {"renamed.csv"}  # the .part file was never offered
    assert candidate.size == len(data)
    assert take(inbox, candidate, tmp_path / "staging") == data


def test_slow_upload_in_pieces_is_not_picked_up_before_complete(
    make: Callable[..., SftpInbox], dropper: Dropper, tmp_path: Path
) -> None:
    # The upload takes longer than min_age in total, but never pauses that long: only the
    # "unchanged for min_age" rule (not "present for min_age") keeps it from being taken.
    inbox = make(min_age_seconds=1.5)
    pieces = [payload(50_000, f"piece{i}") for i in range(8)]
    upload = dropper.slow_upload("slow.csv", pieces)
    started = time.monotonic()
    try:
        while not upload.done:
            upload.send_next()
            pause_until = time.monotonic() + 0.3
            while True:
                assert "slow.csv" not in [c.name for c in inbox.scan()], f"picked up after {upload.sent} pieces"
                if time.monotonic() >= pause_until or upload.done:
                    break
                time.sleep(0.05)
    finally:
        upload.close()
    assert time.monotonic() - started > 1.5
    candidate = scan_until(inbox, "slow.csv")
    assert candidate.size == sum(map(len, pieces))
    assert take(inbox, candidate, tmp_path / "staging") == b"".join(pieces)


def test_marker_after_the_data(make: Callable[..., SftpInbox], dropper: Dropper, remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make(min_age_seconds=0, marker_suffixes=[".done"])
    data = payload(100_000, "marked")
    dropper.put("marked.xml", data)
    assert inbox.scan() == [] and inbox.scan() == []
    dropper.put_marker("marked.xml", ".done")
    [candidate] = inbox.scan()
    assert (candidate.name, candidate.marker) == ("marked.xml", "marked.xml.done")
    assert take(inbox, candidate, tmp_path / "staging") == data
    assert sorted(os.listdir(remote_inbox / "archive")) == ["marked.xml", "marked.xml.done"]
    assert sorted(p.name for p in remote_inbox.iterdir() if p.is_file()) == []


# ---------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused_with_a_clear_message(make: Callable[..., SftpInbox], sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    inbox = make(known_hosts=empty)
    with pytest.raises(HostKeyError) as info:
        inbox.scan()
    message = str(info.value)
    assert "unknown host key" in message
    assert f"[127.0.0.1]:{sshd.port}" in message
    assert sshd.host_key_type in message and sshd.host_key_fingerprint in message
    assert empty.read_text() == ""  # nothing recorded without the opt-in
    with pytest.raises(HostKeyError):  # still refused (during the reconnect backoff, too)
        inbox.scan()


def test_changed_host_key_is_refused(make: Callable[..., SftpInbox], sshd: Sshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "stale_known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    inbox = make(known_hosts=known, accept_new_host_key=True)  # opt-in covers new keys, never changed ones
    with pytest.raises(HostKeyError) as info:
        inbox.scan()
    message = str(info.value)
    assert "CHANGED" in message and f"[127.0.0.1]:{sshd.port}" in message
    assert sshd.host_key_fingerprint in message
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"


def test_accept_new_host_key_records_it_for_openssh_too(make: Callable[..., SftpInbox], sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "tofu" / "known_hosts"
    inbox = make(known_hosts=known, accept_new_host_key=True)
    assert inbox.scan() == []
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known)], capture_output=True, text=True)
    assert found.returncode == 0 and sshd.host_key_type in found.stdout
    # OpenSSH with strict checking accepts the recorded entry.
    check = subprocess.run(sshd.sftp_command(known_hosts=known), input="pwd\n", capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # A second connection verifies against the recorded key and adds nothing.
    before = known.read_text()
    again = make(known_hosts=known, accept_new_host_key=True)
    assert again.scan() == [] and known.read_text() == before and before.count("\n") == 1


def test_key_with_passphrase_from_env(make: Callable[..., SftpInbox], sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = keygen(tmp_path / "protected_key", passphrase="correct horse")
    with open(sshd.authorized_keys, "a") as f:
        f.write(Path(f"{key}.pub").read_text())
    monkeypatch.setenv("FEED_KEY_PASSPHRASE", "correct horse")
    inbox = make(private_key_file=key, key_passphrase="${FEED_KEY_PASSPHRASE}")
    assert inbox.scan() == []

    monkeypatch.setenv("FEED_KEY_PASSPHRASE", "wrong battery")
    wrong = make(private_key_file=key, key_passphrase="${FEED_KEY_PASSPHRASE}")
    with pytest.raises(InboxError) as info:
        wrong.scan()
    assert "protected_key" in str(info.value)
    assert "wrong battery" not in str(info.value) and "correct horse" not in str(info.value)


# ---------------------------------------------------------------- connection loss


# paramiko's prefetch thread, still sending read requests, dies with the connection
# (EOFError in a background thread); the download itself reports the loss.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_sshd_killed_during_download_then_restarted(
    make: Callable[..., SftpInbox], sshd: Sshd, remote_inbox: Path, tmp_path: Path
) -> None:
    inbox = make(min_age_seconds=0)
    data = payload(150_000_000, "big")
    (remote_inbox / "big.csv").write_bytes(data)
    [candidate] = inbox.scan()
    claimed = inbox.claim(candidate)
    assert claimed is not None
    staging = tmp_path / "staging"
    outcome: dict[str, Any] = {}

    def download() -> None:
        try:
            outcome["path"] = inbox.open_local(claimed, staging)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=download)
    worker.start()

    def partial_download() -> bool:
        parts = list(staging.glob(".big.csv.*.part")) if staging.exists() else []
        return any(p.stat().st_size > 2_000_000 for p in parts if p.exists())

    wait_until(lambda: partial_download() or not worker.is_alive(), 60, interval=0.002, what="a partial download")
    sshd.kill()
    worker.join(60)
    assert not worker.is_alive()
    assert "error" in outcome, "the download finished before sshd was killed"
    error = outcome["error"]
    assert isinstance(error, InboxUnavailable), repr(error)
    assert f"connection lost during download to staging of {remote_inbox}/processing/big.csv" in str(error)
    assert not list(staging.iterdir())  # no partial file left behind

    with pytest.raises(InboxUnavailable):  # server down: a clear transient error, no hang
        inbox.scan()

    sshd.start()

    def fetch() -> Path | None:
        try:
            return inbox.open_local(claimed, staging)
        except InboxUnavailable:
            return None  # backoff still running

    path = wait_until(fetch, 60, interval=0.1, what="download after reconnect")
    assert path.read_bytes() == data
    assert [p.name for p in staging.iterdir()] == ["big.csv"]
    assert inbox.finish(claimed, ok=True) == "big.csv"


# ---------------------------------------------------------------- two instances, receipts, names, resume


def test_two_instances_claim_each_file_exactly_once(make: Callable[..., SftpInbox], remote_inbox: Path) -> None:
    all_names = {f"f{i:03d}.csv" for i in range(40)}
    for name in all_names:
        (remote_inbox / name).write_text(name)
    instances = [make(min_age_seconds=0), make(min_age_seconds=0)]
    for inbox in instances:
        inbox.connect()
    taken: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def worker(index: int) -> None:
        inbox = instances[index]
        start.wait(30)
        while candidates := inbox.scan():
            for candidate in candidates:
                claimed = inbox.claim(candidate)
                if claimed is not None:
                    taken[index].append(claimed.source_name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    first, second = set(taken[0]), set(taken[1])
    assert len(first) == len(taken[0]) and len(second) == len(taken[1])
    assert first.isdisjoint(second) and first | second == all_names
    assert set(os.listdir(remote_inbox / "processing")) == all_names


def test_receipt_uploaded_under_temporary_name_then_renamed(
    make: Callable[..., SftpInbox], remote_inbox: Path, tmp_path: Path
) -> None:
    inbox = make()
    inbox.connect()  # creates outbox/
    outbox = remote_inbox / "outbox"
    events: list[Any] = []

    class Recorder:
        def dispatch(self, event: Any) -> None:
            events.append(event)

    observer = InotifyObserver(generate_full_events=True)
    observer.schedule(Recorder(), str(outbox), recursive=False)  # type: ignore[arg-type]  # needs dispatch()
    observer.start()
    try:
        receipt = tmp_path / "receipt.csv"
        receipt.write_bytes(payload(5_000_000, "receipt"))
        inbox.put_receipt(receipt, "feed.receipt.csv")
        final = str(outbox / "feed.receipt.csv")
        moved = wait_until(lambda: [e for e in list(events) if e.event_type == "moved" and e.dest_path == final],
                           30, what="the rename")
    finally:
        observer.stop()
        observer.join()
    assert os.path.basename(moved[0].src_path).startswith(".")
    assert not [e for e in events if e.src_path == final and e.event_type in ("created", "modified", "closed")]
    assert (outbox / "feed.receipt.csv").read_bytes() == receipt.read_bytes()
    assert os.listdir(outbox) == ["feed.receipt.csv"]
    receipt.write_text("second version\n")
    inbox.put_receipt(receipt, "feed.receipt.csv")  # replaces (posix-rename)
    assert (outbox / "feed.receipt.csv").read_text() == "second version\n"
    assert os.listdir(outbox) == ["feed.receipt.csv"]


def test_unsafe_names_on_the_server_are_refused(make: Callable[..., SftpInbox], remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make(min_age_seconds=0)
    (remote_inbox / "back\\slash.csv").write_text("1\n")
    (remote_inbox / "ctl\x07.csv").write_text("1\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n")
    (remote_inbox / "link.csv").symlink_to(outside)
    (remote_inbox / "ok.csv").write_text("1\n")
    assert [c.name for c in inbox.scan()] == ["ok.csv"]
    for bad in ("../outside.csv", "/etc/passwd", "a/b.csv"):
        with pytest.raises(UnsafeNameError):
            inbox.claim(Candidate(bad, 1, 1.0))
        with pytest.raises(UnsafeNameError):
            inbox.put_receipt(outside, bad)
    assert outside.read_text() == "secret\n"


def test_resume_and_error_folder(make: Callable[..., SftpInbox], remote_inbox: Path, tmp_path: Path) -> None:
    first = make(min_age_seconds=0)
    (remote_inbox / "r.csv").write_text("resume me\n")
    [candidate] = first.scan()
    assert first.claim(candidate) is not None
    first.close()

    second = make(min_age_seconds=0)
    [claimed] = second.resume()
    assert claimed.name == "r.csv"
    assert second.open_local(claimed, tmp_path / "staging").read_text() == "resume me\n"
    assert second.finish(claimed, ok=False) == "r.csv"
    assert (remote_inbox / "error" / "r.csv").read_text() == "resume me\n"
    assert second.resume() == []


# ---------------------------------------------------------------- password login

def test_password_login_from_env(password_account: tuple[str, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, inboxes: list[SftpInbox]) -> None:
    import pwd
    import shutil
    import tempfile

    user, password = password_account
    server = Sshd(tmp_path / "sshd", passwords=True)
    server.start()
    # pytest's folders are private to root: the account gets an inbox of its own
    remote = Path(tempfile.mkdtemp(prefix="upb-password-inbox-"))
    try:
        account = pwd.getpwnam(user)
        os.chown(remote, account.pw_uid, account.pw_gid)
        data = payload(100_000, "password")
        (remote / "p.csv").write_bytes(data)
        os.utime(remote / "p.csv", (time.time() - 60, time.time() - 60))

        def settings(secret: str) -> InboxSettings:
            monkeypatch.setenv("FEED_SFTP_PASSWORD", secret)
            return InboxSettings(inbox=f"sftp://{user}@{server.host}:{server.port}{remote}",
                                 password="${FEED_SFTP_PASSWORD}", known_hosts=server.known_hosts,
                                 min_age_seconds=0.1, connect_timeout_seconds=10, io_timeout_seconds=20)

        wrong = SftpInbox(settings("not-" + password))
        inboxes.append(wrong)
        with pytest.raises(InboxError) as refused:
            wrong.scan()
        assert "password" in str(refused.value) and password not in str(refused.value)

        inbox = SftpInbox(settings(password))
        inboxes.append(inbox)
        candidate = scan_until(inbox, "p.csv")
        assert take(inbox, candidate, tmp_path / "staging") == data
        assert (remote / "archive" / "p.csv").read_bytes() == data
        assert (remote / "archive").stat().st_uid == account.pw_uid  # done as that account
    finally:
        server.kill()
        shutil.rmtree(remote, ignore_errors=True)


# ---------------------------------------------------------------- receipts through the inbox interface


class Refused(Exception):
    pass


def test_a_receipt_is_staged_then_published_csv_and_rejected_rows_before_the_json(
        make: Callable[..., SftpInbox], sshd: Sshd, remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make()
    inbox.connect()  # makes the outbox
    receipts = inbox.receipt_dir(tmp_path / "staging")
    assert receipts == tmp_path / "staging" / "receipts"  # staged, then uploaded
    receipts.mkdir(parents=True)
    files = [receipts / name for name in ("a.csv.receipt.csv", "a.csv.rejected.csv", "a.csv.receipt.json")]
    for path in files:
        path.write_text(f"{path.name}\n")
    outbox = remote_inbox / "outbox"
    seen: list[tuple[str, list[str]]] = []  # the fence's view: what the outbox holds before each upload
    where = inbox.publish_receipt(files, lambda path: seen.append((path.name, sorted(os.listdir(outbox)))))
    assert seen == [("a.csv.receipt.csv", []), ("a.csv.rejected.csv", ["a.csv.receipt.csv"]),
                    ("a.csv.receipt.json", ["a.csv.receipt.csv", "a.csv.rejected.csv"])]
    assert where == [f"{sshd.url_prefix}{outbox}/{path.name}" for path in files]
    assert {path.name: (outbox / path.name).read_text() for path in files} == {
        path.name: f"{path.name}\n" for path in files}
    assert list(receipts.iterdir()) == []  # the staged copies are gone once all are up
    assert inbox.publish_receipt(files) == where  # again (a retried finishing step): nothing left to upload


def test_a_refused_upload_keeps_the_staged_receipt_and_never_puts_the_json(
        make: Callable[..., SftpInbox], remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make()
    receipts = inbox.receipt_dir(tmp_path / "staging")
    receipts.mkdir(parents=True)
    files = [receipts / "b.csv.receipt.csv", receipts / "b.csv.receipt.json"]
    for path in files:
        path.write_text("x\n")

    def fence(path: Path) -> None:
        if path.suffix == ".json":
            raise Refused(path.name)

    with pytest.raises(Refused):
        inbox.publish_receipt(files, fence)
    assert os.listdir(remote_inbox / "outbox") == ["b.csv.receipt.csv"]  # the JSON (complete) never went up
    assert sorted(path.name for path in receipts.iterdir()) == ["b.csv.receipt.csv", "b.csv.receipt.json"]
    inbox.publish_receipt(files)  # the redo
    assert sorted(os.listdir(remote_inbox / "outbox")) == ["b.csv.receipt.csv", "b.csv.receipt.json"]


def test_the_downloaded_copy_is_released(make: Callable[..., SftpInbox], remote_inbox: Path, tmp_path: Path) -> None:
    inbox = make(min_age_seconds=0)
    (remote_inbox / "c.csv").write_text("1\n")
    (candidate,) = inbox.scan()
    claimed = inbox.claim(candidate)
    assert claimed is not None
    local = inbox.open_local(claimed, tmp_path / "staging")
    assert local.read_text() == "1\n"
    inbox.release_local(local)
    assert not local.exists() and (remote_inbox / "processing" / "c.csv").exists()
