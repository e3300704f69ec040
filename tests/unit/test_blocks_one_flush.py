"""The block engine's one-flush group commit (issue 15; engines/blocks/engine.py
``_one_flush_commit``): when the metadata WAL lives on the object store's file system, a
new block's entry is committed without its own WAL sync and one syncfs makes the group's
objects and entries durable together (opt-in: ``one_flush=True`` / EBSCRYPT_BLOCK_ONE_FLUSH=1); a block that replaces one keeps the two ordered
flushes. Either way ``write_block`` returns (PutSnapshotBlock answers, R-DATA-1) only once
its object and its entry are durable."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine
from ebscrypt.engines.blocks.store import LocalDirStore
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.blocks import blk_entries
from tests.helpers import local_block_engine


def rand_block() -> bytes:
    return os.urandom(BLOCK_SIZE)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[BlockEngine]:
    with local_block_engine(tmp_path, one_flush=True) as eng:
        yield eng


@pytest.fixture
def key() -> DataKey:
    return DataKey("dk-1", os.urandom(32))


def stored_files(eng: BlockEngine) -> set[str]:
    root = eng.store.root  # type: ignore[attr-defined]
    return {f"{p.parent.name}/{p.name}" for p in root.rglob("*") if p.is_file()}


def entry_objects(eng: BlockEngine) -> set[str]:
    with eng.db.read() as conn:
        return {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}


def count_publishes(eng: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each publish of the store (True: a whole-file-system flush)."""
    seen: list[bool] = []
    publish = eng.store.publish  # type: ignore[attr-defined]

    def counted(staged: Any, *, whole_fs: bool = False) -> None:
        seen.append(whole_fs)
        publish(staged, whole_fs=whole_fs)

    monkeypatch.setattr(eng.store, "publish", counted)
    return seen


def test_a_new_block_costs_one_flush_covering_its_entry(engine: BlockEngine, key: DataKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sync = engine.db.group_sync
    assert sync is not None and engine._one_flush  # WAL and objects on one file system here
    publishes = count_publishes(engine, monkeypatch)
    engine.write_block("snap-a", 0, rand_block(), key)  # the owner is created in the same transaction
    data = rand_block()
    before = sync.fsyncs
    engine.write_block("snap-a", 1, data, key)
    assert publishes[-1] is True  # one syncfs ...
    assert sync.fsyncs == before  # ... and no WAL fdatasync of its own
    assert sync._synced >= sync.commits()  # yet every commit so far is known durable
    assert engine.read_block("snap-a", 1, key) == data
    assert stored_files(engine) == entry_objects(engine)


def test_a_rewrite_is_recorded_only_after_its_object_is_durable(engine: BlockEngine, key: DataKey,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing an acknowledged block: the entry waits for the flush of its object (two
    ordered flushes), so a crash can never leave the old block replaced by a lost one."""
    first, second = rand_block(), rand_block()
    engine.write_block("vol-r", 0, first, key)
    order: list[str] = []
    publish, record = engine.store.publish, engine._record_writes  # type: ignore[attr-defined]

    def flagged_publish(staged: Any, *, whole_fs: bool = False) -> None:
        publish(staged, whole_fs=whole_fs)
        order.append("flush")

    def flagged_record(batch: Any) -> None:
        order.append("record")
        record(batch)

    monkeypatch.setattr(engine.store, "publish", flagged_publish)
    monkeypatch.setattr(engine._record_stage, "_work", flagged_record)
    sync = engine.db.group_sync
    assert sync is not None
    before = sync.fsyncs
    engine.write_block("vol-r", 0, second, key)
    assert order == ["flush", "record"]
    assert sync.fsyncs == before + 1  # that record waited for its own WAL sync
    assert engine.read_block("vol-r", 0, key) == second
    engine.sweep(0)
    assert stored_files(engine) == entry_objects(engine)


def test_write_returns_only_after_the_flush(engine: BlockEngine, key: DataKey,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry of a new block is committed before the flush, the answer comes after it."""
    release, flushing = threading.Event(), threading.Event()
    publish = engine.store.publish  # type: ignore[attr-defined]

    def held(staged: Any, *, whole_fs: bool = False) -> None:
        flushing.set()
        assert release.wait(10)
        publish(staged, whole_fs=whole_fs)

    monkeypatch.setattr(engine.store, "publish", held)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (engine.write_block("snap-h", 3, rand_block(), key), done.set()))
    writer.start()
    assert flushing.wait(10)
    assert engine.block_ref("snap-h", 3) is not None  # committed (not yet durable) ...
    assert not done.wait(0.3)  # ... and not acknowledged
    release.set()
    writer.join(10)
    assert done.is_set()


def test_a_failed_flush_fails_the_write_and_withdraws_its_entry(engine: BlockEngine, key: DataKey,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kept = rand_block()
    engine.write_block("snap-f", 0, kept, key)

    def failing(staged: Any, *, whole_fs: bool = False) -> None:
        LocalDirStore.discard(staged)
        raise OSError("flush failed")

    monkeypatch.setattr(engine.store, "publish", failing)
    with pytest.raises(OSError):
        engine.write_block("snap-f", 1, rand_block(), key)
    monkeypatch.undo()
    assert engine.block_ref("snap-f", 1) is None  # nothing names a lost object
    assert engine.read_block("snap-f", 0, key) == kept
    assert stored_files(engine) == entry_objects(engine)


def test_concurrent_new_blocks_share_flushes(engine: BlockEngine, key: DataKey,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    publishes = count_publishes(engine, monkeypatch)
    sync = engine.db.group_sync
    assert sync is not None
    before = sync.fsyncs
    data = {i: rand_block() for i in range(48)}
    # one block twice in the stream: the later write replaces the earlier, in order
    data_again = rand_block()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: engine.write_block("snap-c", i, data[i], key), data))
    engine.write_block("snap-c", 5, data_again, key)
    assert len(publishes) < len(data)  # flushes were shared
    assert sync.fsyncs - before <= 1  # only the rewrite's record synced the WAL itself
    for i, block in data.items():
        assert engine.read_block("snap-c", i, key) == (data_again if i == 5 else block)
    engine.sweep(0)
    assert stored_files(engine) == entry_objects(engine)


def test_refused_writes_leave_no_file(engine: BlockEngine, key: DataKey) -> None:
    from ebscrypt.engines.blocks.engine import KeyMismatch

    engine.write_block("snap-k", 0, rand_block(), key)
    with pytest.raises(KeyMismatch):
        engine.write_block("snap-k", 1, rand_block(), DataKey("dk-other", os.urandom(32)))
    assert stored_files(engine) == entry_objects(engine)


def test_store_on_another_file_system_keeps_two_flushes(tmp_path: Path, key: DataKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalDirStore, "covers", lambda self, path: False)
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    eng = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=0, one_flush=True)
    try:
        assert not eng._one_flush
        sync = db.group_sync
        assert sync is not None
        before = sync.fsyncs
        data = rand_block()
        eng.write_block("snap-o", 0, data, key)
        assert sync.fsyncs == before + 1  # the entry's own WAL sync
        assert eng.read_block("snap-o", 0, key) == data
    finally:
        eng.close()
        db.dispose()


def test_off_by_default_and_switched_on_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        monkeypatch.delenv("EBSCRYPT_BLOCK_ONE_FLUSH", raising=False)
        assert not BlockEngine(db, LocalDirStore(tmp_path / "a"), processes=0)._one_flush
        monkeypatch.setenv("EBSCRYPT_BLOCK_ONE_FLUSH", "1")
        assert BlockEngine(db, LocalDirStore(tmp_path / "b"), processes=0)._one_flush
        assert not BlockEngine(db, LocalDirStore(tmp_path / "c"), processes=0, one_flush=False)._one_flush
    finally:
        db.dispose()
