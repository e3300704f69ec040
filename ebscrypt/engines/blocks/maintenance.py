"""Maintenance: the engine's background thread and what it runs.

``add_periodic`` runs a task about every so many seconds (errors logged, never fatal);
``start_maintenance`` schedules the garbage ``sweep`` (objects dropped from every layer,
deleted after a grace period so that a read that resolved an entry just before still
finds its object) and ``sweep_orphans`` (objects a crash left stored but never recorded).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import delete, select

from ebscrypt.engines.blocks.store import ObjectStore
from ebscrypt.storage.db import Database, as_utc
from ebscrypt.storage.tables.blocks import blk_entries, blk_garbage

log = logging.getLogger("ebscrypt.blocks")

# The orphan sweep never deletes an object younger than this: a write stores its object,
# then records it in one transaction, seconds later at most. With a shared store the
# object's time is the store's clock (S3 LastModified) against this host's: an hour
# absorbs any clock skew NTP leaves.
ORPHAN_MIN_AGE_SECONDS = 3600.0


class MaintenanceOperations:
    """Mixin of :class:`~ebscrypt.engines.blocks.engine.BlockEngine` (uses its ``db``,
    ``store``, ``now()``, ``gc_grace_seconds`` and its thread state)."""

    # What this mixin uses of its host, declared for the type checker only (annotations
    # without a value, and stubs under TYPE_CHECKING, create nothing at run time):
    # BlockEngine.__init__ sets the attributes and defines ``now``.
    db: Database
    store: ObjectStore
    gc_grace_seconds: float
    _pool_lock: threading.Lock  # (also guards the maintenance thread's start)
    _periodic: dict[str, tuple[Callable[[], Any], float]]  # name -> (task, every so many seconds)
    _periodic_last: dict[str, float]  # name -> time.monotonic() of its last run
    _maint: threading.Thread | None
    _stop: threading.Event

    if TYPE_CHECKING:

        def now(self) -> datetime: ...

        def unpublished_objects(self) -> set[str]: ...

        def recycling_objects(self) -> set[str]: ...

    def add_periodic(self, name: str, fn: Callable[[], Any], seconds: float) -> None:
        """Run ``fn`` about every ``seconds`` in the engine's maintenance thread (once per
        name; the garbage sweep runs there too). Errors are logged, never fatal."""
        with self._pool_lock:
            if name not in self._periodic:
                self._periodic[name] = (fn, seconds)
            if self._maint is None and not self._stop.is_set():
                self._maint = threading.Thread(target=self._maintain, name="ebscrypt-blocks-maint", daemon=True)
                self._maint.start()

    def start_maintenance(self) -> None:
        """Start the maintenance thread: garbage sweep, and orphans left by crashes."""
        self.add_periodic("sweep", self.sweep, max(5.0, self.gc_grace_seconds / 2))
        # Objects older than this engine were written by an earlier process: none of them can
        # be an in-flight write, so the first sweep (right after start) takes every
        # unreferenced one; later objects wait an hour, long past any write still to commit.
        # (Two seconds of margin: file mtimes come from a coarser clock than time.time().)
        # Not so when other processes share the objects (an S3 store, or a database other
        # processes may use): an object older than this process may be another one's write
        # between store and commit, so every sweep keeps objects younger than an hour.
        started = time.time() - 2.0
        if self.shared_objects():
            self.add_periodic("orphans", lambda: self.sweep_orphans(ORPHAN_MIN_AGE_SECONDS), 900.0)
        else:
            self.add_periodic(
                "orphans", lambda: self.sweep_orphans(min(ORPHAN_MIN_AGE_SECONDS, time.time() - started)), 900.0
            )

    def shared_objects(self) -> bool:
        """Other processes may write objects to this store (a shared store, or a database
        that is not this process's own: PostgreSQL, or a SQLite file of ``serve --workers``)."""
        return bool(getattr(self.store, "shared", False)) or self.db.shared

    def _maintain(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for name, (fn, seconds) in list(self._periodic.items()):
                last = self._periodic_last.get(name)  # None: never run, so due now
                if last is not None and now - last < seconds:  # (monotonic time may start near 0)
                    continue
                self._periodic_last[name] = now
                try:
                    fn()
                except Exception:
                    log.exception("periodic task %s failed", name)

    def sweep(self, grace_seconds: float | None = None) -> int:
        """Delete garbage objects older than the grace period. Returns how many."""
        grace = self.gc_grace_seconds if grace_seconds is None else grace_seconds
        cutoff = self.now() - timedelta(seconds=grace)
        with self.db.read() as conn:
            rows = conn.execute(select(blk_garbage)).all()
        due = [r.object_key for r in rows if as_utc(r.since) <= cutoff]
        for key in due:
            self.store.delete(key)
        if due:
            # READ COMMITTED: every process sweeps; two deleting the same rows is no conflict
            with self.db.begin(isolation="READ COMMITTED") as conn:
                conn.execute(delete(blk_garbage).where(blk_garbage.c.object_key.in_(due)))
        return len(due)

    def sweep_orphans(self, min_age_seconds: float = ORPHAN_MIN_AGE_SECONDS) -> int:
        """Delete stored objects no entry references (left by a crash between store and
        commit) once older than ``min_age_seconds``, so in-flight writes are never hit.

        The listing is taken before the database read: an object listed (so stored before
        the read) that a write recorded before the read is seen referenced; one recorded
        after it was stored less than ``min_age_seconds`` before, and is not a candidate."""
        cutoff = time.time() - min_age_seconds
        candidates = [(k, m) for k, m in self.store.keys() if m <= cutoff]
        trim_free = getattr(self.store, "trim_free", None)
        removed = trim_free() if trim_free is not None else 0  # recycled files an earlier process kept
        # Objects this process staged and will record at its writer's next flush (or
        # recycle); read before the entries (one published in between is then seen referenced).
        staged = self.unpublished_objects() | self.recycling_objects()
        with self.db.read() as conn:
            referenced = {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}
            garbage = {r.object_key for r in conn.execute(select(blk_garbage.c.object_key))}
        for key, _ in candidates:
            name = key.split("/", 1)[1]
            if name.startswith(".tmp-"):
                remove_raw = getattr(self.store, "remove_raw", None)
                if remove_raw:
                    remove_raw(key)
                    removed += 1
                continue
            if key not in referenced and key not in garbage and key not in staged:
                self.store.delete(key)
                removed += 1
        return removed
