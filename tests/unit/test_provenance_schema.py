"""Schema v6 (issue 16): the ec2_provenance table and the lineage indexes, on a new
database and on one upgraded from v3 (whose resources then have no provenance row)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from ebscrypt.storage.db import SCHEMA_VERSION, Database
from ebscrypt.storage.tables.provenance import LINEAGE_INDEXES


def _state(db: Database) -> tuple[bool, set[str], int]:
    with db.read() as conn:
        insp = inspect(conn)
        names = {i["name"] for t in ("ec2_volumes", "ec2_snapshots") for i in insp.get_indexes(t)}
        version = conn.execute(text("SELECT version FROM schema_version")).scalar()
        return insp.has_table("ec2_provenance"), names, version


def test_new_database_has_provenance_and_indexes(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    has, indexes, version = _state(db)
    assert has and {i.name for i in LINEAGE_INDEXES} <= indexes and version == SCHEMA_VERSION >= 4
    db.dispose()


def test_upgrade_from_v3(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db = Database(url)
    with db.begin() as conn:  # back to what a v3 database holds
        conn.execute(text("DROP TABLE ec2_provenance"))
        for index in LINEAGE_INDEXES:
            conn.execute(text(f"DROP INDEX {index.name}"))
        conn.execute(text("UPDATE schema_version SET version = 3"))
    db.dispose()
    db = Database(url)
    has, indexes, version = _state(db)
    assert has and {i.name for i in LINEAGE_INDEXES} <= indexes and version == SCHEMA_VERSION
    db.dispose()
