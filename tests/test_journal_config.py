"""`journal:` in the service configuration: a SQLite path or a PostgreSQL URI, its password
never in the YAML nor in any message, and the commands and the service on a real PostgreSQL
journal (tests/fixtures_pg.py), including the server going away while a file is delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.cli.commands import run
from batch.config.journal import PostgresJournal
from batch.config.secrets import SecretResolutionError
from batch.config.service import load_service_config
from batch.config.yamlload import ConfigError
from batch.sandbox.server import Sandbox
from batch.store.journal import Journal
from batch.store.journal_pg import PgJournal
from batch.store.journals import journal_display, open_journal
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_pg import PgDatabase
from tests.fixtures_sftp import wait_until
from tests.service_helpers import ServiceThread, export, ids, receipt, write_config

PG_ENV = "UPB_TEST_JOURNAL_PASSWORD"


def config_with(tmp_path: Path, sandbox: Sandbox, **top: Any) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox), "min_age_seconds": 0}], **top)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_service_config(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.fixture
def apicode_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


# --------------------------------------------------------------------------- the key


def test_a_path_is_sqlite_and_a_postgresql_uri_is_kept_as_written(tmp_path: Path, sandbox: Sandbox) -> None:
    sqlite = load_service_config(config_with(tmp_path, sandbox, journal="var/j.sqlite3")).config
    assert sqlite.journal == tmp_path / "var" / "j.sqlite3"
    uri = "postgresql://batch:${PGPW}@db.example.fi:5433/usageplace?sslmode=verify-full"
    pg = load_service_config(config_with(tmp_path, sandbox, journal=uri)).config
    assert pg.journal == PostgresJournal(uri)
    assert journal_display(pg.journal) == "postgresql://batch:***@db.example.fi:5433/usageplace?sslmode=verify-full"


@pytest.mark.parametrize(("journal", "extra", "problem"), [
    ("postgresql://batch:hunter2@db/usageplace", {},
     "journal: a password in the postgresql:// URI is not accepted; write ${ENV_NAME} in its place, or use "
     "journal_password_file, PGPASSWORD or PGPASSFILE"),
    ("postgresql://batch@db/usageplace?password=hunter2", {},
     "journal: a password in the URI's query is not accepted; use ${ENV_NAME} as the URI's password, "
     "journal_password_file, PGPASSWORD or PGPASSFILE"),
    ("mysql://batch@db/usageplace", {},
     "journal: unsupported scheme 'mysql': use a path (SQLite) or postgresql://user@host:port/dbname"),
    ("var/journal.sqlite3", {"journal_password_file": "pw"},
     "journal_password_file is for a PostgreSQL journal (journal: postgresql://...)"),
    ("postgresql://batch:${PGPW}@db/usageplace", {"journal_password_file": "pw"},
     "journal: give the password as ${ENV_NAME} in the URI or journal_password_file, not both"),
])
def test_a_password_in_the_yaml_is_refused_without_quoting_it(
        tmp_path: Path, sandbox: Sandbox, journal: str, extra: dict[str, str], problem: str) -> None:
    (tmp_path / "pw").write_text("x\n")
    found = problems(config_with(tmp_path, sandbox, journal=journal, **extra))
    assert len(found) == 1 and found[0].endswith(problem), found
    assert "hunter2" not in found[0]


def test_the_password_comes_from_the_env_a_file_or_libpq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_reference = PostgresJournal.parse("postgresql://batch:${PGPW}@${PGHOST_TEST}:5432/db?sslmode=require")
    monkeypatch.setenv("PGHOST_TEST", "db.example.fi")
    with pytest.raises(SecretResolutionError) as caught:
        with_reference.resolve(None)
    assert str(caught.value) == "journal_password: environment variable PGPW is not set"
    monkeypatch.setenv("PGPW", "s3cr@t/pw")  # any character: it never goes into the URI
    uri, password = with_reference.resolve(None)
    assert uri == "postgresql://batch@db.example.fi:5432/db?sslmode=require"
    assert password is not None and password.get_secret_value() == "s3cr@t/pw"

    plain = PostgresJournal.parse("postgresql://batch@db:5432/db")
    (tmp_path / "pw").write_text("from-a-file\n")
    assert plain.resolve(tmp_path / "pw")[1].get_secret_value() == "from-a-file"
    assert plain.resolve(None) == ("postgresql://batch@db:5432/db", None)  # libpq: PGPASSWORD / PGPASSFILE
    with pytest.raises(SecretResolutionError) as unset:
        PostgresJournal.parse("postgresql://${NO_SUCH_USER_VAR}@db/x").resolve(None)
    assert str(unset.value) == "journal: environment variable NO_SUCH_USER_VAR is not set"


def test_the_log_filter_knows_the_journal_password(
        tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from batch.service.logs import RedactingFilter, redact_config_secrets

    monkeypatch.setenv("PGPW", "journal-Secret-7")
    config = load_service_config(config_with(tmp_path, sandbox, journal="postgresql://u:${PGPW}@db/x")).config
    redactor = RedactingFilter()
    redact_config_secrets(config, redactor)
    assert redactor.redact("auth failed with journal-Secret-7") == "auth failed with ***"


def test_validate_config_resolves_the_journal_password(
        tmp_path: Path, sandbox: Sandbox, apicode_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PGPW", raising=False)
    config = config_with(tmp_path, sandbox, journal="postgresql://u:${PGPW}@db/x")
    assert run(["validate-config", "--config", str(config)]) == 1
    assert f"{config}: journal_password: environment variable PGPW is not set" in capsys.readouterr().err
    monkeypatch.setenv("PGPW", "set-now")
    assert run(["validate-config", "--config", str(config)]) == 0


# --------------------------------------------------------------------------- opening it for real


def test_open_journal_on_each_password_source(
        tmp_path: Path, sandbox: Sandbox, pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with_env = pg_database.uri.replace("upb@", "upb:${" + PG_ENV + "}@")
    monkeypatch.setenv(PG_ENV, pg_database.password)
    (tmp_path / "pw").write_text(pg_database.password + "\n")
    (tmp_path / "pw").chmod(0o600)
    passfile = tmp_path / "pgpass"
    cluster = pg_database.cluster
    passfile.write_text(f"{cluster.host}:{cluster.port}:{pg_database.name}:{cluster.user}:{pg_database.password}\n")
    passfile.chmod(0o600)
    for top, env in (({"journal": with_env}, {}),
                     ({"journal": pg_database.uri, "journal_password_file": "pw"}, {}),
                     ({"journal": pg_database.uri}, {"PGPASSWORD": pg_database.password}),
                     ({"journal": pg_database.uri}, {"PGPASSFILE": str(passfile)})):
        with monkeypatch.context() as scoped:
            for name, value in env.items():
                scoped.setenv(name, value)
            journal = open_journal(load_service_config(config_with(tmp_path, sandbox, **top)).config)
            assert isinstance(journal, PgJournal), top
            with journal:
                assert journal.location == pg_database.uri
                assert journal.recent_files() == []


def test_status_of_a_sqlite_journal_not_made_yet_creates_nothing(
        tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_with(tmp_path, sandbox)
    assert open_journal(load_service_config(config).config, create=False) is None
    assert run(["status", "--config", str(config)]) == 0
    assert f"no journal yet at {tmp_path / 'var' / 'journal.sqlite3'}: nothing has been processed" \
        in capsys.readouterr().err
    assert not (tmp_path / "var" / "journal.sqlite3").exists()
    journal = open_journal(load_service_config(config).config)
    assert isinstance(journal, Journal)
    journal.close()


def test_process_status_prune_and_retry_on_a_postgresql_journal(
        tmp_path: Path, sandbox: Sandbox, apicode_env: None, pg_database: PgDatabase,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PGPASSWORD", pg_database.password)
    config = config_with(tmp_path, sandbox, journal=pg_database.uri)
    export_file = tmp_path / "a.csv"
    export_file.write_bytes(export("P", 20))
    assert run(["process", str(export_file), "--config", str(config), "--receipts", str(tmp_path / "r")]) == 0
    assert set(sandbox.accepted_ids) == ids("P", 20)
    assert run(["process", str(export_file), "--config", str(config), "--receipts", str(tmp_path / "r")]) == 1
    capsys.readouterr()

    assert run(["status", "--config", str(config), "--json"]) == 0
    files = [row for row in map(json.loads, capsys.readouterr().out.splitlines()) if row["kind"] == "file"]
    assert [(f["file"], f["state"], f["counts"]["accepted"]) for f in files] == [("a.csv", "skipped", 0),
                                                                                   ("a.csv", "done", 20)]
    assert run(["retry", "--config", str(config)]) == 0
    assert "no failed events to retry" in capsys.readouterr().err
    assert run(["prune", "--config", str(config), "--older-than-days", "1"]) == 0
    assert capsys.readouterr().out == "forgot 0 file(s) and 0 event(s) finished more than 1 days ago\n"
    assert pg_database.password not in (tmp_path / "r" / "a.csv.receipt.json").read_text()


# --------------------------------------------------------------------------- the server goes away


@pytest.mark.slow
def test_a_lost_postgresql_server_pauses_the_feed_and_it_resumes(
        tmp_path: Path, sandbox: Sandbox, apicode_env: None, pg_database: PgDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops mid-file (every connection cut): the feed pauses naming the journal
    (never its password), the file stays in processing/; the server comes back: the file
    resumes and finishes, every event accepted, at most a batch in flight sent twice."""
    monkeypatch.setenv(PG_ENV, pg_database.password)
    sandbox.set_faults(latency_ms=2)
    config = config_with(tmp_path, sandbox, journal=pg_database.uri.replace("upb@", "upb:${" + PG_ENV + "}@"))
    inbox = tmp_path / "inbox"
    (inbox / "big.csv").write_bytes(export("G", 3000))
    cluster = pg_database.cluster
    with ServiceThread(config) as runner:
        wait_until(lambda: len(sandbox.arrivals) >= 800, 60, what="800 arrivals")
        cluster.stop()
        try:
            runner.wait_log("the journal cannot be used: journal ", 60)
            text = runner.logs.text
            assert f"journal {pg_database.uri}: cannot " in text
            assert "big.csv stays in processing/; the feed pauses and tries again in" in text
            health = runner.service.health()[1]["feeds"]["local"]
            assert health["state"] == "paused"
            assert (inbox / "processing" / "big.csv").exists()
        finally:
            cluster.start()
        wait_until(lambda: (inbox / "archive" / "big.csv").exists(), 120, what="big.csv archived")
        assert pg_database.password not in runner.logs.text
    summary = receipt(inbox / "outbox", "big.csv")
    assert summary["counts"]["accepted"] + summary["counts"]["duplicate"] == 3000
    assert set(sandbox.accepted_ids) == ids("G", 3000)
    assert sum(sandbox.duplicates.values()) <= 4 * 100


def test_yaml_of_the_readme_loads(tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment section's PostgreSQL lines, as written there, are a valid configuration."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```yaml\n# several hosts", 1)[1].split("```", 1)[0]
    settings = yaml.safe_load(block.split("\n", 1)[1])
    assert settings["journal_password_file"] == "${CREDENTIALS_DIRECTORY}/journal-password"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "journal-password").write_text("x\n")
    loaded = load_service_config(config_with(tmp_path, sandbox, **settings)).config
    assert isinstance(loaded.journal, PostgresJournal)
