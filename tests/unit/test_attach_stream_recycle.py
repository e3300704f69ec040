"""Where the three branches of issue 12/15's fifth pass meet (branch nbdm5): the stream
reads of nbdr5 (sectors read straight into the answer through descriptors not kept,
``LocalDirStore.read_range_into``), the direct reads of up5 (``read_into_direct``) and the
recycled object files of nbdw5 (``recycle``: a superseded object's file written over by
the next ``write_unsynced``). A read racing a recycle must get its own object's bytes
or find it gone (and look again), never the next object's (R-ATTACH-3)."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks import engine as engine_mod
from ebscrypt.engines.blocks import store as store_mod
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.store import LocalDirStore
from tests.helpers import local_block_engine


def _race(store: LocalDirStore, victim: str, fresh: str) -> None:
    """What a writer may do between a read's open and its read: the object superseded and
    recycled, and the next staged object written (over its file, if recycled)."""
    store.recycle(victim)
    store.write_unsynced(fresh, b"N" * 200_000)


def test_a_stream_read_racing_a_recycle_reads_its_own_object(tmp_path: Path) -> None:
    """read_range_into with keep=False and the descriptor LRU full (a stream's descriptor,
    lent for that read only, which ``forget`` cannot see): the recycle in the middle of
    the read leaves the file alone (deleted, not reused), so the read gets the old bytes."""
    store = LocalDirStore(tmp_path / "b", open_objects=1)
    old, other, fresh = (f"ab/{c * 32}" for c in "123")
    store.put(old, b"O" * 200_000)
    store.put(other, b"x" * 10)
    assert store.read_ranges(other, [(0, 1)]) == [b"x"]  # the LRU is full (one kept)
    acquire = store._open.acquire
    raced: list[bool] = []

    def acquire_then_race(key: str, path: str, *, keep: bool = True) -> int:
        fd = acquire(key, path, keep=keep)
        if key == old and not raced:
            raced.append(True)
            _race(store, old, fresh)
        return fd

    store._open.acquire = acquire_then_race  # type: ignore[method-assign]
    dest = bytearray(100_000)
    assert store.read_range_into(old, 50_000, memoryview(dest), keep=False) == 100_000
    assert raced and bytes(dest) == b"O" * 100_000
    assert store.recycled == 0 and store.get(fresh) == b"N" * 200_000
    store.close()


def test_a_direct_read_racing_a_recycle_reads_its_own_object(tmp_path: Path, monkeypatch) -> None:
    """read_into_direct (GetSnapshotBlock's O_DIRECT read, its own descriptor): a recycle
    between its open and its read deletes the file rather than reusing it."""
    store = LocalDirStore(tmp_path / "b")
    old, fresh = (f"cd/{c * 32}" for c in "45")
    store.put(old, b"O" * 200_000)
    aligned = store_mod._aligned_buffer
    raced: list[bool] = []

    def aligned_then_race(size: int) -> Any:
        if not raced:
            raced.append(True)
            _race(store, old, fresh)
        return aligned(size)

    monkeypatch.setattr(store_mod, "_aligned_buffer", aligned_then_race)
    got = bytes(store.read_into_direct(old, bytearray(200_000)))
    if not raced:
        pytest.skip("no O_DIRECT on this file system (read_into_direct fell back to read_into)")
    assert got == b"O" * 200_000
    assert store.recycled == 0 and store.get(fresh) == b"N" * 200_000
    store.close()


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "with-journal"])
@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_streams_racing_direct_writes_and_recycling(tmp_path: Path, monkeypatch, encrypted: bool,
                                                    partial: bool) -> None:
    """R-ATTACH-3: sequential 1 MiB reads over more than the cache (streamed, nbdr5) while
    another thread writes whole blocks over the same span (staged from the request,
    nbdw5) and publishes, objects recycled at once (no grace) — and, ``partial``, a third
    writes 4 KiB pages of 0xEE (journaled, a small journal: rotations and merges): every
    block read is one whole version of it under the journaled pages — never torn, never
    another block's or a recycled file's bytes, never an integrity error — and once the
    writers stop, whole writes then a journaled one, merged, are what the stream reads."""
    monkeypatch.setattr(engine_mod, "RECYCLE_GRACE", 0.0)
    key = DataKey("dk-test", os.urandom(32)) if encrypted else None
    vid = "vol-00000000000000051"
    nblocks = 16
    errors: list[BaseException] = []
    stop = threading.Event()

    def fill(index: int, version: int) -> bytes:
        return bytes([index]) * 8 + bytes([version]) * (BLOCK_SIZE - 8)

    with local_block_engine(tmp_path) as blocks:
        pool = ThreadPoolExecutor(4)
        vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=4, flusher=pool,
                         journal_path=tmp_path / "journal" / f"{vid}.jnl", journal_bytes=128 << 10)
        vol._publish_limit = 6
        last = {i: 1 for i in range(nblocks)}
        for i in range(nblocks):
            vol.write(i * BLOCK_SIZE, fill(i, 1))
        vol.flush()

        def writer() -> None:
            rng = random.Random(5)
            try:
                for step in range(2, 120):
                    first = rng.randrange(0, nblocks - 1)
                    data = fill(first, step) + fill(first + 1, step)
                    vol.write(first * BLOCK_SIZE, data)
                    last[first] = last[first + 1] = step
                    if step % 9 == 0:
                        vol.flush()
            except BaseException as exc:
                errors.append(exc)
            finally:
                stop.set()

        def pages() -> None:
            rng = random.Random(6)
            try:
                while not stop.is_set():
                    vol.write(rng.randrange(nblocks) * BLOCK_SIZE + rng.randrange(1, 128) * 4096, b"\xee" * 4096)
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        def reader() -> None:
            try:
                while not stop.is_set():
                    vol._read_next = -10  # (each pass a new run from block 0)
                    for off in range(0, nblocks * BLOCK_SIZE, 1 << 20):
                        got = vol.read(off, 1 << 20)
                        for n in range(2):
                            block = got[n * BLOCK_SIZE:(n + 1) * BLOCK_SIZE]
                            index = off // BLOCK_SIZE + n
                            assert block[:8] == bytes([index]) * 8, index
                            # one version, whole (under journaled pages of 0xEE, if any)
                            assert len(set(block[8:]) - {0xEE}) == 1 and block[8] != 0xEE, index
                            assert partial or block[8:] == bytes([block[8]]) * (BLOCK_SIZE - 8), index
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
        if partial:
            threads.append(threading.Thread(target=pages))
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        assert not errors, repr(errors[0])
        assert vol.direct_writes > 50 and blocks.store.recycled > 0  # the paths under test were taken
        if not partial:
            vol._read_next = -10
            for off in range(0, nblocks * BLOCK_SIZE, 1 << 20):
                got = vol.read(off, 1 << 20)
                i = off // BLOCK_SIZE
                assert got == fill(i, last[i]) + fill(i + 1, last[i + 1]), i
        model = bytearray(b"".join(fill(i, 200) for i in range(nblocks)))
        for off in range(0, len(model), 1 << 20):
            vol.write(off, model[off:off + (1 << 20)])  # whole blocks over whatever was journaled
        vol.write(3 * BLOCK_SIZE + 8192, b"\xee" * 4096)  # and a page over one, journaled
        model[3 * BLOCK_SIZE + 8192:3 * BLOCK_SIZE + 12288] = b"\xee" * 4096
        with vol.quiesced():
            pass  # merged and published
        vol._read_next = -10
        for off in range(0, nblocks * BLOCK_SIZE, 1 << 20):
            assert vol.read(off, 1 << 20) == model[off:off + (1 << 20)], off
        assert bytes(blocks.read_block(vid, 3, key)) == bytes(model[3 * BLOCK_SIZE:4 * BLOCK_SIZE])
        vol.close()
        pool.shutdown()


@pytest.mark.parametrize("background", [True, False], ids=["flusher", "inline"])
def test_a_write_finding_too_many_staged_and_no_publication_running_starts_one(tmp_path: Path,
                                                                               background: bool) -> None:
    """Blocks staged past the bound (2 × the publication limit) with no publication running —
    reached when writes register while a publication runs, or write-behinds stage blocks —
    must not leave the next write waiting for a publication nobody starts (a CI run hung
    here, in the test above): the waiting write starts it, and every block reads back."""
    key = DataKey("dk-test", os.urandom(32))
    vid = "vol-00000000000000052"
    with local_block_engine(tmp_path) as blocks:
        pool = ThreadPoolExecutor(2) if background else None
        vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=2, flusher=pool)
        vol._publish_limit = vol._publish_early = 1000  # (nothing triggers a publication: the state reached)
        data = os.urandom(10 * BLOCK_SIZE)
        vol.write(0, data[:8 * BLOCK_SIZE])
        assert len(vol._unpublished) == 8 and not vol._publishing
        vol._publish_limit = 2
        done = threading.Event()

        def write_more() -> None:
            vol.write(8 * BLOCK_SIZE, data[8 * BLOCK_SIZE:])
            done.set()
        writer = threading.Thread(target=write_more, daemon=True)
        writer.start()
        assert done.wait(60), "the write waited for a publication nobody started"
        vol.flush()
        assert vol.read(0, len(data)) == data
        vol.close()
        if pool is not None:
            pool.shutdown()
