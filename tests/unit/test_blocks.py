"""Block engine: block crypto, the object store, lineage, re-encryption, GC (R-DATA-1, R-LIFE-2, R-KEY-1/2/8, R-SNAP-2)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ebscrypt.engines.blocks import workers
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, GCM_OBJECT_SIZE, BlockCipher, BlockIntegrityError, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine, CopyCancelled, KeyMismatch, UnrelatedLineage
from ebscrypt.engines.blocks.store import LocalDirStore, new_object_key
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.blocks import blk_entries, blk_layers, blk_owners
from tests.helpers import local_block_engine

ZERO = bytes(BLOCK_SIZE)


def rand_block() -> bytes:
    return os.urandom(BLOCK_SIZE)


def pattern_block(tag: bytes) -> bytes:
    return (tag * (BLOCK_SIZE // len(tag) + 1))[:BLOCK_SIZE]


@pytest.fixture
def engine(tmp_path: Path):
    with local_block_engine(tmp_path) as eng:
        yield eng


@pytest.fixture
def key() -> DataKey:
    return DataKey("dk-1", os.urandom(32))


def object_paths(eng: BlockEngine) -> list[Path]:
    root = eng.store.root  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file())


def ref_path(eng: BlockEngine, owner: str, index: int) -> Path:
    ref = eng.block_ref(owner, index)
    assert ref is not None and ref.object_key is not None
    return eng.store.root / ref.object_key  # type: ignore[attr-defined]


# ------------------------------------------------------------------ block crypto


def test_round_trip_encrypted_and_plain(engine: BlockEngine, key: DataKey) -> None:
    a, b = rand_block(), rand_block()
    checksum = engine.write_block("vol-a", 7, a, key)
    engine.write_block("vol-p", 7, b, None)
    assert checksum == base64.b64encode(hashlib.sha256(a).digest()).decode()
    assert engine.read_block("vol-a", 7, key) == a
    assert engine.read_block("vol-p", 7, None) == b
    assert engine.list_blocks("vol-a", key) == [(7, checksum)]


def test_unwritten_blocks_read_as_zeros_and_cost_nothing(engine: BlockEngine, key: DataKey) -> None:
    assert engine.read_block("vol-never", 0, key) == ZERO
    engine.write_block("vol-a", 1, rand_block(), key)
    assert engine.read_block("vol-a", 2, key) == ZERO
    engine.write_block("vol-a", 3, ZERO, key)  # an explicit zero block: listed, nothing stored
    assert [i for i, _ in engine.list_blocks("vol-a", key)] == [1, 3]
    assert len(object_paths(engine)) == 1


def test_ciphertext_is_not_the_plaintext(engine: BlockEngine, key: DataKey) -> None:
    data = pattern_block(b"EBSCRYPT-KNOWN-PATTERN-")
    engine.write_block("vol-a", 0, data, key)
    raw = ref_path(engine, "vol-a", 0).read_bytes()
    assert b"KNOWN-PATTERN" not in raw
    assert len(raw) == GCM_OBJECT_SIZE
    # Nonces are fresh: the same block written twice gives different ciphertexts.
    engine.write_block("vol-b", 0, data, key)
    assert ref_path(engine, "vol-b", 0).read_bytes()[6:] != raw[6:]


@pytest.mark.parametrize("offset", [0, 5, 6, 17, 18, 1000, GCM_OBJECT_SIZE - 1])
def test_bit_flip_anywhere_fails_integrity(engine: BlockEngine, key: DataKey, offset: int) -> None:
    engine.write_block("vol-a", 2, rand_block(), key)
    path = ref_path(engine, "vol-a", 2)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(BlockIntegrityError) as info:
        engine.read_block("vol-a", 2, key)
    assert str(info.value) == "A stored block failed its integrity check."  # opaque: no detail


def test_truncated_or_extended_object_fails(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("vol-a", 0, rand_block(), key)
    engine.write_block("vol-a", 1, rand_block(), key)
    p0, p1 = ref_path(engine, "vol-a", 0), ref_path(engine, "vol-a", 1)
    p0.write_bytes(p0.read_bytes()[:-1])
    p1.write_bytes(p1.read_bytes() + b"\0")
    for index in (0, 1):
        with pytest.raises(BlockIntegrityError):
            engine.read_block("vol-a", index, key)


def test_block_moved_to_another_index_fails(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("vol-a", 0, rand_block(), key)
    engine.write_block("vol-a", 1, rand_block(), key)
    p0, p1 = ref_path(engine, "vol-a", 0), ref_path(engine, "vol-a", 1)
    r0, r1 = p0.read_bytes(), p1.read_bytes()
    p0.write_bytes(r1)
    p1.write_bytes(r0)
    for index in (0, 1):
        with pytest.raises(BlockIntegrityError):
            engine.read_block("vol-a", index, key)


def test_block_moved_to_another_resource_key_fails(engine: BlockEngine) -> None:
    k1 = DataKey("dk-1", os.urandom(32))
    # Same key bytes under another key id: the key id is bound as associated data.
    k2 = DataKey("dk-2", k1.plaintext)
    engine.write_block("vol-a", 0, rand_block(), k1)
    engine.write_block("vol-b", 0, rand_block(), k2)
    ref_path(engine, "vol-b", 0).write_bytes(ref_path(engine, "vol-a", 0).read_bytes())
    with pytest.raises(BlockIntegrityError):
        engine.read_block("vol-b", 0, k2)


def _legacy_object(key: DataKey, index: int, data: bytes) -> bytes:
    """A format-1 object as earlier releases wrote it (layout from the crypto module's
    docstring, built here independently): AAD = magic, version 1, mode 1, key id, index."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kid = key.key_id.encode()
    aad = b"EBSB" + bytes([1, 1]) + len(kid).to_bytes(2, "big") + kid + index.to_bytes(8, "big")
    nonce = os.urandom(12)
    return b"EBSB" + bytes([1, 1]) + nonce + AESGCM(key.plaintext).encrypt(nonce, data, aad)


def test_parent_block_copied_over_the_childs_fails(engine: BlockEngine, key: DataKey) -> None:
    """Issue 10 item 6: a child shares its parent's data key; the parent's (older) object of
    the same index copied over the child's must not read back as the child's block."""
    old, new = pattern_block(b"OLD-"), pattern_block(b"NEW-")
    engine.write_block("snap-parent", 0, old, key)
    engine.share("snap-parent", "snap-child")
    engine.write_block("snap-child", 0, new, key)
    parent_path, child_path = ref_path(engine, "snap-parent", 0), ref_path(engine, "snap-child", 0)
    assert parent_path != child_path
    child_path.write_bytes(parent_path.read_bytes())
    with pytest.raises(BlockIntegrityError):
        engine.read_block("snap-child", 0, key)
    assert engine.read_block("snap-parent", 0, key) == old


def test_swapping_two_objects_of_one_lineage_fails(engine: BlockEngine, key: DataKey) -> None:
    """Two objects of the same index and data key, in one lineage, swapped on disk: both
    reads fail (as a bit flip would), neither returns the other's bytes."""
    engine.write_block("vol-a", 3, rand_block(), key)
    engine.share("vol-a", "snap-1")
    engine.write_block("vol-a", 3, rand_block(), key)
    a, b = ref_path(engine, "vol-a", 3), ref_path(engine, "snap-1", 3)
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb)
    b.write_bytes(ra)
    for owner in ("vol-a", "snap-1"):
        with pytest.raises(BlockIntegrityError):
            engine.read_block(owner, 3, key)


def test_shared_objects_still_read_in_every_owner(engine: BlockEngine, key: DataKey) -> None:
    """Objects shared between owners under one data key are read as themselves by each."""
    data = rand_block()
    engine.write_block("snap-a", 1, data, key)
    engine.share("snap-a", "snap-b")
    engine.share("snap-b", "vol-c")
    assert ref_path(engine, "snap-a", 1) == ref_path(engine, "vol-c", 1)
    for owner in ("snap-a", "snap-b", "vol-c"):
        assert engine.read_block(owner, 1, key) == data


def test_format_1_objects_stay_readable_and_are_checked_against_metadata(engine: BlockEngine, key: DataKey) -> None:
    """Objects written by an earlier release (format 1, identity not bound) still read; a
    format-1 object put in place of another block's object is caught by the checksum
    sealed in metadata — which also stops a downgrade of a format-2 object to format 1."""
    data, other = pattern_block(b"v1-data-"), pattern_block(b"v1-other-")
    engine.write_block("snap-p", 0, data, key)
    engine.share("snap-p", "snap-c")
    engine.write_block("snap-c", 0, other, key)
    p, c = ref_path(engine, "snap-p", 0), ref_path(engine, "snap-c", 0)
    p.write_bytes(_legacy_object(key, 0, data))  # as an earlier release stored it
    assert engine.read_block("snap-p", 0, key) == data
    assert engine.read_block("snap-c", 0, key) == other
    engine.share("snap-p", "snap-p2")
    assert engine.read_block("snap-p2", 0, key) == data
    c.write_bytes(p.read_bytes())  # the parent's format-1 object over the child's
    with pytest.raises(BlockIntegrityError):
        engine.read_block("snap-c", 0, key)
    c.write_bytes(_legacy_object(key, 0, data))  # a format-1 rendering of the old bytes
    with pytest.raises(BlockIntegrityError):
        engine.read_block("snap-c", 0, key)


def test_reencrypt_rewrites_format_1_objects_in_the_current_format(engine: BlockEngine, key: DataKey) -> None:
    data = pattern_block(b"legacy")
    engine.write_block("snap-old", 0, data, key)
    ref_path(engine, "snap-old", 0).write_bytes(_legacy_object(key, 0, data))
    k2 = DataKey("dk-2", os.urandom(32))
    engine.reencrypt("snap-old", key, "snap-new", k2)
    raw = ref_path(engine, "snap-new", 0).read_bytes()
    assert raw[:6] == b"EBSB" + bytes([3, 1])
    assert engine.read_block("snap-new", 0, k2) == data


def test_wrong_key_fails(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("vol-a", 0, rand_block(), key)
    with pytest.raises(BlockIntegrityError):
        engine.read_block("vol-a", 0, DataKey(key.key_id, os.urandom(32)))
    with pytest.raises(BlockIntegrityError):
        engine.read_block("vol-a", 0, None)


def test_plain_blocks_are_checksummed(engine: BlockEngine) -> None:
    engine.write_block("vol-p", 0, rand_block(), None)
    path = ref_path(engine, "vol-p", 0)
    raw = bytearray(path.read_bytes())
    raw[4000] ^= 0x80
    path.write_bytes(raw)
    with pytest.raises(BlockIntegrityError):
        engine.read_block("vol-p", 0, None)


def test_cipher_reuses_buffers_and_repr_hides_key() -> None:
    key = DataKey("k", os.urandom(32))
    assert key.plaintext.hex() not in repr(key)
    cipher = BlockCipher(key)
    first = cipher.seal("00/a", 0, rand_block())
    second = cipher.seal("00/b", 1, rand_block())
    assert first.obj is second.obj  # same preallocated buffer


def test_key_mismatch_on_write(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("vol-a", 0, rand_block(), key)
    with pytest.raises(KeyMismatch):
        engine.write_block("vol-a", 1, rand_block(), DataKey("other", os.urandom(32)))
    with pytest.raises(KeyMismatch):
        engine.write_block("vol-a", 1, rand_block(), None)
    with pytest.raises(ValueError):
        engine.write_block("vol-a", 1, b"short", key)


def test_metadata_holds_no_plaintext_checksum(engine: BlockEngine, key: DataKey, tmp_path: Path) -> None:
    data = pattern_block(b"SECRET-PATTERN")
    checksum = engine.write_block("vol-a", 0, data, key)
    engine.write_block("vol-a", 1, ZERO, key)  # even the well-known zero checksum is sealed
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("meta.db*"))
    assert checksum.encode() not in blob
    assert hashlib.sha256(data).digest() not in blob
    assert b"SECRET-PATTERN" not in blob
    assert engine.list_blocks("vol-a", None) == [(0, None), (1, None)]


def test_concurrent_writes_share_commits_and_keep_errors_apart(engine: BlockEngine, key: DataKey) -> None:
    from concurrent.futures import ThreadPoolExecutor

    other = DataKey("dk-other", os.urandom(32))
    engine.write_block("vol-x", 0, rand_block(), key)
    data = {(f"vol-{i % 4}", i): rand_block() for i in range(64)}
    before = engine.group_commits

    def write(item):  # type: ignore[no-untyped-def]
        (owner, index), block = item
        return engine.write_block(owner, index, block, key)

    def bad(_):  # type: ignore[no-untyped-def]
        with pytest.raises(KeyMismatch):
            engine.write_block("vol-x", 1, rand_block(), other)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(write, item) for item in data.items()] + [pool.submit(bad, None) for _ in range(4)]
        for f in futures:
            f.result()
    assert engine.group_commits - before < len(data) + 4  # flushes were shared
    for (owner, index), block in data.items():
        assert engine.read_block(owner, index, key) == block
    assert engine.read_block("vol-x", 1, key) == ZERO  # the refused writes left nothing
    engine.sweep(0)
    with engine.db.read() as conn:
        refs = {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}
    assert {f"{p.parent.name}/{p.name}" for p in object_paths(engine)} == refs


# ------------------------------------------------------------------ object store


@pytest.mark.parametrize("flush", ["fdatasync", "syncfs"])
def test_store_put_failing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush: str) -> None:
    """A put whose flush fails is not acknowledged and leaves no object under its key
    (objects are written under their final name, then flushed: no rename)."""
    from ebscrypt.engines.blocks import store as store_mod

    store = LocalDirStore(tmp_path / "s")
    key = new_object_key()

    def boom(*_a, **_k):
        raise OSError("disk gone")

    if flush == "fdatasync":
        monkeypatch.setattr(os, "fdatasync", boom)
        items = [(key, b"x" * 1000)]
    else:  # a group: one syncfs, which fails (then the fdatasync fallback fails too)
        monkeypatch.setattr(store_mod, "_syncfs", lambda fd: -1)
        monkeypatch.setattr(os, "fdatasync", boom)
        items = [(key, b"x" * 1000), (new_object_key(), b"z" * 1000)]
    with pytest.raises(OSError):
        store.put_many(items)
    monkeypatch.undo()
    assert not store.exists(key)
    assert [p for p in (tmp_path / "s").rglob("*") if p.is_file()] == []  # no temp left behind
    store.put(key, b"y" * 10)
    assert store.get(key) == b"y" * 10


def test_store_put_many_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "s")
    keys = [new_object_key("ab") for _ in range(3)]

    def items():
        yield keys[0], b"a"
        yield keys[1], b"b"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        store.put_many(items())
    assert not any(store.exists(k) for k in keys)
    assert [p for p in (tmp_path / "s").rglob("*") if p.is_file()] == []


def test_store_rejects_bad_keys(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "s")
    with pytest.raises(ValueError):
        store.put("../../etc/passwd", b"x")


# ------------------------------------------------------------------ lineage


def test_share_is_a_point_in_time_copy(engine: BlockEngine, key: DataKey) -> None:
    a, b, c = rand_block(), rand_block(), rand_block()
    engine.write_block("vol-1", 0, a, key)
    engine.write_block("vol-1", 1, b, key)
    engine.share("vol-1", "snap-1")
    engine.write_block("vol-1", 0, c, key)  # after the snapshot: not in it
    engine.write_block("snap-1", 5, c, key)  # and the other way round
    assert engine.read_block("snap-1", 0, key) == a
    assert engine.read_block("vol-1", 0, key) == c
    assert engine.read_block("vol-1", 5, key) == ZERO
    assert engine.read_block("snap-1", 1, key) == b == engine.read_block("vol-1", 1, key)
    # Shared blocks are the same object (no data moved).
    assert engine.block_ref("snap-1", 1).object_key == engine.block_ref("vol-1", 1).object_key


def _row_counts(engine: BlockEngine) -> tuple[int, int, int]:
    with engine.db.read() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar() for t in (blk_layers, blk_owners, blk_entries))  # type: ignore[return-value]


def test_share_cost_is_flat_in_volume_size(engine: BlockEngine, key: DataKey) -> None:
    for i in range(2):
        engine.write_block("small", i, rand_block(), key)
    for i in range(40):
        engine.write_block("big", i, rand_block(), key)
    objects_before = len(object_paths(engine))
    before = _row_counts(engine)
    engine.share("small", "small-copy")
    mid = _row_counts(engine)
    engine.share("big", "big-copy")
    after = _row_counts(engine)
    small_cost = tuple(m - b for m, b in zip(mid, before))
    big_cost = tuple(a - m for a, m in zip(after, mid))
    assert small_cost == big_cost  # same number of metadata rows, whatever the size
    assert small_cost[2] == 0  # no block entry copied
    assert len(object_paths(engine)) == objects_before  # no object written


def test_share_is_idempotent_and_repeated_shares_do_not_deepen_chains(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("snap-0", 0, rand_block(), key)
    engine.share("snap-0", "vol-1")
    engine.share("snap-0", "vol-1")  # repeated by a resumed job: no-op
    layers_before = _row_counts(engine)[0]
    for i in range(5):
        engine.share("snap-0", f"vol-x{i}")
    assert _row_counts(engine)[0] == layers_before + 5  # one head per new owner, no more


def test_changed_blocks_parent_child(engine: BlockEngine, key: DataKey) -> None:
    for i in range(4):
        engine.write_block("vol-1", i, rand_block(), key)
    engine.share("vol-1", "snap-1")
    engine.write_block("vol-1", 1, rand_block(), key)
    engine.write_block("vol-1", 9, rand_block(), key)
    engine.share("vol-1", "snap-2")
    changed = engine.changed_blocks("snap-1", "snap-2")
    assert [(c.index, c.first is not None, c.second is not None) for c in changed] == [(1, True, True), (9, False, True)]
    assert [c.index for c in engine.changed_blocks(None, "snap-2")] == [0, 1, 2, 3, 9]
    assert [c.index for c in engine.changed_blocks("snap-2", "snap-1")] == [1, 9]
    assert engine.changed_blocks("snap-2", "snap-2") == []


def test_changed_blocks_unrelated(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("snap-a", 0, rand_block(), key)
    engine.write_block("snap-b", 0, rand_block(), key)
    with pytest.raises(UnrelatedLineage):
        engine.changed_blocks("snap-a", "snap-b")
    with pytest.raises(UnrelatedLineage):
        engine.changed_blocks("snap-missing", "snap-b")


# ------------------------------------------------------------------ re-encryption


def _fill(engine: BlockEngine, owner: str, key: DataKey | None, n: int) -> dict[int, bytes]:
    data = {i * 3: rand_block() for i in range(n)}
    for index, block in data.items():
        engine.write_block(owner, index, block, key)
    return data


@pytest.mark.parametrize("processes", [0, 2])
def test_reencrypt_copies_under_new_key(tmp_path: Path, processes: int) -> None:
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=processes, gc_grace_seconds=0)
    engine.INLINE_BLOCKS = 2
    engine.BATCH_BLOCKS = 3
    try:
        k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
        data = _fill(engine, "snap-src", k1, 12)
        engine.write_block("snap-src", 100, ZERO, k1)
        seen: list[float] = []
        assert engine.reencrypt("snap-src", k1, "snap-dst", k2, progress=seen.append) == 13
        assert seen[-1] == 100.0 and seen == sorted(seen)
        for index, block in data.items():
            assert engine.read_block("snap-dst", index, k2) == block
            with pytest.raises(BlockIntegrityError):
                engine.read_block("snap-dst", index, k1)
        src_objects = {r.object_key for r in engine.list_block_refs("snap-src")}
        dst_objects = {r.object_key for r in engine.list_block_refs("snap-dst")}
        assert not (src_objects - {None}) & dst_objects  # every block rewritten
        assert [i for i, _ in engine.list_blocks("snap-dst", k2)] == sorted([*data, 100])
        # The source is untouched.
        for index, block in data.items():
            assert engine.read_block("snap-src", index, k1) == block
        # The copy is in the source's lineage for changed-block queries.
        assert engine.changed_blocks("snap-src", "snap-dst") == []
    finally:
        engine.close()
        db.dispose()


def test_concurrent_inline_copies_do_not_share_buffers(engine: BlockEngine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [DataKey(f"dk-{i}", os.urandom(32)) for i in range(5)]
    data = _fill(engine, "snap-src", keys[0], 8)

    def copy(i: int) -> None:
        engine.reencrypt("snap-src", keys[0], f"snap-c{i}", keys[i])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(copy, range(1, 5)))
    for i in range(1, 5):
        for index, block in data.items():
            assert engine.read_block(f"snap-c{i}", index, keys[i]) == block


def test_reencrypt_plain_to_encrypted_and_back(engine: BlockEngine, key: DataKey) -> None:
    data = _fill(engine, "snap-plain", None, 3)
    engine.reencrypt("snap-plain", None, "snap-enc", key)
    engine.reencrypt("snap-enc", key, "snap-plain2", None)
    for index, block in data.items():
        assert engine.read_block("snap-enc", index, key) == block
        assert engine.read_block("snap-plain2", index, None) == block


def test_reencrypt_resumes_after_a_crash(engine: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    data = _fill(engine, "snap-src", k1, 10)
    engine.BATCH_BLOCKS = 2
    real = workers.reencrypt_batch
    calls = {"n": 0}

    def flaky(*args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(workers, "reencrypt_batch", flaky)
    with pytest.raises(RuntimeError):
        engine.reencrypt("snap-src", k1, "snap-dst", k2)
    done_before = engine.own_block_count("snap-dst")
    assert done_before == 4  # two batches committed
    monkeypatch.setattr(workers, "reencrypt_batch", real)
    # A write to the source after the copy started is not part of the copy.
    engine.write_block("snap-src", 0, rand_block(), k1)
    written: list[int] = []
    orig = real

    def counting(store, s, d, items):  # type: ignore[no-untyped-def]
        written.extend(i[0] for i in items)
        return orig(store, s, d, items)

    monkeypatch.setattr(workers, "reencrypt_batch", counting)
    assert engine.reencrypt("snap-src", k1, "snap-dst", k2) == 10
    assert len(written) == 6  # only what was missing
    for index, block in data.items():
        assert engine.read_block("snap-dst", index, k2) == block
    assert engine.reencrypt("snap-src", k1, "snap-dst", k2) == 0  # finished: no-op
    # No leftover objects from the failed attempt: every stored file is referenced.
    engine.sweep(0)
    with engine.db.read() as conn:
        refs = {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}
    assert {f"{p.parent.name}/{p.name}" for p in object_paths(engine)} == refs


@pytest.mark.parametrize("source", ["empty", "missing"])
def test_repeating_a_finished_copy_of_an_empty_source_is_a_no_op(engine: BlockEngine, source: str) -> None:
    """A resumed job repeats its copy after a crash: when the source held no block, the first
    attempt already made the (empty) destination, and the repeat must accept it."""
    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    if source == "empty":
        engine.share("vol-never-written", "snap-src")  # an owner with no block
    for _ in range(2):
        assert engine.reencrypt("snap-src", k1, "vol-dst", k2) == 0
        assert engine.list_blocks("vol-dst", k2) == []
    for _ in range(2):  # an unencrypted destination too
        assert engine.reencrypt("snap-src", k1, "vol-plain", None) == 0
    assert object_paths(engine) == []
    engine.write_block("vol-dst", 3, pattern_block(b"after"), k2)  # the copy is done: writable, under k2
    with pytest.raises(KeyMismatch):
        engine.write_block("vol-dst", 4, rand_block(), k1)


def test_copy_onto_an_owner_that_is_not_an_earlier_attempt_is_refused(engine: BlockEngine) -> None:
    from ebscrypt.engines.blocks.engine import BlockError

    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    _fill(engine, "snap-src", k1, 2)
    engine.write_block("vol-written", 0, rand_block(), k2)  # holds a block of its own
    engine.reencrypt("snap-empty", k1, "vol-other-key", DataKey("dk-3", os.urandom(32)))  # empty, another key
    for dst in ("vol-written", "vol-other-key"):
        with pytest.raises(BlockError, match="already exists"):
            engine.reencrypt("snap-src", k1, dst, k2)
    with pytest.raises(BlockError, match="already exists"):  # an empty copy repeated under another key
        engine.reencrypt("snap-empty", k1, "vol-other-key", k2)


def test_no_writes_into_a_copy_in_progress(engine: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from ebscrypt.engines.blocks.engine import CopyInProgress

    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    data = _fill(engine, "snap-src", k1, 4)
    engine.BATCH_BLOCKS = 2
    real = workers.reencrypt_batch
    seen: list[type] = []

    def write_midway(*args):  # type: ignore[no-untyped-def]
        try:
            engine.write_block("snap-dst", 0, rand_block(), k2)
        except CopyInProgress as exc:
            seen.append(type(exc))
        return real(*args)

    monkeypatch.setattr(workers, "reencrypt_batch", write_midway)
    engine.reencrypt("snap-src", k1, "snap-dst", k2)
    assert seen and all(t is CopyInProgress for t in seen)
    assert engine.read_block("snap-dst", 0, k2) == data[0]  # the copy's block, not a lost race
    engine.write_block("snap-dst", 0, ZERO, k2)  # after the copy: fine
    assert engine.read_block("snap-dst", 0, k2) == ZERO


def test_written_after_reencrypt_is_a_new_layer(engine: BlockEngine, key: DataKey) -> None:
    k2 = DataKey("dk-2", os.urandom(32))
    _fill(engine, "snap-parent", key, 3)
    engine.reencrypt("snap-parent", key, "snap-child", k2)
    engine.write_block("snap-child", 50, rand_block(), k2)
    assert [c.index for c in engine.changed_blocks("snap-parent", "snap-child")] == [50]


# ------------------------------------------------------------------ GC


def test_release_reclaims_only_unreferenced_objects(engine: BlockEngine, key: DataKey) -> None:
    _fill(engine, "vol-1", key, 4)
    engine.share("vol-1", "snap-1")
    engine.write_block("vol-1", 0, rand_block(), key)  # replaces a shared block in vol-1 only
    assert len(object_paths(engine)) == 5
    engine.release("vol-1")
    engine.sweep(0)
    assert len(object_paths(engine)) == 4  # the snapshot's 4 remain
    for index in (0, 3, 6, 9):
        engine.read_block("snap-1", index, key)
    engine.release("snap-1")
    engine.sweep(0)
    assert object_paths(engine) == []
    assert _row_counts(engine) == (0, 0, 0)


def test_shadowed_blocks_are_reclaimed_when_their_snapshot_goes(engine: BlockEngine, key: DataKey) -> None:
    """A block overwritten after a snapshot is only kept for that snapshot: once the
    snapshot is released, the old object is reclaimed and the chain gets shorter."""
    data = _fill(engine, "vol-1", key, 4)  # indices 0, 3, 6, 9
    engine.share("vol-1", "snap-1")
    new0 = rand_block()
    engine.write_block("vol-1", 0, new0, key)
    engine.share("vol-1", "snap-2")  # a later snapshot of the same volume
    assert len(object_paths(engine)) == 5
    engine.release("snap-1")
    engine.sweep(0)
    assert len(object_paths(engine)) == 4  # the shadowed first version of block 0 is gone
    for owner in ("vol-1", "snap-2"):
        assert engine.read_block(owner, 0, key) == new0
        for index in (3, 6, 9):
            assert engine.read_block(owner, index, key) == data[index]
    with engine.db.read() as conn:
        head = conn.execute(select(blk_owners.c.head_id).where(blk_owners.c.owner_id == "snap-2")).scalar()
        assert len(engine._chain(conn, head)) == 2  # head + one frozen layer (was 3)
    assert engine.changed_blocks("snap-2", "vol-1") == []
    engine.release("vol-1")
    engine.release("snap-2")
    engine.sweep(0)
    assert object_paths(engine) == [] and _row_counts(engine) == (0, 0, 0)


def test_overwrite_garbage_waits_for_grace_period(tmp_path: Path, key: DataKey) -> None:
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=3600)
    engine.write_block("vol-1", 0, rand_block(), key)
    engine.write_block("vol-1", 0, rand_block(), key)
    assert engine.sweep() == 0  # a reader may still hold the old entry
    assert len(object_paths(engine)) == 2
    assert engine.sweep(0) == 1
    assert len(object_paths(engine)) == 1
    db.dispose()


def test_running_copy_pins_its_source(engine: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    data = _fill(engine, "snap-src", k1, 6)
    engine.BATCH_BLOCKS = 2
    real = workers.reencrypt_batch
    calls = {"n": 0}

    def release_midway(*args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            engine.release("snap-src")  # the source snapshot is deleted during the copy
            engine.sweep(0)
        return real(*args)

    monkeypatch.setattr(workers, "reencrypt_batch", release_midway)
    engine.reencrypt("snap-src", k1, "snap-dst", k2)
    for index, block in data.items():
        assert engine.read_block("snap-dst", index, k2) == block
    engine.sweep(0)
    assert len(object_paths(engine)) == 6  # the source's objects went once the copy finished


@pytest.mark.parametrize("processes", [0, 2])
def test_releasing_a_copy_destination_cancels_the_copy(tmp_path: Path, processes: int) -> None:
    """The destination released mid-copy (its volume/snapshot deleted): the copy stops with
    CopyCancelled, and the store is left with the source's objects only — at once, not
    after the garbage grace period (no reader can hold a copy destination's blocks)."""
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=processes, gc_grace_seconds=3600)
    engine.INLINE_BLOCKS = 2
    engine.BATCH_BLOCKS = 2
    try:
        k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
        data = _fill(engine, "snap-src", k1, 8)
        before = object_paths(engine)
        seen: list[float] = []

        def progress(pct: float) -> None:
            seen.append(pct)
            if 0 < pct < 100 and engine.exists("snap-dst"):
                engine.release("snap-dst")  # after a batch was recorded: DeleteSnapshot mid-copy

        with pytest.raises(CopyCancelled):
            engine.reencrypt("snap-src", k1, "snap-dst", k2, progress=progress)
        assert 0 < seen[-1] < 100
        assert not engine.exists("snap-dst")
        assert object_paths(engine) == before
        assert engine.sweep(0) == 0  # nothing was left waiting for the sweep either
        for index, block in data.items():
            assert engine.read_block("snap-src", index, k1) == block
        assert engine.reencrypt("snap-src", k1, "snap-dst", k2) == 8  # a new copy starts afresh
    finally:
        engine.close()
        db.dispose()


def test_orphans_from_a_crash_are_swept(engine: BlockEngine, key: DataKey) -> None:
    engine.write_block("vol-1", 0, rand_block(), key)
    orphan = new_object_key()
    engine.store.put(orphan, b"left by a crash between store and commit")
    assert engine.sweep_orphans(min_age_seconds=3600) == 0  # too young: may be in flight
    assert engine.sweep_orphans(min_age_seconds=0) == 1
    assert not engine.store.exists(orphan)
    assert engine.read_block("vol-1", 0, key) != ZERO


def test_orphans_of_an_earlier_process_are_swept_right_after_start(engine: BlockEngine, key: DataKey) -> None:
    """Objects older than this process cannot be in-flight writes: the first maintenance
    sweep takes them at once; an object this process writes after start is left alone."""
    engine.write_block("vol-1", 0, rand_block(), key)
    old = new_object_key()
    engine.store.put(old, b"left by a killed server")
    past = time.time() - 60  # well before this engine (the sweep keeps a 2 s margin)
    os.utime(engine.store._path(old), (past, past))  # type: ignore[attr-defined]
    engine.start_maintenance()
    fresh = new_object_key()
    engine.store.put(fresh, b"a write of this process, not yet committed")
    deadline = time.monotonic() + 5
    while engine.store.exists(old) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not engine.store.exists(old)
    assert engine.store.exists(fresh)
    assert engine.read_block("vol-1", 0, key) != ZERO


def test_crypto_shredding_store_holds_nothing_readable_without_the_key(engine: BlockEngine, key: DataKey, tmp_path: Path) -> None:
    """R-KEY-8: with the data key gone, the stored objects give nothing back."""
    data = pattern_block(b"SHRED-ME-")
    engine.write_block("vol-1", 0, data, key)
    ident = engine.block_ref("vol-1", 0).object_key  # type: ignore[union-attr]
    raw = object_paths(engine)[0].read_bytes()
    assert b"SHRED-ME-" not in raw
    for guess in (DataKey(key.key_id, bytes(32)), DataKey(key.key_id, os.urandom(32))):
        with pytest.raises(BlockIntegrityError):
            BlockCipher(guess).open(ident, 0, raw, "")
    assert bytes(BlockCipher(key).open(ident, 0, raw, "")) == data


# ------------------------------------------------------------------ group commit (issue 15)


def test_concurrent_writes_of_one_block_leave_one_entry_and_no_leak(engine: BlockEngine, key: DataKey) -> None:
    """Writes of the same block in one group: the last recorded wins, the others' objects
    go to the garbage list (collected), none is left behind or referenced twice."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = [rand_block() for _ in range(24)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda b: engine.write_block("vol-same", 3, b, key), blocks))
    assert engine.read_block("vol-same", 3, key) in blocks
    assert [i for i, _ in engine.list_blocks("vol-same", key)] == [3]
    engine.sweep(0)
    with engine.db.read() as conn:
        refs = [r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key]
    assert len(refs) == 1
    assert [f"{p.parent.name}/{p.name}" for p in object_paths(engine)] == refs


def test_group_record_failure_falls_back_to_one_by_one(engine: BlockEngine, key: DataKey,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """If the group's statements fail, each entry is recorded alone: the others succeed."""
    def broken(*_a, **_k):
        raise RuntimeError("group statements failed")

    monkeypatch.setattr(engine, "_record_group", broken)
    data = rand_block()
    engine.write_block("vol-fb", 0, data, key)
    assert engine.read_block("vol-fb", 0, key) == data


def test_entry_is_recorded_only_after_its_object_is_durable(engine: BlockEngine, key: DataKey,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed flush fails the write: no entry names the object, and the object is gone."""
    def failing_publish(staged, **_kw):  # type: ignore[no-untyped-def]
        LocalDirStore.discard(staged)
        raise OSError("flush failed")

    engine.write_block("vol-d", 0, rand_block(), key)
    before = engine.read_block("vol-d", 0, key)
    monkeypatch.setattr(engine.store, "publish", failing_publish)
    with pytest.raises(OSError):
        engine.write_block("vol-d", 0, rand_block(), key)
    monkeypatch.undo()
    assert engine.read_block("vol-d", 0, key) == before  # the acknowledged block stays
    with engine.db.read() as conn:
        refs = {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}
    assert {f"{p.parent.name}/{p.name}" for p in object_paths(engine)} == refs


def test_group_commit_stages_overlap(tmp_path: Path, key: DataKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two stages are a pipeline: while one group's entries are being recorded, the
    next group's objects flush (the second writer's flush does not wait for the first
    writer's transaction), and each writer still returns only once its entry is recorded.
    (The two-flush path: a store on another file system than the WAL, or ``one_flush=False``.)"""
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=0, one_flush=False)
    try:
        _stages_overlap(engine, key, monkeypatch)
    finally:
        engine.close()
        db.dispose()


def _stages_overlap(engine: BlockEngine, key: DataKey, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    record_may_finish = threading.Event()
    in_record = threading.Event()
    second_flushed = threading.Event()
    publish, record = engine.store.publish, engine._record_writes  # type: ignore[attr-defined]
    calls = {"publish": 0, "record": 0}

    def slow_record(batch):  # type: ignore[no-untyped-def]
        calls["record"] += 1
        if calls["record"] == 1:
            in_record.set()
            assert record_may_finish.wait(10)
        record(batch)

    def counted_publish(staged):  # type: ignore[no-untyped-def]
        calls["publish"] += 1
        publish(staged)
        if calls["publish"] == 2:
            second_flushed.set()

    monkeypatch.setattr(engine._record_stage, "_work", slow_record)
    monkeypatch.setattr(engine.store, "publish", counted_publish)
    first, second = rand_block(), rand_block()
    done: dict[str, bool] = {}
    a = threading.Thread(target=lambda: done.setdefault("a", engine.write_block("vol-p", 0, first, key) is not None))
    a.start()
    assert in_record.wait(10)  # writer A's entry is being recorded (held there)
    b = threading.Thread(target=lambda: done.setdefault("b", engine.write_block("vol-p", 1, second, key) is not None))
    b.start()
    assert second_flushed.wait(10)  # B's object flushed while A's transaction is open
    assert done == {}  # neither returned: A's entry is not recorded yet, B queues behind it
    record_may_finish.set()
    a.join(10)
    b.join(10)
    assert done == {"a": True, "b": True}
    assert engine.read_block("vol-p", 0, key) == first and engine.read_block("vol-p", 1, key) == second
