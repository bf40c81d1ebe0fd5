"""SFTP download throughput: the inbox vs paramiko's own get vs OpenSSH's sftp client.

Starts a temporary sshd on loopback (the same starter as the tests), puts a file of
`--mb` MB in its inbox, and downloads it, in the same run, with
  1. the inbox (claim + open_local into a staging folder),
  2. paramiko's SFTPClient.get (prefetch on),
  3. OpenSSH's `sftp` client (`get`, batch mode; includes its start-up and login),
and, for reference, a plain paramiko read without prefetch (first 10 MB, scaled).
Each is run `--rounds` times; the best round counts.

End to end (`e2e_20x5000_s`): 20 CSV files of 5,000 records each are dropped with OpenSSH's
`sftp` client (put under a temporary name, then rename, all in one session) into an sftp://
inbox that the service (`batch.service.supervisor.Service`, in this process) watches; a sandbox
subprocess plays Ropo One with no added latency. The figure is the seconds from the end of
the last upload to the last receipt in the outbox; it includes the readiness wait
(`min_age_seconds` 1.0, a scan every 0.25 s). `--e2e-only` skips the download part.

The last line of output is one JSON object.

    python bench/bench_sftp.py [--mb 100] [--rounds 3] [--e2e-files 20] [--e2e-records 5000] [--e2e-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paramiko  # noqa: E402

from batch.config.inbox import InboxSettings  # noqa: E402
from batch.inbox.sftp import SftpInbox  # noqa: E402
from tests.sshd import Sshd  # noqa: E402

MB = 1_000_000
E2E_APICODE_ENV = "BENCH_SANDBOX_APICODE"
E2E_MAPPING = """\
format: csv
csv: {encoding: utf-8, delimiter: ","}
fields:
  id: {column: id}
  usageplacecode: {column: place}
  customernumber: {column: customer}
  time: {column: time, formats: ["%Y-%m-%d %H:%M:%S"]}
  status: {column: status, map: {K: disconnected, Y: connected}}
  description: {column: note}
invoices:
  mode: columns
  invoicenumber: {column: invoice, split: "|"}
  jobid: {column: job, split: "|"}
"""


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            f.write(block[:n])
            written += n


def best_of(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def e2e_export(index: int, records: int) -> bytes:
    lines = ["id,place,customer,time,status,note,invoice,job"]
    for i in range(records):
        lines.append(f"f{index}-{i},{643007572062400000 + (index * records + i) % 997},C{i % 1000},"
                     f"2024-02-05 06:{i % 60:02d}:00,{'K' if i % 3 else 'Y'},record {i},"
                     f"{100000 + i}|{200000 + i},{i}|{i + 1}")
    return ("\n".join(lines) + "\n").encode()


def run_e2e(files: int, records: int) -> dict[str, object]:
    """Drop `files` exports over SFTP into a watched inbox; seconds from the last upload to the last receipt."""
    import yaml

    from batch.config.service import load_service_config
    from batch.service.supervisor import Service

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    sshd = Sshd(work / "sshd")
    sshd.start()
    port = free_port()
    sandbox = subprocess.Popen([sys.executable, "-m", "batch.sandbox.server", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    service: Service | None = None
    thread: threading.Thread | None = None
    try:
        base_url = sandbox.stdout.readline().strip() if sandbox.stdout else ""
        assert base_url.startswith("http://"), "the sandbox did not start"
        inbox = work / "remote" / "inbox"
        inbox.mkdir(parents=True)
        (work / "mapping.yaml").write_text(E2E_MAPPING)
        config = {
            "api": {"base_url": base_url, "cid": "1000011", "apicode": "${" + E2E_APICODE_ENV + "}"},
            "delivery": {"max_in_flight": 8},
            "journal": str(work / "var" / "journal.sqlite3"),
            "staging_dir": str(work / "var" / "staging"),
            "logging": {"level": "WARNING"},
            "feeds": [{"name": "bench", "inbox": f"{sshd.url_prefix}{inbox}", "mapping": "mapping.yaml",
                       "private_key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts),
                       "patterns": ["*.csv"], "min_age_seconds": 1.0, "poll_interval_seconds": 0.25}],
        }
        (work / "service.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        os.environ[E2E_APICODE_ENV] = "sandbox-apicode"
        logging.basicConfig(level=logging.WARNING)
        service = Service(load_service_config(work / "service.yaml"))
        thread = threading.Thread(target=service.run, name="service", daemon=True)
        thread.start()

        local = work / "legacy"
        local.mkdir()
        commands = []
        for index in range(files):
            name = f"export{index:02d}.csv"
            (local / name).write_bytes(e2e_export(index, records))
            commands += [f'put "{local / name}" "{inbox}/{name}.part"',
                         f'rename "{inbox}/{name}.part" "{inbox}/{name}"']
        started = time.perf_counter()
        sshd.sftp_batch(commands, timeout=600)
        uploaded = time.perf_counter()
        outbox = inbox / "outbox"
        expected = {f"export{index:02d}.csv.receipt.json" for index in range(files)}
        while True:
            present = {p.name for p in outbox.glob("*.receipt.json")} if outbox.exists() else set()
            if expected <= present:
                break
            if time.perf_counter() - uploaded > 1200:
                raise RuntimeError(f"only {len(present)} of {files} receipts after 20 minutes")
            time.sleep(0.02)
        done = time.perf_counter()
        accepted = 0
        for name in expected:
            accepted += json.loads((outbox / name).read_text())["counts"]["accepted"]
    finally:
        if service is not None:
            service.stop.set()
        if thread is not None:
            thread.join(60)
        sandbox.terminate()
        sandbox.wait(30)
        sshd.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "e2e_20x5000_s": round(done - uploaded, 2),
        "e2e_upload_s": round(uploaded - started, 2),
        "e2e_files": files,
        "e2e_records_per_file": records,
        "e2e_accepted": accepted,
        "e2e_events_per_s": round(files * records / (done - uploaded), 1),
        "e2e_note": "from the end of the last sftp upload to the last receipt; includes min_age_seconds 1.0",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="file size in MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e-files", type=int, default=20)
    parser.add_argument("--e2e-records", type=int, default=5000)
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end figure")
    args = parser.parse_args()
    size = args.mb * MB

    if args.e2e_only:
        result = run_e2e(args.e2e_files, args.e2e_records)
        print(f"end to end: {args.e2e_files} files x {args.e2e_records} records over SFTP: "
              f"{result['e2e_20x5000_s']} s from the last upload to the last receipt "
              f"({result['e2e_events_per_s']} events/s; upload took {result['e2e_upload_s']} s)")
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    sshd = Sshd(work / "sshd")
    sshd.start()
    try:
        inbox_dir = work / "remote" / "inbox"
        inbox_dir.mkdir(parents=True)
        settings = InboxSettings(
            inbox=f"{sshd.url_prefix}{inbox_dir}",
            private_key_file=sshd.client_key,
            known_hosts=sshd.known_hosts,
            min_age_seconds=0,
        )
        inbox = SftpInbox(settings)
        make_file(inbox_dir / "big.csv", size)
        [candidate] = inbox.scan()
        claimed = inbox.claim(candidate)
        assert claimed is not None
        remote = str(inbox_dir / "processing" / claimed.name)
        staging = work / "staging"

        def run_inbox() -> float:
            shutil.rmtree(staging, ignore_errors=True)
            started = time.perf_counter()
            path = inbox.open_local(claimed, staging)
            elapsed = time.perf_counter() - started
            assert path.stat().st_size == size
            return elapsed

        transport = paramiko.Transport(socket.create_connection((sshd.host, sshd.port)))
        transport.start_client(timeout=10)
        transport.auth_publickey(sshd.user, paramiko.PKey.from_path(sshd.client_key))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None

        def run_paramiko_get() -> float:
            target = work / "paramiko.bin"
            started = time.perf_counter()
            client.get(remote, str(target))
            elapsed = time.perf_counter() - started
            assert target.stat().st_size == size
            target.unlink()
            return elapsed

        def run_openssh() -> float:
            target = work / "openssh.bin"
            started = time.perf_counter()
            sshd.sftp_batch([f'get "{remote}" "{target}"'], timeout=600)
            elapsed = time.perf_counter() - started
            assert target.stat().st_size == size
            target.unlink()
            return elapsed

        def run_no_prefetch(limit: int = 10 * MB) -> float:
            """A plain open().read() without prefetch (one round trip per 32 KiB), first 10 MB only."""
            started = time.perf_counter()
            with client.open(remote, "rb") as f:
                got = 0
                while got < min(limit, size):
                    chunk = f.read(32768)
                    if not chunk:
                        break
                    got += len(chunk)
            return (time.perf_counter() - started) * size / got  # scaled to the whole file

        # Warm the page cache and the connections once, then interleave the contenders.
        run_inbox()
        timings: dict[str, list[float]] = {"inbox": [], "paramiko_get": [], "openssh": []}
        for _ in range(args.rounds):
            timings["inbox"].append(run_inbox())
            timings["paramiko_get"].append(run_paramiko_get())
            timings["openssh"].append(run_openssh())
        timings["paramiko_no_prefetch"] = [run_no_prefetch()]
        client.close()
        transport.close()
        inbox.close()
    finally:
        sshd.kill()
        shutil.rmtree(work, ignore_errors=True)

    rate = {k: size / MB / min(v) for k, v in timings.items()}
    print(f"file: {args.mb} MB, best of {args.rounds} rounds ({os.cpu_count()} CPUs)")
    for key, label in (("inbox", "inbox (SftpInbox.open_local)"), ("paramiko_get", "paramiko SFTPClient.get"),
                       ("openssh", "OpenSSH sftp get"),
                       ("paramiko_no_prefetch", "paramiko read, no prefetch")):
        rounds = ", ".join(f"{size / MB / t:.0f}" for t in timings[key])
        print(f"  {label:32s} {rate[key]:7.1f} MB/s   (rounds: {rounds})")
    print(f"  inbox / paramiko get: {rate['inbox'] / rate['paramiko_get']:.2f}   (target >= 0.90)")
    print(f"  inbox / OpenSSH:      {rate['inbox'] / rate['openssh']:.2f}   (target >= 0.40)")
    result = {
        "file_mb": args.mb,
        "inbox_mb_per_s": round(rate["inbox"], 1),
        "paramiko_get_mb_per_s": round(rate["paramiko_get"], 1),
        "openssh_mb_per_s": round(rate["openssh"], 1),
        "paramiko_no_prefetch_mb_per_s": round(rate["paramiko_no_prefetch"], 1),
        "inbox_vs_paramiko_get": round(rate["inbox"] / rate["paramiko_get"], 3),
        "inbox_vs_openssh": round(rate["inbox"] / rate["openssh"], 3),
    }
    e2e = run_e2e(args.e2e_files, args.e2e_records)
    print(f"  end to end, {args.e2e_files} files x {args.e2e_records} records: {e2e['e2e_20x5000_s']} s from the last "
          f"upload to the last receipt ({e2e['e2e_events_per_s']} events/s)")
    result.update(e2e)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
