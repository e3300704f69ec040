"""Whole-block writes beyond an attached volume's cache staged straight from the request
(OpenVolume._write_direct, R-ATTACH-3), and the recycled object files they are written
over (BlockEngine recycling, LocalDirStore.recycle): against a model, with journaled
partial writes, zeroes, flushes, snapshots' quiesce and concurrent writers."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks import engine as engine_mod
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine
from ebscrypt.engines.blocks.store import FREE_DIR, LocalDirStore, ObjectMissing
from ebscrypt.storage.db import Database
from tests.helpers import local_block_engine


@pytest.fixture
def blocks(tmp_path: Path):
    with local_block_engine(tmp_path) as engine:
        yield engine


def _vol(blocks, vid: str, key, tmp_path: Path, **kw) -> OpenVolume:
    return OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1",
                      journal_path=tmp_path / "journal" / f"{vid}.jnl", **kw)


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
@pytest.mark.parametrize("seed", [3, 77, 2024])
def test_whole_block_writes_with_partial_ones_match_a_model(blocks, tmp_path: Path, monkeypatch,
                                                            seed: int, encrypted: bool) -> None:
    """R-ATTACH-3: aligned whole-block writes (staged directly) mixed with partial writes
    (cached or journaled), zeroes, reads, FUA, flushes and quiesce, with a small cache and
    journal and objects recycled at once: every read and, after close, a fresh
    OpenVolume read the model. Fails if a direct write is ordered wrongly against the
    cache or the journal (stale cached or journaled bytes over it) or if a recycled file
    still backs a live object."""
    monkeypatch.setattr(engine_mod, "RECYCLE_GRACE", 0.0)
    key = DataKey("dk-test", os.urandom(32)) if encrypted else None
    vid = "vol-00000000000000031"
    nblocks = 10
    size = nblocks * BLOCK_SIZE
    model = bytearray(size)
    pool = ThreadPoolExecutor(4)
    vol = _vol(blocks, vid, key, tmp_path, cache_blocks=4, flusher=pool, journal_bytes=96 << 10)
    vol._publish_limit = 8
    rng = random.Random(seed)
    for step in range(300):
        action = rng.random()
        if action < 0.4:
            first = rng.randrange(nblocks)
            count = min(rng.choice([1, 2, 2, 3]), nblocks - first)
            offset, length = first * BLOCK_SIZE, count * BLOCK_SIZE
            data = bytearray(os.urandom(length))
            vol.write(offset, data, fua=step % 23 == 0)
            model[offset:offset + length] = data
            data[:] = bytes(length)  # the request's buffer is the caller's again: nothing kept
        elif action < 0.65:
            offset = rng.randrange(size - 1)
            length = min(rng.randrange(1, 9000), size - offset)
            data = os.urandom(length)
            if not vol.try_write(offset, data):
                vol.write(offset, data)
            model[offset:offset + length] = data
        elif action < 0.7:
            offset = rng.randrange(size - 1)
            length = min(rng.randrange(1, 2 * BLOCK_SIZE), size - offset)
            vol.zero(offset, length)
            model[offset:offset + length] = bytes(length)
        else:
            offset = rng.randrange(size - 1)
            length = min(rng.choice([rng.randrange(1, 9000), BLOCK_SIZE]), size - offset)
            got = vol.try_read(offset, length)
            if got is None:
                got = vol.read(offset, length)
            assert bytes(got) == bytes(model[offset:offset + length]), step
        if step % 41 == 0:
            vol.flush()
        if step % 97 == 0:
            with vol.quiesced():
                assert bytes(blocks.read_block(vid, 0, key)) == bytes(model[:BLOCK_SIZE])
    assert vol.direct_writes > 20  # the path under test was taken
    assert vol.read(0, size) == bytes(model)
    vol.close()
    pool.shutdown()
    assert blocks.store.recycled > 0  # and files were written over
    fresh = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1")
    assert fresh.read(0, size) == bytes(model)


def _read_after_restart(db: Database, tmp_path: Path, vid: str, key: DataKey, length: int) -> bytes:
    """The volume's first ``length`` bytes as a new engine on the same files reads them
    (kill -9: nothing of the old engine's memory counts)."""
    restarted = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=0)
    try:
        return bytes(OpenVolume(restarted, vid, 1, key, account="1", instance_id="i-1").read(0, length))
    finally:
        restarted.close()


def _objects_left(engine: BlockEngine, store: LocalDirStore, vid: str) -> set[str]:
    """After a sweep and the engine's close: the volume's named objects, asserted to be
    exactly the objects the store still holds (nothing leaked, nothing missing)."""
    engine.sweep()
    engine.close()
    named = {r.object_key for r in engine.list_block_refs(vid) if r.object_key}
    assert {k for k, _m in store.keys()} == named
    return named


def test_sequential_writes_beyond_the_cache_recycle_superseded_objects(tmp_path: Path, monkeypatch) -> None:
    """A sequential writer over more than the cache: whole blocks skip the cache (it stays
    empty); the second pass's publication supersedes the first pass's objects, and the
    third pass (the grace over) writes over their files instead of new ones; flushed writes survive a new process
    (kill -9: nothing in memory), and neither staged nor recycled files are left behind:
    what the store holds is what the entries name."""
    monkeypatch.setattr(engine_mod, "RECYCLE_GRACE", 0.0)
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    store = LocalDirStore(tmp_path / "blocks")
    engine = BlockEngine(db, store, processes=0, gc_grace_seconds=0)
    key = DataKey("dk-test", os.urandom(32))
    vid = "vol-00000000000000032"
    pool = ThreadPoolExecutor(4)
    vol = _vol(engine, vid, key, tmp_path, cache_blocks=4, flusher=pool)
    passes = []
    for n in range(3):
        data = os.urandom(16 * BLOCK_SIZE)
        for off in range(0, len(data), 2 * BLOCK_SIZE):
            vol.write(off, data[off:off + 2 * BLOCK_SIZE])
        assert len(vol._cache) == 0 and vol.direct_writes == 8 * (n + 1)
        vol.flush()
        passes.append(data)
    assert store.recycled == 16  # the third pass wrote over the first pass's 16 files
    assert vol.read(0, len(passes[2])) == passes[2]
    # kill -9 here: a new engine on the same files reads every flushed write
    assert _read_after_restart(db, tmp_path, vid, key, len(passes[2])) == passes[2]
    vol.close()
    pool.shutdown()
    assert len(_objects_left(engine, store, vid)) == 16
    assert not list((tmp_path / "blocks" / FREE_DIR).iterdir())  # the kept files went with the store


def _early_publishing(tmp_path: Path, monkeypatch, vid: str):
    """An engine on real files and a volume whose direct writes publish in the background
    every 4 staged blocks (PUBLISH_EARLY_BLOCKS), superseded objects recycled at once:
    (db, store, engine, key, pool, volume)."""
    from ebscrypt.engines.attach import volume_io

    monkeypatch.setattr(engine_mod, "RECYCLE_GRACE", 0.0)
    monkeypatch.setattr(volume_io, "PUBLISH_EARLY_BLOCKS", 4)
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    store = LocalDirStore(tmp_path / "blocks")
    engine = BlockEngine(db, store, processes=0, gc_grace_seconds=0)
    key = DataKey("dk-test", os.urandom(32))
    pool = ThreadPoolExecutor(2)
    return db, store, engine, key, pool, _vol(engine, vid, key, tmp_path, cache_blocks=16, flusher=pool)


def _write_pass(vol: OpenVolume, data: bytes) -> None:
    """``data`` written from offset 0 two blocks at a time, each background publication
    let end before the next write (as I/O would go on while it runs)."""
    for off in range(0, len(data), 2 * BLOCK_SIZE):
        vol.write(off, data[off:off + 2 * BLOCK_SIZE])
        with vol._cond:
            while vol._publishing:
                vol._cond.wait()


def test_a_pass_over_written_blocks_recycles_their_files_before_its_flush(tmp_path: Path, monkeypatch) -> None:
    """A sequential pass over blocks written and flushed before (bench/README.md S7): its
    direct writes publish in the background every PUBLISH_EARLY_BLOCKS staged blocks, far
    below the volume's bound, so the objects they supersede are recycled and written over
    within the same pass, before any flush (with publication only at the bound, the whole
    pass went to fresh files). Every write still reads back, after the flush and from a
    new engine on the same files (kill -9: nothing in memory)."""
    vid = "vol-00000000000000036"
    db, store, engine, key, pool, vol = _early_publishing(tmp_path, monkeypatch, vid)
    assert vol._publish_limit == 64  # the pass below (32 blocks) stays under it
    first = os.urandom(32 * BLOCK_SIZE)
    for off in range(0, len(first), 2 * BLOCK_SIZE):
        vol.write(off, first[off:off + 2 * BLOCK_SIZE])
    vol.flush()
    assert store.recycled == 0  # nothing superseded yet
    published = engine.publications
    second = os.urandom(32 * BLOCK_SIZE)
    _write_pass(vol, second)
    assert vol.direct_writes == 32
    assert engine.publications - published >= 4  # in the background, no flush asked
    assert store.recycled >= 16  # the first pass's files, reused within this pass
    assert vol.read(0, len(second)) == second
    vol.flush()
    assert _read_after_restart(db, tmp_path, vid, key, len(second)) == second
    vol.close()
    pool.shutdown()
    assert len(_objects_left(engine, store, vid)) == 32


def test_a_crash_mid_pass_with_early_publications_loses_nothing_flushed(tmp_path: Path, monkeypatch) -> None:
    """kill -9 in the middle of a pass whose direct writes publish early (no flush since the
    pass began): a new engine on the same files reads, for every block, either the flushed
    content or the pass's — the latter for every block a publication recorded — never
    anything else (a recycled file reused while its old entry was still live would show
    here as an integrity error or wrong bytes). Then the volume takes writes again."""
    vid = "vol-00000000000000037"
    db, store, engine, key, pool, vol = _early_publishing(tmp_path, monkeypatch, vid)
    flushed = os.urandom(32 * BLOCK_SIZE)
    for off in range(0, len(flushed), 2 * BLOCK_SIZE):
        vol.write(off, flushed[off:off + 2 * BLOCK_SIZE])
    vol.flush()
    second = os.urandom(26 * BLOCK_SIZE)  # most of a pass, not flushed: 13 writes of 2 blocks
    _write_pass(vol, second)
    with vol._cond:
        unpublished = set(vol._unpublished)
    recorded = set(range(32)) - unpublished  # published in the background, or never rewritten
    assert store.recycled > 0 and unpublished and len(recorded) > 8
    # kill -9 here: only what is on disk counts (the old volume is never closed)
    restarted = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=0)
    fresh = OpenVolume(restarted, vid, 1, key, account="1", instance_id="i-1",
                       journal_path=tmp_path / "journal" / f"{vid}.jnl")
    for i in range(32):
        got = fresh.read(i * BLOCK_SIZE, BLOCK_SIZE)
        old = flushed[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
        new = second[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE] if i < 26 else old
        assert got in (old, new), i
        if i in recorded:
            assert got == new, i
    again = os.urandom(4 * BLOCK_SIZE)
    fresh.write(0, again)
    fresh.flush()
    assert fresh.read(0, len(again)) == again
    fresh.close()
    restarted.close()
    pool.shutdown(wait=True)


def test_concurrent_whole_and_partial_writers_to_the_same_blocks(blocks, tmp_path: Path, monkeypatch) -> None:
    """Writers racing whole-block writes (direct) against partial writes (cache and journal)
    on the same blocks, each block ending with one whole-block write: that write's bytes
    win wherever no partial write was acknowledged after it, i.e. each block reads as the
    last whole write with the later partial writes over it — checked per writer through
    a final whole write by one thread after all others stopped, and for absence of any
    torn mixture of two whole writes. Objects are recycled at once (no grace): a read of
    an object just superseded finds it deleted or whole, never its file reused."""
    monkeypatch.setattr(engine_mod, "RECYCLE_GRACE", 0.0)
    key = DataKey("dk-test", os.urandom(32))
    vid = "vol-00000000000000033"
    nblocks = 6
    pool = ThreadPoolExecutor(4)
    vol = _vol(blocks, vid, key, tmp_path, cache_blocks=4, flusher=pool, journal_bytes=256 << 10)
    vol._publish_limit = 8
    errors: list[BaseException] = []
    fills = [bytes([t + 1]) * BLOCK_SIZE for t in range(3)]

    def whole(t: int) -> None:
        rng = random.Random(t)
        try:
            for step in range(60):
                i = rng.randrange(nblocks)
                vol.write(i * BLOCK_SIZE, bytearray(fills[t]))
                got = bytes(vol.read(i * BLOCK_SIZE, BLOCK_SIZE))
                # whole writes of others or partial ones may land after ours, never half of one
                assert set(got[::4096]) <= {0x01, 0x02, 0x03, 0x50}, (t, step)
                if step % 17 == 0:
                    vol.flush()
        except BaseException as exc:
            errors.append(exc)

    def partial() -> None:
        rng = random.Random(99)
        try:
            for _step in range(200):
                i = rng.randrange(nblocks)
                start = rng.randrange(BLOCK_SIZE - 4096)
                start -= start % 4096
                vol.write(i * BLOCK_SIZE + start, b"\x50" * 4096)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=whole, args=(t,)) for t in range(3)] + [threading.Thread(target=partial)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[0]
    # Now one last whole write per block: it alone must be read, whatever raced before.
    for i in range(nblocks):
        vol.write(i * BLOCK_SIZE, bytearray(fills[i % 3]))
    vol.write(2 * BLOCK_SIZE + 8192, b"\x50" * 4096)  # and a partial one after it, journaled
    with vol.quiesced():
        pass  # merged and published
    for i in range(nblocks):
        want = bytearray(fills[i % 3])
        if i == 2:
            want[8192:12288] = b"\x50" * 4096
        assert bytes(vol.read(i * BLOCK_SIZE, BLOCK_SIZE)) == bytes(want), i
        assert bytes(blocks.read_block(vid, i, key)) == bytes(want), i
    vol.close()
    pool.shutdown()


def test_recycle_never_reuses_a_file_a_read_is_using(tmp_path: Path) -> None:
    """LocalDirStore.recycle: the object's name is gone at once (ObjectMissing: a reader
    looks again); its file is written over by the next write_unsynced (and cut to the new
    size); but a file a read is using — a whole-object read in progress, or a descriptor
    a ranged read holds — is deleted instead, never reused; close removes kept files."""
    store = LocalDirStore(tmp_path / "b")
    k1, k2, k3, k4 = (f"aa/{c * 32}" for c in "1234")
    for k in (k1, k2, k4):
        store.put(k, b"x" * 1000)
    with store._reading(k1):  # as read_into/get/read_ranges do
        store.recycle(k1)
    assert store._free == [] and not store.exists(k1)
    store.recycle(k2)
    assert len(store._free) == 1
    with pytest.raises(ObjectMissing):
        store.get(k2)
    store.write_unsynced(k3, b"z" * 500)
    assert store.recycled == 1 and store.get(k3) == b"z" * 500 and store._free == []
    fd = store._open.acquire(k4, str(tmp_path / "b" / k4))
    store.recycle(k4)
    assert store._free == [] and os.pread(fd, 4, 0) == b"xxxx"  # the reader still reads its object
    store._open.release(k4, fd)
    store.put(k4, b"w" * 10)
    store.recycle(k4)
    assert len(store._free) == 1
    store.close()
    assert not list((tmp_path / "b" / FREE_DIR).iterdir())


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_an_object_sealed_in_pieces_is_the_object_sealed_whole(encrypted: bool) -> None:
    """BlockCipher.seal_block_parts (a plain block's data written from the caller's buffer)
    gives the bytes and entry checksum of seal_block, which open() reads back; and a
    plain object whose data changed after its table was made fails, never reads."""
    from ebscrypt.engines.blocks.crypto import BlockCipher, BlockIntegrityError

    key = DataKey("dk-test", os.urandom(32)) if encrypted else None
    data = bytearray(os.urandom(BLOCK_SIZE))
    ident = "ab/" + "c" * 32
    parts, checksum = BlockCipher(key).seal_block_parts(ident, 7, data, "")
    joined = b"".join(bytes(p) for p in parts)
    whole, whole_checksum = BlockCipher(key).seal_block(ident, 7, data, "")
    if not encrypted:  # (an encrypted object's salt is random: compared by opening)
        assert joined == bytes(whole) and checksum == whole_checksum
        assert len(parts) == 2 and parts[1].obj is data  # the data itself, not a copy
    assert bytes(BlockCipher(key).open(ident, 7, joined, checksum)) == bytes(data)
    if not encrypted:
        data[5] ^= 1  # changed after sealing: the table no longer matches
        with pytest.raises(BlockIntegrityError):
            BlockCipher(key).open(ident, 7, b"".join(bytes(p) for p in parts), checksum)
