"""storage/prepared.py: a PreparedWrite stores what SQLAlchemy's own execution stores (the
same raw column values, the same rows counted), inside the caller's transaction (rolled
back with it), wraps driver errors as SQLAlchemy does, and leaves to SQLAlchemy what it
cannot reproduce (Python-side defaults, RETURNING, expanding IN)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (Boolean, Column, DateTime, Integer, MetaData, String, Table, bindparam, delete, insert,
                        select, update)
from sqlalchemy.exc import IntegrityError

from ebscrypt.storage.db import Database, is_conflict
from ebscrypt.storage.prepared import PreparedWrite, _compile

meta = MetaData()
things = Table(
    "prepared_writes", meta,
    Column("id", String, primary_key=True),
    Column("n", Integer),
    Column("flag", Boolean),
    Column("at", DateTime),
    Column("note", String, nullable=True),
    Column("client_token", String, nullable=True, unique=True),
)
defaulted = Table(
    "prepared_defaulted", meta,
    Column("id", String, primary_key=True),
    Column("n", Integer, default=lambda: 5),
)
INSERT = insert(things)
BUMP = update(things).where(things.c.id == bindparam("b_id")).values(n=bindparam("n"), note="bumped")
DROP = delete(things).where(things.c.n < bindparam("below"))

ROWS = [
    dict(id="a", n=7, flag=True, at=datetime(2026, 1, 2, 3, 4, 5, 678000), note=None, client_token=None),
    dict(id="b", n=0, flag=False, at=datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone.utc), note="x",
         client_token="t1"),
    dict(id="c", n=None, flag=None, at=None, note="", client_token=None),
]


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/m.db")
    meta.create_all(database.engine)
    return database


def _raw(db: Database) -> list[tuple[Any, ...]]:
    """The stored values as SQLite holds them (no result processing)."""
    with db.read() as conn:
        return list(conn.exec_driver_sql("SELECT id, n, flag, at, note, client_token FROM prepared_writes ORDER BY id"))


def test_inserts_store_what_sqlalchemy_stores(db: Database, tmp_path: Path) -> None:
    write = PreparedWrite(INSERT)
    with db.begin() as conn:
        for row in ROWS:
            assert write.run(conn, row) == 1
        assert write._plan(conn, tuple(ROWS[0])) is not None  # the fast path was taken
    other = Database(f"sqlite:///{tmp_path}/other.db")
    meta.create_all(other.engine)
    with other.begin() as conn:
        for row in ROWS:
            conn.execute(INSERT, row)
    assert _raw(db) == _raw(other)
    # a subset of the columns: compiled for those names
    with db.begin() as conn:
        assert write.run(conn, dict(id="d", n=3)) == 1
    with db.read() as conn:
        assert conn.execute(select(things).where(things.c.id == "d")).mappings().one()["flag"] is None


def test_updates_and_deletes_count_rows_and_bind_literals(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(INSERT, ROWS)
    with db.begin() as conn:
        assert PreparedWrite(BUMP).run(conn, {"b_id": "a", "n": 1}) == 1
        assert PreparedWrite(BUMP).run(conn, {"b_id": "none", "n": 1}) == 0
    with db.read() as conn:
        row = conn.execute(select(things).where(things.c.id == "a")).mappings().one()
        assert (row["n"], row["note"]) == (1, "bumped")
    with db.begin() as conn:
        assert PreparedWrite(DROP).run(conn, {"below": 2}) == 2  # a (1) and b (0); c's NULL is not < 2
    assert [r[0] for r in _raw(db)] == ["c"]


def test_writes_roll_back_with_the_callers_transaction(db: Database) -> None:
    write = PreparedWrite(INSERT)
    with pytest.raises(RuntimeError):
        with db.begin() as conn:
            write.run(conn, ROWS[0])
            raise RuntimeError("the request failed after its insert")
    assert _raw(db) == []


def test_driver_errors_are_wrapped_and_a_duplicate_token_is_a_conflict(db: Database) -> None:
    write = PreparedWrite(INSERT)
    with db.begin() as conn:
        write.run(conn, ROWS[1])
    with pytest.raises(IntegrityError) as err:
        with db.begin() as conn:
            write.run(conn, dict(ROWS[1], id="z"))
    assert "UNIQUE constraint failed" in str(err.value.orig)
    assert is_conflict(err.value)  # a duplicate ClientToken: the request is run again, as through SQLAlchemy
    with pytest.raises(IntegrityError):
        with db.begin() as conn:
            write.run(conn, ROWS[1])  # the same primary key


def test_what_it_cannot_reproduce_goes_through_sqlalchemy(db: Database) -> None:
    with db.begin() as conn:
        assert _compile(insert(defaulted), conn.dialect, ("id",)) is None  # a Python-side default
        assert PreparedWrite(insert(defaulted)).run(conn, {"id": "x"}) == 1
        assert _compile(insert(things).returning(things.c.id), conn.dialect, ("id",)) is None
        expanding = delete(things).where(things.c.id.in_(bindparam("ids", expanding=True)))
        assert _compile(expanding, conn.dialect, ("ids",)) is None
        conn.execute(INSERT, ROWS)
        assert PreparedWrite(expanding).run(conn, {"ids": ["a", "b"]}) == 2
    with db.read() as conn:
        assert conn.execute(select(defaulted.c.n)).scalar() == 5
