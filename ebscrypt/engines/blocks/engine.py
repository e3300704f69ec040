"""The block engine: encrypted 512 KiB blocks, snapshot lineage, sharing and re-encryption.

Public surface (``runtime.blocks``)::

    DataKey(key_id, plaintext)                       # plaintext only ever in memory
    write_block(owner_id, index, data, key)          # data: exactly 524288 bytes; durable on return
    read_block(owner_id, index, key) -> bytes        # zeros when never written
    share(src_owner_id, dst_owner_id)                # same data key, O(1), no data moved; idempotent
    reencrypt(src, src_key, dst, dst_key, progress)  # full copy under another key; resumable
    list_blocks(owner_id, key=None) -> [(index, checksum)]
    changed_blocks(a, b) -> [ChangedBlock]           # from lineage; UnrelatedLineage if none
    release(owner_id)                                # drop an owner; objects GC'd safely; cancels its copy
    # also: block_ref / list_block_refs / read_block_checked / own_blocks (EBS direct APIs),
    # exists, sweep / sweep_orphans, add_periodic, close

Owners are volume or snapshot ids; ``key=None`` means an unencrypted resource. Errors:
:class:`BlockIntegrityError` (opaque: tampered, truncated, moved or wrong key — never
wrong bytes), :class:`UnrelatedLineage`, :class:`CopyInProgress`, :class:`CopyCancelled`,
:class:`KeyMismatch`.

Model: block *entries* live in *layers*; an owner points at its mutable head layer, and
a layer may have a parent. ``share`` freezes the source's head (it becomes the common
parent) and gives both owners a fresh empty head. Objects in the store are immutable,
each referenced by exactly one entry; a layer lives while an owner's head, an owner's
pin (a copy in progress reads from it) or a child layer references it, and a frozen
layer left with one child is merged into it (blocks it shadowed are reclaimed).
Unreferenced objects go to a garbage list and are deleted after a grace period, so a
read that resolved an entry just before it was dropped still finds its object.

Concurrent ``write_block`` calls share their flushes (group commit). ``reencrypt`` runs
in worker processes (AES-GCM holds the GIL) with preallocated buffers, one ``syncfs``
per batch, and records progress per batch so a restarted copy skips finished blocks.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.engines.blocks import workers
from ebscrypt.engines.blocks.crypto import (
    BLOCK_SIZE,
    GCM_OBJECT_SIZE,
    ZERO_BLOCK,
    ZERO_CHECKSUM,
    BlockCipher,
    BlockIntegrityError,
    DataKey,
    sha256_b64,
)
from ebscrypt.engines.blocks.store import LocalDirStore, ObjectMissing, ObjectStore, new_object_key, new_shard
from ebscrypt.storage.db import as_utc
from ebscrypt.storage.tables.blocks import blk_entries, blk_garbage, blk_layers, blk_owners

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
    "UnrelatedLineage",
]

log = logging.getLogger("ebscrypt.blocks")


class BlockError(Exception):
    """Misuse of the engine (a programming error in the caller, not an AWS error)."""


class KeyMismatch(BlockError):
    """The key given does not match the owner's data key (or its encryption)."""


class CopyInProgress(BlockError):
    """The owner is the destination of a copy still running: it takes no writes yet."""


class CopyCancelled(BlockError):
    """The copy's destination was released while the copy ran: the copy stopped, and what
    it had stored is reclaimed. Its caller's resource was deleted; nothing failed."""


class UnrelatedLineage(BlockError):
    """changed_blocks between owners that share no lineage (EBS ``UNRELATED_SNAPSHOTS``)."""


@dataclass(frozen=True)
class BlockRef:
    """Where an owner's block lives: the object (None: written as zeros) and its checksum."""

    index: int
    object_key: str | None
    checksum: str  # as stored: base64 SHA-256, or sealed under the data key ("e1:…")
    data_key_id: str | None
    layer_id: str


@dataclass(frozen=True)
class ChangedBlock:
    index: int
    first: BlockRef | None  # the block in the first owner, if it has one
    second: BlockRef | None


@dataclass
class _PendingWrite:
    owner_id: str
    index: int
    key: DataKey | None
    object_key: str | None
    checksum: str  # as stored
    staged: Any = None
    done: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class _Owner:
    owner_id: str
    head_id: str
    pin_id: str | None
    data_key_id: str | None
    encrypted: bool | None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex


class BlockEngine:
    """See the module docstring. Thread-safe; one instance per server process."""

    # Copies smaller than this run in the calling thread (no worker start-up cost).
    INLINE_BLOCKS = 48
    GROUP_MAX = 64  # most writes one group commit takes
    BATCH_BLOCKS = 32

    def __init__(
        self,
        db: Any,
        store: ObjectStore,
        *,
        clock: Any = None,
        processes: int = 2,
        gc_grace_seconds: float = 60.0,
        copy_batch_delay: float = 0.0,
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
        self._writes: list[_PendingWrite] = []
        self._writes_busy = False
        self._writes_cv = threading.Condition()
        self.group_commits = 0  # how many group commits wrote blocks (observability, tests)
        self._periodic: dict[str, tuple[Callable[[], Any], float]] = {}
        self._periodic_last: dict[str, float] = {}
        self._maint: threading.Thread | None = None
        self._stop = threading.Event()

    # ---------------------------------------------------------------- lifecycle

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
        started = time.time() - 2.0
        self.add_periodic("orphans", lambda: self.sweep_orphans(min(3600.0, time.time() - started)), 900.0)

    def _maintain(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for name, (fn, seconds) in list(self._periodic.items()):
                if now - self._periodic_last.get(name, 0.0) < seconds:
                    continue
                self._periodic_last[name] = now
                try:
                    fn()
                except Exception:
                    log.exception("periodic task %s failed", name)

    def close(self) -> None:
        self._stop.set()
        if self._maint is not None:
            self._maint.join(5)
            self._maint = None
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def now(self) -> datetime:
        return self._clock.now() if self._clock is not None else _now()

    # ---------------------------------------------------------------- writing

    def write_block(self, owner_id: str, index: int, data: bytes | bytearray | memoryview, key: DataKey | None,
                    *, checksum: str | None = None) -> str:
        """Store one block; returns its base64 SHA-256. Durable when it returns.

        ``checksum``: the base64 SHA-256 of ``data`` when the caller has just computed it
        from these very bytes (PutSnapshotBlock verifies it against the request's), so the
        512 KiB are not hashed twice.

        Concurrent writers share their flushes (group commit): each stages its object,
        then one of them — the leader — makes every staged object durable with one flush,
        renames them into place and records all their entries in one transaction (one
        savepoint each, so one writer's error is its own).
        """
        _check_index(index)
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes, got {len(data)}")
        if checksum is None:
            checksum = sha256_b64(data)
        cipher = self._cipher(key)
        item = _PendingWrite(owner_id, index, key, None, cipher.seal_checksum(index, checksum))
        if data != ZERO_BLOCK:
            # Writes close in time share a directory, so a group commit fsyncs one directory.
            item.object_key = new_object_key(f"{int(time.time() // 8) % 256:02x}")
            sealed = cipher.seal(index, data)
            stage = getattr(self.store, "stage", None)
            if stage is not None:
                item.staged = stage(item.object_key, sealed)
            else:
                self.store.put(item.object_key, sealed)
        self._group_commit(item)
        return checksum

    def _group_commit(self, item: "_PendingWrite") -> None:
        with self._writes_cv:
            self._writes.append(item)
        while True:
            with self._writes_cv:
                while not item.done and self._writes_busy:
                    self._writes_cv.wait()
                if item.done:
                    break
                self._writes_busy = True  # lead: commit the oldest writes (FIFO, ours among them soon)
                batch = self._writes[: self.GROUP_MAX]
                del self._writes[: self.GROUP_MAX]
            try:
                self._commit_writes(batch)
            finally:
                with self._writes_cv:
                    for it in batch:
                        it.done = True
                    self._writes_busy = False
                    self._writes_cv.notify_all()
        if item.error is not None:
            raise item.error

    def _commit_writes(self, batch: list["_PendingWrite"]) -> None:
        self.group_commits += 1
        staged = [it.staged for it in batch if it.staged is not None]
        try:
            if staged:
                self.store.publish(staged)  # type: ignore[attr-defined]
        except BaseException as exc:
            for it in batch:
                it.error = exc
            return
        try:
            with self.db.begin() as conn:
                for it in batch:
                    savepoint = conn.begin_nested()
                    try:
                        owner = self._get_owner(conn, it.owner_id, lock=True) or self._create_owner(
                            conn, it.owner_id, None, it.key
                        )
                        if owner.pin_id is not None:
                            raise CopyInProgress(f"{it.owner_id} is still being copied into")
                        self._check_key(owner, it.key, adopt=conn)
                        self._put_entry(conn, owner.head_id, it.index, it.object_key, it.checksum, it.key)
                        savepoint.commit()
                    except Exception as exc:
                        savepoint.rollback()
                        it.error = exc
        except BaseException as exc:
            for it in batch:
                if it.error is None:
                    it.error = exc
        for it in batch:
            if it.error is not None and it.object_key is not None:
                _delete_quietly(self.store, [it.object_key])

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
        """
        _check_index(index)
        given = ref
        for attempt in (0, 1):
            ref = given if attempt == 0 and given is not None and given.index == index else self.block_ref(owner_id, index)
            if ref is None or ref.object_key is None:
                if ref is not None:
                    self._check_ref_key(ref, key)
                return ZERO_BLOCK, ZERO_CHECKSUM, ref
            self._check_ref_key(ref, key)
            try:
                data = self._open_object(ref, key)
            except ObjectMissing:
                if attempt == 0:
                    continue  # dropped and collected between resolve and read: resolve again
                log.error("object %s of %s block %d is missing", ref.object_key, owner_id, index)
                raise BlockIntegrityError() from None
            return data, sha256_b64(data), ref
        raise AssertionError("unreachable")

    def _open_object(self, ref: BlockRef, key: DataKey | None) -> bytes:
        assert ref.object_key is not None
        buf = self._read_buffer()
        view = self.store.read_into(ref.object_key, buf) if hasattr(self.store, "read_into") else self.store.get(ref.object_key)
        return bytes(self._cipher(key).open(ref.index, view, ref.checksum))

    def _check_ref_key(self, ref: BlockRef, key: DataKey | None) -> None:
        # A wrong key would fail authentication anyway; this only makes misuse obvious.
        if (key is None) != (ref.data_key_id is None):
            raise BlockIntegrityError()

    def block_ref(self, owner_id: str, index: int, *, conn: Connection | None = None) -> BlockRef | None:
        """The entry that holds the owner's block (None: never written). With ``conn``,
        read in the caller's transaction (one transaction per request)."""
        if conn is None:
            with self.db.read() as own:
                return self.block_ref(owner_id, index, conn=own)
        owner = self._get_owner(conn, owner_id)
        if owner is None:
            return None
        chain = self._chain(conn, owner.head_id)
        rows = conn.execute(
            select(blk_entries).where(blk_entries.c.layer_id.in_(chain), blk_entries.c.block_index == index)
        ).mappings().all()
        if not rows:
            return None
        pos = {layer: i for i, layer in enumerate(chain)}
        row = min(rows, key=lambda r: pos[r["layer_id"]])
        return _ref(row)

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
        refs = self.list_block_refs(owner_id)
        out: list[tuple[int, str | None]] = []
        cipher = self._cipher(key)
        for ref in refs:
            if ref.data_key_id is None:
                out.append((ref.index, ref.checksum))
            elif key is None:
                out.append((ref.index, None))
            else:
                out.append((ref.index, cipher.open_checksum(ref.index, ref.checksum)))
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

    def owner_key_id(self, owner_id: str) -> str | None:
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            return owner.data_key_id if owner else None

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
        cipher = self._cipher(key)
        out: list[tuple[int, str | None]] = []
        for row in rows:
            ref = _ref(row)
            if ref.data_key_id is None:
                out.append((ref.index, ref.checksum))
            else:
                out.append((ref.index, cipher.open_checksum(ref.index, ref.checksum) if key is not None else None))
        return out

    def own_block_count(self, owner_id: str) -> int:
        """Blocks stored in the owner's head layer (written since its creation/share)."""
        with self.db.read() as conn:
            owner = self._get_owner(conn, owner_id)
            if owner is None:
                return 0
            return len(conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id == owner.head_id)).all())

    # ---------------------------------------------------------------- lineage

    def share(self, src_owner_id: str, dst_owner_id: str) -> None:
        """dst gets src's current blocks by reference (same data key). O(1).

        Idempotent: if dst already exists, nothing happens (resumable jobs may repeat it).
        Later writes to either owner are not seen by the other.
        """
        if src_owner_id == dst_owner_id:
            raise BlockError("cannot share an owner with itself")
        with self.db.begin() as conn:
            if self._get_owner(conn, dst_owner_id) is not None:
                return
            src = self._get_owner(conn, src_owner_id, lock=True)
            if src is None:
                self._create_owner(conn, dst_owner_id, None, None)
                return
            if src.pin_id is not None:
                raise BlockError(f"{src_owner_id} is still being copied; share it once the copy is done")
            base = self._freeze_head(conn, src)
            self._create_owner(conn, dst_owner_id, base, None, data_key_id=src.data_key_id, encrypted=src.encrypted)

    def _freeze_head(self, conn: Connection, owner: _Owner) -> str | None:
        """Make ``owner``'s current content an immutable layer and return it (None: empty).

        An empty head is not frozen: its parent already holds the same content.
        """
        has_entries = conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id == owner.head_id).limit(1)).first()
        if has_entries is None:
            return self._layer(conn, owner.head_id)[0]
        new_head = self._new_layer(conn, owner.head_id)
        conn.execute(update(blk_owners).where(blk_owners.c.owner_id == owner.owner_id).values(head_id=new_head))
        return owner.head_id

    def changed_blocks(self, first_owner_id: str | None, second_owner_id: str) -> list[ChangedBlock]:
        """Blocks that differ between two owners of one lineage, by index.

        With ``first_owner_id`` None: every written block of the second. Raises
        :class:`UnrelatedLineage` when the two share no layer.
        """
        with self.db.read() as conn:
            second = self._get_owner(conn, second_owner_id)
            if second is None:
                raise UnrelatedLineage(second_owner_id)
            second_chain = self._chain(conn, second.head_id)
            if first_owner_id is None:
                return [ChangedBlock(r.index, None, r) for r in self._resolved(conn, second_chain)]
            first = self._get_owner(conn, first_owner_id)
            if first is None:
                raise UnrelatedLineage(first_owner_id)
            first_chain = self._chain(conn, first.head_id)
            first_ident = self._identity_chain(conn, first.head_id)
            second_ident = self._identity_chain(conn, second.head_id)
            common = set(first_ident) & set(second_ident)
            if not common:
                raise UnrelatedLineage(f"{first_owner_id} / {second_owner_id}")
            own_a = [layer for layer in first_ident if layer not in common]
            own_b = [layer for layer in second_ident if layer not in common]
            indices: set[int] = set()
            for layers in (own_a, own_b):
                if layers:
                    indices.update(
                        r.block_index
                        for r in conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id.in_(layers)))
                    )
            if not indices:
                return []
            first_refs = {r.index: r for r in self._resolved(conn, first_chain)}
            second_refs = {r.index: r for r in self._resolved(conn, second_chain)}
        out = []
        for index in sorted(indices):
            a, b = first_refs.get(index), second_refs.get(index)
            if a is None and b is None:
                continue
            if a is not None and b is not None and a.object_key == b.object_key and a.layer_id == b.layer_id:
                continue
            out.append(ChangedBlock(index, a, b))
        return out

    def _identity_chain(self, conn: Connection, head_id: str) -> list[str]:
        """The chain for lineage purposes: a re-encrypted copy layer stands for its origin."""
        out: list[str] = []
        layer: str | None = head_id
        while layer is not None:
            try:
                parent, origin = self._layer(conn, layer)
            except BlockError:  # an origin that has since been released: the lineage ends
                break
            if origin is not None:
                layer = origin  # mirrors the origin chain exactly: contributes no change
                continue
            out.append(layer)
            layer = parent
        return out

    # ---------------------------------------------------------------- re-encryption

    def reencrypt(
        self,
        src_owner_id: str,
        src_key: DataKey | None,
        dst_owner_id: str,
        dst_key: DataKey | None,
        progress: Callable[[float], None] | None = None,
    ) -> int:
        """Copy every block of src into a new owner dst under ``dst_key``. Returns blocks copied.

        Reads a frozen view of src taken at the first call (pinned until done), so later
        writes to src never leak into the copy. Resumable and idempotent: a repeated call
        after a crash skips blocks dst already holds; a call on a finished copy (an empty
        source's included) is a no-op.
        The source is never modified.
        """
        if src_owner_id == dst_owner_id:
            raise BlockError("cannot copy an owner onto itself")
        copy_layer, pin = self._start_copy(src_owner_id, dst_owner_id, dst_key)
        if copy_layer is None:
            if progress:
                progress(100.0)
            return 0
        with self.db.read() as conn:
            todo = self._resolved(conn, self._chain(conn, pin)) if pin is not None else []
            done = {r.block_index for r in conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id == copy_layer))}
        total = len(todo)
        todo = [r for r in todo if r.index not in done]
        copied = total - len(todo)
        if progress and total:
            progress(100.0 * copied / total)

        src_cipher = self._cipher(src_key)
        dst_cipher = self._cipher(dst_key)

        def checksum_for(ref: BlockRef) -> tuple[str, str]:
            plain = src_cipher.open_checksum(ref.index, ref.checksum)
            return plain, dst_cipher.seal_checksum(ref.index, plain)

        # Zero entries carry no object: record them directly.
        zeros = [r for r in todo if r.object_key is None]
        if zeros:
            self._commit_copied(dst_owner_id, copy_layer, [(r.index, None, checksum_for(r)[1]) for r in zeros], dst_key)
            copied += len(zeros)
        objects = [r for r in todo if r.object_key is not None]

        batches: list[list[tuple[int, str, str, str]]] = []
        for start in range(0, len(objects), self.BATCH_BLOCKS):
            shard = new_shard()
            batch = []
            for ref in objects[start : start + self.BATCH_BLOCKS]:
                plain_sum = checksum_for(ref)[0]
                assert ref.object_key is not None
                batch.append((ref.index, ref.object_key, plain_sum, new_object_key(shard)))
            batches.append(batch)

        src_t = (src_key.key_id, src_key.plaintext) if src_key else None
        dst_t = (dst_key.key_id, dst_key.plaintext) if dst_key else None

        def finish_batch(batch: list[tuple[int, str, str, str]]) -> None:
            nonlocal copied
            rows = [(index, new_key, dst_cipher.seal_checksum(index, plain_sum)) for index, _, plain_sum, new_key in batch]
            self._commit_copied(dst_owner_id, copy_layer, rows, dst_key)
            copied += len(batch)
            if progress and total:
                progress(min(99.9, 100.0 * copied / total))
            if self.copy_batch_delay:
                time.sleep(self.copy_batch_delay)

        if len(objects) <= self.INLINE_BLOCKS or self.processes <= 0:
            for batch in batches:
                try:
                    workers.reencrypt_batch(self.store, src_t, dst_t, batch)
                except BaseException:
                    _delete_quietly(self.store, [b[3] for b in batch])
                    raise
                finish_batch(batch)
        else:
            pool = self._get_pool()
            pending: dict[Future[int], list[tuple[int, str, str, str]]] = {}
            queue = list(reversed(batches))
            failure: BaseException | None = None
            try:
                while queue or pending:
                    while queue and len(pending) < 2 * self.processes and failure is None:
                        batch = queue.pop()
                        pending[pool.submit(workers.reencrypt_batch, self.store, src_t, dst_t, batch)] = batch
                    done_set, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done_set:
                        batch = pending.pop(fut)
                        try:
                            fut.result()
                            if failure is None:
                                finish_batch(batch)
                            else:
                                _delete_quietly(self.store, [b[3] for b in batch])
                        except BaseException as exc:
                            _delete_quietly(self.store, [b[3] for b in batch])
                            failure = failure or exc
                    if failure is not None:
                        queue.clear()
            finally:
                for fut, batch in pending.items():  # only on an unexpected exit
                    fut.cancel()
            if failure is not None:
                raise failure

        self._finish_copy(dst_owner_id)
        if progress:
            progress(100.0)
        return total

    def _start_copy(self, src_owner_id: str, dst_owner_id: str, dst_key: DataKey | None) -> tuple[str | None, str | None]:
        """Create dst (copy layer + pin on a frozen view of src), or find the copy in progress.

        Returns (copy layer, pinned source layer); (None, None) when there is nothing to do.
        """
        with self.db.begin() as conn:
            dst = self._get_owner(conn, dst_owner_id, lock=True)
            if dst is not None:
                return self._earlier_copy(conn, dst, dst_key)
            src = self._get_owner(conn, src_owner_id, lock=True)
            frozen = self._freeze_head(conn, src) if src is not None else None
            copy_layer = self._new_layer(conn, None, origin=frozen) if frozen is not None else None
            if copy_layer is None:  # nothing to copy: dst is complete as created
                self._create_owner(conn, dst_owner_id, None, dst_key)
                return None, None
            now = self.now()
            conn.execute(
                insert(blk_owners).values(
                    owner_id=dst_owner_id,
                    head_id=copy_layer,
                    pin_id=frozen,
                    data_key_id=dst_key.key_id if dst_key else None,
                    encrypted=dst_key is not None,
                    created_at=now,
                )
            )
            return copy_layer, frozen

    def _earlier_copy(self, conn: Connection, dst: _Owner, dst_key: DataKey | None) -> tuple[str | None, str | None]:
        """What an earlier call of the same copy left in ``dst`` (a resumed job repeats its
        copy after a crash at any point): (copy layer, pin) to resume, (None, None) when it
        is complete. Whatever else already owns the id is a caller's error.

        ``_start_copy`` creates dst in one transaction, so an earlier call left one of three
        states, never a half-made owner: a copy in progress (pinned copy layer), a finished
        copy (the copy layer under a fresh head), or — when the source held no block — an
        empty owner under dst's key, which is that copy complete.
        """
        parent, origin = self._layer(conn, dst.head_id)
        if dst.pin_id is not None and origin is not None:
            return dst.head_id, dst.pin_id  # resume: finished blocks are skipped
        if dst.pin_id is None and (origin is not None or (parent is not None and self._layer(conn, parent)[1])):
            return None, None  # already finished
        if dst.pin_id is None and parent is None and self._is_empty_copy_of(conn, dst, dst_key):
            return None, None  # an empty source's copy, already made
        raise BlockError(f"copy destination {dst.owner_id} already exists")

    @staticmethod
    def _is_empty_copy_of(conn: Connection, dst: _Owner, dst_key: DataKey | None) -> bool:
        """dst holds no block and is stored under ``dst_key`` (unencrypted when None: an
        empty owner made without a key has ``encrypted`` NULL, "the first write decides")."""
        if bool(dst.encrypted) != (dst_key is not None) or dst.data_key_id != (dst_key.key_id if dst_key else None):
            return False
        entry = select(blk_entries.c.block_index).where(blk_entries.c.layer_id == dst.head_id).limit(1)
        return conn.execute(entry).first() is None

    def _commit_copied(
        self, dst_owner_id: str, copy_layer: str, rows: list[tuple[int, str | None, str]], dst_key: DataKey | None
    ) -> None:
        try:
            with self.db.begin() as conn:
                dst = self._get_owner(conn, dst_owner_id, lock=True)
                if dst is None or dst.head_id != copy_layer:
                    raise CopyCancelled(f"copy destination {dst_owner_id} was released during the copy")
                indices = [r[0] for r in rows]
                old = [
                    r.object_key
                    for r in conn.execute(
                        select(blk_entries.c.object_key).where(
                            blk_entries.c.layer_id == copy_layer, blk_entries.c.block_index.in_(indices)
                        )
                    )
                ]
                if old:  # only when a resumed copy redoes a block (defensive)
                    conn.execute(
                        delete(blk_entries).where(blk_entries.c.layer_id == copy_layer, blk_entries.c.block_index.in_(indices))
                    )
                    self._to_garbage(conn, [k for k in old if k is not None])
                key_id = dst_key.key_id if dst_key is not None else None
                conn.execute(
                    insert(blk_entries),
                    [
                        dict(layer_id=copy_layer, block_index=i, object_key=k, checksum=c, data_key_id=key_id)
                        for i, k, c in rows
                    ],
                )
        except BaseException:
            _delete_quietly(self.store, [r[1] for r in rows if r[1] is not None])
            raise

    def _finish_copy(self, dst_owner_id: str) -> None:
        with self.db.begin() as conn:
            dst = self._get_owner(conn, dst_owner_id, lock=True)
            if dst is None:
                raise CopyCancelled(f"copy destination {dst_owner_id} was released during the copy")
            if dst.pin_id is None:
                return
            head = self._new_layer(conn, dst.head_id)  # the copy layer is frozen from here on
            conn.execute(update(blk_owners).where(blk_owners.c.owner_id == dst_owner_id).values(head_id=head, pin_id=None))
            self._drop_unreferenced(conn, [dst.pin_id])

    # ---------------------------------------------------------------- release / GC

    def release(self, owner_id: str) -> None:
        """Forget an owner. Blocks no other owner (or running copy) references are reclaimed.

        Releasing the destination of a copy still running cancels that copy: its next step
        finds the owner gone, deletes what it had just stored and raises
        :class:`CopyCancelled`. The blocks it had already recorded are deleted at once,
        without the garbage grace period: that grace protects readers that resolved an entry
        just before it was dropped, and a copy destination has none — it is readable only
        once the copy is done (EBS reads need a completed snapshot; a volume still being
        created cannot be attached).
        """
        with self.db.begin() as conn:
            owner = self._get_owner(conn, owner_id, lock=True)
            if owner is None:
                return
            conn.execute(delete(blk_owners).where(blk_owners.c.owner_id == owner_id))
            unread = {owner.head_id} if owner.pin_id is not None else set()
            at_once = self._drop_unreferenced(
                conn, [owner.head_id] + ([owner.pin_id] if owner.pin_id else []), reclaim_now=unread
            )
        self.sweep()
        if at_once:
            self._collect(at_once)

    def _collect(self, keys: list[str]) -> None:
        """Delete garbage objects now (no grace period), then their garbage rows. A crash in
        between leaves them listed: the regular sweep finishes the job."""
        for key in keys:
            self.store.delete(key)
        with self.db.begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(delete(blk_garbage).where(blk_garbage.c.object_key.in_(keys[start : start + 500])))

    def _drop_unreferenced(
        self, conn: Connection, candidates: list[str], *, reclaim_now: set[str] | None = None
    ) -> list[str]:
        """Drop layers nothing references any more (their objects to the garbage list), up
        the parent chain; a frozen layer left with a single child is merged into it.

        Returns the objects of the dropped layers named in ``reclaim_now`` (no reader can
        hold them): the caller deletes them after commit instead of after the grace period.
        """
        now_keys: list[str] = []
        while candidates:
            layer = candidates.pop()
            if self._layer_referenced(conn, layer):
                self._merge_into_only_child(conn, layer)
                continue
            parent, _ = self._layer(conn, layer)
            keys = [
                r.object_key
                for r in conn.execute(select(blk_entries.c.object_key).where(blk_entries.c.layer_id == layer))
                if r.object_key is not None
            ]
            self._to_garbage(conn, keys)
            if reclaim_now and layer in reclaim_now:
                now_keys.extend(keys)
            conn.execute(delete(blk_entries).where(blk_entries.c.layer_id == layer))
            conn.execute(delete(blk_layers).where(blk_layers.c.id == layer))
            self._layer_cache.pop(layer, None)
            if parent is not None:
                candidates.append(parent)
        return now_keys

    def _merge_into_only_child(self, conn: Connection, layer: str) -> None:
        """Compaction: a frozen layer that only one child layer still needs (no owner's head
        or pin, no copy mirroring it) is folded into that child. Its entries the child
        shadows are unreachable by every owner: their objects are reclaimed. Chains get
        shorter; contents of every owner stay the same."""
        if (
            conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.head_id == layer).limit(1)).first() is not None
            or conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.pin_id == layer).limit(1)).first() is not None
            or conn.execute(select(blk_layers.c.id).where(blk_layers.c.origin_id == layer).limit(1)).first() is not None
        ):
            return
        children = [r.id for r in conn.execute(select(blk_layers.c.id).where(blk_layers.c.parent_id == layer).limit(2))]
        if len(children) != 1:
            return
        child = children[0]
        parent, _origin = self._layer(conn, layer)
        shadowed = {
            r.block_index: r.object_key
            for r in conn.execute(
                select(blk_entries.c.block_index, blk_entries.c.object_key).where(
                    blk_entries.c.layer_id == layer,
                    blk_entries.c.block_index.in_(
                        select(blk_entries.c.block_index).where(blk_entries.c.layer_id == child)
                    ),
                )
            )
        }
        self._to_garbage(conn, [k for k in shadowed.values() if k is not None])
        if shadowed:
            conn.execute(
                delete(blk_entries).where(blk_entries.c.layer_id == layer, blk_entries.c.block_index.in_(list(shadowed)))
            )
        conn.execute(update(blk_entries).where(blk_entries.c.layer_id == layer).values(layer_id=child))
        conn.execute(update(blk_layers).where(blk_layers.c.id == child).values(parent_id=parent))
        conn.execute(delete(blk_layers).where(blk_layers.c.id == layer))
        # (the only place a layer's parent changes: a stale cached chain elsewhere still
        # resolves the same blocks — the merged layer is then merely empty)
        self._layer_cache[child] = (parent, self._layer(conn, child)[1])
        self._layer_cache.pop(layer, None)

    @staticmethod
    def _layer_referenced(conn: Connection, layer: str) -> bool:
        return (
            conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.head_id == layer).limit(1)).first() is not None
            or conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.pin_id == layer).limit(1)).first() is not None
            or conn.execute(select(blk_layers.c.id).where(blk_layers.c.parent_id == layer).limit(1)).first() is not None
        )

    def _to_garbage(self, conn: Connection, keys: Iterable[str]) -> None:
        now = self.now()
        for key in keys:
            conn.execute(insert(blk_garbage).values(object_key=key, since=now))

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
            with self.db.begin() as conn:
                conn.execute(delete(blk_garbage).where(blk_garbage.c.object_key.in_(due)))
        return len(due)

    def sweep_orphans(self, min_age_seconds: float = 3600.0) -> int:
        """Delete stored objects no entry references (left by a crash between store and
        commit) once older than ``min_age_seconds``, so in-flight writes are never hit."""
        cutoff = time.time() - min_age_seconds
        candidates = [(k, m) for k, m in self.store.keys() if m <= cutoff]
        removed = 0
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
            if key not in referenced and key not in garbage:
                self.store.delete(key)
                removed += 1
        return removed

    # ---------------------------------------------------------------- internals

    def _get_owner(self, conn: Connection, owner_id: str, *, lock: bool = False) -> _Owner | None:
        query = select(blk_owners).where(blk_owners.c.owner_id == owner_id)
        if lock and not self.db.is_sqlite:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return _Owner(row["owner_id"], row["head_id"], row["pin_id"], row["data_key_id"], row["encrypted"])

    def _create_owner(
        self,
        conn: Connection,
        owner_id: str,
        parent: str | None,
        key: DataKey | None,
        *,
        data_key_id: str | None = None,
        encrypted: bool | None = None,
    ) -> _Owner:
        head = self._new_layer(conn, parent)
        if key is not None:
            data_key_id, encrypted = key.key_id, True
        conn.execute(
            insert(blk_owners).values(
                owner_id=owner_id,
                head_id=head,
                pin_id=None,
                data_key_id=data_key_id,
                encrypted=encrypted,
                created_at=self.now(),
            )
        )
        return _Owner(owner_id, head, None, data_key_id, encrypted)

    def _check_key(self, owner: _Owner, key: DataKey | None, *, adopt: Connection) -> None:
        if owner.encrypted is None:  # first write decides
            adopt.execute(
                update(blk_owners)
                .where(blk_owners.c.owner_id == owner.owner_id)
                .values(encrypted=key is not None, data_key_id=key.key_id if key else None)
            )
            return
        if owner.encrypted != (key is not None) or (key is not None and key.key_id != owner.data_key_id):
            raise KeyMismatch(f"{owner.owner_id} is stored under data key {owner.data_key_id!r}")

    def _new_layer(self, conn: Connection, parent: str | None, *, origin: str | None = None) -> str:
        layer = _new_id()
        conn.execute(insert(blk_layers).values(id=layer, parent_id=parent, origin_id=origin, created_at=self.now()))
        self._layer_cache[layer] = (parent, origin)
        return layer

    def _layer(self, conn: Connection, layer: str) -> tuple[str | None, str | None]:
        cached = self._layer_cache.get(layer)
        if cached is not None:
            return cached
        row = conn.execute(select(blk_layers.c.parent_id, blk_layers.c.origin_id).where(blk_layers.c.id == layer)).first()
        if row is None:
            raise BlockError(f"layer {layer} is missing")
        value = (row.parent_id, row.origin_id)
        self._layer_cache[layer] = value  # a layer's parent and origin never change
        return value

    def _chain(self, conn: Connection, head: str) -> list[str]:
        out: list[str] = []
        layer: str | None = head
        while layer is not None:
            out.append(layer)
            layer = self._layer(conn, layer)[0]
        return out

    @staticmethod
    def _resolved(conn: Connection, chain: list[str]) -> list[BlockRef]:
        if not chain:
            return []
        pos = {layer: i for i, layer in enumerate(chain)}
        best: dict[int, tuple[int, Any]] = {}
        for i in range(0, len(chain), 500):
            for row in conn.execute(select(blk_entries).where(blk_entries.c.layer_id.in_(chain[i : i + 500]))).mappings():
                p = pos[row["layer_id"]]
                cur = best.get(row["block_index"])
                if cur is None or p < cur[0]:
                    best[row["block_index"]] = (p, row)
        return [_ref(best[index][1]) for index in sorted(best)]

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
            buf = self._local.readbuf = bytearray(GCM_OBJECT_SIZE + 1)
        return buf

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # 'spawn': the server is multi-threaded, and fork would copy its locks.
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=workers.init_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool


def _ref(row: Any) -> BlockRef:
    return BlockRef(row["block_index"], row["object_key"], row["checksum"], row["data_key_id"], row["layer_id"])


def _check_index(index: int) -> None:
    if not isinstance(index, int) or index < 0:
        raise ValueError("block index must be a non-negative integer")


def _delete_quietly(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # best effort: an orphan is swept later
            log.warning("could not delete object %s", key)


def open_local(data_dir: Any, db: Any, clock: Any = None, **kwargs: Any) -> BlockEngine:
    from pathlib import Path

    return BlockEngine(db, LocalDirStore(Path(data_dir) / "blocks"), clock=clock, **kwargs)
