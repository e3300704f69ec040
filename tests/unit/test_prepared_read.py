"""storage/prepared.py: a PreparedRead gives what SQLAlchemy's own execution gives (types
converted by the columns' result processors), inside the caller's transaction, and falls
back to SQLAlchemy for what it cannot reproduce."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, String, Table, bindparam, insert, select

from ebscrypt.storage.db import Database
from ebscrypt.storage.prepared import PreparedRead, _compile

meta = MetaData()
things = Table(
    "prepared_things", meta,
    Column("id", String, primary_key=True),
    Column("n", Integer),
    Column("flag", Boolean),
    Column("at", DateTime),
    Column("note", String, nullable=True),
)
BY_ID = select(things).where(things.c.id == bindparam("id"))


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path}/m.db")
    meta.create_all(database.engine)
    with database.begin() as conn:
        conn.execute(insert(things), [
            dict(id="a", n=7, flag=True, at=datetime(2026, 1, 2, 3, 4, 5, 678000), note=None),
            dict(id="b", n=0, flag=False, at=datetime(2025, 12, 31, 23, 59, 59), note="x"),
        ])
    return database


def test_rows_match_sqlalchemys_own(db: Database) -> None:
    read = PreparedRead(BY_ID)
    with db.read() as conn:
        assert read._plan(conn) is not None  # the fast path is taken on SQLite
        for key in ("a", "b"):
            want = dict(conn.execute(BY_ID, {"id": key}).mappings().first() or {})
            got = read.first(conn, {"id": key})
            assert got == want
            assert got is not None and type(got["flag"]) is bool and type(got["at"]) is datetime
        assert read.first(conn, {"id": "none"}) is None


def test_reads_inside_the_callers_transaction(db: Database) -> None:
    read = PreparedRead(BY_ID)
    with db.begin() as conn:
        conn.execute(insert(things).values(id="c", n=1, flag=True, at=datetime.now(timezone.utc), note=None))
        row = read.first(conn, {"id": "c"})  # its own uncommitted insert: the same transaction
        assert row is not None and row["n"] == 1
    with db.read() as conn:
        snapshot = read.first(conn, {"id": "c"})
        with db.begin() as other:  # committed after the read transaction's snapshot began
            other.execute(things.update().where(things.c.id == "c").values(n=2))
        assert snapshot is not None and read.first(conn, {"id": "c"}) == snapshot  # one snapshot
    with db.read() as conn:
        row = read.first(conn, {"id": "c"})
        assert row is not None and row["n"] == 2


def test_what_it_cannot_reproduce_goes_through_sqlalchemy(db: Database) -> None:
    expanding = select(things.c.id).where(things.c.id.in_(bindparam("ids", expanding=True)))
    converted = select(things.c.id).where(things.c.at < bindparam("t", type_=DateTime))
    with db.read() as conn:
        assert _compile(expanding, conn.dialect) is None
        assert PreparedRead(expanding).first(conn, {"ids": ["b"]}) == {"id": "b"}


def test_converted_and_literal_parameters_as_sqlalchemy_binds_them(db: Database) -> None:
    # a DateTime parameter goes through the column type's bind processor (SQLite's text
    # form), a literal of the statement is bound with its own value unless given
    converted = select(things.c.id).where(things.c.at < bindparam("t", type_=DateTime), things.c.note.is_(None))
    literal = select(things.c.id).where(things.c.n == 0, things.c.flag == bindparam("flag", type_=Boolean))
    with db.read() as conn:
        assert _compile(converted, conn.dialect) is not None and _compile(literal, conn.dialect) is not None
        for at in (datetime(2026, 1, 1), datetime(2026, 1, 2, 3, 4, 5, 678001), datetime(2027, 1, 1)):
            want = conn.execute(converted, {"t": at}).mappings().first()
            assert PreparedRead(converted).first(conn, {"t": at}) == (dict(want) if want else None)
        assert PreparedRead(literal).first(conn, {"flag": False}) == {"id": "b"}
        assert PreparedRead(literal).first(conn, {"flag": True}) is None
        assert PreparedRead(literal).exists(conn, {"flag": False})
        assert not PreparedRead(literal).exists(conn, {"flag": True})


def test_driver_errors_are_wrapped_as_sqlalchemy_wraps_them(db: Database) -> None:
    from sqlalchemy.exc import OperationalError

    gone = Table("prepared_gone", MetaData(), Column("id", String, primary_key=True))
    read = PreparedRead(select(gone).where(gone.c.id == bindparam("id")))
    with db.read() as conn:
        with pytest.raises(OperationalError) as err:
            read.first(conn, {"id": "x"})
        assert read._plan(conn) is not None  # the fast path raised it
    assert "no such table" in str(err.value.orig)


def test_prepared_insert_inserts_what_sqlalchemy_inserts(db: Database) -> None:
    """PreparedWrite.run_many (the block group commit's entries): the same rows as SQLAlchemy's
    insert, in the caller's transaction (rolled back with it), errors wrapped alike."""
    from sqlalchemy.exc import IntegrityError

    from sqlalchemy import insert

    from ebscrypt.storage.prepared import PreparedWrite

    plain = Table("prepared_plain", meta, Column("k", String, primary_key=True), Column("n", Integer),
                  Column("note", String, nullable=True))
    meta.create_all(db.engine)
    ins = PreparedWrite(insert(plain))
    rows = [{"k": "a", "n": 1, "note": None}, {"k": "b", "n": 2, "note": "x"}]
    with db.begin() as conn:
        ins.run_many(conn, rows)
        assert ins._plan(conn, ("k", "n", "note")) is not None  # on the driver
    with db.read() as conn:
        assert [dict(r) for r in conn.execute(select(plain).order_by(plain.c.k)).mappings()] == rows
    with pytest.raises(RuntimeError), db.begin() as conn:
        ins.run_many(conn, [{"k": "c", "n": 3, "note": None}])
        raise RuntimeError("rolled back")
    with pytest.raises(IntegrityError), db.begin() as conn:
        ins.run_many(conn, [{"k": "a", "n": 9, "note": None}])  # a duplicate key
    with db.read() as conn:
        assert [r.k for r in conn.execute(select(plain.c.k).order_by(plain.c.k))] == ["a", "b"]
    # a column whose values SQLAlchemy converts (DateTime on SQLite): by its bind processor
    converted = PreparedWrite(insert(things))
    with db.begin() as conn:
        converted.run_many(conn, [{"id": "t", "n": 1, "flag": True, "at": datetime(2026, 1, 2, 3, 4, 5), "note": None}])
        assert converted._plan(conn, ("id", "n", "flag", "at", "note")) is not None
    with db.read() as conn:
        assert conn.execute(select(things.c.at).where(things.c.id == "t")).scalar_one() == datetime(2026, 1, 2, 3, 4, 5)
