"""Work that runs in worker processes (re-encryption), importable without the server.

``cryptography``'s AES-GCM holds the GIL, so re-encryption uses processes. Keys travel
to the workers through the pool's pipe, in memory only; each worker keeps one cipher
(with preallocated buffers) per key it has seen recently.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

from ebscrypt.engines.blocks.crypto import GCM_OBJECT_SIZE, BlockCipher, DataKey

_CIPHERS: "OrderedDict[Any, BlockCipher]" = OrderedDict()
_READBUF = bytearray(GCM_OBJECT_SIZE + 1)


def init_worker(parent_pid: int) -> None:
    """Worker start-up: exit as soon as the server that started us is gone (a SIGKILLed
    server cannot shut its pool down, and the pool's pipes would keep us waiting)."""
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _cipher(key: tuple[str, bytes] | None) -> BlockCipher:
    cipher = _CIPHERS.get(key)
    if cipher is None:
        cipher = _CIPHERS[key] = BlockCipher(DataKey(*key) if key is not None else None)
        while len(_CIPHERS) > 4:
            _CIPHERS.popitem(last=False)
    return cipher


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
    src = _cipher(src_key)
    dst = _cipher(dst_key)

    def sealed() -> Iterator[tuple[str, memoryview]]:
        for index, src_object, checksum, dst_object in items:
            obj = store.read_into(src_object, _READBUF) if hasattr(store, "read_into") else store.get(src_object)
            plain = src.open(index, obj, checksum)
            yield dst_object, dst.seal(index, plain)

    store.put_many(sealed())
    return len(items)
