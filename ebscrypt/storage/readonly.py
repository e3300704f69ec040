"""Open the metadata database for reading only (``ebscrypt explain`` / ``report``).

The commands read the database directly, beside a running server or without one: no
schema is created or upgraded, nothing is written. SQLite is opened with
``mode=ro`` (the server's WAL commits are visible; a missing file is an error rather
than a new empty database); PostgreSQL through a READ ONLY transaction.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import NullPool


class ReadOnlyDatabase:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, poolclass=NullPool)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def open_read_only(data_dir: Path, db_url: str | None = None) -> ReadOnlyDatabase:
    """The database of ``--db`` if given, else ``<data_dir>/metadata.db`` read-only."""
    if db_url and not db_url.startswith("sqlite"):
        return ReadOnlyDatabase(db_url)
    if db_url:
        path = Path(db_url.split("///", 1)[-1])
    else:
        path = data_dir / "metadata.db"
    if not path.exists():
        raise FileNotFoundError(f"no metadata database at {path} (use --data-dir or --db)")
    return ReadOnlyDatabase(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
