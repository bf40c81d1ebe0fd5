"""The error tree (batch.errors) and the one exit-status boundary of the command line.

Every public exception class of `batch` is a BatchError in exactly one group (or one of the two
families that are never raised themselves); each group ends a command with its ExitStatus and
one `error: ...` line; anything else is an internal error (exit 3); a misspelt feed name is a
configuration error that names the known feeds, not a KeyError."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import batch
from batch.cli import commands as cli
from batch.config.service import FeedNotFound, load_service_config
from batch.config.yamlload import ConfigError, ConfigProblem
from batch.delivery.ropo import AuthError
from batch.errors import (
    GROUPS,
    AccessRefused,
    BatchError,
    ConfigurationError,
    ExitStatus,
    InputFileError,
    InternalError,
    TransientError,
)
from batch.inbox.base import InboxError, InboxUnavailable
from batch.sandbox.server import Sandbox
from batch.store.journal import JournalError, JournalMisuse
from batch.transform.readers import FileError
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_pipeline import Workspace, make_rows, write_feed, write_workspace

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = (InboxError, JournalError)


def public_exception_classes() -> list[type[BaseException]]:
    """Every exception class a module of `batch` defines under a public name."""
    found = []
    for info in pkgutil.walk_packages(batch.__path__, "batch."):
        if info.name == "batch.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name
                    and not name.startswith("_")):
                found.append(value)
    return found


@pytest.fixture
def workspace(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """One feed named `simple` on a local inbox, delivering to the sandbox."""
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)
    return write_workspace(tmp_path / "ws", sandbox.base_url, sandbox.cid)


def run(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- the tree


def test_every_public_exception_is_a_batch_error_in_exactly_one_group() -> None:
    classes = public_exception_classes()
    names = {cls.__name__ for cls in classes}
    # the ones the tree in batch/errors.py draws, so that a new class is seen and placed
    assert {"ConfigError", "SecretResolutionError", "FeedNotFound", "FormatError", "SymlinkRefused",
            "InboxUnusable", "JournalUnusable", "FileError", "UnsafeNameError", "AuthError", "OffOriginRequest",
            "HostKeyError", "InboxUnavailable", "JournalUnavailable", "FileInProgress", "TokenUnavailable",
            "StorageFault", "ReceiptNotWritten", "JournalMisuse"} <= names
    misplaced = []
    for cls in classes:
        if cls is BatchError or cls in GROUPS:
            continue
        groups = [group.__name__ for group in GROUPS if issubclass(cls, group)]
        if not issubclass(cls, BatchError) or len(groups) != (0 if cls in FAMILIES else 1):
            misplaced.append(f"{cls.__module__}.{cls.__name__}: {groups}")
    assert misplaced == []
    for family in FAMILIES:  # never raised itself: every member has its group
        members = [cls for cls in classes if issubclass(cls, family) and cls is not family]
        assert members and all(sum(issubclass(cls, g) for g in GROUPS) == 1 for cls in members)


def test_the_docstring_draws_every_class_of_the_tree() -> None:
    import batch.errors

    doc = batch.errors.__doc__ or ""
    for cls in public_exception_classes():
        if issubclass(cls, BatchError) and cls is not BatchError:
            assert cls.__name__ in doc, cls


def test_exit_status_values() -> None:
    assert [(s.name, int(s)) for s in ExitStatus] == [("OK", 0), ("PROBLEMS", 1), ("UNUSABLE", 2), ("INTERNAL", 3)]
    assert [group.exit_status for group in GROUPS] == [ExitStatus.UNUSABLE] * 4 + [ExitStatus.INTERNAL]


# --------------------------------------------------------------------------- one boundary


@pytest.fixture
def preview_args(tmp_path: Path) -> list[object]:
    mapping = tmp_path / "m.yaml"
    mapping.write_text("format: csv\nfields:\n  id: {column: id}\n  usageplacecode: {column: code}\n"
                       "  time: {column: time}\n  status: {const: connected}\n")
    data = tmp_path / "d.csv"
    data.write_text("id,code,time\nE1,6430,2024-02-05 06:30:00\n")
    return ["preview", mapping, data]


@pytest.mark.parametrize(("error", "status", "line"), [
    (ConfigError([ConfigProblem("service.yaml", 3, 1, "api.cid", "field required")]), ExitStatus.UNUSABLE,
     "error: service.yaml:3:1: api.cid: field required"),
    (FileError("not well-formed XML", 7), ExitStatus.UNUSABLE, "error: {data}: line 7: not well-formed XML"),
    (AuthError("token request answered HTTP 401", status=401), ExitStatus.UNUSABLE,
     "error: token request answered HTTP 401"),
    (InboxUnavailable("sftp://u@h:22/in: connection refused"), ExitStatus.UNUSABLE,
     "error: sftp://u@h:22/in: connection refused"),
    (JournalMisuse("no file #9"), ExitStatus.INTERNAL,
     "internal error: JournalMisuse: no file #9; please report it (run with --debug for the traceback)"),
])
def test_each_group_ends_the_command_with_its_status_and_one_line(
        error: BatchError, status: ExitStatus, line: str, preview_args: list[object],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One group each: configuration, input file, access refused, transient, internal."""
    import batch.transform.extract

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(batch.transform.extract, "mapped_chunks", fail)
    assert run(preview_args, capsys) == (status, "", line.format(data=preview_args[2]) + "\n")


def test_an_unexpected_exception_is_an_internal_error(
        preview_args: list[object], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import batch.transform.extract

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyError("usageplacecode")

    monkeypatch.setattr(batch.transform.extract, "mapped_chunks", fail)
    assert run(preview_args, capsys) == (3, "", "internal error: KeyError: 'usageplacecode'; please report it "
                                                "(run with --debug for the traceback)\n")
    code, out, err = run(["--debug", *preview_args], capsys)
    assert code == 3 and "Traceback (most recent call last)" in err
    assert err.endswith("internal error: KeyError: 'usageplacecode'; please report it\n")


def test_the_groups_through_the_installed_command(sandbox: Sandbox, workspace: Workspace, tmp_path: Path) -> None:
    """Real causes, a real process: what each group does to the exit code."""
    ws = workspace
    rows = make_rows(3, 3)
    good = write_feed(ws.inbox / "good.csv", make_rows(3, 3, start=10))
    rows[1]["time"] = "yesterday"
    invalid = write_feed(ws.inbox / "invalid.csv", rows)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    broken_config = tmp_path / "broken.yaml"
    broken_config.write_text("api: [\n")

    def command(*args: object, apicode: str = sandbox.apicode) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, APICODE_ENV: apicode, "PYTHONWARNINGS": "ignore"}
        return subprocess.run([sys.executable, "-m", "batch", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)

    ok = command("process", good, "--config", ws.config)
    assert ok.returncode == ExitStatus.OK, ok.stderr
    records = command("process", invalid, "--config", ws.config)
    assert records.returncode == ExitStatus.PROBLEMS, records.stderr
    configuration = command("process", good, "--config", broken_config)
    assert configuration.returncode == ExitStatus.UNUSABLE
    assert configuration.stderr.startswith("error: the configuration cannot be used:\n")
    input_file = command("process", fifo, "--config", ws.config)
    assert (input_file.returncode, input_file.stderr) == (
        ExitStatus.UNUSABLE, f"error: {fifo}: not a regular file (a FIFO); give the path of a file\n")
    other = write_feed(ws.inbox / "other.csv", make_rows(3, 3, start=20))
    refused = command("process", other, "--config", ws.config, apicode="not-the-apicode")
    assert refused.returncode == ExitStatus.UNUSABLE and "refused the credentials" in refused.stderr
    for result in (ok, records, configuration, input_file, refused):
        assert "Traceback" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- feed names


def test_a_misspelt_feed_name_is_one_line_naming_the_known_feeds(
        sandbox: Sandbox, workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace
    path = write_feed(ws.inbox / "n.csv", make_rows(2, 2))
    expected = "error: no feed named 'nosuch' (feeds: simple)\n"
    assert run(["process", path, "--config", ws.config, "--feed", "nosuch"], capsys) == (2, "", expected)
    assert run(["status", "--config", ws.config, "--feed", "nosuch"], capsys) == (2, "", expected)
    assert run(["status", "--config", ws.config, "--feed", "nosuch", "--json"], capsys) == (2, "", expected)
    assert sandbox.arrivals == []

    config = load_service_config(ws.config).config
    with pytest.raises(FeedNotFound) as refused:
        config.feed("removed")
    assert str(refused.value) == "no feed named 'removed' (feeds: simple)"
    assert isinstance(refused.value, ConfigurationError) and not isinstance(refused.value, KeyError)
    assert config.feed("simple").name == "simple"


def test_group_classes_are_disjoint() -> None:
    for group in GROUPS:
        assert [other for other in GROUPS if other is not group and issubclass(group, other)] == []
    assert not issubclass(InputFileError, (ConfigurationError, AccessRefused, TransientError, InternalError))


# --------------------------------------------------------------------------- states


def test_states_are_enums_that_store_and_print_the_same_words(tmp_path: Path) -> None:
    from batch.pipeline import FileStatus
    from batch.service.worker import WorkerState
    from batch.store.journal import EventState, FileState, Journal, NewEvent

    assert [s.value for s in FileState] == ["processing", "done", "error", "skipped"]
    assert [s.value for s in EventState] == ["pending", "accepted", "rejected", "invalid", "failed", "duplicate",
                                             "not_sent"]
    assert [s.value for s in FileStatus] == ["done", "skipped", "error", "interrupted", "auth_failed"]
    assert [s.value for s in WorkerState] == ["starting", "idle", "processing", "unavailable", "auth_failed",
                                              "paused", "retrying", "error", "crashed", "stopped", "holding", "standby",
                                              "foreign", "handover"]
    with Journal(tmp_path / "j.sqlite3") as journal:
        file = journal.begin_file("a.csv", "0" * 64, 10, "feed").file
        journal.record_events(file.id, [NewEvent(2, None, None, None, None, "time: not a time")])
        done = journal.finish_file(file.id, FileState.DONE)
        (event,) = journal.file_events(file.id)
        stored = journal._conn.execute("SELECT state FROM files").fetchall()
    assert (type(done.state), done.state, f"{done.state}", json.dumps(done.state)) == (FileState, "done", "done",
                                                                                      '"done"')
    assert (type(event.state), event.state) == (EventState, "invalid")
    assert stored == [("done",)]
    assert {type(key) for key in done.counts} == {str}  # plain words as keys: orjson refuses enum keys
