"""The metadata database: SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL) by choice.

Schema versions: ``SCHEMA_VERSION`` is the version this code writes. A new database is
created at that version; an older one is upgraded by the steps in ``MIGRATIONS`` (each
a function taking a connection), in order, inside one transaction.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import Connection, Engine, create_engine, event, insert, select, update
from sqlalchemy.pool import NullPool

from ebscrypt.storage.schema import load_tables, schema_version

SCHEMA_VERSION = 1

# version N -> function that upgrades a database at version N-1 to N.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


class SchemaTooNew(RuntimeError):
    pass


class Database:
    """A handle on the metadata store. ``begin()`` yields a connection in a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # One connection per checkout keeps SQLite's locking simple across threads;
            # WAL lets readers proceed while one writer commits.
            self.engine: Engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=NullPool if ":memory:" not in url else None,
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # SQLite's own BEGIN is deferred: take the write lock at BEGIN so two writers
            # never deadlock upgrading a read lock.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._migrate()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside a transaction: committed on success, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (still transactional, so reads are consistent)."""
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    def _migrate(self) -> None:
        metadata = load_tables()
        with self.begin() as conn:
            metadata.create_all(conn)  # creates only tables that do not exist
            row = conn.execute(select(schema_version.c.version)).first()
            if row is None:
                conn.execute(insert(schema_version).values(id=1, version=SCHEMA_VERSION))
                return
            current = row.version
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"database schema version {current} is newer than this ebscrypt "
                    f"({SCHEMA_VERSION}); upgrade ebscrypt"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](conn)
            if current != SCHEMA_VERSION:
                conn.execute(update(schema_version).values(version=SCHEMA_VERSION))


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # The driver's own transaction handling is turned off so SQLAlchemy's "begin" event
    # (BEGIN IMMEDIATE) is the only BEGIN issued.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
