"""The metadata database: SQLite (WAL) by default, PostgreSQL (``postgresql+psycopg://``) by choice.

Both give the engines the same model: write transactions (``begin()``) behave as if they
ran one at a time, and read transactions (``read()``) see one consistent snapshot without
waiting for writers (SQLite: WAL; PostgreSQL: REPEATABLE READ, READ ONLY).

- SQLite (one process): writers do run one at a time (BEGIN IMMEDIATE).
- PostgreSQL (several processes or hosts on one database): writers run concurrently at
  SERIALIZABLE isolation (PostgreSQL's serializable snapshot isolation). Two transactions
  whose reads and writes could not have happened one after the other — two requests
  racing on one resource, two "does it exist?" checks followed by inserts — do not both
  commit: one fails with a serialization failure (SQLSTATE 40001; a deadlock, 40P01, is
  handled alike). :func:`is_conflict` tells such an error; it changed nothing, and the
  whole transaction is run again (``Database.retrying``, the request retry in app.py, the
  job runner's requeue). Row locks (``SELECT ... FOR UPDATE``) still order writers of one
  row; job claims run at READ COMMITTED with ``FOR UPDATE SKIP LOCKED``.
  ``EBSCRYPT_PG_GLOBAL_WRITE_LOCK=1`` brings back the former model (every writer takes one
  advisory lock first), for comparison.

Schema versions: ``SCHEMA_VERSION`` is the version this code writes. A new database is
created at that version; an older one is upgraded by the steps in ``MIGRATIONS`` (each
a function taking a connection), in order, inside one transaction.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar, overload

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError, ResourceClosedError
from sqlalchemy.pool import QueuePool

from ebscrypt.blocking import may_block
from ebscrypt.storage.schema import load_tables, schema_version

SCHEMA_VERSION = 10


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


def _v5_key_store_refs(conn: Connection) -> None:
    # kms_key_material.wrapped_by names the root key (file or PKCS#11 object) that wrapped
    # each row, so rows of several key stores coexist during `ebscrypt keystore migrate`.
    # Existing rows keep NULL: the file store's format from before (engines/kms/keystore.py).
    present = {column["name"] for column in inspect(conn).get_columns("kms_key_material")}
    if "wrapped_by" not in present:
        conn.execute(text("ALTER TABLE kms_key_material ADD COLUMN wrapped_by VARCHAR(512)"))


def _v6_provenance(conn: Connection) -> None:
    # The ec2_provenance table (storage/tables/provenance.py) is new, so create_all in
    # _migrate has already made it; nothing to convert: resources made before it have no
    # row and are shown as "unknown (created before provenance was recorded)". The lineage
    # indexes on existing tables are not made by create_all (the tables exist): made here.
    from ebscrypt.storage.tables.provenance import LINEAGE_INDEXES

    for index in LINEAGE_INDEXES:
        index.create(conn, checkfirst=True)


# v7 (scale-out): ClientToken unique per account and region, so that several processes
# cannot both create a resource for one token (self-contained: only new unique indexes).
_V7_TOKEN_INDEXES = {  # index name -> (table, its primary key, the indexed columns)
    "ux_ec2_volumes_client_token": ("ec2_volumes", "id", "account, region, client_token"),
    "ux_ec2_snapshots_client_token": ("ec2_snapshots", "id", "account, region, client_token"),
    "ux_ec2_images_client_token": ("ec2_images", "image_id", "account, region, client_token"),
    "ux_ec2_instances_client_token": ("ec2_instances", "instance_id", "account, region, client_token, ami_launch_index"),
}


def _v7_client_token_unique(conn: Connection) -> None:
    # A database that already holds a duplicate token (a race of the earlier version) keeps
    # the rows: the later duplicates (by id) lose their token, so a retry of that token
    # finds one resource.
    for name, (table, pk, columns) in _V7_TOKEN_INDEXES.items():
        same = " AND ".join(f"o.{c.strip()} = {table}.{c.strip()}" for c in columns.split(","))
        conn.execute(text(
            f"UPDATE {table} SET client_token = NULL WHERE client_token IS NOT NULL AND EXISTS ("
            f"SELECT 1 FROM {table} o WHERE {same} AND o.{pk} < {table}.{pk})"
        ))
        conn.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))


# v8 (issue 15): indexes for the Describe* filters
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
    ("ix_ec2_snapshots_volume", "ec2_snapshots", "volume_id, start_time"),
    ("ix_ec2_tags_key_value", "ec2_tags", "account, key, value"),
)


def _describe_indexes(conn: Connection) -> None:
    for name, table, columns in DESCRIBE_INDEXES:
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))


# v9 (issue 15, Describe at scale): the id order within an account's resources, so a page
# (``id > token ORDER BY id LIMIT n``) reads n index entries instead of sorting every row
# of the account (SQLite's (account, region) index holds rowids, not ids: a page of
# 100,000 snapshots read and sorted all of them); and kms-key-id with the id order, so
# the filter people use most is not planned through the page index instead. Additive
# (indexes only), declared on the tables too; IF NOT EXISTS as v8.
PAGE_INDEXES = (
    ("ix_ec2_volumes_page", "ec2_volumes", "account, region, id"),
    ("ix_ec2_volumes_kms_page", "ec2_volumes", "account, region, kms_key_arn, id"),
    ("ix_ec2_snapshots_page", "ec2_snapshots", "account, region, id"),
    ("ix_ec2_snapshots_kms_page", "ec2_snapshots", "account, region, kms_key_arn, id"),
)


def _page_indexes(conn: Connection) -> None:
    for name, table, columns in PAGE_INDEXES:
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))


# v10 (issue 15, Describe at scale, branch desc): an account's tags in resource id order,
# so the tags of a page of resources (contiguous in id order) are one index range
# (``account = ? AND resource_id BETWEEN first AND last``) instead of 1,000 probes of an
# IN list. Additive (an index only), declared on the table too; IF NOT EXISTS as v8.
# And an account's images in id order: DescribeImages pages in SQL as the others do.
TAG_RANGE_INDEXES = (
    ("ix_ec2_tags_account_resource", "ec2_tags", "account, resource_id, key"),
    ("ix_ec2_images_page", "ec2_images", "account, region, image_id"),
)


def _tag_range_index(conn: Connection) -> None:
    for name, table, columns in TAG_RANGE_INDEXES:
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))


# version N -> function that upgrades a database at version N-1 to N.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _v2_rule_position_bigint,
    3: _v3_job_leases,
    4: _v4_kms_auth_generation,
    5: _v5_key_store_refs,
    6: _v6_provenance,
    7: _v7_client_token_unique,
    8: _describe_indexes,
    9: _page_indexes,
    10: _tag_range_index,
}

# PostgreSQL: the advisory lock schema upgrades take (and, with
# EBSCRYPT_PG_GLOBAL_WRITE_LOCK=1, every write transaction) — any constant key, one per
# database — and how long a lock wait may last before it is an error (SQLite's
# busy_timeout): an unexpected wait fails instead of hanging.
PG_WRITE_LOCK_KEY = 0x65627363  # "ebsc"
PG_LOCK_TIMEOUT_MS = 30000

# SQLSTATEs of a transaction that lost a race and changed nothing: run it again.
_CONFLICT_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected

# Write transactions committed in this context (a request, a job): the request retry in
# app.py runs a request again after a conflict only when it has committed nothing yet.
_COMMITS: contextvars.ContextVar[int] = contextvars.ContextVar("ebscrypt_db_commits", default=0)

T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """The transaction lost a race and was rolled back: it may be run again.

    A PostgreSQL serialization failure or deadlock (never on SQLite, whose writers run one
    at a time), or a duplicate ClientToken (the ``ux_*_client_token`` unique indexes: a
    concurrent request with the same token inserted first; run again, the request finds
    that resource and replays it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state in _CONFLICT_SQLSTATES:
            return True
        if state == "23505":  # unique_violation
            constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
            if constraint.startswith("ux_") and constraint.endswith("_client_token"):
                return True
        if type(orig).__name__ == "IntegrityError" and "UNIQUE constraint failed" in str(orig) and ".client_token" in str(orig):
            return True  # SQLite's wording (no constraint name)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def retry_conflicts(fn: Callable[[], T], attempts: int = 8) -> T:
    """``fn()``, run again after a short pause when it loses a race (:func:`is_conflict`).
    ``fn`` must be idempotent (as resumable job bodies are): its transactions that
    committed before the conflicting one are repeated."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
        conflict_backoff(attempt)
    raise AssertionError("unreachable")


def commits_in_context() -> int:
    """How many write transactions this context (request thread, job) has committed."""
    return _COMMITS.get()


def conflict_backoff(attempt: int) -> None:
    """A short random pause before running a conflicting transaction again (attempt 0, 1, ...),
    so two racing transactions do not collide again in step."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (2 ** attempt))))


# Keys of a pooled SQLite connection's ``info``: whether query_only is on, and the mode the
# next BEGIN is for (set by ``Database`` just before it; see ``_sqlite_begin``). A flag in
# ``info`` rather than an execution option: setting an option on a kept connection at each
# switch between reading and writing dispatched events (~3% of an encrypted CreateVolume).
_READ_ONLY = "ebscrypt_read_only"
_NEXT_READ_ONLY = "ebscrypt_next_read_only"

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


class WalGroupSync:
    """Group commit for a SQLite file database in WAL mode (issue 15).

    Connections run with ``synchronous=NORMAL``: a commit appends its frames to the WAL
    with write(2) (they survive kill -9: the kernel holds them) but does not fsync. Before
    ``Database.begin()`` returns to its caller — before any write is acknowledged — it
    calls :meth:`after_commit`, which makes every commit so far durable with one fsync of
    the WAL: the first waiter leads, and the commits that finished while its fsync ran
    share the next one. The fsync happens after the write lock is released, so other
    writers commit meanwhile: with several clients, one fsync serves many transactions.
    Checkpoints (which copy WAL frames into the database file) fsync the WAL first and
    the database after, under NORMAL as under FULL.

    A reader may see a commit whose fsync is still running (as with any group commit);
    nothing that depends on it is acknowledged before that fsync: a later write's commit
    comes after it in the WAL, and its own sync covers both.
    """

    def __init__(self, db_path: str) -> None:
        self.wal_path = db_path + "-wal"
        self.db_path = db_path
        self._cv = threading.Condition()
        self._committed = 0  # commits counted (each after its COMMIT returned)
        self._synced = 0  # every commit up to this one is durable
        self._syncing = False
        self._fd: int | None = None
        self.fsyncs = 0  # for tests and benchmarks: fsyncs made

    def after_commit(self) -> None:
        self.wait_durable(self.note_commit())

    # A commit can also be made durable by a flush of the whole file system (``syncfs``)
    # that someone else issues anyway: the block engine's one flush per group covers its
    # objects and the WAL frames of its entries (engines/blocks/engine.py). Such a caller
    # commits with ``Database.begin(durable=False)`` (counted, not waited for), takes
    # :meth:`commits` just before its syncfs and, once the syncfs returned, reports it with
    # :meth:`mark_durable`; nothing is acknowledged before that.

    def note_commit(self) -> int:
        """Count a commit that returned (its frames are in the WAL, maybe not durable yet);
        returns its number, for :meth:`wait_durable`."""
        with self._cv:
            self._committed += 1
            return self._committed

    def commits(self) -> int:
        """How many commits were counted so far (each had returned when counted)."""
        with self._cv:
            return self._committed

    def mark_durable(self, upto: int) -> None:
        """A flush of the whole file system holding the WAL, started after ``upto`` commits
        were counted, has returned: every one of them is durable."""
        with self._cv:
            if upto > self._synced:
                self._synced = upto
                self._cv.notify_all()

    def wait_durable(self, mine: int) -> None:
        """Return once commit number ``mine`` (and every one before it) is durable: lead an
        fdatasync of the WAL, or wait for the one in flight and share the next."""
        with self._cv:
            while self._synced < mine:
                if self._syncing:
                    self._cv.wait()
                    continue
                self._syncing = True
                target = self._committed  # every commit counted so far has returned
                self._cv.release()
                try:
                    self._fsync()
                except BaseException:
                    self._cv.acquire()
                    self._syncing = False
                    self._cv.notify_all()
                    raise  # not acknowledged: the caller fails (the next sync may succeed)
                self._cv.acquire()
                self._syncing = False
                self._synced = max(self._synced, target)
                self._cv.notify_all()

    def _fsync(self) -> None:
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            # No WAL: the last connection closed and checkpointed it (synced) into the
            # database file; sync that file to be sure.
            fd = os.open(self.db_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.fsyncs += 1
            return
        if self._fd is not None and os.fstat(self._fd).st_ino != st.st_ino:
            os.close(self._fd)  # the WAL was deleted and made anew: sync the new one
            self._fd = None
        if self._fd is None:
            self._fd = os.open(self.wal_path, os.O_RDONLY)
        # fdatasync, as SQLite's own sync of the WAL on Linux: the appended frames and the
        # file size (what a reader needs) are made durable, the timestamps are not — one
        # journal commit fewer per group on ext4/xfs.
        os.fdatasync(self._fd)
        self.fsyncs += 1

    def close(self) -> None:
        with self._cv:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _sqlite_file(url: str) -> str | None:
    """The database file of a ``sqlite:///path`` URL; None for memory or URI forms."""
    if ":memory:" in url or "mode=memory" in url or not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return path or None


def _group_commit_enabled() -> bool:
    # EBSCRYPT_SQLITE_GROUP_COMMIT=0: every commit fsyncs inside the write lock (FULL).
    return os.environ.get("EBSCRYPT_SQLITE_GROUP_COMMIT", "1") != "0"


class _Slot:
    """SQLite: a connection one thread keeps checked out between its transactions — one
    for its reads, one for its writes (:class:`_ThreadSlots`).

    A transaction through SQLAlchemy's pool paid a checkout and a check-in (with their
    events and the reset on return) every time: ~40% of an empty ``begin()`` (bench/README.md
    section M7). The thread's connection holds no transaction (no snapshot, no lock)
    between uses, so each BEGIN sees every commit made before it, by this process or
    another one on the same file (``serve --workers N``). A transaction opened while the
    thread's connection of that mode is in use (a read inside a read) takes one from the
    pool. The slot alone holds the connection: when the thread ends (its thread-local
    storage goes) or the Database is dropped undisposed, the slot goes and gives it back
    to the pool."""

    __slots__ = ("conn", "busy")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.busy = False

    def __del__(self) -> None:
        conn = self.conn
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except Exception:  # pragma: no cover - at interpreter or thread teardown
                pass


class _ThreadSlots(threading.local):
    """A thread's two kept connections, one per mode. Not one switched between modes:
    ``PRAGMA query_only`` (as every flag PRAGMA) expires all of the connection's prepared
    statements, so each switch made SQLite parse and plan every statement of the next
    transactions again (a one-row select by key: 25 µs, 100 µs after a switch;
    bench/README.md section M8). A mutating call reads, then writes: two switches a call."""

    read: _Slot | None = None
    write: _Slot | None = None


# Kept connections (all Databases): a BEGIN on one that Database did not announce is a
# statement run on a connection after its ``with db.read()/begin()`` block ended — an
# error, as on a pooled connection closed at the block's end (see ``_sqlite_begin``).
_KEPT: weakref.WeakSet[Connection] = weakref.WeakSet()


class Database:
    """A handle on the metadata store. ``begin()`` yields a connection in a transaction."""

    # How many times ``retrying`` runs a transaction that keeps conflicting.
    CONFLICT_ATTEMPTS = 20

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # Other processes write this database too: always so on PostgreSQL; on a SQLite file
        # when ``serve --workers N`` runs several API processes on it (set by build_runtime).
        # Whoever assumes that its process alone writes (job recovery at start, the orphan
        # sweep's age, waiting for a job's in-process event) reads this.
        self.shared = not self.is_sqlite
        self.global_write_lock = not self.is_sqlite and os.environ.get("EBSCRYPT_PG_GLOBAL_WRITE_LOCK") == "1"
        self.group_sync: WalGroupSync | None = None
        # SQLite: this process's writers queue here before BEGIN IMMEDIATE. Without it,
        # threads that meet the write lock wait in SQLite's busy handler, which sleeps
        # 1, 2, 5, 10… ms between tries — with 16 clients, most of each call is that
        # sleep. Other processes on the same file still wait through busy_timeout.
        # Reentrant: a nested begin() in one thread behaves as before (SQLite decides).
        self._writer = threading.RLock() if self.is_sqlite else None
        self._slots = _ThreadSlots()
        # every live thread's kept connection (held by its slot only), closed by dispose()
        self._kept_all: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._kept_lock = threading.Lock()
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                **_sqlite_pool_args(url),
            )
            path = _sqlite_file(url)
            if path is not None and _group_commit_enabled():
                self.group_sync = WalGroupSync(path)
                event.listen(self.engine, "connect", _sqlite_pragmas_group)
            else:
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
    def begin(self, *, isolation: str | None = None, durable: bool = True) -> Iterator[Connection]:
        """A connection inside a read-write transaction: committed on success, rolled back
        on error. Serializable: the engines' check-then-write code is safe (SQLite: the
        write lock from BEGIN IMMEDIATE; PostgreSQL: SERIALIZABLE, so two writers never both
        pass a "does it exist?" check — one of them fails with a conflict, see
        :func:`is_conflict`, and is run again).

        ``isolation="READ COMMITTED"`` (PostgreSQL only): for short transactions whose
        correctness rests on row locks and conditional updates alone (job claims, lease
        renewals), which must not fail on a conflict.

        ``durable=False`` (SQLite with group commit only; elsewhere the commit is durable as
        usual): return without waiting for the commit to be durable — the caller makes it
        durable before acknowledging anything (``group_sync.wait_durable(commits())``, or a
        syncfs reported with ``group_sync.mark_durable``; see :class:`WalGroupSync`).
        """
        may_block()  # a handler on the event loop goes to a worker thread first (ebscrypt/blocking.py)
        if self._writer is not None:
            # Bounded: a writer that waits on another thread's write (a bug) still gets
            # SQLite's busy_timeout error, as before, instead of hanging.
            queued = self._writer.acquire(timeout=30)
            try:
                with self._sqlite_connection(read_only=False) as conn, conn.begin():
                    driver = conn.connection.driver_connection
                    changes = driver.total_changes  # type: ignore[union-attr]
                    yield conn
                    # a transaction that changed no row (a claim that found nothing, a
                    # check) wrote nothing to the WAL: nothing to make durable
                    wrote = driver.total_changes != changes  # type: ignore[union-attr]
            finally:
                if queued:
                    self._writer.release()
            if self.group_sync is not None and wrote:  # committed: durable before the caller goes on
                if durable:
                    self.group_sync.after_commit()
                else:
                    self.group_sync.note_commit()  # the caller's own flush makes it durable
            _COMMITS.set(_COMMITS.get() + 1)
            return
        with self.engine.connect() as conn:
            if self.global_write_lock:
                isolation = "READ COMMITTED"  # the former model: the lock orders writers
            conn = conn.execution_options(isolation_level=isolation or "SERIALIZABLE")
            with conn.begin():
                if self.global_write_lock:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITE_LOCK_KEY})
                yield conn
        _COMMITS.set(_COMMITS.get() + 1)

    def retrying(self, fn: Callable[[Connection], T], *, isolation: str | None = None) -> T:
        """``fn(conn)`` in a write transaction, run again (after a short random pause) when
        it loses a race (:func:`is_conflict`), up to ``CONFLICT_ATTEMPTS`` times. ``fn`` must
        have no effect outside the transaction."""
        for attempt in range(self.CONFLICT_ATTEMPTS):
            try:
                with self.begin(isolation=isolation) as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if not is_conflict(exc) or attempt == self.CONFLICT_ATTEMPTS - 1:
                    raise
            conflict_backoff(attempt)
        raise AssertionError("unreachable")

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
        with self._sqlite_connection(read_only=True) as conn, conn.begin():  # _sqlite_begin: deferred BEGIN
            yield conn

    @contextmanager
    def _sqlite_connection(self, *, read_only: bool) -> Iterator[Connection]:
        """This thread's kept connection for the mode (:class:`_Slot`), or one from the pool
        when it is in use; marked for ``_sqlite_begin`` as reading (query_only, deferred
        BEGIN) or writing (BEGIN IMMEDIATE)."""
        slot = self._slot(read_only)
        if slot.busy:  # nested in a transaction of this thread in the same mode: another connection
            with self.engine.connect() as conn:
                conn.connection.info[_NEXT_READ_ONLY] = read_only
                yield conn
            return
        conn = slot.conn
        if conn is None or conn.closed or conn.in_transaction():
            if conn is not None:  # closed by dispose, or left in a transaction: not reused
                self._release(conn)
            conn = slot.conn = self.engine.connect()
            with self._kept_lock:
                self._kept_all.add(conn)
            _KEPT.add(conn)
        conn.connection.info[_NEXT_READ_ONLY] = read_only
        slot.busy = True
        try:
            yield conn
        finally:
            slot.busy = False
            if conn.invalidated or conn.in_transaction():
                # not a clean end (a broken connection, a transaction left open): this
                # thread's next transaction starts from a fresh connection
                slot.conn = None
                self._release(conn)

    def _slot(self, read_only: bool) -> _Slot:
        """This thread's slot for reading or for writing (made on first use)."""
        slots = self._slots
        slot = slots.read if read_only else slots.write
        if slot is None:
            slot = _Slot()
            if read_only:
                slots.read = slot
            else:
                slots.write = slot
        return slot

    def _release(self, conn: Connection) -> None:
        """A kept connection given back (it broke, or dispose)."""
        with self._kept_lock:
            self._kept_all.discard(conn)
        _KEPT.discard(conn)
        if not conn.closed:
            conn.close()

    def dispose(self) -> None:
        with self._kept_lock:
            kept = list(self._kept_all)
        for conn in kept:  # the threads' kept connections: back to the pool, then closed with it
            self._release(conn)
        self.engine.dispose()
        if self.group_sync is not None:
            self.group_sync.close()

    def _migrate(self) -> None:
        metadata = load_tables()
        # READ COMMITTED: each statement sees what was committed before it, so a server that
        # waited for the lock below sees the schema the first one made.
        with self.begin(isolation="READ COMMITTED") as conn:
            if not self.is_sqlite:
                # Several servers starting at once on one database: one creates or upgrades
                # the schema, the others then find it current.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITE_LOCK_KEY})
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
    # Last in, first out: the connection used last (its page cache and prepared statements
    # warm) serves the next request, not the one idle longest.
    return {"poolclass": QueuePool, "pool_size": SQLITE_POOL_SIZE, "max_overflow": -1, "pool_use_lifo": True}


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


def _sqlite_pragmas_group(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
    _sqlite_pragmas(dbapi_conn, record)
    # NORMAL: commits are not fsync'd here; Database.begin() syncs the WAL after the commit
    # (WalGroupSync), outside the write lock and shared by concurrent writers.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN (IMMEDIATE), so two writers never deadlock
    # upgrading read locks, and wait for each other through busy_timeout. Readers use a
    # deferred BEGIN: under WAL they read a snapshot and never wait for a writer.
    # Readers also run with query_only: a write slipped into a read path is an immediate
    # error (a deferred transaction that writes would otherwise fail only under contention,
    # SQLITE_BUSY when upgrading its snapshot). The pooled connection remembers its mode,
    # so the PRAGMA runs only when a connection switches between reading and writing —
    # rare: a thread keeps one connection per mode (_ThreadSlots), because the switch
    # expires every statement the connection had prepared.
    pooled = conn.connection
    # Taken, not read: a BEGIN not announced by Database (engine.begin() in a tool or a
    # test) is a write transaction, as before.
    announced = pooled.info.pop(_NEXT_READ_ONLY, None)
    if announced is None and conn in _KEPT:
        # a statement on a thread's kept connection after its block ended (a pooled
        # connection was closed there, and such a use failed): refused, not run in a
        # write transaction that would hold the lock until the thread's next one
        raise ResourceClosedError("This Connection is closed (used after its transaction block ended)")
    read_only = bool(announced)
    if pooled.info.get(_READ_ONLY, False) != read_only:
        pooled.driver_connection.execute(f"PRAGMA query_only={int(read_only)}")  # type: ignore[union-attr]
        pooled.info[_READ_ONLY] = read_only
    if read_only:
        # Straight to the driver: a deferred BEGIN takes no lock (it cannot fail on one),
        # and SQLAlchemy's statement machinery cost a read ~25 of its ~70 µs (issue 15, T).
        pooled.driver_connection.execute("BEGIN")  # type: ignore[union-attr]
        return
    # Straight to the driver too (SQLAlchemy's statement machinery was ~30% of an empty
    # write transaction: section M7); a lock wait that times out (another process held the
    # write lock past busy_timeout) is wrapped as SQLAlchemy wraps it: the same
    # OperationalError as before.
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        pooled.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
    except dbapi_error as exc:
        raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, dbapi_error) from exc
