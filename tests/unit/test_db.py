"""The metadata database: pooled connections, read-only transactions that do not wait for
writers, write transactions that take the write lock at BEGIN, schema versions and upgrades.

``db_url`` is a SQLite file (tests/unit/conftest.py); tests/postgres/test_pg_db.py runs the
tests that are not about SQLite's PRAGMAs again on PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from ebscrypt.storage import db as db_module
from ebscrypt.storage.db import SCHEMA_VERSION, Database, SchemaTooNew
from ebscrypt.storage.tables.ec2_net import ec2_security_group_rules


@pytest.fixture
def db(db_url: str) -> Database:
    database = Database(db_url)
    yield database
    database.dispose()


def _bump(conn) -> None:  # type: ignore[no-untyped-def]
    conn.execute(text("update schema_version set version = version + 1"))


def _version(conn) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(text("select version from schema_version")).scalar())


def test_every_pooled_connection_keeps_the_durability_pragmas(db: Database) -> None:
    with db.begin() as a, db.read() as b:  # two connections at once
        for conn in (a, b):
            assert conn.execute(text("pragma journal_mode")).scalar() == "wal"
            # FULL; or NORMAL with group commit, whose begin() fsyncs the WAL before it
            # returns (tests/unit/test_db_group_commit.py)
            assert conn.execute(text("pragma synchronous")).scalar() == (1 if db.group_sync else 2)
            assert conn.execute(text("pragma foreign_keys")).scalar() == 1
            assert conn.execute(text("pragma busy_timeout")).scalar() == 30000


def test_connections_are_reused(db: Database) -> None:
    with db.read() as conn:
        reading = conn.connection.driver_connection
    with db.begin() as conn:
        writing = conn.connection.driver_connection
    with db.read() as conn:
        assert conn.connection.driver_connection is reading
    with db.begin() as conn:
        assert conn.connection.driver_connection is writing


def test_write_in_read_transaction_fails_and_the_connection_writes_again(db: Database) -> None:
    with pytest.raises(DBAPIError, match="readonly|read-only"):  # SQLite | PostgreSQL
        with db.read() as conn:
            _bump(conn)
    with db.read() as conn:
        before = _version(conn)
    with db.begin() as conn:  # writes after the refused one (SQLite: its writing connection)
        _bump(conn)
    with db.read() as conn:
        assert _version(conn) == before + 1


def test_read_does_not_wait_for_a_writer_and_sees_a_snapshot(db: Database) -> None:
    with db.read() as conn:
        before = _version(conn)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.begin() as conn:
            _bump(conn)
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with db.read() as conn:
            assert _version(conn) == before  # the uncommitted write is not seen
        assert time.monotonic() - started < 1.0  # and the reader did not wait for it
    finally:
        release.set()
        t.join()
    with db.read() as conn:
        assert _version(conn) == before + 1


def test_writers_take_the_lock_at_begin(db: Database) -> None:
    # BEGIN IMMEDIATE: a second writer waits at BEGIN for the first to commit, so neither
    # fails upgrading a read lock, and both increments land.
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with db.begin() as conn:
            conn.execute(text("select 1")).all()  # BEGIN has run
            holding.set()
            release.wait(10)
            _bump(conn)
            order.append("first")

    with db.read() as conn:
        before = _version(conn)
    t = threading.Thread(target=first)
    t.start()
    try:
        assert holding.wait(10)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        with db.begin() as conn:
            order.append("second begins")
            _bump(conn)
        timer.join()
    finally:
        release.set()
        t.join()
    assert order == ["first", "second begins"]
    with db.read() as conn:
        assert _version(conn) == before + 2


# --------------------------------------------------------------- schema versions and upgrades


def _set_version(db_url: str, version: int) -> None:
    database = Database(db_url)
    with database.begin() as conn:
        conn.execute(text("update schema_version set version = :v"), {"v": version})
    database.dispose()


def test_a_new_database_is_at_the_current_version_and_reopening_changes_nothing(db_url: str) -> None:
    Database(db_url).dispose()
    database = Database(db_url)
    with database.read() as conn:
        assert conn.execute(text("select count(*) from schema_version")).scalar() == 1
        assert _version(conn) == SCHEMA_VERSION
    database.dispose()


def test_an_older_database_is_upgraded_by_each_step_once(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Database(db_url).dispose()
    ran: list[int] = []

    def step(conn) -> None:  # type: ignore[no-untyped-def]
        ran.append(SCHEMA_VERSION + 1)
        conn.execute(text("create table upgrade_marker (id integer primary key)"))

    monkeypatch.setattr(db_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(db_module.MIGRATIONS, SCHEMA_VERSION + 1, step)
    for _ in range(2):  # the second open finds the new version: no step runs again
        database = Database(db_url)
        with database.read() as conn:
            assert _version(conn) == SCHEMA_VERSION + 1
            assert conn.execute(text("select count(*) from upgrade_marker")).scalar() == 0
        database.dispose()
    assert ran == [SCHEMA_VERSION + 1]


def test_a_failed_upgrade_changes_nothing(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Database(db_url).dispose()

    def step(conn) -> None:  # type: ignore[no-untyped-def]
        conn.execute(text("create table half_done (id integer primary key)"))
        raise RuntimeError("upgrade step failed")

    monkeypatch.setattr(db_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(db_module.MIGRATIONS, SCHEMA_VERSION + 1, step)
    with pytest.raises(RuntimeError, match="upgrade step failed"):
        Database(db_url)
    monkeypatch.undo()
    database = Database(db_url)  # still the old version, and the step's table rolled back with it
    with database.read() as conn:
        assert _version(conn) == SCHEMA_VERSION
    with pytest.raises(DBAPIError):
        with database.read() as conn:
            conn.execute(text("select count(*) from half_done"))
    database.dispose()


def test_a_database_newer_than_the_code_is_refused(db_url: str) -> None:
    Database(db_url).dispose()
    _set_version(db_url, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1} is newer"):
        Database(db_url)


def test_version_1_database_gets_64_bit_rule_positions(db_url: str) -> None:
    # v2: security group rule positions are time_ns based; PostgreSQL's INTEGER (v1) overflowed.
    database = Database(db_url)
    if not database.is_sqlite:  # make it the v1 schema (SQLite's INTEGER is 64-bit: no change)
        with database.begin() as conn:
            conn.execute(text("alter table ec2_security_group_rules alter column position type integer"))
    database.dispose()
    _set_version(db_url, 1)
    database = Database(db_url)
    position = 1796007438208738000
    with database.begin() as conn:
        conn.execute(insert(ec2_security_group_rules).values(
            id="sgr-0", group_id="sg-0", account="111111111111", region="us-east-1", is_egress=False,
            ip_protocol="-1", position=position))
    with database.read() as conn:
        assert _version(conn) == SCHEMA_VERSION
        assert conn.execute(select(ec2_security_group_rules.c.position)).scalar() == position
    database.dispose()


def test_version_2_database_gets_job_lease_columns_and_keeps_its_jobs(db_url: str) -> None:
    # v3: jobs record their runner and lease (several servers on one database). A v2 job
    # left running has neither: the runner treats it as expired and recovers it.
    from ebscrypt.storage.schema import jobs

    database = Database(db_url)
    with database.begin() as conn:  # make it the v2 jobs table, with a job a v2 server left running
        conn.execute(text("alter table jobs drop column runner"))
        conn.execute(text("alter table jobs drop column lease_expires"))
        conn.execute(text(
            "insert into jobs (id, kind, payload, state, progress, attempts, created_at, updated_at) "
            "values ('j1', 'test_ok', '{}', 'running', 0, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    database.dispose()
    _set_version(db_url, 2)
    database = Database(db_url)
    with database.read() as conn:
        assert _version(conn) == SCHEMA_VERSION
        row = conn.execute(select(jobs).where(jobs.c.id == "j1")).mappings().one()
    assert (row["state"], row["runner"], row["lease_expires"]) == ("running", None, None)
    with database.begin() as conn:  # the new columns take values
        conn.execute(jobs.update().values(runner="host/1/abc", lease_expires=1.5e9))
    with database.read() as conn:
        assert conn.execute(select(jobs.c.lease_expires)).scalar() == 1.5e9
    database.dispose()
