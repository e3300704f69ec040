"""storage/db.py, SQLite: each thread keeps one connection per mode (reading, writing)
checked out between its transactions (no pool checkout and check-in per transaction, issue
15 section M7; no ``query_only`` switch expiring its prepared statements, section M8), and
still sees every commit made before each BEGIN — by another thread, another Database on
the same file, or another process (``serve --workers N``) — keeps read transactions
read-only, falls back to the pool for a transaction nested in another, leaves no
transaction open after an error, and gives every kept connection back at dispose."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from ebscrypt.storage.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/m.db")
    with database.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE kept (id INTEGER PRIMARY KEY, v TEXT)")
    yield database
    database.dispose()


def _count(db: Database) -> int:
    with db.read() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM kept").scalar() or 0)


def test_a_thread_reuses_one_connection_per_mode_and_checks_out_no_other(db: Database) -> None:
    with db.read() as conn:
        reading = conn.connection.driver_connection
    with db.begin() as conn:
        writing = conn.connection.driver_connection
    assert writing is not reading
    for _ in range(5):
        with db.begin() as conn:
            assert conn.connection.driver_connection is writing
            conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('x')")
        with db.read() as conn:
            assert conn.connection.driver_connection is reading
    assert db.engine.pool.checkedout() == 2  # this thread's two, kept
    assert _count(db) == 5


def test_alternating_reads_and_writes_switch_no_connection_mode(db: Database) -> None:
    """``PRAGMA query_only`` expires every statement the connection prepared (SQLite's flag
    PRAGMAs all do): a thread that reads then writes, as every mutating call does, must
    not switch a connection's mode, or each call parses and plans its statements again."""
    with db.read() as conn:
        conn.exec_driver_sql("SELECT count(*) FROM kept").scalar()
    with db.begin() as conn:
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('warm')")
    issued: list[str] = []
    for mode in (db.read, db.begin):
        with mode() as conn:
            conn.connection.driver_connection.set_trace_callback(issued.append)
    for _ in range(3):
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
        with db.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
            conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('x')")
    assert [s for s in issued if s.startswith("PRAGMA query_only=")] == []
    assert _count(db) == 4


def test_each_begin_sees_commits_of_another_process(db: Database, tmp_path: Path) -> None:
    assert _count(db) == 0  # the kept connection has read the file before
    script = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "c.execute(\"INSERT INTO kept (v) VALUES ('other process')\"); c.commit()")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.db")], check=True)
    assert _count(db) == 1
    with db.begin() as conn:  # a write transaction after it: sees it, and writes after it
        assert conn.exec_driver_sql("SELECT v FROM kept").scalar() == "other process"
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('here')")
    other = sqlite3.connect(tmp_path / "m.db")
    try:
        assert [r[0] for r in other.execute("SELECT v FROM kept ORDER BY id")] == ["other process", "here"]
    finally:
        other.close()


def test_reads_stay_read_only_and_writes_write_after_a_read(db: Database) -> None:
    for _ in range(2):
        with pytest.raises(DBAPIError, match="readonly"):
            with db.read() as conn:
                conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('no')")
        with db.begin() as conn:
            conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('yes')")
    assert _count(db) == 2


def test_nested_transactions_take_a_second_connection(db: Database) -> None:
    with db.begin() as outer:
        outer.exec_driver_sql("INSERT INTO kept (v) VALUES ('outer')")
        with db.read() as inner:  # its own snapshot: the outer insert is not committed yet
            assert inner.connection.driver_connection is not outer.connection.driver_connection
            assert inner.exec_driver_sql("SELECT count(*) FROM kept").scalar() == 0
    with db.read() as outer:
        with db.read() as inner:
            assert inner.connection.driver_connection is not outer.connection.driver_connection
    assert _count(db) == 1


def test_an_error_rolls_back_and_leaves_no_transaction_open(db: Database) -> None:
    with pytest.raises(RuntimeError):
        with db.begin() as conn:
            conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('lost')")
            raise RuntimeError("the request failed")
    slot = db._slots.write
    kept = slot.conn if slot is not None else None  # this thread's writing connection, between transactions: none open on it
    assert kept is not None and not kept.in_transaction()
    assert not kept.connection.driver_connection.in_transaction
    assert _count(db) == 0
    with db.begin() as conn:
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('kept')")
    assert _count(db) == 1


def test_a_lock_timeout_is_sqlalchemys_error_and_the_thread_writes_again(db: Database, tmp_path: Path) -> None:
    with db.read() as conn:  # this thread's kept connection: wait at most 50 ms for a lock
        conn.connection.driver_connection.execute("PRAGMA busy_timeout=50")
    holder = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer holds the write lock
    try:
        with pytest.raises(OperationalError, match="locked"):
            with db.begin() as conn:
                conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('blocked')")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.begin() as conn:
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('after')")
    assert _count(db) == 1


def test_threads_keep_their_own_connections_and_commit_all(db: Database) -> None:
    errors: list[BaseException] = []
    seen: list[object] = []

    def work() -> None:
        try:
            for _ in range(20):
                with db.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('t')")
                with db.read() as conn:
                    conn.exec_driver_sql("SELECT count(*) FROM kept").scalar()
            with db.read() as conn:
                seen.append(conn.connection.driver_connection)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(c) for c in seen}) == 8  # one each
    assert _count(db) == 160


def test_dispose_gives_every_kept_connection_back(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/d.db")
    done, finish = threading.Event(), threading.Event()

    def other_thread() -> None:  # still alive at dispose
        with database.read() as conn:
            conn.execute(text("SELECT 1"))
        done.set()
        finish.wait(10)

    t = threading.Thread(target=other_thread)
    t.start()
    assert done.wait(10)
    with database.read() as conn:
        conn.execute(text("SELECT 1"))
    assert database.engine.pool.checkedout() == 3  # the other thread's reading; this one's reading and writing (the schema)
    database.dispose()
    assert database.engine.pool.checkedout() == 0
    finish.set()
    t.join()


def test_a_thread_that_ends_gives_its_connection_back(db: Database) -> None:
    def short_lived() -> None:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))

    with db.read() as conn:  # this thread's: stays kept
        conn.execute(text("SELECT 1"))
    for _ in range(5):
        t = threading.Thread(target=short_lived)
        t.start()
        t.join()
    assert db.engine.pool.checkedout() == 2  # this thread's two; the five ended threads' went back to the pool


def test_an_undisposed_database_gives_its_connections_back_when_dropped(tmp_path: Path) -> None:
    import gc

    database = Database(f"sqlite:///{tmp_path}/u.db")
    with database.read() as conn:
        conn.execute(text("SELECT 1"))
    pool = database.engine.pool
    assert pool.checkedout() == 2  # reading, and writing (the schema)
    del database, conn
    gc.collect()
    assert pool.checkedout() == 0


def test_a_connection_used_after_its_block_is_refused(db: Database) -> None:
    from sqlalchemy.exc import ResourceClosedError

    with db.read() as conn:
        pass
    with pytest.raises(ResourceClosedError):
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('late')")  # no write lock taken and held
    with db.begin() as conn:  # the thread goes on with a fresh connection
        conn.exec_driver_sql("INSERT INTO kept (v) VALUES ('on time')")
    assert _count(db) == 1
