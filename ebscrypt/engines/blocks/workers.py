"""Work that runs in worker processes (re-encryption), importable without the server.

``cryptography``'s AES-GCM holds the GIL, so re-encryption uses processes. Keys travel
to the workers through the pool's pipe, in memory only; each worker keeps one cipher
set of preallocated buffers (per thread: the engine also runs small copies in-process),
but no key beyond the batch it is working on.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from ebscrypt.engines.blocks.crypto import (
    BLOCK_SIZE,
    GCM_OBJECT_SIZE,
    MAX_OBJECT_SIZE,
    PLAIN_OBJECT_SIZE,
    BlockCipher,
    DataKey,
)

# Buffers live as long as the worker (one set per thread); keys only as long as one batch.
_local = threading.local()


def _buffers() -> tuple[bytearray, bytearray, bytearray, bytearray]:
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = (
            bytearray(MAX_OBJECT_SIZE + 1),  # read (objects of every format)
            bytearray(BLOCK_SIZE),  # plaintext
            bytearray(GCM_OBJECT_SIZE),  # sealed object
            bytearray(PLAIN_OBJECT_SIZE),  # plain object
        )
    return bufs


def init_worker(parent_pid: int) -> None:
    """Worker start-up: exit as soon as the server that started us is gone (a SIGKILLed
    server cannot shut its pool down, and the pool's pipes would keep us waiting)."""
    import os
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def reencrypt_batch(
    store: Any,
    src_key: tuple[str, bytes] | None,
    dst_key: tuple[str, bytes] | None,
    items: list[tuple[int, str, str, str]],
) -> int:
    """For each (index, src object, plaintext checksum, dst object): open the source
    object with ``src_key`` and store it sealed under ``dst_key``. Durable on return.

    The caller owns the destination keys: it records them (or deletes them on failure).
    """
    readbuf, plain, obj_gcm, obj_plain = _buffers()
    src = BlockCipher(DataKey(*src_key) if src_key else None, plain_buf=plain)
    dst = BlockCipher(DataKey(*dst_key) if dst_key else None, obj_buf=obj_gcm if dst_key else obj_plain)

    def sealed() -> Iterator[tuple[str, memoryview]]:
        for index, src_object, checksum, dst_object in items:
            obj = store.read_into(src_object, readbuf) if hasattr(store, "read_into") else store.get(src_object)
            plain = src.open(src_object, index, obj, checksum)
            yield dst_object, dst.seal(dst_object, index, plain)

    store.put_many(sealed())
    return len(items)
