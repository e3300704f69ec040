"""Property test of lineage, sharing, re-encryption, GC and compaction against a plain model
(R-DATA-1, R-LIFE-2, R-SNAP-2): random sequences of operations on a few owners; after each
step every owner reads exactly as the model says, changed_blocks covers every real
difference, and the store holds exactly the objects the metadata references."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine, UnrelatedLineage
from ebscrypt.engines.blocks.store import LocalDirStore
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.blocks import blk_entries

OWNERS = ["a", "b", "c"]
INDICES = 3
ZERO = bytes(BLOCK_SIZE)


def block(value: int) -> bytes:
    return ZERO if value == 0 else bytes([value]) * BLOCK_SIZE


ops = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(OWNERS), st.integers(0, INDICES - 1), st.integers(0, 4)),
    st.tuples(st.just("share"), st.sampled_from(OWNERS), st.sampled_from(OWNERS)),
    st.tuples(st.just("copy"), st.sampled_from(OWNERS), st.sampled_from(OWNERS)),
    st.tuples(st.just("release"), st.sampled_from(OWNERS)),
)


def stored_objects(engine: BlockEngine) -> set[str]:
    root = engine.store.root  # type: ignore[attr-defined]
    return {f"{p.parent.name}/{p.name}" for p in root.rglob("*") if p.is_file()}


def referenced_objects(engine: BlockEngine) -> set[str]:
    with engine.db.read() as conn:
        return {r.object_key for r in conn.execute(select(blk_entries.c.object_key)) if r.object_key}


@settings(max_examples=int(os.environ.get("EBSCRYPT_MODEL_EXAMPLES", "30")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=18))
@example([("write", "a", 0, 1), ("share", "a", "b"), ("write", "a", 0, 2), ("release", "b")])  # compaction
@example([("write", "a", 0, 1), ("write", "a", 1, 2), ("share", "a", "b"), ("write", "b", 1, 0), ("share", "b", "c"),
          ("release", "b"), ("write", "c", 0, 3), ("release", "a")])
@example([("write", "a", 0, 1), ("copy", "a", "b"), ("write", "b", 1, 3), ("release", "a"), ("share", "b", "c")])
def test_engine_matches_model(steps: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'meta.db'}")
        engine = BlockEngine(db, LocalDirStore(Path(tmp) / "blocks"), processes=0, gc_grace_seconds=0)
        model: dict[str, dict[int, int]] = {}
        keys: dict[str, DataKey] = {}
        n_keys = [0]

        def new_key() -> DataKey:
            n_keys[0] += 1
            return DataKey(f"dk-{n_keys[0]}", os.urandom(32))

        try:
            for step in steps:
                op = step[0]
                if op == "write":
                    _, owner, index, value = step
                    if owner not in keys:
                        keys[owner] = new_key()
                    engine.write_block(owner, index, block(value), keys[owner])
                    model.setdefault(owner, {})[index] = value
                elif op in ("share", "copy"):
                    _, src, dst = step
                    if src == dst or dst in model or dst in keys:
                        continue
                    if op == "share":
                        if src not in keys:
                            keys[src] = new_key()
                        engine.share(src, dst)
                        keys[dst] = keys[src]
                    else:
                        keys[dst] = new_key()
                        engine.reencrypt(src, keys.get(src), dst, keys[dst])
                    model[dst] = dict(model.get(src, {}))
                else:
                    _, owner = step
                    engine.release(owner)
                    model.pop(owner, None)
                    keys.pop(owner, None)
                engine.sweep(0)
                # Every owner reads as the model says.
                for owner, blocks in model.items():
                    for index in range(INDICES):
                        assert engine.read_block(owner, index, keys[owner]) == block(blocks.get(index, 0)), (step, owner, index)
                    assert [i for i, _ in engine.list_blocks(owner, keys[owner])] == sorted(blocks)
                # changed_blocks never misses a real difference between related owners.
                live = sorted(model)
                for x in live:
                    for y in live:
                        try:
                            changed = {c.index for c in engine.changed_blocks(x, y)}
                        except UnrelatedLineage:
                            continue
                        differ = {i for i in range(INDICES) if model[x].get(i) != model[y].get(i)}
                        assert differ <= changed, (x, y, differ, changed)
                # The store holds exactly what the metadata references (no leak, no loss).
                assert stored_objects(engine) == referenced_objects(engine)
            for owner in list(model) + OWNERS:
                engine.release(owner)
            engine.sweep(0)
            assert stored_objects(engine) == set()
        finally:
            engine.close()
            db.dispose()
