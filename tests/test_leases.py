"""Feed leases (issue 10 points 1-3): the SQLite lease store in the journal's file, the fence
that journal writes run in their own transaction, the fair share, and the lease marker the
inboxes keep (a local folder, and a real sshd). Real SQLite files; a clock the test moves."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.config.inbox import InboxSettings
from batch.inbox import open_inbox
from batch.inbox.base import LEASE_MARKER_NAME, Inbox, InboxUnusable, LeaseMarker
from batch.store.journal import Journal, NewEvent, Result
from batch.store.leases import InstanceInfo, LeaseLost, LeaseStore, SqliteLeaseStore, fair_share


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()  # the journal makes the file (WAL) first, as the service does
    yield path


def store(path: Path, clock: Clock) -> SqliteLeaseStore:
    return SqliteLeaseStore(path, clock=clock)


NewStore = Callable[[], LeaseStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, journal_path: Path, clock: Clock) -> Iterator[NewStore]:
    """Opens another connection to one lease store, on the test's clock: the tests of the interface,
    on SQLite (the journal's file) and on PostgreSQL (a fresh database of the private test cluster)."""
    opened: list[LeaseStore] = []
    if request.param == "postgresql":
        from batch.store.leases_pg import PgLeaseStore

        database = request.getfixturevalue("pg_database")

        def make() -> LeaseStore:
            opened.append(PgLeaseStore(database.uri, password=database.password, clock=clock))
            return opened[-1]
    else:
        def make() -> LeaseStore:
            opened.append(store(journal_path, clock))
            return opened[-1]

    yield make
    for each in opened:
        each.close()


# --------------------------------------------------------------------------- the store (interface)


def test_a_free_lease_is_taken_at_epoch_1_and_a_live_one_is_refused_to_another(new_store: NewStore,
                                                                                clock: Clock) -> None:
    a, b = new_store(), new_store()
    lease = a.acquire("feed1", "A", 30)
    assert lease is not None and (lease.holder, lease.epoch, lease.expires_at) == ("A", 1, clock.now + 30)
    assert b.acquire("feed1", "B", 30) is None
    assert b.acquire("feed2", "B", 30) is not None  # another feed is free
    again = a.acquire("feed1", "A", 30)  # a restart under the same name: a new tenure, the old token is void
    assert again is not None and again.epoch == 2
    with pytest.raises(LeaseLost):
        a.check(lease)


def test_a_live_lease_of_a_dead_instance_is_taken_at_once(new_store: NewStore, clock: Clock) -> None:
    a = new_store()
    assert a.acquire("feed1", "A", 30) is not None
    assert a.acquire("feed1", "B", 30, take_from="C") is None
    taken = a.acquire("feed1", "B", 30, take_from="A")  # the caller knows A's process is gone
    assert taken is not None and (taken.holder, taken.epoch) == ("B", 2)


def test_an_expired_lease_is_taken_over_with_a_higher_epoch_and_the_old_token_is_refused(
        new_store: NewStore, clock: Clock) -> None:
    a, b = new_store(), new_store()
    old = a.acquire("feed1", "A", 30)
    assert old is not None
    clock.now += 31
    new = b.acquire("feed1", "B", 30)
    assert new is not None and (new.holder, new.epoch) == ("B", 2)
    with pytest.raises(LeaseLost) as lost:
        a.renew(old, 30)
    assert str(lost.value) == "feed feed1: lease lost: held as epoch 1 by A; now epoch 2 of B"
    with pytest.raises(LeaseLost):
        a.check(old)
    b.check(new)
    a.release(old)  # not current: changes nothing
    assert b.leases()[0].live(clock.now) and b.leases()[0].holder == "B"


def test_renewal_keeps_the_epoch_and_release_lets_the_next_taker_raise_it(new_store: NewStore, clock: Clock) -> None:
    a = new_store()
    lease = a.acquire("feed1", "A", 30)
    assert lease is not None
    clock.now += 20
    renewed = a.renew(lease, 30)
    assert (renewed.epoch, renewed.expires_at) == (1, clock.now + 30)
    clock.now += 20  # 40 s after taking it: alive only by the renewal
    assert new_store().acquire("feed1", "B", 30) is None
    a.release(renewed)
    taken = new_store().acquire("feed1", "B", 30)
    assert taken is not None and taken.epoch == 2


def test_instances_are_seen_by_heartbeat_and_stop(new_store: NewStore, clock: Clock) -> None:
    a = new_store()
    a.heartbeat(InstanceInfo("A", "h1", 11, clock.now, clock.now))
    a.heartbeat(InstanceInfo("B", "h1", 12, clock.now, clock.now))
    clock.now += 20
    a.heartbeat(InstanceInfo("A", "h1", 11, clock.now - 20, clock.now))
    a.instance_stopped("B")
    seen = {info.name: info for info in a.instances(3600)}
    assert seen["A"].live(30, clock.now) and not seen["B"].live(30, clock.now)
    clock.now += 31
    assert not a.instances(3600)[0].live(30, clock.now)
    assert [info.name for info in a.instances(10)] == []


def test_fair_share() -> None:
    assert [fair_share(3, n) for n in (0, 1, 2, 3, 4)] == [3, 3, 2, 1, 1]
    assert fair_share(0, 2) == 1


def test_the_journal_id_is_made_once_and_differs_between_journals(tmp_path: Path, journal_path: Path,
                                                                  clock: Clock) -> None:
    first = store(journal_path, clock).journal_id
    assert store(journal_path, clock).journal_id == first
    other = tmp_path / "other.sqlite3"
    Journal(other).close()
    assert store(other, clock).journal_id != first


# --------------------------------------------------------------------------- fencing in the journal


@pytest.fixture(params=["sqlite", "postgresql"])
def fenced(request: pytest.FixtureRequest, journal_path: Path, clock: Clock) -> Iterator[tuple[Any, ...]]:
    """(journal, the lease store of instance A, that of instance B, a query on the database
    itself) on SQLite (the journal's file) and on PostgreSQL (a fresh test database)."""
    if request.param == "postgresql":
        from batch.store.journal_pg import PgJournal
        from batch.store.leases_pg import PgLeaseStore

        database = request.getfixturevalue("pg_database")
        stores: list[LeaseStore] = [PgLeaseStore(database.uri, password=database.password, clock=clock)
                                    for _ in range(2)]
        journal: Any = PgJournal(database.uri, password=database.password)

        def query(sql: str) -> list[Any]:
            with database.connect() as conn:
                return list(conn.execute(sql).fetchall())
    else:
        stores = [store(journal_path, clock), store(journal_path, clock)]
        journal = Journal(journal_path)

        def query(sql: str) -> list[Any]:
            conn = sqlite3.connect(journal_path)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
    yield journal, stores[0], stores[1], query
    journal.close()
    for each in stores:
        each.close()


def test_a_fenced_journal_write_after_a_takeover_is_refused_and_rolled_back(fenced: tuple[Any, ...],
                                                                            clock: Clock) -> None:
    journal, leases_a, leases_b, query = fenced
    assert leases_a.journal_id == leases_b.journal_id
    lease = leases_a.acquire("feed1", "A", 30)
    assert lease is not None
    journal.set_fence(leases_a.fence(lease))
    file = journal.begin_file("x.csv", "ab" * 32, 10, "feed1").file
    journal.record_events(file.id, [NewEvent.valid(1, {"id": "E1", "usageplacecode": "P", "status": "x"})])
    clock.now += 31
    assert leases_b.acquire("feed1", "B", 30) is not None  # A was paused past its lease
    with pytest.raises(LeaseLost) as lost:
        journal.record_results([Result(file.id, 1, "accepted", 200)])
    assert str(lost.value) == ("feed feed1: lease lost: held as epoch 1 by A; now epoch 2 of B; "
                               "the journal write was refused")
    with pytest.raises(LeaseLost):
        journal.finish_file(file.id, "done")
    assert query("SELECT state FROM events") == [("pending",)]
    assert query("SELECT state FROM files") == [("processing",)]
    journal.set_fence(None)  # another thread's (or no) fence: writes go through
    assert journal.record_results([Result(file.id, 1, "accepted", 200)]) == 1


# --------------------------------------------------------------------------- the inbox's marker


def marker(instance: str = "A", journal: str = "j1", expires_at: float = 2e9) -> LeaseMarker:
    return LeaseMarker(instance, "host-a", 123, journal, "/var/lib/j.sqlite3", "feed1", 3, expires_at, 1.7e9)


def check_marker_life_cycle(inbox: Inbox, on_disk: Callable[[], bytes | None]) -> None:
    assert inbox.read_lease_marker() is None
    assert inbox.write_lease_marker(marker("A"), replace=False) is True
    assert inbox.write_lease_marker(marker("B"), replace=False) is False  # never replaces
    assert inbox.read_lease_marker() == marker("A")
    assert inbox.write_lease_marker(marker("C", expires_at=1.0), replace=True) is True
    read = inbox.read_lease_marker()
    assert read == marker("C", expires_at=1.0) and not read.live()
    data = on_disk()
    assert data is not None
    assert json.loads(data)["expires"] == "1970-01-01T00:00:01Z"  # for people reading the file
    assert inbox.scan() == []  # the marker (a dotfile) is never a data file
    inbox.remove_lease_marker()
    inbox.remove_lease_marker()
    assert inbox.read_lease_marker() is None and on_disk() is None


def test_local_inbox_keeps_its_lease_marker(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    settings = InboxSettings(inbox=str(folder), mode="polling", min_age_seconds=0, patterns=["*"])
    path = folder / LEASE_MARKER_NAME

    def on_disk() -> bytes | None:
        return path.read_bytes() if path.exists() else None

    with open_inbox(settings) as inbox:
        check_marker_life_cycle(inbox, on_disk)
        assert sorted(os.listdir(folder)) == ["archive", "error", "outbox", "processing"]  # no temporaries left


def test_an_unreadable_local_marker_names_the_file_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / LEASE_MARKER_NAME).write_text("{half")
    with open_inbox(InboxSettings(inbox=str(folder), mode="polling")) as inbox, \
            pytest.raises(InboxUnusable) as refused:
        inbox.read_lease_marker()
    assert str(refused.value) == (
        f"lease marker {folder / LEASE_MARKER_NAME} cannot be read (JSONDecodeError: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)); if no other instance works this inbox, "
        "remove the file")


def test_sftp_inbox_keeps_its_lease_marker(sftp_settings: Callable[..., InboxSettings], remote_inbox: Path) -> None:
    path = remote_inbox / LEASE_MARKER_NAME

    def on_disk() -> bytes | None:
        return path.read_bytes() if path.exists() else None

    with open_inbox(sftp_settings(min_age_seconds=0)) as inbox:
        check_marker_life_cycle(inbox, on_disk)
    assert sorted(os.listdir(remote_inbox)) == ["archive", "error", "outbox", "processing"]


# --------------------------------------------------------------------------- configuration


def test_instance_and_lease_seconds_are_checked_at_file_line_key(tmp_path: Path) -> None:
    from batch.config.service import load_service_config
    from batch.config.yamlload import ConfigError

    (tmp_path / "m.yaml").write_text("format: csv\nfields:\n  id: {column: id}\n  usageplacecode: {column: p}\n"
                                     "  time: {column: t}\n  status: {column: s}\n")
    config = tmp_path / "s.yaml"
    config.write_text("api: {base_url: 'http://127.0.0.1:1/rest', cid: c, apicode: '${X}'}\n"
                      "instance: 'a b'\nlease_seconds: 0.5\nfeeds:\n  - {name: f, inbox: /tmp, mapping: m.yaml}\n")
    with pytest.raises(ConfigError) as refused:
        load_service_config(config)
    assert [str(problem) for problem in refused.value.problems] == [
        f"{config}:2:1: instance: String should match pattern '^[A-Za-z0-9_.:@-]+$'",
        f"{config}:3:1: lease_seconds: Input should be greater than or equal to 1"]
    config.write_text(config.read_text().replace("instance: 'a b'\nlease_seconds: 0.5\n", ""))
    loaded = load_service_config(config).config
    assert (loaded.instance, loaded.lease_seconds) == (None, 30.0)


def test_two_postgresql_takers_of_one_expired_lease_get_one_tenure_each_in_turn(pg_database) -> None:
    """Server time, row lock: of instances racing for a free lease, exactly one wins each round."""
    import threading

    from batch.store.leases_pg import PgLeaseStore

    stores = [PgLeaseStore(pg_database.uri, password=pg_database.password) for _ in range(4)]
    won: list[int] = []
    start = threading.Barrier(len(stores))

    def take(number: int) -> None:
        start.wait()
        if stores[number].acquire("feed1", f"I{number}", 30) is not None:
            won.append(number)

    try:
        threads = [threading.Thread(target=take, args=(n,)) for n in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1
        (lease,) = stores[0].leases()
        assert (lease.holder, lease.epoch) == (f"I{won[0]}", 1)
    finally:
        for each in stores:
            each.close()
