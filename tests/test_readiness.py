"""Readiness and name rules: pure, with a fake clock."""

from __future__ import annotations

import pytest

from batch.config.inbox import InboxSettings, SftpLocation, parse_location
from batch.inbox.base import FileStat, NameRules, UnsafeNameError, check_name, stamped_name
from batch.inbox.readiness import Readiness


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


RULES = NameRules(("*.csv", "*.xml"), ("*.part", "*.tmp", "*.filepart"))


def names(candidates) -> list[str]:
    return [c.name for c in candidates]


def test_ready_only_after_min_age_without_change() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 10, clock)
    assert r.observe([FileStat("a.csv", 100, 5.0)]) == []
    clock.advance(9.9)
    assert r.observe([FileStat("a.csv", 100, 5.0)]) == []
    clock.advance(0.1)
    assert names(r.observe([FileStat("a.csv", 100, 5.0)])) == ["a.csv"]


def test_growing_file_is_never_ready() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 10, clock)
    size = 0
    for _ in range(50):  # keeps growing for 250 s: observed every 5 s, never 10 s unchanged
        size += 1000
        assert r.observe([FileStat("a.csv", size, 5.0)]) == []
        clock.advance(5)
    # The last size was first seen 5 s ago.
    assert names(r.observe([FileStat("a.csv", size, 5.0)])) == []
    clock.advance(5)
    assert names(r.observe([FileStat("a.csv", size, 5.0)])) == ["a.csv"]  # stable for 10 s


def test_mtime_change_alone_resets_the_age() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 10, clock)
    r.observe([FileStat("a.csv", 100, 5.0)])
    clock.advance(9)
    assert r.observe([FileStat("a.csv", 100, 6.0)]) == []  # rewritten in place, same size
    clock.advance(9)
    assert r.observe([FileStat("a.csv", 100, 6.0)]) == []
    clock.advance(1)
    assert names(r.observe([FileStat("a.csv", 100, 6.0)])) == ["a.csv"]


def test_age_is_measured_by_our_clock_not_by_file_mtime() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 10, clock)
    # An mtime far in the past (writer's clock behind, or preserved by the upload) is no shortcut.
    assert r.observe([FileStat("old.csv", 1, 0.0)]) == []
    clock.advance(10)
    assert names(r.observe([FileStat("old.csv", 1, 0.0)])) == ["old.csv"]


def test_zero_min_age_is_ready_at_first_sight() -> None:
    r = Readiness(RULES, 0, FakeClock())
    assert names(r.observe([FileStat("a.csv", 1, 1.0)])) == ["a.csv"]


def test_ignored_names_are_never_ready() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 1, clock)
    listing = [
        FileStat(".hidden.csv", 1, 1.0),
        FileStat("a.csv.part", 1, 1.0),
        FileStat("b.CSV.TMP", 1, 1.0),
        FileStat("c.csv.filepart", 1, 1.0),
        FileStat("notes.txt", 1, 1.0),
        FileStat("d.CSV", 1, 1.0),
        FileStat("e.xml", 1, 1.0),
    ]
    r.observe(listing)
    clock.advance(2)
    for name in ("a.csv.part", "b.CSV.TMP"):
        r.note_closed(name)
    assert names(r.observe(listing)) == ["d.CSV", "e.xml"]


def test_oldest_first_then_name() -> None:
    r = Readiness(RULES, 0, FakeClock())
    listing = [FileStat("c.csv", 1, 20.0), FileStat("b.csv", 1, 10.0), FileStat("a.csv", 1, 20.0)]
    assert names(r.observe(listing)) == ["b.csv", "a.csv", "c.csv"]


def test_closed_makes_ready_without_age_and_a_later_write_revokes_it() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 60, clock)
    r.note_changed("a.csv")
    assert r.observe([FileStat("a.csv", 10, 1.0)]) == []
    r.note_closed("a.csv")
    assert names(r.observe([FileStat("a.csv", 10, 1.0)])) == ["a.csv"]
    r.note_changed("a.csv")  # opened and written again
    assert r.observe([FileStat("a.csv", 20, 2.0)]) == []


def test_marker_makes_ready_at_once_and_nothing_else_does() -> None:
    clock = FakeClock()
    rules = NameRules(("*.csv",), ("*.part",), (".done", ".ok"))
    r = Readiness(rules, 5, clock)
    assert r.observe([FileStat("a.csv", 10, 1.0)]) == []
    clock.advance(100)
    r.note_closed("a.csv")
    assert r.observe([FileStat("a.csv", 10, 1.0)]) == []  # neither age nor close: the marker decides
    ready = r.observe([FileStat("a.csv", 10, 1.0), FileStat("a.csv.ok", 0, 2.0), FileStat("b.csv.done", 0, 2.0)])
    assert [(c.name, c.marker) for c in ready] == [("a.csv", "a.csv.ok")]


def test_vanished_file_starts_afresh() -> None:
    clock = FakeClock()
    r = Readiness(RULES, 10, clock)
    r.observe([FileStat("a.csv", 1, 1.0)])
    clock.advance(5)
    r.observe([])
    clock.advance(5)
    assert r.observe([FileStat("a.csv", 1, 1.0)]) == []
    clock.advance(10)
    assert names(r.observe([FileStat("a.csv", 1, 1.0)])) == ["a.csv"]


@pytest.mark.parametrize("name", ["..", ".", "", "../x.csv", "a/b.csv", "/etc/passwd", "a\\b.csv", "x\n.csv", "x\x00.csv", "x\x1b.csv"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_name(name)


@pytest.mark.parametrize("name", ["a.csv", "a..b.csv", "ÄÖ ü.csv", "~x.csv", ".hidden"])
def test_plain_names_pass(name: str) -> None:
    assert check_name(name) == name


def test_stamped_name_keeps_the_extension_and_differs_per_attempt() -> None:
    first = stamped_name("report.csv", when=0)
    assert first == "report.19700101T000000Z.csv"
    assert stamped_name("report.csv", when=0, attempt=1) == "report.19700101T000000Z-2.csv"
    assert stamped_name("README", when=0) == "README.19700101T000000Z"


def test_sftp_url_parsing() -> None:
    assert parse_location("sftp://feed@example.org:2222/srv/drop/") == SftpLocation("feed", "example.org", 2222, "/srv/drop")
    assert parse_location("sftp://feed@example.org/drop").port == 22
    for bad in ("sftp://example.org/drop", "sftp://u@h:22", "ftp://u@h/x", "sftp://u:pw@h/x"):
        with pytest.raises(ValueError):
            parse_location(bad)


def test_settings_refuse_literal_secrets_without_echoing_them(tmp_path, monkeypatch) -> None:
    from pydantic import ValidationError

    from batch.config.secrets import SecretResolutionError

    kh = tmp_path / "known_hosts"
    with pytest.raises(ValidationError) as info:
        InboxSettings(inbox="sftp://u@h/x", known_hosts=kh, password="hunter2-literal")
    assert "hunter2-literal" not in str(info.value)
    assert "environment variable" in str(info.value)

    # resolved when needed, by the rules of every secret (validate-config and the service's start do)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    unset = InboxSettings(inbox="sftp://u@h/x", known_hosts=kh, password="${NOT_SET_ANYWHERE}")
    with pytest.raises(SecretResolutionError, match="^password: environment variable NOT_SET_ANYWHERE is not set$"):
        unset.resolved_password()

    monkeypatch.setenv("FEED_PW", "s3cret-from-env")
    s = InboxSettings(inbox="sftp://u@h/x", known_hosts=kh, password="${FEED_PW}")
    assert s.resolved_password().get_secret_value() == "s3cret-from-env"
    assert "s3cret-from-env" not in repr(s) and "s3cret-from-env" not in s.model_dump_json()

    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    s = InboxSettings(inbox="sftp://u@h/x", known_hosts=kh, password_file=secret_file)
    assert s.resolved_password().get_secret_value() == "from-file"


def test_settings_rules(tmp_path) -> None:
    from pydantic import ValidationError

    pw = tmp_path / "pw"
    pw.write_text("x")
    with pytest.raises(ValidationError, match="known_hosts"):
        InboxSettings(inbox="sftp://u@h/x", password_file=pw)
    with pytest.raises(ValidationError, match="not a readable file"):
        InboxSettings(inbox="sftp://u@h/x", known_hosts=pw, password_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="extra"):
        InboxSettings(inbox=str(tmp_path), unknown_field=1)  # type: ignore[call-arg]  # the refusal is under test
    with pytest.raises(ValidationError, match="inside the inbox"):
        InboxSettings(inbox=str(tmp_path), archive_dir="../elsewhere")
    with pytest.raises(ValidationError, match="different"):
        InboxSettings(inbox=str(tmp_path), archive_dir="error")
    with pytest.raises(ValidationError, match="marker suffix"):
        InboxSettings(inbox=str(tmp_path), marker_suffixes=["done"])
    s = InboxSettings(inbox=str(tmp_path))
    assert (s.patterns, s.ignore_patterns, s.accept_new_host_key) == (["*.csv", "*.xml"], ["*.part", "*.tmp", "*.filepart"], False)
