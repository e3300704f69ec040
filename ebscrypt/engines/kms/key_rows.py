"""Key rows read from the database, reused until the database changes (issue 15).

Every key use reads its key row (state, policy, usage, current material) to check it.
On a SQLite file that read — a pooled connection, a transaction, a statement — cost
more than the use itself. :class:`KeyRows` keeps each row with the database's
``PRAGMA data_version`` at the time it was read, asked of a connection of its own:
SQLite changes that number whenever any other connection (this process's writers, or
another process on the same file) commits. A row is reused only while the number is
unchanged, so no committed change — a DisableKey, a PutKeyPolicy, a rotation, a
deletion — is ever checked against an older row; the question costs ~5 µs.

The number is taken *before* the row is read: a commit landing between the two makes
the row stale at once (conservative), never current.

Most commits touch no key: every CreateVolume commits, and with the number alone the
next use of a key re-read its row through a pooled connection (~10% of an encrypted
CreateVolume's server CPU, bench/README.md section K6). So a row also keeps its stored
columns as SQLite returned them (read in the same transaction as the row itself): when
the number has moved, the probe connection reads those raw columns again (one statement,
no pool, no type processing) and the remembered row is kept only if they are equal,
column for column. Equal stored columns give an equal row, whatever changed elsewhere.

Other databases (PostgreSQL, shared by several servers) have no such number: every
read goes to the database, as before. The time-based changes (a deletion date passed,
an automatic rotation due) are decided by the caller on every use, cached row or not.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.kms import kms_key_material, kms_keys

__all__ = ["KeyRows"]

# The key row plus the id of its current backing material (one round trip), built once:
# constructing the statement per call cost more than running it.
_KEY_QUERY = (
    select(kms_keys, kms_key_material.c.material_id.label("current_material_id"))
    .outerjoin(
        kms_key_material,
        and_(kms_key_material.c.key_id == kms_keys.c.key_id, kms_key_material.c.is_current.is_(True)),
    )
    .where(kms_keys.c.key_id == bindparam("key_id"))
)

# The same statement as SQLite runs it (one positional parameter: the key id), for reads
# of the raw stored columns: on the probe connection, and beside the row on the slow path.
_KEY_SQL = str(_KEY_QUERY.compile(dialect=sqlite_dialect.dialect()))

# Bound on the rows kept (a process using more keys than this reads the rest each time).
MAX_ROWS = 10_000


def _sqlite_path(db: Database) -> str | None:
    if not db.is_sqlite:
        return None
    path = make_url(db.url).database
    if not path or path == ":memory:" or "mode=memory" in db.url:
        return None
    return path


class KeyRows:
    """The key row of a key id, from memory while the database is unchanged."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        # key id -> (data_version when last known current, raw stored columns, row)
        self._rows: dict[str, tuple[int, tuple[Any, ...], Any]] = {}
        self._probe: sqlite3.Connection | None = None
        path = _sqlite_path(db)
        if path is not None:
            # Its own connection: data_version reports commits of *other* connections.
            self._probe = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._probe.execute("PRAGMA query_only=1")

    def _version(self) -> int | None:
        if self._probe is None:
            return None
        with self._lock:
            row = self._probe.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def get(self, key_id: str) -> Any:
        """The key row (with ``current_material_id``), or None if there is no such key."""
        version = self._version()
        if version is not None:
            hit = self._rows.get(key_id)
            if hit is not None:
                if hit[0] == version:
                    return hit[2]
                # Something was committed since: the row is kept if its stored columns
                # are unchanged (read after ``version`` was taken: conservative).
                if self._raw(key_id) == hit[1]:
                    self._rows[key_id] = (version, hit[1], hit[2])
                    return hit[2]
        with self.db.read() as conn:
            raw = conn.exec_driver_sql(_KEY_SQL, (key_id,)).first() if version is not None else None
            row = self.read(conn, key_id)
        if version is not None and row is not None and raw is not None:
            if len(self._rows) >= MAX_ROWS:
                self._rows.clear()
            self._rows[key_id] = (version, tuple(raw), row)
        return row

    def _raw(self, key_id: str) -> tuple[Any, ...] | None:
        """The key's stored columns now, as SQLite returns them (None: no such key)."""
        with self._lock:
            assert self._probe is not None
            cursor = self._probe.execute(_KEY_SQL, (key_id,))
            raw = cursor.fetchone()
            cursor.close()  # ends the statement: no read snapshot left open
        return None if raw is None else tuple(raw)

    @staticmethod
    def read(conn: Any, key_id: str) -> Any:
        """The key row as ``conn`` sees it (inside a transaction: never from memory)."""
        return conn.execute(_KEY_QUERY, {"key_id": key_id}).first()

    def close(self) -> None:
        with self._lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
            self._rows.clear()
