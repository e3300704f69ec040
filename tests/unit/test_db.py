"""The SQLite metadata database: pooled connections, read-only transactions that do not
wait for writers, write transactions that take the write lock at BEGIN."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from ebscrypt.storage.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
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
            assert conn.execute(text("pragma synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("pragma foreign_keys")).scalar() == 1
            assert conn.execute(text("pragma busy_timeout")).scalar() == 30000


def test_connections_are_reused(db: Database) -> None:
    with db.read() as conn:
        first = conn.connection.driver_connection
    with db.begin() as conn:
        assert conn.connection.driver_connection is first


def test_write_in_read_transaction_fails_and_the_connection_writes_again(db: Database) -> None:
    with pytest.raises(OperationalError, match="readonly"):
        with db.read() as conn:
            _bump(conn)
    with db.read() as conn:
        before = _version(conn)
    with db.begin() as conn:  # the same pooled connection: query_only was cleared
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
