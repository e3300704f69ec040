"""Several blocks of one owner stored in one go (attached volumes write back a cache full
of dirty blocks at FLUSH, at a snapshot and when the cache is full).

``BlockEngine.write_block`` stores one block; concurrent callers share group commits, but
a flush of N blocks from a few threads still pays about N / threads flushes of the store
and metadata transactions. :func:`write_blocks` seals and stages every block first, then
queues them all at once, so each group commit takes up to ``GROUP_MAX`` of them: one
store flush and one transaction per 64 blocks. Same guarantees as ``write_block`` (each
block sealed under ``key`` with a fresh nonce, bound to its object key and index; durable
when this returns; one block's error is its own, the others are stored).

Kept out of ``engine.py`` (a separate module over the engine's group-commit queue) so
that the engine's own code is unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, ZERO_BLOCK, DataKey, sha256_b64
from ebscrypt.engines.blocks.records import check_index
from ebscrypt.engines.blocks.store import new_object_key

Item = tuple[int, bytes]


def write_blocks(engine: Any, owner_id: str, items: Sequence[Item], key: DataKey | None, *,
                 map_fn: Callable[[Callable[[Item], Any], Iterable[Item]], Iterable[Any]] | None = None) -> None:
    """Store ``items`` ((index, 512 KiB of plaintext) each) of ``owner_id``; durable when it
    returns. ``map_fn`` (e.g. a thread pool's ``map``) seals and stages them in parallel.
    Raises the first block's error after every block was tried."""
    from ebscrypt.engines.blocks.engine import _PendingWrite

    def prepare(item: Item) -> Any:
        try:
            return seal_and_stage(item)
        except Exception as exc:  # this block's own error: the others go on
            return exc

    def seal_and_stage(item: Item) -> Any:
        index, data = item
        check_index(index)
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes, got {len(data)}")
        cipher = engine._cipher(key)
        pending = _PendingWrite(owner_id, index, key, None, cipher.seal_checksum(index, sha256_b64(data)))
        if data != ZERO_BLOCK:  # an all-zero block is an entry without an object, as in write_block
            pending.object_key = new_object_key(f"{int(time.time() // 8) % 256:02x}")
            sealed = cipher.seal(pending.object_key, index, data)
            stage = getattr(engine.store, "stage", None)
            if stage is not None:
                pending.staged = stage(pending.object_key, sealed)
            else:
                engine.store.put(pending.object_key, sealed)
        return pending

    if not items:
        return
    results = list((map_fn or map)(prepare, items))
    prepared = [r for r in results if not isinstance(r, Exception)]
    failed = [r for r in results if isinstance(r, Exception)]
    if prepared:
        with engine._writes_cv:
            engine._writes.extend(prepared[:-1])
        # The queue is first in, first out: when the last is committed, so is every one before it.
        try:
            engine._group_commit(prepared[-1])
        except Exception as exc:
            failed.append(exc)
        failed += [p.error for p in prepared[:-1] if p.error is not None]
    if failed:
        raise failed[0]
