"""The metadata database: SQLite (WAL) by default, PostgreSQL (``postgresql+psycopg://``) by choice.

Both give the engines the same model: write transactions (``begin()``) run one at a time,
each seeing every earlier commit (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-level
advisory lock taken first), and read transactions (``read()``) see one consistent snapshot
without waiting for writers (SQLite: WAL; PostgreSQL: REPEATABLE READ, READ ONLY).

Schema versions: ``SCHEMA_VERSION`` is the version this code writes. A new database is
created at that version; an older one is upgraded by the steps in ``MIGRATIONS`` (each
a function taking a connection), in order, inside one transaction.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, overload

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text, update
from sqlalchemy.pool import QueuePool

from ebscrypt.storage.schema import load_tables, schema_version

SCHEMA_VERSION = 5


def _v2_rule_position_bigint(conn: Connection) -> None:
    # ec2_security_group_rules.position holds time_ns-based values (> 2**31): PostgreSQL's
    # INTEGER overflowed. SQLite's INTEGER is 64-bit already.
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE ec2_security_group_rules ALTER COLUMN position TYPE BIGINT"))


def _v3_job_leases(conn: Connection) -> None:
    # Jobs record the runner that claimed them and its lease, so several servers on one
    # database recover only the jobs of a runner that stopped renewing. A column already
    # there (a database created at a later version, then marked older) is left alone.
    present = {column["name"] for column in inspect(conn).get_columns("jobs")}
    if "runner" not in present:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN runner VARCHAR(128)"))
    if "lease_expires" not in present:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN lease_expires DOUBLE PRECISION"))


def _v4_kms_auth_generation(conn: Connection) -> None:
    # KMS keys carry an authorization generation (kms_keys.auth_generation), bumped with
    # every state, policy, grant or alias change, against which cached data keys are
    # re-validated (issue 10 item 5). Nullable: existing keys read as generation 0. Only
    # adds a column, so it can be renumbered freely when merged with other steps.
    present = {column["name"] for column in inspect(conn).get_columns("kms_keys")}
    if "auth_generation" not in present:
        conn.execute(text("ALTER TABLE kms_keys ADD COLUMN auth_generation INTEGER"))


# (issue 15, separate step: renumber freely when merging) Indexes for the Describe* filters
# people use, declared on the tables (storage/tables/ec2.py) so new databases get them from
# create_all; an older database gets them here. Indexes only: nothing else changes, and
# IF NOT EXISTS leaves a database created at a later version alone.
DESCRIBE_INDEXES = (
    ("ix_ec2_volumes_encrypted", "ec2_volumes", "account, region, encrypted"),
    ("ix_ec2_volumes_kms", "ec2_volumes", "account, region, kms_key_arn"),
    ("ix_ec2_volumes_state", "ec2_volumes", "account, region, state"),
    ("ix_ec2_snapshots_encrypted", "ec2_snapshots", "account, region, encrypted"),
    ("ix_ec2_snapshots_kms", "ec2_snapshots", "account, region, kms_key_arn"),
    ("ix_ec2_snapshots_state", "ec2_snapshots", "account, region, state"),
    ("ix_ec2_snapshots_volume", "ec2_snapshots", "volume_id"),
    ("ix_ec2_tags_key_value", "ec2_tags", "account, key, value"),
)


def _describe_indexes(conn: Connection) -> None:
    for name, table, columns in DESCRIBE_INDEXES:
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))


# version N -> function that upgrades a database at version N-1 to N.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _v2_rule_position_bigint,
    3: _v3_job_leases,
    4: _v4_kms_auth_generation,
    5: _describe_indexes,  # issue 15 (speed); another branch's v4/v5 step may come first
}

# PostgreSQL: the advisory lock every write transaction takes first (any constant key; one
# per database), and how long a lock wait may last before it is an error (SQLite's
# busy_timeout): an unexpected wait fails instead of hanging.
PG_WRITE_LOCK_KEY = 0x65627363  # "ebsc"
PG_LOCK_TIMEOUT_MS = 30000


# Execution option marking a connection of ``Database.read()``, and the key under which a
# pooled SQLite connection records whether query_only is on (see ``_sqlite_begin``).
_READ_ONLY = "ebscrypt_read_only"

# SQLite connections kept open between uses: more than the request threads (anyio's
# default of 40) plus the job and maintenance threads, so a busy server does not reopen
# connections (and re-run the PRAGMAs) per request.
SQLITE_POOL_SIZE = 48


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as aware UTC: SQLite hands datetimes back naive (they were stored as UTC)."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class SchemaTooNew(RuntimeError):
    pass


class Database:
    """A handle on the metadata store. ``begin()`` yields a connection in a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                **_sqlite_pool_args(url),
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=10,
                # no overflow limit (as for SQLite): a thread waiting for the write lock holds
                # its connection, and the lock holder may open a second one (a read inside a
                # write); a bounded pool could leave it waiting on the waiters
                max_overflow=-1,
                connect_args={"options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}"},
            )
        self._migrate()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside a read-write transaction: committed on success, rolled back
        on error. It holds the write lock from its start: writers run one at a time, as the
        engines' check-then-write code expects (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
        advisory lock, so two writers never both pass a "does it exist?" check)."""
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITE_LOCK_KEY})
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection inside a read-only transaction: one consistent snapshot, no lock
        held against writers. Writing through it is an error."""
        if not self.is_sqlite:
            # REPEATABLE READ: every statement sees the snapshot of the first (READ COMMITTED,
            # the default, takes a new one per statement). A read-only transaction at this
            # level never fails with a serialization error.
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                with conn.begin():
                    yield conn
            return
        with self.engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})  # _sqlite_begin: query_only, deferred BEGIN
            with conn.begin():
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


def _sqlite_pool_args(url: str) -> dict[str, Any]:
    if ":memory:" in url or "mode=memory" in url:
        return {}  # SQLAlchemy's default (one connection per thread) keeps the database alive
    # No overflow limit: like one connection per checkout before, a thread that holds a
    # connection and opens a second (a read inside a write) never waits on the pool.
    return {"poolclass": QueuePool, "pool_size": SQLITE_POOL_SIZE, "max_overflow": -1}


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # The driver's own transaction handling is turned off so SQLAlchemy's "begin" event
    # (_sqlite_begin) is the only BEGIN issued.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (the WAL fsync'd) before it is acknowledged.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN (IMMEDIATE), so two writers never deadlock
    # upgrading read locks, and wait for each other through busy_timeout. Readers use a
    # deferred BEGIN: under WAL they read a snapshot and never wait for a writer.
    # Readers also run with query_only: a write slipped into a read path is an immediate
    # error (a deferred transaction that writes would otherwise fail only under contention,
    # SQLITE_BUSY when upgrading its snapshot). The pooled connection remembers its mode,
    # so the PRAGMA runs only when a connection switches between reading and writing.
    read_only = bool(conn.get_execution_options().get(_READ_ONLY))
    pooled = conn.connection
    if pooled.info.get(_READ_ONLY, False) != read_only:
        pooled.driver_connection.execute(f"PRAGMA query_only={int(read_only)}")  # type: ignore[union-attr]
        pooled.info[_READ_ONLY] = read_only
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
