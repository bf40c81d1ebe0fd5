"""Hostile and careless inboxes: long and non-UTF-8 names (D3, D6), symlinked own folders (D19),
file system errors that name what and where (F3, F5), stale temporaries (F9), a half-saved
mapping (F7). Local folders, a real OpenSSH sshd, the sandbox as Ropo One, real SIGKILLs,
small tmpfs and read-only bind mounts (skipped with a message where the machine cannot mount)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from batch.config.inbox import InboxSettings
from batch.inbox import InboxError
from batch.inbox.base import stamped_name
from batch.inbox.local import LocalInbox
from batch.store.receipts import receipt_names
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import MAPPING, ServiceThread, export, ids, run_once, write_config

# The tool's new name helpers are imported inside the tests that need them, so that this
# module also runs against the code before the fixes (every test here failed there).
NAME_MAX = 255


def name_bytes(name: str) -> int:
    return len(os.fsencode(name))


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def long_name(total_bytes: int, filler: str = "a", extension: str = ".csv") -> str:
    """A name of exactly `total_bytes` bytes (UTF-8), made of `filler` characters and padding."""
    room = total_bytes - len(extension.encode())
    unit = len(filler.encode())
    name = filler * (room // unit) + "b" * (room % unit)
    result = name + extension
    assert name_bytes(result) == total_bytes
    return result


LONG_NAMES = [long_name(n, f) for n in (200, 225, 243, 255) for f in ("a", "ä", "€", "😀")]
LATIN = os.fsdecode(b"latin\xe4.csv")  # a cp1252 upload: not UTF-8


def ls(folder: Path) -> list[str]:
    return sorted(os.fsdecode(name) for name in os.listdir(os.fsencode(folder)))


def journal_names(config: Path) -> list[str]:
    db = config.parent / "var" / "journal.sqlite3"
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM files ORDER BY id")]


def receipt_json(outbox: Path, input_name: str) -> dict[str, Any]:
    return json.loads((outbox / receipt_names(input_name).json).read_text("utf-8"))


# --------------------------------------------------------------------------- D3: long names


@pytest.mark.parametrize("name", LONG_NAMES, ids=lambda n: f"{name_bytes(n)}B-{n[0]}")
def test_D3_every_name_the_tool_makes_fits_name_max(name: str, tmp_path: Path) -> None:
    from batch.fsutil import is_temporary_name, temporary_basename, temporary_name

    names = receipt_names(name)
    made = [names.csv, names.json, stamped_name(name), stamped_name(name, attempt=18),
            temporary_name(tmp_path / names.json).name, temporary_basename(names.csv),
            temporary_name(tmp_path / name, ".part").name]
    for made_name in made:
        assert name_bytes(made_name) <= NAME_MAX, made_name
    # deterministic, recognisable, and the CSV and JSON belong together
    assert receipt_names(name) == names
    assert names.csv.endswith(".csv.receipt.csv") and names.json.endswith(".csv.receipt.json")
    assert names.csv.removesuffix(".receipt.csv") == names.json.removesuffix(".receipt.json")
    assert names.csv.startswith(name[:20])
    assert is_temporary_name(temporary_name(tmp_path / names.json).name)
    if name_bytes(name) + len(".receipt.json") <= NAME_MAX:
        assert names.json == name + ".receipt.json"  # only shortened when it has to be
    # two names that differ only at the end stay apart
    other = name[:-5] + "x.csv"
    assert receipt_names(other).csv != names.csv
    # every name can really be created (tmpfs and ext4 both stop at 255 bytes)
    for made_name in made:
        (tmp_path / made_name).write_bytes(b"")


def test_D3_fit_name_cuts_between_characters_never_inside_one() -> None:
    from batch.fsutil import fit_name

    name = "😀" * 70 + ".csv"  # 284 bytes
    fitted = fit_name(name, 100)
    assert name_bytes(fitted) <= 100
    fitted.encode("utf-8")  # would raise on half a character
    assert fitted.startswith("😀") and fitted.endswith(".csv") and "~" in fitted
    assert fit_name("short.csv", 100) == "short.csv"


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_D3_long_names_are_processed_and_do_not_block_the_feed_local(
        tmp_path: Path, sandbox, apicode_env, mode: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "mode": mode}])
    names = [long_name(n, f) for n, f in ((225, "a"), (240, "ä"), (255, "€"), (250, "😀"))] + ["after.csv"]
    for number, name in enumerate(names):
        (inbox / name).write_bytes(export(f"L{number}", 3))
        os.utime(inbox / name, (1_700_000_000 + number, 1_700_000_000 + number))
    # one of them meets a namesake in archive/: its stamped name must fit too
    (inbox / "archive").mkdir()
    (inbox / "archive" / names[2]).write_bytes(b"older")

    code, runner = run_once(config)

    assert code == 0, runner.logs.text
    archived = ls(inbox / "archive")
    assert len(archived) == len(names) + 1 and all(name_bytes(n) <= NAME_MAX for n in archived)
    for name in names:
        summary = receipt_json(inbox / "outbox", name)
        assert summary["file"] == name and summary["counts"]["accepted"] == 3
    assert [n for n in ls(inbox / "outbox") if n.startswith(".")] == []
    assert set(sandbox.accepted_ids) == set().union(*(ids(f"L{i}", 3) for i in range(len(names))))


def test_D3_long_names_over_sftp(dropper, remote_inbox: Path, tmp_path: Path, sandbox, apicode_env, sshd) -> None:
    names = [long_name(n, f) for n, f in ((225, "a"), (243, "ä"), (255, "😀"))] + ["after.csv"]
    for number, name in enumerate(names):
        dropper.put(name, export(f"S{number}", 3))  # the real OpenSSH sftp client
    (remote_inbox / "archive").mkdir()
    (remote_inbox / "archive" / names[1]).write_bytes(b"older")
    config = write_config(tmp_path / "etc", sandbox, [{
        "name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts), "min_age_seconds": 0.3, "poll_interval_seconds": 0.1}])

    code, runner = run_once(config)

    assert code == 0, runner.logs.text
    assert len(ls(remote_inbox / "archive")) == len(names) + 1
    for name in names:
        assert receipt_json(remote_inbox / "outbox", name)["counts"]["accepted"] == 3
    assert [n for n in ls(remote_inbox / "outbox") if n.startswith(".")] == []
    staging = tmp_path / "etc" / "var" / "staging" / "remote"
    assert [p.name for p in staging.rglob("*") if p.is_file()] == []
    assert set(sandbox.accepted_ids) == set().union(*(ids(f"S{i}", 3) for i in range(len(names))))


# --------------------------------------------------------------------------- D6: names that are not UTF-8


@pytest.mark.parametrize("raw", [b"latin\xe4.csv", b"\xff\xfe.csv", b"mixed-\xc3\xa4-\xe4-\xc3.csv",
                                 b"cut-\xe2\x82.csv", b"\x80\x9f.csv", "ok-äö€😀.csv".encode()])
def test_D6_display_names_are_text_and_round_trip(raw: bytes) -> None:
    from batch.fsutil import display_name, real_name

    name = os.fsdecode(raw)
    shown = display_name(name)
    shown.encode("utf-8")  # storable in SQLite, JSON and a log
    assert real_name(shown) == name and os.fsencode(real_name(shown)) == raw
    assert display_name(shown) == shown  # idempotent: a stored name stays as it is
    if raw == b"latin\xe4.csv":
        assert shown == "latin\\xe4.csv"


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_D6_a_name_that_is_not_utf8_is_processed_local(tmp_path: Path, sandbox, apicode_env, mode: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "mode": mode}])
    (inbox / LATIN).write_bytes(export("W", 4))
    (inbox / "next.csv").write_bytes(export("N", 2))

    code, runner = run_once(config)

    assert code == 0, runner.logs.text
    assert os.path.exists(os.fsencode(inbox / "archive") + b"/latin\xe4.csv")
    # the receipt carries the real bytes, as the system that wrote the file expects ...
    assert b"latin\xe4.csv.receipt.csv" in os.listdir(os.fsencode(inbox / "outbox"))
    # ... the journal, the receipt summary and the log the escaped text
    assert receipt_json(inbox / "outbox", "latin\\xe4.csv")["file"] == "latin\\xe4.csv"
    assert "latin\\xe4.csv" in journal_names(config)
    assert set(sandbox.accepted_ids) == ids("W", 4) | ids("N", 2)


def test_D6_a_name_that_is_not_utf8_is_processed_over_sftp(
        dropper, remote_inbox: Path, tmp_path: Path, sandbox, apicode_env, sshd) -> None:
    # the server's disk is this machine's: the file appears with its cp1252 bytes, and is
    # listed, claimed, downloaded and archived through the real sshd
    (remote_inbox / LATIN).write_bytes(export("R", 4))
    dropper.put("next.csv", export("N", 2))
    config = write_config(tmp_path / "etc", sandbox, [{
        "name": "remote", "inbox": f"{sshd.url_prefix}{remote_inbox}", "private_key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts), "min_age_seconds": 0.3, "poll_interval_seconds": 0.1}])

    code, runner = run_once(config)

    assert code == 0, runner.logs.text
    assert os.path.exists(os.fsencode(remote_inbox) + b"/archive/latin\xe4.csv")
    assert b"latin\xe4.csv.receipt.json" in os.listdir(os.fsencode(remote_inbox / "outbox"))
    assert receipt_json(remote_inbox / "outbox", "latin\\xe4.csv")["file"] == "latin\\xe4.csv"
    assert "latin\\xe4.csv" in journal_names(config)
    assert set(sandbox.accepted_ids) == ids("R", 4) | ids("N", 2)


def test_D6_status_lists_a_name_that_is_not_utf8_escaped(tmp_path: Path, sandbox, apicode_env) -> None:
    from batch.config.service import load_service_config
    from batch.service.supervisor import feed_overview

    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / LATIN).write_bytes(export("W", 1))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    (row,) = feed_overview(load_service_config(config), None)
    assert row["in_processing"] == ["latin\\xe4.csv"]
    json.dumps(row, ensure_ascii=False).encode("utf-8")  # printable as `status` prints it


# --------------------------------------------------------------------------- D19: symlinked own folders

OWN = ("processing", "archive", "error", "outbox")


def local_settings(inbox: Path, **overrides: Any) -> InboxSettings:
    return InboxSettings(inbox=str(inbox), mode="polling", min_age_seconds=0, poll_interval_seconds=0.1, **overrides)


def refusal(where: str, label: str, path: Path | str) -> str:
    return (f"{where}: the {label} folder {path} is a symbolic link; the service's own folders must be real "
            "folders, so it refuses to follow it (replace the link by a folder)")


@pytest.mark.parametrize("label", OWN)
def test_D19_an_own_folder_that_is_a_symlink_is_refused_local(tmp_path: Path, label: str) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    (inbox / label).symlink_to(elsewhere)
    with pytest.raises(InboxError) as refused:
        LocalInbox(local_settings(inbox))
    assert str(refused.value) == refusal(f"inbox {inbox}", label, inbox / label)
    # a dangling link, and a plain file where the folder should be
    (inbox / label).unlink()
    (inbox / label).symlink_to(tmp_path / "nowhere")
    with pytest.raises(InboxError, match="is a symbolic link"):
        LocalInbox(local_settings(inbox))
    assert not (tmp_path / "nowhere").exists()
    (inbox / label).unlink()
    (inbox / label).write_bytes(b"")
    with pytest.raises(InboxError) as refused:
        LocalInbox(local_settings(inbox))
    assert str(refused.value) == f"inbox {inbox}: the {label} folder {inbox / label} is not a folder"
    assert os.listdir(elsewhere) == []


def test_D19_a_folder_between_the_inbox_and_an_own_folder_is_checked_too(tmp_path: Path) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    (elsewhere / "out").mkdir(parents=True)
    (inbox / "receipts").symlink_to(elsewhere)
    with pytest.raises(InboxError) as refused:
        LocalInbox(local_settings(inbox, outbox_dir="receipts/out"))
    assert str(refused.value) == refusal(f"inbox {inbox}", "receipts/out", inbox / "receipts")


def test_D19_the_configured_inbox_itself_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)  # made by the administrator: allowed
    inbox = LocalInbox(local_settings(link))
    try:
        (real / "a.csv").write_bytes(b"x")
        (candidate,) = inbox.scan()
        claimed = inbox.claim(candidate)
        assert claimed is not None and inbox.finish(claimed, True) == "a.csv"
        assert (real / "archive" / "a.csv").exists()
    finally:
        inbox.close()


@pytest.mark.parametrize("label", ["archive", "error"])
def test_D19_a_symlink_put_in_place_after_start_is_not_followed_local(tmp_path: Path, label: str) -> None:
    inbox_dir, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox_dir.mkdir()
    elsewhere.mkdir()
    inbox = LocalInbox(local_settings(inbox_dir))
    try:
        (inbox_dir / "a.csv").write_bytes(b"x")
        (candidate,) = inbox.scan()
        claimed = inbox.claim(candidate)
        assert claimed is not None
        os.rename(inbox_dir / label, inbox_dir / f"{label}.old")  # what an uploader can do
        (inbox_dir / label).symlink_to(elsewhere)
        with pytest.raises(InboxError) as refused:
            inbox.finish(claimed, label == "archive")
        assert str(refused.value) == refusal(f"inbox {inbox_dir}", label, inbox_dir / label)
        assert os.listdir(elsewhere) == [] and (inbox_dir / "processing" / "a.csv").exists()
    finally:
        inbox.close()


def test_D19_a_symlinked_outbox_or_processing_after_start_is_not_followed_local(tmp_path: Path) -> None:
    from batch.fsutil import OwnFolderPath, atomic_writer

    inbox_dir, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox_dir.mkdir()
    elsewhere.mkdir()
    inbox = LocalInbox(local_settings(inbox_dir))
    try:
        os.rename(inbox_dir / "outbox", inbox_dir / "outbox.old")
        (inbox_dir / "outbox").symlink_to(elsewhere)
        receipt = tmp_path / "r.csv"
        receipt.write_bytes(b"line\n")
        with pytest.raises(InboxError) as refused:
            inbox.put_receipt(receipt, "a.csv.receipt.csv")
        assert str(refused.value) == refusal(f"inbox {inbox_dir}", "outbox", inbox_dir / "outbox")
        # the service writes local receipts itself, into LocalInbox.receipt_dir (an OwnFolderPath)
        with pytest.raises(NotADirectoryError) as refused_write, \
                atomic_writer(OwnFolderPath(inbox_dir / "outbox" / "a.csv.receipt.csv"), what="write receipt"):
            pass
        assert str(refused_write.value) == (
            f"cannot write receipt: the folder {inbox_dir / 'outbox'} is a symbolic link; the service's own "
            "folders must be real folders, so it refuses to follow it (replace the link by a folder)")
        os.rename(inbox_dir / "processing", inbox_dir / "processing.old")
        (inbox_dir / "processing").symlink_to(elsewhere)
        (elsewhere / "planted.csv").write_bytes(b"x")
        with pytest.raises(InboxError, match="processing folder .* is a symbolic link"):
            inbox.resume()
        (inbox_dir / "b.csv").write_bytes(b"x")
        (candidate,) = inbox.scan()
        with pytest.raises(InboxError, match="processing folder .* is a symbolic link"):
            inbox.claim(candidate)
        assert sorted(os.listdir(elsewhere)) == ["planted.csv"] and (inbox_dir / "b.csv").exists()
    finally:
        inbox.close()


def test_D19_service_with_a_symlinked_outbox_writes_nothing_there(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    (inbox / "outbox").symlink_to(elsewhere)
    (inbox / "a.csv").write_bytes(export("Y", 2))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    code, runner = run_once(config)
    assert code == 2
    assert refusal(f"inbox {inbox}", "outbox", inbox / "outbox") in runner.logs.text
    assert os.listdir(elsewhere) == [] and (inbox / "a.csv").exists()
    assert sandbox.accepted_ids == []


def sftp_inbox(settings: InboxSettings) -> Any:
    from batch.inbox.sftp import SftpInbox

    return SftpInbox(settings)


@pytest.mark.parametrize("label", OWN)
def test_D19_an_own_folder_that_is_a_symlink_is_refused_over_sftp(
        sftp_settings, remote_inbox: Path, tmp_path: Path, label: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (remote_inbox / label).symlink_to(elsewhere)
    settings = sftp_settings()
    inbox = sftp_inbox(settings)
    try:
        with pytest.raises(InboxError) as refused:
            inbox.connect()
        assert str(refused.value) == refusal(settings.location.display, label, remote_inbox / label)
    finally:
        inbox.close()
    (remote_inbox / label).unlink()
    (remote_inbox / label).write_bytes(b"")
    inbox = sftp_inbox(settings)
    try:
        with pytest.raises(InboxError) as refused:
            inbox.connect()
        assert str(refused.value) == (f"{settings.location.display}: the {label} folder {remote_inbox / label} "
                                      "exists on the server but is not a folder")
    finally:
        inbox.close()
    assert os.listdir(elsewhere) == []


def test_D19_a_symlink_put_in_place_after_connect_is_not_followed_over_sftp(
        sftp_settings, dropper, remote_inbox: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = sftp_settings(min_age_seconds=0)
    inbox = sftp_inbox(settings)
    try:
        dropper.put("a.csv", b"x\n")
        (candidate,) = wait_until(inbox.scan, 30, what="a.csv ready")
        claimed = inbox.claim(candidate)
        for label in ("archive", "outbox"):
            os.rename(remote_inbox / label, remote_inbox / f"{label}.old")
            (remote_inbox / label).symlink_to(elsewhere)
        with pytest.raises(InboxError) as refused:
            inbox.finish(claimed, True)
        assert str(refused.value) == refusal(settings.location.display, "archive", remote_inbox / "archive")
        receipt = tmp_path / "r.csv"
        receipt.write_bytes(b"line\n")
        with pytest.raises(InboxError) as refused:
            inbox.put_receipt(receipt, "a.csv.receipt.csv")
        assert str(refused.value) == refusal(settings.location.display, "outbox", remote_inbox / "outbox")
        assert os.listdir(elsewhere) == [] and (remote_inbox / "processing" / "a.csv").exists()
    finally:
        inbox.close()


# --------------------------------------------------------------------------- F3 / F5: errors say what and where


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """`mount ARGS TARGET` for the test; skipped with a message where the machine cannot mount."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (mount {' '.join(args)}: {done.stderr.strip()})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextmanager
def full_disk(target: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at `target`, filled up."""
    with mounted(target, "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"):
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"f" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield target


@contextmanager
def read_only(target: Path) -> Iterator[Path]:
    """`target` bind-mounted over itself, read-only."""
    with mounted(target, "--bind", str(target)):
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield target


def test_F3_full_local_outbox_names_the_receipt_and_the_operation(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_bytes(export("F", 2))
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    with full_disk(inbox / "outbox"):
        code, runner = run_once(config)
        assert os.listdir(inbox / "outbox") == ["filler"]  # no temporary left behind
    text = runner.logs.text
    assert f"cannot write receipt: {inbox}/outbox/a.csv.receipt.csv: No space left on device (ENOSPC)" in text, text
    assert "[Errno" not in text


def test_F3_full_staging_names_the_staging_file_and_the_download(
        sftp_settings, dropper, remote_inbox: Path, tmp_path: Path) -> None:
    inbox = sftp_inbox(sftp_settings(min_age_seconds=0))
    staging = tmp_path / "staging"
    try:
        dropper.put("big.csv", b"x" * 300_000)
        (candidate,) = wait_until(inbox.scan, 30, what="big.csv ready")
        claimed = inbox.claim(candidate)
        with full_disk(staging):
            with pytest.raises(OSError) as full:
                inbox.open_local(claimed, staging)
            assert os.listdir(staging) == ["filler"]  # the partial download is gone
        assert re.fullmatch(rf"cannot download to staging: {re.escape(str(staging))}/\.big\.csv\.[0-9a-f]{{12}}\.part: "
                            r"No space left on device \(ENOSPC\)", str(full.value)), str(full.value)
        assert full.value.errno == 28
    finally:
        inbox.close()


def test_F3_full_remote_outbox_names_the_receipt_and_the_upload(
        sftp_settings, remote_inbox: Path, tmp_path: Path) -> None:
    settings = sftp_settings()
    inbox = sftp_inbox(settings)
    receipt = tmp_path / "a.csv.receipt.csv"
    receipt.write_bytes(b"r" * 200_000)
    try:
        with full_disk(remote_inbox / "outbox"):
            with pytest.raises(OSError) as full:
                inbox.put_receipt(receipt, receipt.name)
            assert os.listdir(remote_inbox / "outbox") == ["filler"]
        loc = settings.location
        assert str(full.value) == (f"cannot upload receipt: sftp://{loc.user}@{loc.host}:{loc.port}{remote_inbox}"
                                   "/outbox/a.csv.receipt.csv: the server stored only 0 of 200000 bytes (often a full "
                                   "disk or a quota)")
    finally:
        inbox.close()


def test_F3_read_only_inbox_names_the_claim(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "inbox"
    inbox_dir.mkdir()
    for label in OWN:
        (inbox_dir / label).mkdir()
    (inbox_dir / "a.csv").write_bytes(b"x")
    with read_only(inbox_dir):
        inbox = LocalInbox(local_settings(inbox_dir))
        try:
            (candidate,) = inbox.scan()
            with pytest.raises(OSError) as refused:
                inbox.claim(candidate)
        finally:
            inbox.close()
    assert str(refused.value) == (f"cannot claim into processing/: {inbox_dir}/processing/a.csv: "
                                  "Read-only file system (EROFS)")


def test_F5_non_writable_archive_names_the_folder_local(tmp_path: Path) -> None:
    """archive/ belongs to another account, 0755; the inbox runs without the capability that
    lets root write anywhere (CAP_DAC_OVERRIDE), as a service account would."""
    if os.geteuid() != 0:
        pytest.skip("dropping root's capabilities for the test needs root")
    base = tmp_path
    try:
        inbox_dir = base / "inbox"
        for folder in (inbox_dir, *(inbox_dir / label for label in OWN)):
            folder.mkdir()
        os.chown(inbox_dir / "archive", 65534, 65534)
        os.chmod(inbox_dir / "archive", 0o755)
        (inbox_dir / "a.csv").write_bytes(b"x")
        script = textwrap.dedent(f"""
            from batch.config.inbox import InboxSettings
            from batch.inbox.local import LocalInbox
            inbox = LocalInbox(InboxSettings(inbox={str(inbox_dir)!r}, mode="polling", min_age_seconds=0))
            claimed = inbox.claim(inbox.scan()[0])
            try:
                inbox.finish(claimed, True)
            except PermissionError as exc:
                print(exc)
        """)
        done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                               sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[1])
        if "setpriv:" in done.stderr:
            pytest.skip(f"cannot drop capabilities here: {done.stderr.strip()}")
        assert done.stdout.strip() == (f"cannot move to archive/: {inbox_dir}/archive/a.csv: "
                                       "Permission denied (EACCES)"), done.stderr
        assert (inbox_dir / "processing" / "a.csv").exists()
    finally:
        pass


def test_F5_non_writable_archive_and_outbox_name_the_folder_over_sftp(password_account, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd
    import shutil
    import tempfile

    from tests.sshd import Sshd

    user, password = password_account
    server = Sshd(tmp_path / "sshd", passwords=True)
    server.start()
    remote = Path(tempfile.mkdtemp(prefix="upb-f5-inbox-"))
    inbox = None
    try:
        account = pwd.getpwnam(user)
        for folder in (remote, remote / "processing", remote / "error"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, account.pw_uid, account.pw_gid)
        for folder in (remote / "archive", remote / "outbox"):  # a permissions mistake on the server
            folder.mkdir()
            os.chmod(folder, 0o755)
        (remote / "p.csv").write_bytes(b"x\n")
        monkeypatch.setenv("FEED_SFTP_PASSWORD", password)
        settings = InboxSettings(inbox=f"sftp://{user}@{server.host}:{server.port}{remote}",
                                 password="${FEED_SFTP_PASSWORD}", known_hosts=server.known_hosts,
                                 accept_new_host_key=True, min_age_seconds=0, connect_timeout_seconds=10)
        inbox = sftp_inbox(settings)
        (candidate,) = wait_until(inbox.scan, 30, what="p.csv ready")
        claimed = inbox.claim(candidate)
        where = f"sftp://{user}@{server.host}:{server.port}{remote}"
        with pytest.raises(PermissionError) as denied:
            inbox.finish(claimed, True)
        assert str(denied.value) == f"cannot move to archive/: {where}/archive/p.csv: Permission denied (EACCES)"
        receipt = tmp_path / "p.csv.receipt.csv"
        receipt.write_bytes(b"r\n")
        with pytest.raises(PermissionError) as denied:
            inbox.put_receipt(receipt, receipt.name)
        assert str(denied.value) == (f"cannot upload receipt: {where}/outbox/p.csv.receipt.csv: "
                                     "Permission denied (EACCES)")
    finally:
        if inbox is not None:
            inbox.close()
        server.kill()
        shutil.rmtree(remote, ignore_errors=True)


# --------------------------------------------------------------------------- F9: stale temporaries


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def start_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


def sigkill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def test_F9_stale_temporaries_in_the_local_outbox_are_removed_at_start(tmp_path: Path, caplog) -> None:
    inbox_dir = tmp_path / "inbox"
    outbox = inbox_dir / "outbox"
    outbox.mkdir(parents=True)
    ours_old = [outbox / ".a.csv.receipt.csv.0123456789ab.tmp", outbox / ".b.csv.receipt.json.89abcdef.tmp",
                outbox / (".c" + "ä" * 100 + "~0123456789.csv.receipt.csv.0123456789ab.tmp")]
    kept = [outbox / ".d.csv.receipt.csv.0123456789ab.tmp",  # fresh: maybe a writer at work
            outbox / ".notes.tmp", outbox / "e.tmp", outbox / ".f.csv.receipt.csv.XYZ.tmp",  # not ours
            outbox / "a.csv.receipt.csv"]
    for path in ours_old + kept:
        path.write_bytes(b"x")
    for path in ours_old + kept[1:]:
        age(path, 7200)
    held = outbox / ".g.csv.receipt.csv.0123456789ab.tmp"  # old, but its writer is alive
    held.write_bytes(b"x")
    age(held, 7200)
    writer = start_python(f"""
        import fcntl, time
        handle = open({str(held)!r}, "ab")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
    """)
    try:
        assert writer.stdout.readline().strip() == "locked"
        with caplog.at_level("INFO"):
            LocalInbox(local_settings(inbox_dir)).close()
    finally:
        sigkill(writer)
    assert sorted(ls(outbox)) == sorted(p.name for p in [*kept, held])
    assert f"removed {ours_old[0]}, a temporary a killed receipt write left" in caplog.text


def test_F9_a_receipt_write_killed_by_sigkill_leaves_a_temporary_the_next_start_removes(
        tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "outbox").mkdir(parents=True)
    writer = start_python(f"""
        import time
        from batch.fsutil import atomic_writer
        with atomic_writer({str(inbox / "outbox" / "k.csv.receipt.csv")!r}) as handle:
            handle.write(b"line\\n" * 100_000)
            handle.flush()
            print("half written", flush=True)
            time.sleep(60)
    """)
    assert writer.stdout.readline().strip() == "half written", writer.stderr.read()
    sigkill(writer)
    (stale,) = (inbox / "outbox").iterdir()
    assert stale.name.startswith(".k.csv.receipt.csv.") and stale.stat().st_size == 500_000
    age(stale, 120)
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    code, runner = run_once(config)
    assert code == 0, runner.logs.text
    assert ls(inbox / "outbox") == []
    assert f"removed {stale}, a temporary a killed receipt write left" in runner.logs.text


def test_F9_a_download_killed_by_sigkill_leaves_a_part_the_next_download_removes(
        sftp_settings, dropper, remote_inbox: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    dropper.put("first.csv", b"1" * 2_000_000)
    settings = sftp_settings(min_age_seconds=0)
    downloader = start_python(f"""
        import time
        from pathlib import Path
        from batch.config.inbox import InboxSettings
        from batch.inbox import sftp
        from paramiko.sftp_file import SFTPFile
        read, calls = SFTPFile.read, []
        def slow(self, size=None):
            calls.append(size)
            if len(calls) == 2:  # the first block is in the staging file
                print("writing", flush=True)
                time.sleep(60)
            return read(self, size)
        SFTPFile.read = slow
        inbox = sftp.SftpInbox(InboxSettings.model_validate_json({settings.model_dump_json()!r}))
        candidate = None
        while not candidate:
            candidate = inbox.scan()
        inbox.open_local(inbox.claim(candidate[0]), Path({str(staging)!r}))
    """)
    assert downloader.stdout.readline().strip() == "writing", downloader.stderr.read()
    sigkill(downloader)
    (stale,) = staging.iterdir()
    assert stale.name.startswith(".first.csv.") and stale.name.endswith(".part")
    age(stale, 120)

    dropper.put("second.csv", b"2" * 1000)
    inbox = sftp_inbox(settings)
    try:
        (candidate,) = wait_until(inbox.scan, 30, what="second.csv ready")
        local = inbox.open_local(inbox.claim(candidate), staging)
        assert local.read_bytes() == b"2" * 1000
        assert ls(staging) == ["second.csv"]
    finally:
        inbox.close()


def test_F9_stale_upload_temporaries_on_the_server_are_removed_at_connect_and_reconnect(
        sftp_settings, remote_inbox: Path, tmp_path: Path) -> None:
    outbox = remote_inbox / "outbox"
    outbox.mkdir()
    old = outbox / ".a.csv.receipt.csv.0123456789ab.tmp"
    fresh = outbox / ".b.csv.receipt.csv.0123456789ab.tmp"  # maybe another instance uploading
    foreign = outbox / ".theirs.tmp"
    for path in (old, fresh, foreign):
        path.write_bytes(b"x")
    age(old, 2 * 3600)
    age(foreign, 2 * 3600)
    inbox = sftp_inbox(sftp_settings())
    try:
        inbox.connect()
        assert ls(outbox) == sorted([fresh.name, foreign.name])
        later = outbox / ".c.csv.receipt.json.0123456789ab.tmp"
        later.write_bytes(b"x")
        age(later, 2 * 3600)
        inbox._transport.close()  # the connection drops; the next operation reconnects
        wait_until(lambda: inbox.scan() is not None and inbox.connected, 30, what="the reconnect")
        assert ls(outbox) == sorted([fresh.name, foreign.name])
    finally:
        inbox.close()


def test_F9_an_upload_killed_by_sigkill_leaves_a_temporary_the_next_connect_removes(
        sftp_settings, remote_inbox: Path, tmp_path: Path) -> None:
    settings = sftp_settings()
    fifo = tmp_path / "receipt.fifo"
    os.mkfifo(fifo)
    uploader = start_python(f"""
        from pathlib import Path
        from batch.config.inbox import InboxSettings
        from batch.inbox.sftp import SftpInbox
        inbox = SftpInbox(InboxSettings.model_validate_json({settings.model_dump_json()!r}))
        inbox.put_receipt(Path({str(fifo)!r}), "u.csv.receipt.csv")
    """)
    with open(fifo, "wb") as feed:  # the receipt arrives slowly: the upload is under way
        feed.write(b"r" * 200_000)
        feed.flush()

        def partial() -> list[Path]:
            return [p for p in (remote_inbox / "outbox").glob(".u.csv.receipt.csv.*.tmp") if p.stat().st_size]

        (stale,) = wait_until(partial, 30, what="a partial upload on the server")
        sigkill(uploader)
    assert not (remote_inbox / "outbox" / "u.csv.receipt.csv").exists()
    sizes = [-1]

    def settled() -> bool:  # the server may still write what it had received
        sizes.append(stale.stat().st_size)
        time.sleep(0.2)
        return sizes[-1] == stale.stat().st_size == sizes[-2]

    wait_until(settled, 30, what="the server done with the upload")
    age(stale, 2 * 3600)
    inbox = sftp_inbox(settings)
    try:
        inbox.connect()
    finally:
        inbox.close()
    assert ls(remote_inbox / "outbox") == []


# --------------------------------------------------------------------------- F7: a half-saved mapping

MAPPING_PREFIX = MAPPING.replace("  description: {column: note}\n", "")  # valid, but without the description


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_F7_a_changed_mapping_is_applied_only_once_it_has_settled(tmp_path: Path, sandbox, apicode_env,
                                                                  caplog) -> None:
    from batch.config.service import load_service_config
    from batch.service.reload import ConfigWatcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    mapping = tmp_path / "mapping.yaml"
    clock = FakeClock()
    watcher = ConfigWatcher(load_service_config(config), settle_seconds=2.0, clock=clock)
    first = watcher.version
    assert len(first) == 12

    mapping.write_text(MAPPING_PREFIX)  # the editor's first step
    with caplog.at_level("INFO"):
        assert watcher.poll() is None
    assert f"configuration: a change in {mapping}; applied once it has not changed for 2.0 s" in caplog.text
    clock.now += 1.5
    assert watcher.poll() is None
    mapping.write_text(MAPPING.replace("{column: note}", "{const: complete}"))  # the second step
    clock.now += 1.0
    assert watcher.poll() is None  # changed again: the settle time starts over
    clock.now += 1.9
    assert watcher.poll() is None
    clock.now += 0.2
    loaded = watcher.poll()
    assert loaded is not None and not isinstance(loaded, Exception)
    assert "complete" in mapping.read_text() and watcher.version != first
    assert watcher.poll() is None  # applied once

    # the same content written again (a new mtime) is noticed, settles, and keeps its version
    applied = watcher.version
    age(mapping, 10)
    assert watcher.poll() is None
    clock.now += 2.1
    assert watcher.poll() is not None and watcher.version == applied


def test_F7_a_half_saved_mapping_never_goes_live(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    mapping = tmp_path / "mapping.yaml"
    with ServiceThread(config, reload_interval=1.0) as runner:  # settles for 2 s
        runner.wait_log("watching 1 feed")
        wait_until(lambda: getattr(runner.service.workers.get("local"), "last_scan", None), 30,
                   what="the first scan")
        mapping.write_text(MAPPING_PREFIX)  # an editor's first step: valid, no description
        time.sleep(1.3)  # the old service applied it within one reload interval
        (inbox / "h.csv").write_bytes(export("H", 5))
        time.sleep(0.5)
        mapping.write_text(MAPPING.replace("{column: note}", "{const: complete}"))  # the second step
        wait_until(lambda: (inbox / "archive" / "h.csv").exists(), 30, what="h.csv archived")
        def complete_applied() -> bool:  # the old service applied the prefix as #2 and the rest as #3
            applied = re.findall(r"configuration #(\d+) applied", runner.logs.text)
            return bool(applied) and ("configuration #3" not in runner.logs.text or "3" in applied)

        wait_until(complete_applied, 30, what="the complete version applied")
        (inbox / "after.csv").write_bytes(export("A", 2))
        wait_until(lambda: (inbox / "archive" / "after.csv").exists(), 30, what="after.csv archived")
        text = runner.logs.text
    accepted = {event["id"]: event for event in sandbox.accepted}
    assert all(accepted[i].get("description") for i in ids("H", 5)), [accepted[i] for i in ids("H", 5)]
    assert {accepted[i]["description"] for i in ids("A", 2)} == {"complete"}
    assert "configuration #3" not in text  # the half-saved version was never a configuration
    assert "configuration #2 applied (version " in text
