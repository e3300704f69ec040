"""The block engine: encrypted 512 KiB blocks, snapshot lineage, sharing and re-encryption.

Public surface (``runtime.blocks``)::

    DataKey(key_id, plaintext)                       # plaintext only ever in memory
    write_block(owner_id, index, data, key, check=None)  # data: exactly 524288 bytes; durable on return;
                                                     #   check: RecordCheck, run in the recording transaction
    read_block(owner_id, index, key) -> bytes        # zeros when never written
    read_sectors(owner_id, index, offset, length, key) -> bytes  # part of a block: reads and checks only its sectors
    block_refs(owner_id, indexes) -> {index: BlockRef | None}  # several lookups in one read
    block_refs_between(owner_id, start, stop) -> {index: BlockRef | None}  # a range of them
    open_ref_range(ref, key, offset, length) -> bytes  # part of a resolved entry (its sectors)
    try_open_ref_range(ref, key, offset, length, readers) -> bytes | None  # the same if no wait is needed
    try_open_ref_into(ref, key, offset, dest, readers) -> bool  # the same into a buffer (hot objects: one preadv)
    hot_reads(key, readers) -> fn(ref, offset, dest) -> bool    # try_open_ref_into for a batch (set up once)
    open_ref(ref, key) -> bytes                      # a resolved entry's plaintext (ObjectMissing if collected)
    share(src_owner_id, dst_owner_id)                # same data key, O(1), no data moved; idempotent
    reencrypt(src, src_key, dst, dst_key, progress)  # full copy under another key; resumable
    list_blocks(owner_id, key=None) -> [(index, checksum)]
    changed_blocks(a, b) -> [ChangedBlock]           # from lineage; UnrelatedLineage if none
    release(owner_id)                                # drop an owner; objects GC'd safely; cancels its copy
    stage_blocks(owner_id, items, key) -> [StagedBlock]  # sealed and written, not durable, not recorded
    publish_blocks(owner_id, staged)                 # one store flush + one transaction; durable on return
    discard_staged(staged)                           # staged objects never to be published
    # also: block_ref / list_block_refs / read_block_checked / own_blocks (EBS direct APIs),
    # exists, sweep / sweep_orphans, add_periodic, close

Owners are volume or snapshot ids; ``key=None`` means an unencrypted resource. Errors:
:class:`BlockIntegrityError` (opaque: tampered, truncated, moved, replaced by another
object or wrong key — never wrong bytes), :class:`UnrelatedLineage`,
:class:`CopyInProgress`, :class:`CopyCancelled`, :class:`KeyMismatch`.

Model: block *entries* live in *layers*; an owner points at its mutable head layer, and
a layer may have a parent. ``share`` freezes the source's head (it becomes the common
parent) and gives both owners a fresh empty head. Objects in the store are immutable,
each referenced by exactly one entry; a layer lives while an owner's head, an owner's
pin (a copy in progress reads from it) or a child layer references it, and a frozen
layer left with one child is merged into it (blocks it shadowed are reclaimed).
Unreferenced objects go to a garbage list and are deleted after a grace period, so a
read that resolved an entry just before it was dropped still finds its object.

Concurrent ``write_block`` calls share their flushes (group commit, in two pipelined
stages: one flush of the group's objects, then one transaction for their entries).
``reencrypt`` runs in worker processes (AES-GCM holds the GIL) with preallocated
buffers, one ``syncfs`` per batch, and records progress per batch so a restarted copy
skips finished blocks.

Where each part lives (``BlockEngine`` puts them together; import everything from here):

- ``engine`` (this module): the engine's lifecycle, ``write_block`` (group commit),
  ``read_block`` and the listings (``block_ref``, ``list_blocks``, ``own_blocks`` ...).
- ``lineage``: owners and layer chains, ``share``, ``changed_blocks``, ``release``, the
  garbage list and compaction.
- ``reencrypt``: ``reencrypt`` (the copy pipeline, resume, cancellation) and its worker pool;
  ``workers`` is what runs in the worker processes.
- ``maintenance``: ``add_periodic`` / ``start_maintenance``, ``sweep``, ``sweep_orphans``.
- ``errors``, ``records``: the exceptions and the ``BlockRef`` / ``ChangedBlock`` / ``Owner``
  records; ``crypto`` (``DataKey``, ``BlockCipher``), ``store`` (object store). The EBS
  direct APIs over this engine are :mod:`ebscrypt.engines.ebs`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Hashable, Iterable, MutableMapping, Sequence, cast

from sqlalchemy import Connection, bindparam, delete, insert, select

from ebscrypt.clock import Clock
from ebscrypt.engines.blocks.crypto import (
    BLOCK_SIZE,
    LAZY_CHECKSUM,
    MAX_OBJECT_SIZE,
    ZERO_BLOCK,
    ZERO_CHECKSUM,
    BlockCipher,
    DataKey,
    SectorReader,
    is_zero_block,
    sector_span,
    sha256_b64,
    split_plain_checksum,
)
from ebscrypt.engines.blocks.errors import (
    BlockError,
    BlockIntegrityError,
    CopyCancelled,
    CopyInProgress,
    KeyMismatch,
    UnrelatedLineage,
)
from ebscrypt.engines.blocks.maintenance import MaintenanceOperations
from ebscrypt.engines.blocks.records import BlockRef, ChangedBlock, Owner, check_index, delete_quietly, ref_from_row
from ebscrypt.engines.blocks.reencrypt import CopyOperations
from ebscrypt.engines.blocks.store import ObjectMissing, ObjectStore, StagingStore, new_object_key
from ebscrypt.storage.db import Database
from ebscrypt.storage.prepared import PreparedRead, PreparedWrite
from ebscrypt.storage.tables.blocks import blk_entries, blk_owners

__all__ = [
    "BLOCK_SIZE",
    "BlockEngine",
    "BlockError",
    "BlockIntegrityError",
    "BlockRef",
    "ChangedBlock",
    "CopyCancelled",
    "CopyInProgress",
    "DataKey",
    "KeyMismatch",
    "RecordCheck",
    "UnrelatedLineage",
]

log = logging.getLogger("ebscrypt.blocks")
_NOT_KNOWN = object()
_SMALL_RANGE = 64 * 1024  # open_ref_range_into: below this, an unknown object is read the way of open_ref_range
# A thread's buffer for reads that must not wait (_nowait_buffer): the sectors of a small read
# (up to 64 KiB: five 16 KiB sectors with their tags) and room to decrypt them.
_HOT_BUFFER = 256 * 1024

# The group commit's statements, built once: building a statement (and its cache key)
# cost SQLAlchemy more than SQLite takes to run it (issue 15, bench/README.md section J).
_OLD_ENTRIES = select(blk_entries.c.block_index, blk_entries.c.object_key).where(
    blk_entries.c.layer_id == bindparam("layer"), blk_entries.c.block_index.in_(bindparam("indexes", expanding=True)))
_DELETE_ENTRIES = delete(blk_entries).where(
    blk_entries.c.layer_id == bindparam("layer"), blk_entries.c.block_index.in_(bindparam("indexes", expanding=True)))
# A small group (the EBS direct upload's: 1-8 blocks of one layer) looks up the entries it
# replaces one primary-key read each and inserts its entries with one executemany, on the
# driver (storage/prepared.py): SQLAlchemy's expanding IN and multi-row insert were the
# largest part of the group's own CPU (issue 15, E7's profile). Larger groups (an attached
# volume's write-back, up to GROUP_MAX) keep the one IN query.
_OLD_ENTRY_READ = PreparedRead(select(blk_entries.c.object_key).where(
    blk_entries.c.layer_id == bindparam("layer"), blk_entries.c.block_index == bindparam("index")))
_INSERT_ENTRIES = PreparedWrite(insert(blk_entries))
_SMALL_GROUP = 8
_HEAD_ENTRY = select(blk_entries).join(blk_owners, blk_owners.c.head_id == blk_entries.c.layer_id).where(
    blk_owners.c.owner_id == bindparam("owner_id"), blk_entries.c.block_index == bindparam("index"))
_HEAD_ENTRY_READ = PreparedRead(_HEAD_ENTRY)  # GetSnapshotBlock's per-block read (storage/prepared.py)

# A map over the blocks to seal (``map`` or a thread pool's): write_blocks seals in parallel.
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


# How long an attached volume's superseded or dropped objects wait before their files are
# reused (see publish_blocks). Not for safety — the store never reuses a file a read is
# using, and a read that comes later finds no object and looks the block up again
# (ObjectMissing, as after a compaction) — but so that such second looks stay rare: a
# read resolves a block under its volume's lock and reads it moments later. How many may
# wait: beyond it the oldest are deleted.
RECYCLE_GRACE = 1.0
RECYCLE_QUEUE = 8192


@dataclass(frozen=True)
class RecordCheck:
    """A condition under which a ``write_block``'s entry may be recorded, checked inside
    the group commit's own write transaction, just before the entry: ``fn(conn)`` raises to
    refuse the write (its caller gets that exception; nothing is recorded, its object is
    deleted). The engine knows nothing of what is checked (the EBS direct APIs: the
    snapshot still ``pending``, its KMS key's authorization unchanged).

    Why in the commit's transaction: a check in a read transaction of its own before the
    write cost each block a transaction (pool checkout, BEGIN, COMMIT: more than its
    statements, issue 15), and what it checked could change before the entry was
    committed; here it holds at the commit. ``scope``: checks with equal scopes give equal
    outcomes within one transaction, so a group of blocks of one upload runs it once."""

    scope: Hashable
    fn: Callable[[Connection], None]


@dataclass
class _PendingWrite:
    """One ``write_block`` call in the group-commit queue; the leader fills done/error."""

    owner_id: str
    index: int
    key: DataKey | None
    object_key: str | None
    checksum: str  # as stored
    plain_checksum: str = ""  # the base64 SHA-256 of the plaintext (write_block's answer)
    staged: Any = None
    flushed: bool = False  # its object is durable (or it has none to flush)
    done: bool = False  # recorded (or failed: error)
    error: BaseException | None = None
    # The one-flush path (BlockEngine._one_flush_commit):
    deferred: bool = False  # it replaces an entry: recorded only once its object is durable
    layer_id: str | None = None  # where its entry was committed (to withdraw it on a failed flush)
    synced: bool = False  # the flush stage ran on it (object and committed entry durable)
    check: RecordCheck | None = None  # run in the recording transaction, before the entry


@dataclass
class StagedBlock:
    """A block sealed and written by :meth:`BlockEngine.stage_blocks`, not yet durable
    and not recorded: only its writer knows it (``ref`` reads it back with ``open_ref``)
    until :meth:`BlockEngine.publish_blocks` records it."""

    index: int
    ref: BlockRef  # object_key None: an all-zero block (an entry without an object)
    item: _PendingWrite = field(repr=False)
    publishing: bool = False  # taken by a publication in flight (its writer's bookkeeping)


class _GroupStage:
    """One stage of the block group commit: callers queue items; one of them at a time —
    the leader — runs ``work`` over every item queued (up to ``limit``), while the next
    group gathers. ``mark`` names the item's flag the stage sets when done with it.

    Two stages (flush the objects, then record their entries) run as a pipeline: while
    one group's entries commit, the next group's objects flush.

    Wake-ups are targeted: a caller that cannot lead waits on a gate of its own (a lock
    it holds until a leader releases it), and a leader that finishes opens the gates of
    its group's callers and of one more — the oldest still queued, which leads next —
    instead of waking every waiter to re-check (``Condition.notify_all``). With the CLI's
    8 writers each group woke up to 7 threads per stage, most of them to sleep again: on
    this project's VMs a futex wake-up and its context switch cost tens of µs of CPU
    (issue 15, bench/README.md section E6).
    """

    gate: Callable[[], Any] = threading.Lock  # (tests count the wake-ups through it)

    def __init__(self, work: Callable[[list["_PendingWrite"]], None], mark: str, limit: int) -> None:
        self._work = work
        self._mark = mark
        self._limit = limit
        self._queue: list[_PendingWrite] = []
        self._busy = False  # a leader is running (or has been handed the lead)
        self._lock = threading.Lock()
        # The gate of each waiting caller's item (by id): locked while it waits.
        self._gates: dict[int, Any] = {}
        self.groups = 0

    def run_all(self, items: list["_PendingWrite"]) -> None:
        """Queue ``items`` together and return once the stage ran on every one of them
        (the queue is first in, first out: when the last is done, so is every one before)."""
        with self._lock:
            self._queue.extend(items[:-1])
        self.run(items[-1])

    def run(self, item: "_PendingWrite") -> None:
        """Return once a leader (maybe this caller) ran the stage on ``item``."""
        with self._lock:
            self._queue.append(item)
            lead = not self._busy
            if lead:
                self._busy = True
            else:
                gate = self._gates[id(item)] = self.gate()
                gate.acquire()
        if not lead:
            gate.acquire()  # opened by a leader: our item is done, or we lead next
            if getattr(item, self._mark):
                return
        self._lead(item)

    def _lead(self, item: "_PendingWrite") -> None:
        """[the leader] Run groups from the head of the queue until ``item`` is done, then
        hand the lead to the oldest caller still waiting (or give it up)."""
        mark = self._mark
        while True:
            with self._lock:
                batch = self._queue[: self._limit]
                del self._queue[: self._limit]
            try:
                self.groups += 1
                self._work(batch)
            except BaseException as exc:  # the work's own errors are per item; this is all of them
                for it in batch:
                    if it.error is None:
                        it.error = exc
            finally:
                with self._lock:
                    for it in batch:
                        setattr(it, mark, True)
                    opened = [g for g in (self._gates.pop(id(it), None) for it in batch if it is not item)
                              if g is not None]
                    if getattr(item, mark):
                        nxt = self._next_leader()
                        if nxt is None:
                            self._busy = False
                        else:
                            opened.append(nxt)
                for gate in opened:
                    gate.release()
            if getattr(item, mark):
                return

    def _next_leader(self) -> Any:
        """[lock held] The gate of the oldest queued item whose caller waits (items queued
        by ``run_all`` ahead of its last have no gate: their caller waits on the last)."""
        for it in self._queue:
            gate = self._gates.pop(id(it), None)
            if gate is not None:
                return gate
        return None


def _nearest(rows: Sequence[Any], chain: list[str]) -> dict[int, Any]:
    """Of entry rows from the layers of ``chain`` (nearest first), the nearest one of each
    block index: what the block reads as."""
    pos = {layer: i for i, layer in enumerate(chain)}
    best: dict[int, Any] = {}
    for row in rows:
        cur = best.get(row["block_index"])
        if cur is None or pos[row["layer_id"]] < pos[cur["layer_id"]]:
            best[row["block_index"]] = row
    return best


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _old_entries(conn: Connection, layer: str, indexes: list[int]) -> dict[int, str | None]:
    """[a write transaction] The entries of ``layer`` at ``indexes``: index -> object key."""
    if len(indexes) > _SMALL_GROUP:
        return {r.block_index: r.object_key for r in conn.execute(_OLD_ENTRIES, {"layer": layer, "indexes": indexes})}
    old: dict[int, str | None] = {}
    for index in indexes:
        row = _OLD_ENTRY_READ.first(conn, {"layer": layer, "index": index})
        if row is not None:
            old[index] = row["object_key"]
    return old


def _passes(conn: Connection, item: _PendingWrite, passed: set[Hashable]) -> bool:
    """[the recording transaction] Whether ``item``'s :class:`RecordCheck` passes (run once
    per scope: a scope that passed is not run again); a refusal is the item's error. A
    refused scope is run again for each of its items, so that each caller raises an
    exception of its own (one instance raised in several threads would share a traceback)."""
    check = item.check
    if check is None or check.scope in passed:
        return True
    try:
        check.fn(conn)
    except Exception as exc:
        item.error = exc
        return False
    passed.add(check.scope)
    return True


class BlockEngine(CopyOperations, MaintenanceOperations):  # CopyOperations extends LineageOperations
    """See the module docstring. Thread-safe; one instance per server process."""

    GROUP_MAX = 64  # most writes one group commit takes

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        *,
        clock: Clock | None = None,
        processes: int = 2,
        gc_grace_seconds: float = 60.0,
        copy_batch_delay: float = 0.0,
        one_flush: bool | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self._clock = clock
        self.processes = processes
        self.gc_grace_seconds = gc_grace_seconds
        # Fault-injection knob for crash tests: a pause after each committed copy batch.
        self.copy_batch_delay = copy_batch_delay
        self._layer_cache: dict[str, tuple[str | None, str | None]] = {}  # id -> (parent, origin)
        self._local = threading.local()
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # The block group commit, two pipelined stages (see _group_commit).
        self._flush_stage = _GroupStage(self._flush_writes, "flushed", self.GROUP_MAX)
        self._record_stage = _GroupStage(self._record_writes, "done", self.GROUP_MAX)
        # One flush per group for write_block (issue 15), opt-in: when the metadata WAL lives
        # on the object store's file system (SQLite, group commit), a new block's entry is
        # committed first without its own WAL sync, then one syncfs makes the group's objects
        # and those entries durable together. Off by default: on the 2-core VM of
        # bench/README.md (D) the WAL's fdatasync costs 0.2-1 ms against 5-15 ms for the
        # objects' flush, and the two-stage pipeline (group k+1's objects flush while group
        # k's entries commit) measured 1.2-1.35x the merged flush over raw replays, even
        # through the upload CLI. Worth trying where a device flush is what costs
        # (EBSCRYPT_BLOCK_ONE_FLUSH=1, or ``one_flush=True``).
        if one_flush is None:
            one_flush = os.environ.get("EBSCRYPT_BLOCK_ONE_FLUSH", "0") == "1"
        sync = db.group_sync
        self._one_flush = bool(
            one_flush and sync is not None and hasattr(store, "stage")
            and getattr(store, "covers", None) is not None and cast(Any, store).covers(sync.db_path))
        self._one_stage = _GroupStage(self._commit_new_writes, "synced", self.GROUP_MAX)
        self._periodic: dict[str, tuple[Callable[[], Any], float]] = {}
        # Objects written by stage_blocks and not yet published or discarded: the orphan
        # sweep leaves them alone (their writer publishes them at its next flush).
        self._unpublished: set[str] = set()
        self._unpublished_lock = threading.Lock()
        self.publications = 0  # publish_blocks calls that recorded blocks (observability, tests)
        # Objects of attached volumes nobody reads any more — superseded by a publication in
        # the volume's own head layer, or staged and never to be published — handed to the
        # store's ``recycle`` (their files overwritten by later staging: no fresh page-cache
        # pages) once RECYCLE_GRACE has passed: (due time, key, in the garbage table).
        self._recycling: deque[tuple[float, str, bool]] = deque()
        self._recycling_lock = threading.Lock()
        self._periodic_last: dict[str, float] = {}
        self._maint: threading.Thread | None = None
        self._stop = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._stop.set()
        if self._maint is not None:
            self._maint.join(5)
            self._maint = None
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        with self._recycling_lock:
            pending, self._recycling = list(self._recycling), deque()
        # (garbage rows are deleted by the next process's sweep; objects staged and dropped
        # are not garbage: deleted now rather than left to the orphan sweep)
        delete_quietly(self.store, [key for _due, key, garbage in pending if not garbage])
        close_store = getattr(self.store, "close", None)
        if close_store is not None:
            close_store()

    def now(self) -> datetime:
        return self._clock.now() if self._clock is not None else _now()

    # ---------------------------------------------------------------- writing

    def write_block(self, owner_id: str, index: int, data: bytes | bytearray | memoryview, key: DataKey | None,
                    *, checksum: str | None = None, check: RecordCheck | None = None) -> str:
        """Store one block; returns its base64 SHA-256. Durable when it returns.

        ``checksum``: the base64 SHA-256 of ``data`` when the caller has just computed it
        from these very bytes (PutSnapshotBlock verifies it against the request's), so the
        512 KiB are not hashed twice. ``check``: run in the transaction that records the
        entry, before it (:class:`RecordCheck`); what it raises is raised here.

        Concurrent writers share their flushes (group commit): each stages its object,
        then one of them — the leader — makes every staged object durable with one flush;
        a leader of the next stage records all their entries in one transaction (one
        writer's error stays its own), while the next group's objects flush.
        """
        item = self._prepare_write(owner_id, index, data, key, checksum)
        item.check = check
        if self._one_flush and item.staged is not None:
            self._one_flush_commit(item)
        else:
            self._group_commit(item)
        return item.plain_checksum

    def write_blocks(self, owner_id: str, items: Sequence[tuple[int, bytes | bytearray | memoryview]],
                     key: DataKey | None, *, map_fn: MapFn | None = None) -> None:
        """Store several blocks of ``owner_id`` ((index, 512 KiB of plaintext) each) in one
        go; durable when it returns. Each is sealed and staged first (``map_fn``, e.g. a
        thread pool's ``map``, does that in parallel), then all are queued together, so a
        group commit takes up to ``GROUP_MAX`` of them: an attached volume's write-back of a
        cache full of dirty blocks costs one flush and one transaction per 64 blocks, not
        one per block per writer thread. Same guarantees as :meth:`write_block`; one
        block's error is its own (the others are stored); the first is raised at the end."""
        if not items:
            return

        def prepare(item: tuple[int, bytes | bytearray | memoryview]) -> "_PendingWrite | BaseException":
            try:
                return self._prepare_write(owner_id, item[0], item[1], key, None)
            except Exception as exc:  # this block's own error: the others go on
                return exc

        results = list((map_fn or map)(prepare, items))
        failed = [r for r in results if isinstance(r, BaseException)]
        prepared = [r for r in results if isinstance(r, _PendingWrite)]
        if prepared:
            staged = [it for it in prepared if it.staged is not None]
            if staged:
                self._flush_stage.run_all(staged)
            ok = [it for it in prepared if it.error is None]
            if ok:
                self._record_stage.run_all(ok)
            for it in prepared:
                if it.error is not None:
                    if it.object_key is not None:
                        delete_quietly(self.store, [it.object_key])
                    failed.append(it.error)
        if failed:
            raise failed[0]

    def _prepare_write(self, owner_id: str, index: int, data: bytes | bytearray | memoryview, key: DataKey | None,
                       checksum: str | None) -> "_PendingWrite":
        """Check, seal and stage one block (no flush, no entry yet)."""
        check_index(index)
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes, got {len(data)}")
        if checksum is None:
            checksum = sha256_b64(data)
        cipher = self._cipher(key)
        item = _PendingWrite(owner_id, index, key, None, "")
        item.plain_checksum = checksum
        if is_zero_block(data):  # an all-zero block is an entry without an object
            item.checksum = cipher.seal_checksum(index, checksum)
        else:
            # Writes close in time share a directory, so a group commit fsyncs one directory.
            item.object_key = new_object_key(f"{int(time.time() // 8) % 256:02x}")
            # (the entry's checksum binds a plain object's sector table: crypto.seal_block)
            sealed, item.checksum = cipher.seal_block(item.object_key, index, data, checksum)
            stage = getattr(self.store, "stage", None)
            if stage is not None:
                item.staged = stage(item.object_key, sealed)
            else:
                self.store.put(item.object_key, sealed)
        return item

    # ---------------------------------------------------------------- deferred publication
    # (attached volumes: NBD needs durability only at FLUSH/FUA, so an evicted block is
    # sealed and written at once, and recorded with the others at the next flush.)

    def stage_blocks(self, owner_id: str, items: Sequence[tuple[int, bytes | bytearray | memoryview]],
                     key: DataKey | None, *, map_fn: MapFn | None = None,
                     zero_objects: Collection[int] = ()) -> list[StagedBlock]:
        """Seal and write these blocks of ``owner_id`` without waiting for durability and
        without recording them: nothing reads them but the caller (``open_ref(s.ref, key)``)
        until :meth:`publish_blocks`. A crash before then loses them (the objects are
        orphans, deleted by ``sweep_orphans``; the engine's own sweep leaves objects staged
        in this process alone). On an error the ones written are deleted and it is raised.
        ``zero_objects``: indexes stored as an object even if all zeros (so that their
        entry names an object the caller can recognise: an attached volume's journal)."""
        def prepare(item: tuple[int, bytes | bytearray | memoryview]) -> "StagedBlock | BaseException":
            try:
                return self._stage_one(owner_id, item[0], item[1], key, item[0] in zero_objects)
            except Exception as exc:
                return exc

        self._recycle_due()  # their files are what this staging writes over

        results = list((map_fn or map)(prepare, items))
        staged = [r for r in results if isinstance(r, StagedBlock)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self.discard_staged(staged)
            raise failed[0]
        return staged

    def _stage_one(self, owner_id: str, index: int, data: bytes | bytearray | memoryview,
                   key: DataKey | None, zero_object: bool = False) -> StagedBlock:
        check_index(index)
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes, got {len(data)}")
        cipher = self._cipher(key)
        if not zero_object and is_zero_block(data):  # recorded without an object
            item = _PendingWrite(owner_id, index, key, None, cipher.seal_checksum(index, ZERO_CHECKSUM))
            item.plain_checksum = ZERO_CHECKSUM
        else:
            # (its checksum is the sealed block's, below: sealing the zero block's first
            # was an AES-GCM call and a random nonce per block for nothing, ~10% of an
            # encrypted direct write's CPU in its thread, bench/README.md W6)
            item = _PendingWrite(owner_id, index, key, None, "")
            item.object_key = new_object_key(f"{int(time.time() // 8) % 256:02x}")
            # No SHA-256 of the block here (~18% of an attached volume's sequential writes
            # beyond its cache, bench/README.md H): its entry records it as not computed
            # (LAZY_CHECKSUM). Nothing checks a format 3 block with it (GCM or the sector
            # table bound by the entry do); GetSnapshotBlock hashes the bytes it serves,
            # and the listings and copies that show or carry it compute it when they
            # meet one (_plain_checksums, reencrypt). (As _prepare_write: a plain
            # object's entry binds its sector table.)
            item.plain_checksum = LAZY_CHECKSUM
            write = getattr(self.store, "write_unsynced", None)
            if write is not None:  # (a plain block's data is written from ``data``, not copied)
                sealed: Any = None
                parts, item.checksum = cipher.seal_block_parts(item.object_key, index, data, LAZY_CHECKSUM)
            else:
                sealed, item.checksum = cipher.seal_block(item.object_key, index, data, LAZY_CHECKSUM)
            with self._unpublished_lock:
                self._unpublished.add(item.object_key)
            try:
                if write is not None:
                    write(item.object_key, parts)
                else:
                    self.store.put(item.object_key, sealed)  # a store without it: durable now
            except BaseException:
                with self._unpublished_lock:
                    self._unpublished.discard(item.object_key)
                raise
        ref = BlockRef(index, item.object_key, item.checksum, key.key_id if key is not None else None, "")
        return StagedBlock(index, ref, item)

    def publish_blocks(self, owner_id: str, staged: Sequence[StagedBlock]) -> None:
        """Record blocks staged by :meth:`stage_blocks`, durable on return: one store flush
        of their objects, then one transaction for their entries (the entry of a block
        staged twice is the later one's: ``staged`` is in staging order). On an error
        nothing is recorded and it is raised; the objects stay staged (a later call may
        publish them again) until :meth:`discard_staged`."""
        if not staged:
            return
        keys = [s.item.object_key for s in staged if s.item.object_key is not None]
        sync = getattr(self.store, "sync_objects", None)
        if sync is not None:
            sync(keys)
        items = [s.item for s in staged]
        for it in items:
            it.error = None
        superseded: list[str] = []
        with self.db.begin() as conn:
            self._record_batch(conn, items, superseded)
            failed = [it.error for it in items if it.error is not None]
            if failed:
                raise failed[0]  # rolls the transaction back: all or nothing
        with self._unpublished_lock:
            self._unpublished.difference_update(keys)
            self.publications += 1
        # The objects these entries replaced in the owner's head layer: garbage now, and
        # only the owner's attached volume could read them (a snapshot freezes the layer
        # and leaves it to the snapshot; a new head's entries shadow, never supersede,
        # those of frozen layers; EBS direct reads snapshots). That volume's reads
        # resolve a block under its lock and read it moments later (a read in progress
        # keeps its file from reuse; a later one finds no object and looks again): a
        # short grace is enough before the files are reused. (The sweep deletes the rest.)
        self._recycle_later(superseded, garbage=True)

    def discard_staged(self, staged: Sequence[StagedBlock]) -> None:
        """Delete staged objects that will never be published (superseded, or failed): their
        files are recycled after RECYCLE_GRACE, deleted at once by a store that does not
        recycle."""
        keys = [s.item.object_key for s in staged if s.item.object_key is not None]
        if getattr(self.store, "recycle", None) is None:
            delete_quietly(self.store, keys)
        with self._unpublished_lock:
            self._unpublished.difference_update(keys)
        self._recycle_later(keys, garbage=False)

    def _recycle_later(self, keys: list[str], *, garbage: bool) -> None:
        if not keys or getattr(self.store, "recycle", None) is None:
            return
        due = time.monotonic() + RECYCLE_GRACE
        with self._recycling_lock:
            self._recycling.extend((due, k, garbage) for k in keys)
            # Bounded: the oldest are deleted now (past their grace by then, or nearly:
            # RECYCLE_QUEUE is far more than staging takes in RECYCLE_GRACE)
            excess = [self._recycling.popleft() for _ in range(len(self._recycling) - RECYCLE_QUEUE)]
        delete_quietly(self.store, [k for _due, k, _garbage in excess])

    def _recycle_due(self) -> None:
        """Hand the objects whose grace has passed to the store's ``recycle``."""
        if not self._recycling:
            return
        now = time.monotonic()
        due: list[str] = []
        with self._recycling_lock:
            while self._recycling and self._recycling[0][0] <= now:
                due.append(self._recycling.popleft()[1])
        recycle = cast(Any, self.store).recycle
        for key in due:
            try:
                recycle(key)
            except Exception:  # best effort: garbage is swept, an orphan later
                log.warning("could not recycle object %s", key)

    def unpublished_objects(self) -> set[str]:
        """Object keys staged by this engine and not yet published or discarded."""
        with self._unpublished_lock:
            return set(self._unpublished)

    def recycling_objects(self) -> set[str]:
        """Object keys waiting for their files to be recycled (superseded or discarded,
        RECYCLE_GRACE not over): the orphan sweep leaves them to this engine."""
        with self._recycling_lock:
            return {key for _due, key, _garbage in self._recycling}

    @property
    def group_commits(self) -> int:
        """How many group commits recorded blocks (observability, tests)."""
        return self._record_stage.groups + self._one_stage.groups

    def _group_commit(self, item: "_PendingWrite") -> None:
        """Make the staged object durable, then record its entry, each step shared with
        the concurrent writers of the moment (a leader per step). The entry is committed
        only after its object is durable, and the call returns only after both."""
        if item.staged is not None:
            # (Each writer flushing its own object instead — parallel fdatasyncs that the
            # journal batches — measured faster in-process but 0.6x through the server.)
            self._flush_stage.run(item)
        if item.error is None:
            self._record_stage.run(item)
        if item.error is not None:
            if item.object_key is not None:
                delete_quietly(self.store, [item.object_key])
            raise item.error

    def _one_flush_commit(self, item: "_PendingWrite") -> None:
        """``write_block``'s group commit when one syncfs covers the objects and the WAL
        (``_one_flush``): one device flush per group instead of two in series.

        One leader at a time takes every write queued (up to ``GROUP_MAX``) and:

        1. commits the group's entries in one transaction, without waiting for the WAL
           sync — only those that replace no entry (a new block: the EBS direct upload's
           case). After a power loss before step 2 such an entry may name an object that
           did not reach the disk: it was never acknowledged, reads of it fail closed
           (BlockIntegrityError), and it took nothing acknowledged away. An entry that
           would replace one is deferred (step 3): it must never take the place of an
           acknowledged block before its own object is durable;
        2. makes the group's objects and every entry committed before it durable with one
           ``syncfs`` (the WAL is on the same file system), and tells the metadata's group
           sync so (``WalGroupSync.mark_durable``).

        3. A deferred entry is then recorded as in :meth:`_group_commit` (its object is
           durable now; that commit waits for the WAL sync).

        The call returns — PutSnapshotBlock answers — only after its object and its entry
        are durable. (Steps 1 and 2 as two pipelined stages measured 0.8x: the short
        transaction stage took groups of ~1.3 writes, each a transaction; bench/README.md.)
        """
        self._one_stage.run(item)
        if item.error is None and item.deferred:
            self._record_stage.run(item)
        if item.error is not None:
            if not item.staged.published:  # refused before its flush: close and drop the file
                cast(StagingStore, self.store).discard([item.staged])
            if item.object_key is not None:
                delete_quietly(self.store, [item.object_key])
            raise item.error

    def _commit_new_writes(self, batch: list["_PendingWrite"]) -> None:
        """Steps 1 and 2 of :meth:`_one_flush_commit` for one group."""
        self._enter_writes(batch)
        self._sync_writes([it for it in batch if it.error is None])

    def _enter_writes(self, batch: list["_PendingWrite"]) -> None:
        """Step 1 of :meth:`_one_flush_commit`: the entries of new blocks, one transaction
        with no WAL sync of its own. If the group's statements fail, every entry is
        deferred to the ordinary (per-entry fallback) record after the flush."""
        try:
            with self.db.begin(durable=False) as conn:
                group = conn.begin_nested()
                try:
                    self._record_group(conn, batch, new_only=True)
                    group.commit()
                except Exception:
                    group.rollback()
                    for it in batch:
                        it.error = None
                        it.deferred = True
        except BaseException as exc:
            for it in batch:
                if it.error is None:
                    it.error = exc

    def _sync_writes(self, batch: list["_PendingWrite"]) -> None:
        """Step 2 of :meth:`_one_flush_commit`: one syncfs for the group's objects and the
        WAL frames of every entry committed so far."""
        if not batch:
            return
        sync = self.db.group_sync
        assert sync is not None  # (_one_flush)
        upto = sync.commits()  # every entry of this batch was committed (and counted) before
        try:
            cast(StagingStore, self.store).publish([it.staged for it in batch], whole_fs=True)
        except BaseException as exc:  # publish discarded the objects: withdraw their entries
            for it in batch:
                it.error = exc
            self._withdraw([it for it in batch if not it.deferred and it.layer_id is not None])
            for it in batch:
                it.object_key = None
            return
        sync.mark_durable(upto)

    def _withdraw(self, batch: list["_PendingWrite"]) -> None:
        """Remove the committed (never acknowledged) entries of writes whose flush failed:
        each replaced nothing, so removing it restores what was there (no block)."""
        if not batch:
            return
        try:
            with self.db.begin() as conn:
                for it in batch:
                    conn.execute(delete(blk_entries).where(
                        blk_entries.c.layer_id == it.layer_id, blk_entries.c.block_index == it.index,
                        blk_entries.c.object_key == it.object_key))
        except Exception:  # reads of them fail closed (their objects are gone)
            log.exception("could not withdraw %d block entries after a failed flush", len(batch))

    def _flush_writes(self, batch: list["_PendingWrite"]) -> None:
        """Stage one: one flush for every staged object of the group."""
        try:
            # (only items of a staging store are staged: _prepare_write)
            cast(StagingStore, self.store).publish([it.staged for it in batch])
        except BaseException as exc:  # publish discarded them all
            for it in batch:
                it.error = exc
                it.object_key = None

    def _record_writes(self, batch: list["_PendingWrite"]) -> None:
        """Stage two: every entry of the group in one transaction, with a few statements
        for the whole group (each owner read once, the entries they replace read in one
        query, inserted in one statement). A writer refused by its owner's state (a copy
        in progress, another data key) gets its own error; if the group's statements
        fail, the entries are recorded one by one (a savepoint each, in the same
        transaction), so one writer's failure is its own. A failed commit fails them all.
        A failed writer's caller deletes its object."""
        try:
            try:
                # The group's statements straight in the transaction (no savepoint around
                # them: SAVEPOINT and RELEASE were a fifth of the group's SQL, issue 15);
                # if they fail, the transaction is rolled back whole and the entries are
                # recorded one by one in a new one.
                with self.db.begin() as conn:
                    self._record_group(conn, batch)
            except Exception:
                for it in batch:
                    it.error = None
                with self.db.begin() as conn:
                    self._record_each(conn, batch)
        except BaseException as exc:
            for it in batch:
                if it.error is None:
                    it.error = exc

    def _record_batch(self, conn: Connection, batch: list["_PendingWrite"],
                      superseded: list[str] | None = None) -> None:
        """The entries of ``batch`` in ``conn``'s transaction: with the group's statements
        (a savepoint), or, if those fail, one by one (a savepoint each), so that one
        writer's failure is its own (``it.error``). ``superseded``: gets the objects the
        group's entries replaced (not those of the one-by-one fallback)."""
        group = conn.begin_nested()
        try:
            replaced: list[str] = []
            self._record_group(conn, batch, superseded_out=replaced)
            group.commit()
            if superseded is not None:
                superseded.extend(replaced)
        except Exception:
            group.rollback()
            for it in batch:
                it.error = None
            self._record_each(conn, batch)

    def _record_group(self, conn: Connection, batch: list["_PendingWrite"], *, new_only: bool = False,
                      superseded_out: list[str] | None = None) -> None:
        """``new_only`` (:meth:`_enter_writes`): record only entries that replace none; a
        write of a block already recorded (or written earlier in this group) is marked
        ``deferred`` instead, and left for the record after the flush. ``superseded_out``:
        gets the objects sent to the garbage table."""
        owners: dict[str, Owner] = {}
        rows: dict[tuple[str, int], _PendingWrite] = {}  # (layer, index) -> the last write of it
        superseded: list[str] = []  # objects of earlier writes of the same block in this group
        passed: set[Hashable] = set()  # scopes of the checks that passed in this transaction
        for it in batch:
            if not _passes(conn, it, passed):
                continue
            owner = owners.get(it.owner_id)
            if owner is None:
                owner = self._get_owner(conn, it.owner_id, lock=True) or self._create_owner(conn, it.owner_id, None, it.key)
                owners[it.owner_id] = owner
            try:
                if owner.pin_id is not None:
                    raise CopyInProgress(f"{it.owner_id} is still being copied into")
                if owner.encrypted is None:  # the first write decides (and is then the owner's key)
                    self._check_key(owner, it.key, adopt=conn)
                    owner = owners[it.owner_id] = Owner(
                        owner.owner_id, owner.head_id, owner.pin_id,
                        it.key.key_id if it.key is not None else None, it.key is not None)
                else:
                    self._check_key(owner, it.key, adopt=conn)
            except BlockError as exc:
                it.error = exc
                continue
            earlier = rows.get((owner.head_id, it.index))
            if new_only and earlier is not None:
                it.deferred = True  # after the earlier one, in order
                continue
            if earlier is not None and earlier.object_key is not None:
                superseded.append(earlier.object_key)
            rows[(owner.head_id, it.index)] = it
        if not rows:
            return
        by_layer: dict[str, list[int]] = {}
        for layer, index in rows:
            by_layer.setdefault(layer, []).append(index)
        for layer, indexes in by_layer.items():
            old = _old_entries(conn, layer, indexes)
            if old and new_only:
                for index in old:
                    rows.pop((layer, index)).deferred = True
                continue
            if old:
                conn.execute(_DELETE_ENTRIES, {"layer": layer, "indexes": list(old)})
                superseded.extend(key for key in old.values() if key is not None)
        if superseded:
            self._to_garbage(conn, superseded)
            if superseded_out is not None:
                superseded_out.extend(superseded)
        if not rows:
            return
        for (layer, _index), it in rows.items():
            it.layer_id = layer
        _INSERT_ENTRIES.run_many(conn, [
            dict(layer_id=layer, block_index=index, object_key=it.object_key, checksum=it.checksum,
                 data_key_id=it.key.key_id if it.key is not None else None)
            for (layer, index), it in rows.items()
        ])

    def _record_each(self, conn: Connection, batch: list["_PendingWrite"]) -> None:
        """The fallback of :meth:`_record_writes`: one savepoint per entry."""
        for it in batch:
            savepoint = conn.begin_nested()
            try:
                if it.check is not None:
                    it.check.fn(conn)
                owner = self._get_owner(conn, it.owner_id, lock=True) or self._create_owner(conn, it.owner_id, None, it.key)
                if owner.pin_id is not None:
                    raise CopyInProgress(f"{it.owner_id} is still being copied into")
                self._check_key(owner, it.key, adopt=conn)
                self._put_entry(conn, owner.head_id, it.index, it.object_key, it.checksum, it.key)
                savepoint.commit()
            except Exception as exc:
                savepoint.rollback()
                it.error = exc

    def _put_entry(
        self, conn: Connection, layer_id: str, index: int, object_key: str | None, checksum: str, key: DataKey | None
    ) -> None:
        old = conn.execute(
            select(blk_entries.c.object_key).where(blk_entries.c.layer_id == layer_id, blk_entries.c.block_index == index)
        ).first()
        if old is not None:
            conn.execute(delete(blk_entries).where(blk_entries.c.layer_id == layer_id, blk_entries.c.block_index == index))
            if old.object_key is not None:
                self._to_garbage(conn, [old.object_key])
        conn.execute(
            insert(blk_entries).values(
                layer_id=layer_id,
                block_index=index,
                object_key=object_key,
                checksum=checksum,
                data_key_id=key.key_id if key is not None else None,
            )
        )

    # ---------------------------------------------------------------- reading

    def read_block(self, owner_id: str, index: int, key: DataKey | None) -> bytes:
        """The block's plaintext; zeros if never written. Tampering -> BlockIntegrityError."""
        return self.read_block_checked(owner_id, index, key)[0]

    def read_block_checked(
        self, owner_id: str, index: int, key: DataKey | None, *, ref: BlockRef | None = None
    ) -> tuple[bytes, str, BlockRef | None]:
        """(plaintext, base64 SHA-256 of it, the entry it came from or None).

        ``ref``: an entry the caller just resolved with :meth:`block_ref` (saves a lookup).

        The SHA-256 of an encrypted block is the one its write recorded, sealed under the
        data key (AES-GCM: altered, it fails to open, BlockIntegrityError), not hashed
        again: the plaintext itself is authenticated by the object's own tags, and the
        recorded digest is that of the bytes written (PutSnapshotBlock verified it against
        the request's). Hashing 512 KiB was ~0.3 ms of GetSnapshotBlock's ~2 ms of CPU
        (issue 15, bench/README.md section J). A plain block's is computed from its bytes
        (nothing authenticates a plain entry's digest against its object but the table), and
        so is a block an attached volume wrote back without one (``LAZY_CHECKSUM``).
        """
        check_index(index)
        given = ref
        for attempt in (0, 1):
            ref = given if attempt == 0 and given is not None and given.index == index else self.block_ref(owner_id, index)
            if ref is None or ref.object_key is None:
                if ref is not None:
                    self._check_ref_key(ref, key)
                return ZERO_BLOCK, ZERO_CHECKSUM, ref
            self._check_ref_key(ref, key)
            try:
                view, recorded = self._open_view_checked(ref, key, once=True)
            except ObjectMissing:
                if attempt == 0:
                    continue  # dropped and collected between resolve and read: resolve again
                log.error("object %s of %s block %d is missing", ref.object_key, owner_id, index)
                raise BlockIntegrityError() from None
            data = bytes(view)
            # an attached volume's write-back records none (LAZY_CHECKSUM): hashed here
            known = key is not None and recorded != LAZY_CHECKSUM
            return data, (recorded if known else sha256_b64(data)), ref
        raise AssertionError("unreachable")

    def load_ref(self, ref: BlockRef, key: DataKey | None) -> bytearray:
        """:meth:`open_ref` into a new bytearray (one copy of the plaintext, not two: an
        attached volume's cache keeps it, and patches it in place)."""
        self._check_ref_key(ref, key)
        if ref.object_key is None:
            return bytearray(BLOCK_SIZE)
        return bytearray(self._open_view(ref, key))

    def _open_object(self, ref: BlockRef, key: DataKey | None) -> bytes:
        return bytes(self._open_view(ref, key))

    def _open_view(self, ref: BlockRef, key: DataKey | None) -> memoryview:
        """The entry's plaintext: a view of this thread's buffers (copy it before the
        next read on this thread)."""
        return self._open_view_checked(ref, key)[0]

    def _open_view_checked(self, ref: BlockRef, key: DataKey | None, *, once: bool = False) -> tuple[memoryview, str]:
        """:meth:`_open_view`, and the entry's checksum opened (an encrypted entry's block
        SHA-256, unsealed; a plain entry's checksum as stored). ``once``: the object is read
        around the page cache where the store can (GetSnapshotBlock: read once, not kept)."""
        assert ref.object_key is not None
        buf = self._read_buffer()
        if once and hasattr(self.store, "read_into_direct"):
            view = self.store.read_into_direct(ref.object_key, buf)
        elif hasattr(self.store, "read_into"):
            view = self.store.read_into(ref.object_key, buf)
        else:
            view = self.store.get(ref.object_key)
        cipher = self._cipher(key)
        # The object must be the one this entry names (its key is bound into the object;
        # older objects are checked against the entry's checksum instead).
        checksum = cipher.open_checksum(ref.index, ref.checksum) if key is not None else ref.checksum
        return cipher.open(ref.object_key, ref.index, view, checksum), checksum

    def read_sectors(self, owner_id: str, index: int, offset: int, length: int, key: DataKey | None) -> bytes:
        """Bytes [offset, offset+length) of the owner's block ``index`` (zeros if never
        written), resolved through the lineage like :meth:`read_block`; only the sectors
        covering the range are read and checked (objects of format 3; older ones are read
        whole). Tampering -> BlockIntegrityError."""
        check_index(index)
        sector_span(False, 12, offset, length)  # the range is within one block (ValueError)
        for attempt in (0, 1):
            ref = self.block_ref(owner_id, index)
            try:
                return self.open_ref_range(ref, key, offset, length)
            except ObjectMissing:
                if attempt == 0:
                    continue  # dropped and collected between resolve and read: resolve again
                log.error("object of %s block %d is missing", owner_id, index)
                raise BlockIntegrityError() from None
        raise AssertionError("unreachable")

    def open_ref_range(self, ref: BlockRef | None, key: DataKey | None, offset: int, length: int, *,
                       readers: MutableMapping[str, SectorReader | None] | None = None) -> bytes:
        """Bytes [offset, offset+length) of an entry resolved earlier (None: never
        written), reading only the sectors covering them: one open and two reads of the
        object (its header — and a plain object's sector table, checked against the
        entry's checksum — and the sectors), guessed at the sector size written now; read
        again if the object says otherwise. Raises ObjectMissing as :meth:`open_ref`.

        ``readers``: the caller's cache of the objects' checked headers, by object key
        (an attached volume's, bounded and dropped at detach: an encrypted object's
        reader holds its subkey): a known object costs one read, of its sectors. Sound
        because objects are immutable and each is named by one entry only."""
        if ref is None:
            return bytes(length)
        self._check_ref_key(ref, key)
        if ref.object_key is None:
            return bytes(length)
        read_ranges = getattr(self.store, "read_ranges", None)
        if read_ranges is None:  # a store without ranged reads: the whole object
            return bytes(self._open_view(ref, key)[offset:offset + length])
        known = readers.get(ref.object_key, _NOT_KNOWN) if readers is not None else _NOT_KNOWN
        if known is not _NOT_KNOWN:  # (one get: other threads may evict from ``readers`` meanwhile)
            if not isinstance(known, SectorReader):  # None: an object of format 1 or 2
                return bytes(self._open_view(ref, key)[offset:offset + length])
            return known.open(read_ranges(ref.object_key, [known.span(offset, length)])[0], offset, length)
        reader: SectorReader | int | None
        cipher = self._cipher(key)
        span = sector_span(key is not None, cipher.sector_shift, offset, length)
        prefix, raw = read_ranges(ref.object_key, [(0, cipher.prefix_size), span])
        reader = cipher.sector_reader(ref.object_key, ref.index, prefix, ref.checksum)
        if isinstance(reader, int):  # an object of smaller sectors (a longer table)
            prefix = read_ranges(ref.object_key, [(0, reader)])[0]
            reader = cipher.sector_reader(ref.object_key, ref.index, prefix, ref.checksum)
            if isinstance(reader, int):  # still short: truncated
                raise BlockIntegrityError()
        if readers is not None:
            readers[ref.object_key] = reader
        if reader is None:  # format 1 or 2: no sectors to check alone
            return bytes(self._open_view(ref, key)[offset:offset + length])
        if reader.span(offset, length) != span:
            raw = read_ranges(ref.object_key, [reader.span(offset, length)])[0]
        return reader.open(raw, offset, length)

    def open_ref_range_into(self, ref: BlockRef | None, key: DataKey | None, offset: int, dest: memoryview, *,
                            readers: MutableMapping[str, SectorReader | None] | None = None,
                            keep: bool = True) -> None:
        """:meth:`open_ref_range` of ``len(dest)`` bytes into ``dest``, without the copies
        and fresh buffers: a plain object's whole sectors are read straight into ``dest``
        and checked there, an encrypted object's read into this thread's buffer and
        decrypted into ``dest``; an unknown object's header (and table) is read first, and
        kept in ``readers``. A store without ranged reads into a buffer, or an object of
        format 1 or 2, goes the way of :meth:`open_ref_range`. On an error (tampering:
        BlockIntegrityError; ObjectMissing as :meth:`open_ref`) ``dest`` may hold
        unchecked bytes: the caller drops them. ``keep``: the store keeps the object's
        descriptor open for later reads (False for a sequential pass)."""
        length = len(dest)
        if ref is None or ref.object_key is None:
            if ref is not None:
                self._check_ref_key(ref, key)
            dest[:] = bytes(length)
            return
        read_into = getattr(self.store, "read_range_into", None)
        name = ref.object_key
        reader = readers.get(name, _NOT_KNOWN) if readers is not None else _NOT_KNOWN
        if read_into is None or (reader is _NOT_KNOWN and length < _SMALL_RANGE):
            # (a small read of an unknown object: its header and sectors in one visit, the
            # few bytes copied once)
            dest[:] = self.open_ref_range(ref, key, offset, length, readers=readers)
            return
        self._check_ref_key(ref, key)
        if reader is _NOT_KNOWN:
            reader = self._sector_reader(ref, key, read_into, keep)
            if readers is not None:
                readers[name] = reader
        if not isinstance(reader, SectorReader):  # format 1 or 2: no sectors to check alone
            dest[:] = self._open_view(ref, key)[offset:offset + length]
            return
        at, n = reader.span(offset, length)
        if reader.plain and reader.aligned(offset, length):
            if read_into(name, at, dest, keep=keep) != n:
                raise BlockIntegrityError()  # (truncated)
            reader.check_in_place(offset, dest)
            return
        raw = memoryview(self._read_buffer())[:n]
        if read_into(name, at, raw, keep=keep) != n:
            raise BlockIntegrityError()
        reader.open_into(raw, offset, length, dest)

    def _sector_reader(self, ref: BlockRef, key: DataKey | None, read_into: Callable[..., int],
                       keep: bool) -> SectorReader | None:
        """The checked reader of an object (:meth:`BlockCipher.sector_reader`) from its
        header — and a plain object's table — read alone; None for format 1 or 2."""
        assert ref.object_key is not None
        cipher = self._cipher(key)
        need = cipher.prefix_size
        for _attempt in (0, 1):  # again if the object's sectors are smaller (a longer table)
            prefix = bytearray(need)
            got = read_into(ref.object_key, 0, memoryview(prefix), keep=keep)
            reader = cipher.sector_reader(ref.object_key, ref.index, memoryview(prefix)[:got], ref.checksum)
            if not isinstance(reader, int):
                return reader
            need = reader
        raise BlockIntegrityError()  # still short: truncated

    def try_open_ref_range(self, ref: BlockRef | None, key: DataKey | None, offset: int, length: int,
                           readers: MutableMapping[str, SectorReader | None]) -> bytes | None:
        """:meth:`open_ref_range` if it needs no wait: the object's sectors are in the page
        cache (a store with ``read_range_cached``), and its reader is in ``readers`` or
        its header (and a plain object's table) is in the page cache too — checked here
        and kept in ``readers``, so the first read of each object (every block a journal
        merge rewrote) does not leave the caller's thread either; else None (the caller
        reads the blocking way). Checked the same: tampering raises BlockIntegrityError."""
        if ref is None or ref.object_key is None:
            if ref is not None:
                self._check_ref_key(ref, key)
            return bytes(length)
        cached = getattr(self.store, "read_range_cached", None)
        if cached is None:
            return None
        self._check_ref_key(ref, key)
        name = ref.object_key
        reader = readers.get(name, _NOT_KNOWN)
        if reader is _NOT_KNOWN:
            reader = self._try_sector_reader(ref, key, cached)
            if reader is _NOT_KNOWN:
                return None
            readers[name] = reader
        if not isinstance(reader, SectorReader):
            return None  # format 1 or 2: read whole, the blocking way
        at, n = reader.span(offset, length)
        # (read into this thread's buffer: the answer is a copy, or decrypted elsewhere)
        raw = cached(name, at, n, into=self._nowait_buffer(n))
        return None if raw is None else reader.open(raw, offset, length)

    def try_open_ref_into(self, ref: BlockRef | None, key: DataKey | None, offset: int, dest: memoryview,
                          readers: MutableMapping[str, SectorReader | None]) -> bool:
        """:meth:`try_open_ref_range` of ``len(dest)`` bytes into ``dest`` (True: served;
        False: nothing served, the caller reads the blocking way). The hot case — an
        object whose checked reader is in ``readers``, its sectors in the page cache — is
        one lease and ``preadv`` of the sectors into this thread's buffer, then their check
        (and decryption) into ``dest``: an attached volume's random small reads, once its
        objects are known. Tampering raises BlockIntegrityError (``dest`` then holds
        unchecked bytes: the caller drops them)."""
        name = ref.object_key if ref is not None else None
        reader = readers.get(name, _NOT_KNOWN) if name is not None else _NOT_KNOWN
        hot = getattr(self.store, "read_hot_into", None)
        if ref is None or name is None or not isinstance(reader, SectorReader) or hot is None:
            # (no object, an unknown one, format 1 or 2, a store without it: the general way)
            data = self.try_open_ref_range(ref, key, offset, len(dest), readers)
            if data is None:
                return False
            dest[:] = data
            return True
        if (key is None) != (ref.data_key_id is None):  # (_check_ref_key, inline: once per read)
            raise BlockIntegrityError()
        # (this thread's buffer: the sectors, then room to decrypt them)
        return reader.read_into(hot, name, offset, dest, self._nowait_buffer(_HOT_BUFFER))

    def hot_reads(self, key: DataKey | None, readers: MutableMapping[str, SectorReader | None]
                  ) -> Callable[[BlockRef | None, int, memoryview], bool]:
        """:meth:`try_open_ref_into` for a batch of reads on this thread (an NBD connection's
        queue of small READs, ``OpenVolume.try_read_batch_into``): the store's hot read and
        this thread's buffer looked up once for the batch, not once a read. Same checks,
        same answers: the function returned serves ``(ref, offset, dest)`` as
        :meth:`try_open_ref_into` would, BlockIntegrityError included."""
        hot = getattr(self.store, "read_hot_into", None)
        buf = self._nowait_buffer(_HOT_BUFFER)
        general = self.try_open_ref_into

        def read(ref: BlockRef | None, offset: int, dest: memoryview) -> bool:
            name = ref.object_key if ref is not None else None
            reader = readers.get(name) if name is not None else None
            if ref is None or name is None or hot is None or not isinstance(reader, SectorReader):
                return general(ref, key, offset, dest, readers)
            self._check_ref_key(ref, key)
            return reader.read_into(hot, name, offset, dest, buf)
        return read

    def _try_sector_reader(self, ref: BlockRef, key: DataKey | None, cached: Callable[..., Any]) -> Any:
        """The checked reader of an object (as :meth:`_sector_reader`) from its header
        — and a plain object's table — if the page cache holds them; else _NOT_KNOWN."""
        assert ref.object_key is not None
        cipher = self._cipher(key)
        need = cipher.prefix_size
        for _attempt in (0, 1):  # again if the object's sectors are smaller (a longer table)
            prefix = cached(ref.object_key, 0, need)
            if prefix is None:
                return _NOT_KNOWN
            reader = cipher.sector_reader(ref.object_key, ref.index, prefix, ref.checksum)
            if not isinstance(reader, int):
                return reader
            need = reader
        return _NOT_KNOWN  # still short (truncated): the blocking read says so

    def _nowait_buffer(self, n: int) -> memoryview:
        """This thread's buffer for sector reads that must not wait (``try_open_ref_range``):
        one allocation per thread, not one per read."""
        buf: memoryview | None = getattr(self._local, "nowait", None)
        if buf is None or len(buf) < n:
            buf = self._local.nowait = memoryview(bytearray(max(n, _HOT_BUFFER)))
        return buf

    def _check_ref_key(self, ref: BlockRef, key: DataKey | None) -> None:
        # A wrong key would fail authentication anyway; this only makes misuse obvious.
        if (key is None) != (ref.data_key_id is None):
            raise BlockIntegrityError()

    def block_ref(self, owner_id: str, index: int, *, conn: Connection | None = None,
                  head_first: bool = False) -> BlockRef | None:
        """The entry that holds the owner's block (None: never written). With ``conn``,
        read in the caller's transaction (one transaction per request).

        ``head_first``: look in the owner's head layer first, in one statement with the
        owner — where a block written to the owner itself is (a snapshot's own blocks:
        GetSnapshotBlock's usual case), the nearest of its chain by definition — and walk
        the chain only if it is not there (one statement more then)."""
        if conn is None:
            with self.db.read() as own:
                return self.block_ref(owner_id, index, conn=own, head_first=head_first)
        if head_first:
            head = _HEAD_ENTRY_READ.first(conn, {"owner_id": owner_id, "index": index})
            if head is not None:
                return ref_from_row(head)
        owner = self._get_owner(conn, owner_id)
        if owner is None:
            return None
        chain = self._chain(conn, owner.head_id)
        # One layer (most snapshots): an equality, whose compiled statement is cached whole
        # (an IN list is re-expanded on every execution: a measurable share of GetSnapshotBlock).
        layer_match = blk_entries.c.layer_id == chain[0] if len(chain) == 1 else blk_entries.c.layer_id.in_(chain)
        rows = conn.execute(
            select(blk_entries).where(layer_match, blk_entries.c.block_index == index)
        ).mappings().all()
        if not rows:
            return None
        pos = {layer: i for i, layer in enumerate(chain)}
        row = min(rows, key=lambda r: pos[r["layer_id"]])
        return ref_from_row(row)

    def block_refs(self, owner_id: str, indexes: list[int]) -> dict[int, BlockRef | None]:
        """:meth:`block_ref` of several blocks in one read (attached volumes read ahead)."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None or not indexes:
                return {i: None for i in indexes}
            chain = self._chain(conn, owner.head_id)
            rows = conn.execute(
                select(blk_entries).where(blk_entries.c.layer_id.in_(chain), blk_entries.c.block_index.in_(indexes))
            ).mappings().all()
        best = _nearest(rows, chain)
        return {i: (ref_from_row(best[i]) if i in best else None) for i in indexes}

    def block_refs_between(self, owner_id: str, start: int, stop: int) -> dict[int, BlockRef | None]:
        """:meth:`block_ref` of every block in [start, stop) in one read (a range, not an
        IN list: an attached volume learns where a whole window of blocks lives at once)."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None or stop <= start:
                return {i: None for i in range(start, max(start, stop))}
            chain = self._chain(conn, owner.head_id)
            layer_match = blk_entries.c.layer_id == chain[0] if len(chain) == 1 else blk_entries.c.layer_id.in_(chain)
            rows = conn.execute(
                select(blk_entries).where(layer_match, blk_entries.c.block_index >= start,
                                          blk_entries.c.block_index < stop)
            ).mappings().all()
        best = _nearest(rows, chain)
        return {i: (ref_from_row(best[i]) if i in best else None) for i in range(start, stop)}

    def open_ref(self, ref: BlockRef, key: DataKey | None) -> bytes:
        """The plaintext of an entry resolved earlier (no SHA-256 of it is computed: GCM
        authenticates encrypted objects; plain ones are checked against their checksum).
        Raises ObjectMissing when the entry was dropped and its object collected since."""
        self._check_ref_key(ref, key)
        if ref.object_key is None:
            return ZERO_BLOCK
        return self._open_object(ref, key)

    def list_block_refs(self, owner_id: str) -> list[BlockRef]:
        """Every written block of the owner (its own and inherited), by index."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None:
                return []
            return self._resolved(conn, self._chain(conn, owner.head_id))

    def list_blocks(self, owner_id: str, key: DataKey | None = None) -> list[tuple[int, str | None]]:
        """(index, base64 SHA-256) of every written block. Checksums of an encrypted
        owner are sealed under its data key: without ``key`` they come back as None."""
        return self._plain_checksums(self.list_block_refs(owner_id), key)

    def _plain_checksums(self, refs: list[BlockRef], key: DataKey | None) -> list[tuple[int, str | None]]:
        """(index, base64 SHA-256) of each ref: as stored when unencrypted, opened with
        ``key`` when encrypted, None when encrypted and no key is given."""
        cipher = self._cipher(key)
        out: list[tuple[int, str | None]] = []
        for ref in refs:
            if ref.data_key_id is None:
                checksum: str | None = split_plain_checksum(ref.checksum)[0]
            elif key is None:
                checksum = None
            else:
                checksum = cipher.open_checksum(ref.index, ref.checksum)
            if checksum == LAZY_CHECKSUM and ref.object_key is not None:  # not computed when written
                checksum = sha256_b64(self._open_view(ref, key))
            out.append((ref.index, checksum))
        return out

    def open_checksum(self, ref: BlockRef, key: DataKey | None) -> str:
        return self._cipher(key).open_checksum(ref.index, ref.checksum)

    def owner_ids(self) -> list[str]:
        """Every owner the store keeps blocks for (to reconcile with the resource records)."""
        with self.db.read() as conn:
            return [r.owner_id for r in conn.execute(select(blk_owners.c.owner_id))]

    def exists(self, owner_id: str) -> bool:
        with self.db.read() as conn:
            return self._get_owner(conn, owner_id) is not None

    def own_blocks(self, owner_id: str, key: DataKey | None = None) -> list[tuple[int, str | None]]:
        """(index, base64 SHA-256) of the blocks written to the owner itself since it was
        created or shared from (its head layer), by index. Checksums as in list_blocks."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None:
                return []
            rows = conn.execute(
                select(blk_entries).where(blk_entries.c.layer_id == owner.head_id).order_by(blk_entries.c.block_index)
            ).mappings().all()
        return self._plain_checksums([ref_from_row(row) for row in rows], key)

    def own_block_count(self, owner_id: str) -> int:
        """Blocks stored in the owner's head layer (written since its creation/share)."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None:
                return 0
            return len(conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id == owner.head_id)).all())

    # ---------------------------------------------------------------- per-thread buffers

    def _cipher(self, key: DataKey | None) -> BlockCipher:
        """A per-thread cipher (with its reusable buffers) for ``key``."""
        cache: OrderedDict[Any, BlockCipher] | None = getattr(self._local, "ciphers", None)
        if cache is None:
            cache = self._local.ciphers = OrderedDict()
        ident = None if key is None else (key.key_id, key.plaintext)
        cipher = cache.get(ident)
        if cipher is None:
            cipher = cache[ident] = BlockCipher(key)
            while len(cache) > 4:
                cache.popitem(last=False)
        else:
            cache.move_to_end(ident)
        return cipher

    def _read_buffer(self) -> bytearray:
        buf = getattr(self._local, "readbuf", None)
        if buf is None:
            buf = self._local.readbuf = bytearray(MAX_OBJECT_SIZE + 1)
        return buf

