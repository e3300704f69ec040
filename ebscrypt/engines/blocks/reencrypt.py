"""Re-encryption: ``reencrypt`` copies every block of one owner into a new owner under
another data key (CopySnapshot / CreateVolume with a new key).

The copy reads a frozen view of the source, pinned until it is done, so later writes to
the source never leak into it. Blocks go in batches to worker processes (AES-GCM holds the
GIL; :mod:`.workers`) with preallocated buffers and one ``syncfs`` per batch; small copies
run in the calling thread. Progress is recorded per batch, so a restarted copy skips
finished blocks. Releasing the destination cancels the copy (:class:`CopyCancelled`).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Callable, Sequence

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.engines.blocks import workers
from ebscrypt.engines.blocks.crypto import LAZY_CHECKSUM, BlockCipher, DataKey, sha256_b64
from ebscrypt.engines.blocks.errors import BlockError, CopyCancelled
from ebscrypt.engines.blocks.lineage import LineageOperations
from ebscrypt.engines.blocks.records import BlockRef, Owner, delete_quietly
from ebscrypt.engines.blocks.store import new_object_key, new_shard
from ebscrypt.storage.tables.blocks import blk_entries, blk_owners


class CopyOperations(LineageOperations):
    """Mixin of :class:`~ebscrypt.engines.blocks.engine.BlockEngine` (uses its ``db``,
    ``store``, ``processes``, ``copy_batch_delay``, ciphers and lineage internals: a copy
    is built on the lineage operations, hence their subclass)."""

    # What this mixin uses of its host besides the lineage's, declared for the type
    # checker only (annotations without a value, and stubs under TYPE_CHECKING, create
    # nothing at run time): BlockEngine.__init__ sets the attributes and defines ``_cipher``.
    processes: int
    copy_batch_delay: float
    _pool: ProcessPoolExecutor | None
    _pool_lock: threading.Lock

    if TYPE_CHECKING:

        def _cipher(self, key: DataKey | None) -> BlockCipher: ...

        def _open_view(self, ref: BlockRef, key: DataKey | None) -> memoryview: ...

    # Copies smaller than this run in the calling thread (no worker start-up cost).
    INLINE_BLOCKS = 48
    BATCH_BLOCKS = 32

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
            if plain == LAZY_CHECKSUM and ref.object_key is not None and dst_key is None:
                # (a plain destination is checked against it: computed from the source)
                plain = sha256_b64(self._open_view(ref, src_key))
            return plain, dst_cipher.seal_checksum(ref.index, plain)

        # Zero entries carry no object: record them directly.
        zeros = [r for r in todo if r.object_key is None]
        if zeros:
            self._commit_copied(dst_owner_id, copy_layer, [(r.index, None, checksum_for(r)[1]) for r in zeros], dst_key)
            copied += len(zeros)
        objects = [r for r in todo if r.object_key is not None]

        batches: list[list[tuple[int, str, str, str]]] = []
        # What the workers open each source with: a plain source's entry checksum as
        # stored (its sector table's digest, or the block's SHA-256), an encrypted one's
        # SHA-256 (only version 1 objects need it).
        opening: dict[int, str] = {}
        for start in range(0, len(objects), self.BATCH_BLOCKS):
            shard = new_shard()
            batch = []
            for ref in objects[start : start + self.BATCH_BLOCKS]:
                plain_sum = checksum_for(ref)[0]
                assert ref.object_key is not None
                opening[ref.index] = ref.checksum if src_key is None else plain_sum
                batch.append((ref.index, ref.object_key, plain_sum, new_object_key(shard)))
            batches.append(batch)

        src_t = (src_key.key_id, src_key.plaintext) if src_key else None
        dst_t = (dst_key.key_id, dst_key.plaintext) if dst_key else None

        def for_worker(batch: list[tuple[int, str, str, str]]) -> list[tuple[int, str, str, str]]:
            return [(index, src, opening[index], dst) for index, src, _sum, dst in batch]

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
                    workers.reencrypt_batch(self.store, src_t, dst_t, for_worker(batch))
                except BaseException:
                    delete_quietly(self.store, [b[3] for b in batch])
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
                        pending[pool.submit(workers.reencrypt_batch, self.store, src_t, dst_t, for_worker(batch))] = batch
                    done_set, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done_set:
                        batch = pending.pop(fut)
                        try:
                            fut.result()
                            if failure is None:
                                finish_batch(batch)
                            else:
                                delete_quietly(self.store, [b[3] for b in batch])
                        except BaseException as exc:
                            delete_quietly(self.store, [b[3] for b in batch])
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
            key_id = dst_key.key_id if dst_key else None
            self._insert_owner(conn, Owner(dst_owner_id, copy_layer, frozen, key_id, dst_key is not None))
            return copy_layer, frozen

    def _earlier_copy(self, conn: Connection, dst: Owner, dst_key: DataKey | None) -> tuple[str | None, str | None]:
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
    def _is_empty_copy_of(conn: Connection, dst: Owner, dst_key: DataKey | None) -> bool:
        """dst holds no block and is stored under ``dst_key`` (unencrypted when None: an
        empty owner made without a key has ``encrypted`` NULL, "the first write decides")."""
        if bool(dst.encrypted) != (dst_key is not None) or dst.data_key_id != (dst_key.key_id if dst_key else None):
            return False
        entry = select(blk_entries.c.block_index).where(blk_entries.c.layer_id == dst.head_id).limit(1)
        return conn.execute(entry).first() is None

    def _commit_copied(
        self, dst_owner_id: str, copy_layer: str, rows: Sequence[tuple[int, str | None, str]], dst_key: DataKey | None
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
            delete_quietly(self.store, [r[1] for r in rows if r[1] is not None])
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
