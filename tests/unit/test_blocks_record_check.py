"""A write's RecordCheck runs in the transaction that records its entry (issue 15, E7):
PutSnapshotBlock's snapshot/key check folded into the group commit. A refused write
records nothing and leaves no object; a scope is checked once per transaction; the check
sees what was committed before that transaction (not what its writer read earlier)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine, RecordCheck, _PendingWrite
from ebscrypt.storage.tables.blocks import blk_secrets
from tests.helpers import local_block_engine


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    with local_block_engine(tmp_path) as eng:
        yield eng


class Refused(Exception):
    pass


def _objects(engine: BlockEngine) -> set[str]:
    return {key for key, _mtime in engine.store.keys()}


def test_a_refused_write_records_nothing_and_leaves_no_object(engine: BlockEngine) -> None:
    key = DataKey("dk", os.urandom(32))
    data = os.urandom(BLOCK_SIZE)
    engine.write_block("snap-a", 0, data, key, check=RecordCheck("ok", lambda conn: None))
    before = _objects(engine)

    def refuse(conn: Connection) -> None:
        raise Refused("no longer pending")

    with pytest.raises(Refused):
        engine.write_block("snap-a", 1, os.urandom(BLOCK_SIZE), key, check=RecordCheck("no", refuse))
    assert engine.block_ref("snap-a", 1) is None
    assert _objects(engine) == before  # the refused block's object was deleted
    assert engine.read_block("snap-a", 0, key) == data


def test_the_check_sees_what_was_committed_before_the_recording_transaction(engine: BlockEngine) -> None:
    """The check reads in the writer's own transaction: a change committed after the
    writer started (here: a marker row) but before its entry is recorded is seen."""
    key = DataKey("dk", os.urandom(32))

    def marker_absent(conn: Connection) -> None:
        if conn.execute(select(blk_secrets.c.value).where(blk_secrets.c.name == "test-closed")).first() is not None:
            raise Refused("closed")

    check = RecordCheck("open?", marker_absent)
    engine.write_block("snap-a", 0, os.urandom(BLOCK_SIZE), key, check=check)
    with engine.db.begin() as conn:
        conn.execute(insert(blk_secrets).values(name="test-closed", value=b"x"))
    with pytest.raises(Refused):
        engine.write_block("snap-a", 1, os.urandom(BLOCK_SIZE), key, check=check)
    assert engine.block_ref("snap-a", 0) is not None and engine.block_ref("snap-a", 1) is None


def test_one_check_per_scope_per_group_each_refusal_its_own(engine: BlockEngine) -> None:
    """A group of writes of one scope runs its check once; writes of a refused scope each
    get an exception of their own, the others are recorded."""
    key = DataKey("dk", os.urandom(32))
    calls: list[str] = []
    lock = threading.Lock()

    def counted(name: str, ok: bool) -> RecordCheck:
        def fn(conn: Connection) -> None:
            with lock:
                calls.append(name)
            if not ok:
                raise Refused(name)
        return RecordCheck(name, fn)

    good, bad = counted("good", True), counted("bad", False)
    batch = [_PendingWrite("snap-a", i, key, None, f"e1:{i}") for i in range(6)]
    for i, it in enumerate(batch):
        it.check = bad if i in (1, 4) else good
    engine._record_writes(batch)
    assert calls.count("good") == 1 and calls.count("bad") == 2
    assert [it.error is None for it in batch] == [True, False, True, True, False, True]
    assert batch[1].error is not batch[4].error and isinstance(batch[1].error, Refused)
    assert {i for i in range(6) if engine.block_ref("snap-a", i) is not None} == {0, 2, 3, 5}


def test_the_one_at_a_time_fallback_checks_too(engine: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    key = DataKey("dk", os.urandom(32))

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("the group's statements failed")

    def refuse(conn: Connection) -> None:
        raise Refused("no")

    monkeypatch.setattr(engine, "_record_group", broken)
    batch = [_PendingWrite("snap-a", 1, key, None, "e1:x"), _PendingWrite("snap-a", 2, key, None, "e1:y")]
    batch[1].check = RecordCheck("no", refuse)
    engine._record_writes(batch)
    assert batch[0].error is None and isinstance(batch[1].error, Refused)
    assert engine.block_ref("snap-a", 1) is not None and engine.block_ref("snap-a", 2) is None


def test_concurrent_writers_with_checks_all_recorded(engine: BlockEngine) -> None:
    """8 writers at once (the CLI's), one scope: every block recorded and read back."""
    key = DataKey("dk", os.urandom(32))
    blocks = {i: os.urandom(BLOCK_SIZE) for i in range(24)}
    check = RecordCheck("upload", lambda conn: None)
    errors: list[BaseException] = []

    def write(items: list[tuple[int, bytes]]) -> None:
        try:
            for index, data in items:
                engine.write_block("snap-c", index, data, key, check=check)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(list(blocks.items())[n::8],)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for index, data in blocks.items():
        assert engine.read_block("snap-c", index, key) == data
