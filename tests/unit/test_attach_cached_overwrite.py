"""A whole-block write over a block an attached volume caches is copied into the cached
buffer (no new 512 KiB buffer per write: fresh pages), and that changes nothing a reader
or a write-behind holds: reads answered before it keep their bytes, a block evicted and
being stored keeps the content it had, and everything reads back after a flush and a
reopen."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from tests.helpers import local_block_engine

VID = "vol-00000000000000061"


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_whole_block_overwrites_of_cached_blocks_reuse_the_buffer(tmp_path: Path, encrypted: bool) -> None:
    key = DataKey("dk-over", os.urandom(32)) if encrypted else None
    a, b, c = (bytes([n]) * BLOCK_SIZE for n in (0xA1, 0xB2, 0xC3))
    with local_block_engine(tmp_path) as blocks:
        pool = ThreadPoolExecutor(2)
        # (no journal: partial writes go through the cache, so they evict)
        vol = OpenVolume(blocks, VID, 1, key, account="1", instance_id="i-1", cache_blocks=4, flusher=pool)
        assert vol.try_write(0, a) is True  # a whole block the cache has room for: cached dirty
        buf = vol._cache[0]
        before = vol.try_read(0, BLOCK_SIZE)
        assert before is not None and bytes(before) == a
        assert vol.try_write(0, memoryview(b)) is True  # inline, over the cached buffer
        assert vol._cache[0] is buf and bytes(buf) == b and bytes(before) == a
        vol.write(0, bytearray(c))  # the blocking path (a cached block is never written direct)
        assert vol._cache[0] is buf and bytes(vol.read(0, BLOCK_SIZE)) == c
        # Evicted and being written behind (held there): a later whole write of the block
        # must leave the buffer the write-behind seals as it was.
        gate = threading.Event()
        original = blocks.stage_blocks

        def held(*args, **kw):
            gate.wait(10)
            return original(*args, **kw)

        blocks.stage_blocks = held
        try:
            for i in range(1, 5):  # partial writes load blocks 1..4: block 0, the oldest, is evicted
                vol.write(i * BLOCK_SIZE, bytes([i]) * 4096)
            assert 0 not in vol._cache and vol._storing.get(0) is buf
            vol.write(0, memoryview(a))
            assert bytes(buf) == c  # what the write-behind seals: the content it took
            gate.set()
            vol.flush()
        finally:
            gate.set()
            blocks.stage_blocks = original
        assert bytes(vol.read(0, BLOCK_SIZE)) == a
        vol.close()
        again = OpenVolume(blocks, VID, 1, key, account="1", instance_id="i-1", cache_blocks=4, flusher=pool)
        assert bytes(again.read(0, BLOCK_SIZE)) == a
        assert bytes(again.read(BLOCK_SIZE, 8192)) == bytes([1]) * 4096 + bytes(4096)
        again.close()
        pool.shutdown()
