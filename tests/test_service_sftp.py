"""The service with an SFTP inbox: a real OpenSSH sshd on loopback, files dropped with the real
`sftp` client the way legacy systems do, and the sandbox as Ropo One (contract-checked)."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceProcess, ServiceThread, export, ids, receipt, run_once, write_config
from tests.sshd import keygen


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


@pytest.fixture
def sftp_config(tmp_path: Path, sshd, remote_inbox: Path, sandbox, apicode_env):
    """write(**feed overrides, top=...) -> a service.yaml with one sftp:// feed on the test sshd."""

    def write(top: dict[str, Any] | None = None, **overrides: Any) -> Path:
        feed = {
            "name": "remote",
            "inbox": f"{sshd.url_prefix}{remote_inbox}",
            "private_key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts),
            "min_age_seconds": 0.5,
            "poll_interval_seconds": 0.1,
            "connect_timeout_seconds": 5,
            "io_timeout_seconds": 10,
            "reconnect_initial_seconds": 0.2,
            "reconnect_max_seconds": 1,
            **overrides,
        }
        return write_config(tmp_path / "etc", sandbox, [feed], **(top or {}))

    return write


def archived(inbox: Path, name: str) -> bool:
    return (inbox / "archive" / name).exists() and (inbox / "outbox" / f"{name}.receipt.json").exists()


def test_once_plain_put(dropper, remote_inbox: Path, sftp_config, sandbox) -> None:
    dropper.put("plain.csv", export("P", 30))
    code, runner = run_once(sftp_config())
    assert code == 0, runner.logs.text
    assert archived(remote_inbox, "plain.csv")
    assert (remote_inbox / "outbox" / "plain.csv.receipt.csv").read_text().count("accepted") == 30
    assert receipt(remote_inbox / "outbox", "plain.csv")["counts"]["accepted"] == 30
    assert not list((remote_inbox / "processing").iterdir())
    assert set(sandbox.accepted_ids) == ids("P", 30)


def test_temp_name_then_rename(dropper, remote_inbox: Path, sftp_config, sandbox) -> None:
    with ServiceThread(sftp_config()) as runner:
        runner.wait_log("watching 1 feed")
        dropper.put_then_rename("renamed.csv", export("R", 10))
        dropper.put_then_rename("renamed2.csv", export("R2", 10), temp_name="renamed2.csv.filepart")
        wait_until(lambda: archived(remote_inbox, "renamed.csv") and archived(remote_inbox, "renamed2.csv"), 30,
                   what="both files processed")
    assert set(sandbox.accepted_ids) == ids("R", 10) | ids("R2", 10)
    assert not any(p.name.endswith((".part", ".filepart")) for p in (remote_inbox / "archive").iterdir())


def test_slow_upload_is_not_picked_up_before_complete(dropper, remote_inbox: Path, sftp_config, sandbox) -> None:
    data = export("S", 90)
    cut = [data[:1000], data[1000:2500], data[2500:]]
    with ServiceThread(sftp_config(min_age_seconds=2.0)) as runner:
        runner.wait_log("watching 1 feed")
        upload = dropper.slow_upload("slow.csv", cut)
        try:
            for _ in cut:
                upload.send_next()
                assert (remote_inbox / "slow.csv").exists(), "claimed before the upload was complete"
        finally:
            upload.close()
        wait_until(lambda: archived(remote_inbox, "slow.csv"), 30, what="slow.csv processed")
    assert receipt(remote_inbox / "outbox", "slow.csv")["counts"]["accepted"] == 90
    assert (remote_inbox / "archive" / "slow.csv").read_bytes() == data


def test_marker_file_after_the_data(dropper, remote_inbox: Path, sftp_config, sandbox) -> None:
    with ServiceThread(sftp_config(marker_suffixes=[".done"], min_age_seconds=0.2)) as runner:
        runner.wait_log("watching 1 feed")
        dropper.put("marked.csv", export("M", 5))
        gauge = runner.service.metrics.last_scan.labels("remote")
        seen = gauge._value.get()
        wait_until(lambda: gauge._value.get() > seen + 1.0, 30, what="a second of scans after the upload")
        assert (remote_inbox / "marked.csv").exists(), "picked up without its marker"
        dropper.put_marker("marked.csv")
        wait_until(lambda: archived(remote_inbox, "marked.csv"), 30, what="marked.csv processed")
    assert (remote_inbox / "archive" / "marked.csv.done").exists()
    assert set(sandbox.accepted_ids) == ids("M", 5)


def test_sshd_stopped_during_processing(dropper, remote_inbox: Path, sftp_config, sandbox, sshd) -> None:
    sandbox.set_faults(latency_ms=50)
    config = sftp_config(top={"delivery": {"max_in_flight": 2, "backoff_base": 0.05, "backoff_cap": 0.5}})
    with ServiceThread(config) as runner:
        dropper.put("during.csv", export("D", 80))
        wait_until(lambda: len(sandbox.arrivals) >= 2, 30, what="delivery under way")
        sshd.kill()  # the daemon and every session: the service's connection drops
        assert not archived(remote_inbox, "during.csv"), "finished before the connection dropped"
        # delivery goes on; the receipt upload meets the dead connection and is redone later
        runner.wait_log("during.csv: done", timeout=60)
        runner.wait_log("inbox problem")
        healthy, detail = runner.service.health()
        assert detail["feeds"]["remote"]["alive"], "a feed thread died"
        if detail["feeds"]["remote"]["state"] == "unavailable":  # F6: /healthz says so (503)
            assert not healthy and "inbox unreachable" in detail["feeds"]["remote"]["problem"]
        sshd.start()
        wait_until(lambda: archived(remote_inbox, "during.csv"), 60, what="during.csv finished after sshd is back")
        dropper.put("after.csv", export("A", 5))  # and the service keeps going
        wait_until(lambda: archived(remote_inbox, "after.csv"), 30, what="after.csv processed")
    assert receipt(remote_inbox / "outbox", "during.csv")["counts"]["accepted"] == 80
    assert set(sandbox.accepted_ids) == ids("D", 80) | ids("A", 5)
    assert runner.logs.text.count("during.csv: done") == 1  # not processed again after the reconnect
    assert not list((remote_inbox / "processing").iterdir())


def test_unknown_host_key_is_refused_and_the_service_keeps_running(
        dropper, remote_inbox: Path, sftp_config, sandbox, sshd, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts_empty"
    known_hosts.write_text("")
    with ServiceThread(sftp_config(known_hosts=str(known_hosts))) as runner:
        runner.wait_log("unknown host key")
        line = next(m for m in runner.logs.messages() if "unknown host key" in m)
        assert sshd.host_key_fingerprint in line and str(known_hosts) in line, line
        dropper.put("waiting.csv", export("K", 3))
        healthy, detail = runner.service.health()
        assert detail["feeds"]["remote"]["alive"]  # every feed thread alive
        assert not healthy and detail["feeds"]["remote"]["state"] == "unavailable"
        assert detail["feeds"]["remote"]["problem"].startswith("inbox unreachable")
        known_hosts.write_text(sshd.known_hosts.read_text())  # the administrator adds the checked key
        wait_until(lambda: archived(remote_inbox, "waiting.csv"), 30, what="processed once the key is known")
    assert set(sandbox.accepted_ids) == ids("K", 3)


def test_two_instances_on_one_inbox_process_each_file_once(
        dropper, remote_inbox: Path, sftp_config, sandbox, tmp_path: Path) -> None:
    config = sftp_config(min_age_seconds=0.3)
    env = {APICODE_ENV: sandbox.apicode}
    first = ServiceProcess(config, tmp_path / "first.log", env=env)
    second = ServiceProcess(config, tmp_path / "second.log", env=env)
    try:
        names = [f"batch{i}.csv" for i in range(8)]
        for i, name in enumerate(names):
            dropper.put(name, export(f"T{i}", 15))
        wait_until(lambda: all(archived(remote_inbox, name) for name in names), 90, what="every file processed")
    finally:
        for proc in (first, second):
            proc.signal(signal.SIGTERM)
        codes = [first.wait(30), second.wait(30)]
    assert codes == [0, 0], first.text() + second.text()
    done = [line for proc in (first, second) for line in proc.text().splitlines() if ".csv: done" in line]
    assert len(done) == 8, done
    expected = set().union(*(ids(f"T{i}", 15) for i in range(8)))
    arrived = [a.id for a in sandbox.arrivals]
    assert sorted(arrived) == sorted(expected)  # each id sent exactly once
    assert all((remote_inbox / "outbox" / f"{n}.receipt.json").exists() for n in names)


def test_sigkill_mid_file_then_restart_loses_nothing(
        dropper, remote_inbox: Path, sftp_config, sandbox, tmp_path: Path) -> None:
    sandbox.set_faults(latency_ms=40)
    config = sftp_config(top={"delivery": {"max_in_flight": 4, "backoff_base": 0.05, "backoff_cap": 0.5}})
    env = {APICODE_ENV: sandbox.apicode}
    dropper.put("killed.csv", export("X", 150))
    service = ServiceProcess(config, tmp_path / "killed.log", env=env)
    try:
        wait_until(lambda: len(sandbox.accepted_ids) >= 20, 30, what="delivery under way")
    finally:
        service.kill()
    # requests in flight at the kill still reach the sandbox: wait until each is answered
    wait_until(lambda: all(a.finished for a in sandbox.arrivals), 30, what="requests in flight answered")
    before_restart = set(sandbox.accepted_ids)
    assert (remote_inbox / "processing" / "killed.csv").exists()
    assert len(sandbox.accepted_ids) < 150

    sandbox.set_faults()
    restart = ServiceProcess(config, tmp_path / "restart.log", "--once", env=env)
    assert restart.wait(60) == 0, restart.text()
    assert archived(remote_inbox, "killed.csv")
    assert set(sandbox.accepted_ids) == ids("X", 150)
    counts = receipt(remote_inbox / "outbox", "killed.csv")["counts"]
    assert counts["accepted"] + counts["duplicate"] == 150 and counts["pending"] == counts["failed"] == 0
    # Only events Ropo One had accepted before the restart, whose answers the journal had not yet
    # recorded (requests in flight, results not yet written), can be sent a second time.
    assert set(sandbox.duplicates) <= before_restart, sandbox.duplicates
    assert all(count == 1 for count in sandbox.duplicates.values()), sandbox.duplicates
    print(f"sent again after SIGKILL: {len(sandbox.duplicates)}")


def test_sftp_secrets_never_in_logs(dropper, remote_inbox: Path, sftp_config, sandbox, sshd, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase = "canary-passphrase-81c2"
    key = keygen(tmp_path / "encrypted_key", passphrase=passphrase)
    # the service logs in with the encrypted key; the dropper with the fixture's own key
    sshd.authorized_keys.write_text((tmp_path / "encrypted_key.pub").read_text()
                                    + Path(f"{sshd.client_key}.pub").read_text())
    monkeypatch.setenv("TEST_SFTP_PASSPHRASE", passphrase)
    config = sftp_config(private_key_file=str(key), key_passphrase="${TEST_SFTP_PASSPHRASE}")
    with ServiceThread(config) as runner:
        dropper.put("p.csv", export("Q", 3))
        wait_until(lambda: archived(remote_inbox, "p.csv"), 30, what="p.csv processed")
        # anything that reaches the log goes through the one filter, whoever logs it
        logging.getLogger("paramiko.transport").error("leak attempt: %s / %s / Bearer %s", passphrase,
                                                      sandbox.apicode, sandbox.issued_tokens()[-1])
        runner.wait_log("leak attempt")
    text = runner.logs.text
    assert passphrase not in text and sandbox.apicode not in text
    assert not any(token in text for token in sandbox.issued_tokens())


def test_retry_uploads_the_rewritten_receipt_to_the_sftp_outbox(
        dropper, remote_inbox: Path, sftp_config, sandbox, tmp_path: Path, capsys) -> None:
    from batch.cli.commands import run

    sandbox.set_faults(script=[503, 503, 503])  # the first three POSTs fail, and are not retried
    config = sftp_config(top={"delivery": {"max_in_flight": 1, "max_attempts": 1}})
    dropper.put("r.csv", export("R", 5))
    code, runner = run_once(config)
    assert code == 1, runner.logs.text
    outbox = remote_inbox / "outbox"
    assert receipt(outbox, "r.csv")["counts"]["failed"] > 0
    capsys.readouterr()

    assert run(["retry", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "r.csv: 5 accepted" in out
    assert "receipt: sftp://root@127.0.0.1:" in out and f"{outbox}/r.csv.receipt.csv" in out
    assert receipt(outbox, "r.csv")["counts"] == {
        "accepted": 5, "rejected": 0, "invalid": 0, "failed": 0, "duplicate": 0, "not_sent": 0, "pending": 0,
        "filtered": 0}
    assert (outbox / "r.csv.receipt.csv").read_text().count("accepted") == 5
    assert set(sandbox.accepted_ids) == ids("R", 5)
    assert not list((tmp_path / "etc" / "var" / "staging" / "remote" / "receipts").iterdir())  # nothing left behind


def test_a_retry_that_turns_a_failed_event_rejected_rewrites_the_rejected_rows_from_the_sftp_archive(
        dropper, remote_inbox: Path, sftp_config, sandbox, tmp_path: Path, capsys) -> None:
    """The original is fetched from the server's archive/ (size and sha256 checked), the
    rejected-rows file written again from it and uploaded with the receipt; no copy stays here."""
    from batch.cli.commands import run

    data = export("K", 5).replace(b"K-2,643007572062450002,2024-02-05", b"K-2,643007572062450002,2024-02-30")
    lines = data.splitlines(keepends=True)
    sandbox.set_faults(script=[503, 503])  # K-1 and K-3 (K-2 is invalid: never sent) fail, and are not retried
    config = sftp_config(top={"delivery": {"max_in_flight": 1, "max_attempts": 1}})
    (remote_inbox / "archive").mkdir()
    (remote_inbox / "archive" / "k.csv").write_bytes(b"an earlier k.csv, archived under a stamped name\n")
    dropper.put("k.csv", data)
    code, runner = run_once(config)
    assert code == 1, runner.logs.text
    outbox, archive = remote_inbox / "outbox", remote_inbox / "archive"
    stamped = [path.name for path in archive.iterdir() if path.name != "k.csv"]  # archive/ held a k.csv already
    assert len(stamped) == 1 and re.fullmatch(r"k\.\d{8}T\d{6}Z\.csv", stamped[0]), stamped
    assert (outbox / "k.csv.rejected.csv").read_bytes() == lines[0] + lines[2]  # header, the invalid one
    (archive / "k.csv").write_bytes(b"x" * len(data))  # the earlier one, now of the same size: hashed, not taken

    sandbox.set_faults(reject_ids=["K-3"], reject_status=422)  # Ropo One now refuses K-3 for good
    capsys.readouterr()
    assert run(["retry", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "k.csv: 3 accepted, 1 rejected, 1 invalid" in out and "not rewritten" not in err, err
    assert f"{outbox}/k.csv.rejected.csv" in out and "rejected rows (fix them and drop this file again): sftp://" in out
    assert (outbox / "k.csv.rejected.csv").read_bytes() == lines[0] + lines[2] + lines[3]  # header, invalid, rejected
    summary = receipt(outbox, "k.csv")
    assert summary["rejected_rows"] == "k.csv.rejected.csv"
    assert [(p["line"], p["outcome"]) for p in summary["problems"]] == [(3, "invalid"), (4, "rejected")]
    staging = tmp_path / "etc" / "var" / "staging" / "remote"
    assert not list((staging / "receipts").iterdir()) and not list((staging / "originals").iterdir())


def test_retry_keeps_the_receipt_when_the_sftp_server_is_down(
        dropper, remote_inbox: Path, sftp_config, sandbox, sshd, tmp_path: Path, capsys) -> None:
    from batch.cli.commands import run

    sandbox.set_faults(script=[503])
    config = sftp_config(top={"delivery": {"max_in_flight": 1, "max_attempts": 1}},
                         connect_timeout_seconds=2, reconnect_max_seconds=0.5)
    dropper.put("d.csv", export("D", 3))
    assert run_once(config)[0] == 1
    capsys.readouterr()
    checked = sandbox.request_hook

    def server_down_while_sending(request: Any) -> None:  # the retry holds the lease (its marker is written)
        if request.path.endswith("/usageplace/event"):
            sshd.kill()
        if checked is not None:
            checked(request)

    sandbox.request_hook = server_down_while_sending
    assert run(["retry", "--config", str(config)]) == 2  # delivered, but the receipt did not reach the outbox
    captured = capsys.readouterr()
    kept = tmp_path / "etc" / "var" / "staging" / "remote" / "receipts"
    assert "d.csv: 3 accepted" in captured.out
    assert "the receipt could not be uploaded" in captured.err and str(kept) in captured.err
    assert (kept / "d.csv.receipt.csv").read_text().count("accepted") == 3
    assert (kept / "d.csv.receipt.json").exists()


def test_retry_while_the_sftp_server_is_down_sends_nothing_and_stays_queued(
        dropper, remote_inbox: Path, sftp_config, sandbox, sshd, tmp_path: Path, capsys) -> None:
    """Its lease needs the inbox's lease marker: no lease, nothing sent; the request waits."""
    from batch.cli.commands import run
    from batch.store.journal import Journal

    sandbox.set_faults(script=[503])
    config = sftp_config(top={"delivery": {"max_in_flight": 1, "max_attempts": 1}},
                         connect_timeout_seconds=2, reconnect_max_seconds=0.5)
    dropper.put("d.csv", export("D", 3))
    assert run_once(config)[0] == 1
    sent = len(sandbox.arrivals)
    sshd.kill()
    capsys.readouterr()
    assert run(["retry", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "retry request #1 (file #1 of feed remote) is still waiting: feed remote: its lease cannot be taken: " \
           in err and err.endswith("; it stays queued for the instance that holds the feed next (or run retry "
                                   "again)\n"), err
    assert len(sandbox.arrivals) == sent
    with Journal(tmp_path / "etc" / "var" / "journal.sqlite3") as journal:
        assert [(r.file_id, r.state) for r in journal.retry_requests()] == [(1, "waiting")]


def test_the_rejected_rows_file_is_uploaded_to_the_sftp_outbox_with_the_receipt(
        dropper, remote_inbox: Path, sftp_config, sandbox, tmp_path: Path) -> None:
    data = export("J", 4).replace(b"J-2,643007572062450002,2024-02-05 06:30:00,disconnected",
                                  b"J-2,643007572062450002,2024-02-30 06:30:00,disconnected")  # no such day
    sandbox.set_faults(reject_ids=["J-3"], reject_status=422)
    dropper.put("j.csv", data)
    code, runner = run_once(sftp_config())
    assert code == 1, runner.logs.text
    outbox = remote_inbox / "outbox"
    lines = data.splitlines(keepends=True)
    assert (outbox / "j.csv.rejected.csv").read_bytes() == lines[0] + lines[2] + lines[3]  # header, invalid, rejected
    summary = receipt(outbox, "j.csv")
    assert summary["rejected_rows"] == "j.csv.rejected.csv"
    assert [(p["line"], p["outcome"]) for p in summary["problems"]] == [(3, "invalid"), (4, "rejected")]
    assert summary["problems"][0]["errors"][0]["value"] == "2024-02-30 06:30:00"
    assert not list((tmp_path / "etc" / "var" / "staging" / "remote" / "receipts").iterdir())  # nothing left behind
