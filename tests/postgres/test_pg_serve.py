"""``ebscrypt serve --db postgresql+psycopg://...``: the metadata is in PostgreSQL (none in
the data dir), survives a kill -9, and a database newer than the code is refused."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, text

from ebscrypt.storage.db import SCHEMA_VERSION
from tests.conftest import ServerProcess
from tests.postgres.conftest import PgDatabases


def test_metadata_lives_in_postgres_and_survives_a_kill(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    key_id = srv.client("kms").create_key(Description="survives")["KeyMetadata"]["KeyId"]
    engine = create_engine(srv.db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select description from kms_keys where key_id = :k"), {"k": key_id}).scalar() == "survives"
            assert conn.execute(text("select version from schema_version")).scalar() == SCHEMA_VERSION
    finally:
        engine.dispose()
    assert not (srv.data_dir / "metadata.db").exists()
    srv.kill()
    srv.start()
    assert srv.client("kms").describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "survives"


def test_a_database_newer_than_the_code_is_refused(pg_databases: PgDatabases, tmp_path: Any) -> None:
    url = pg_databases.create()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table schema_version (id integer primary key, version integer not null)"))
            conn.execute(text("insert into schema_version values (1, :v)"), {"v": SCHEMA_VERSION + 1})
    finally:
        engine.dispose()
    srv = ServerProcess(tmp_path / "data", ["--db", url])
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        srv.start()
