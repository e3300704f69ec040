"""The EBS direct path's cheaper steps keep their answers (issue 15, area J; R-DATA-1):
the head-first block lookup, the recorded checksum of an encrypted block, the group
commit's fallback, the write-session memo, the allocator settings."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from ebscrypt import heap
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, BlockIntegrityError, DataKey
from ebscrypt.engines.blocks.engine import BlockEngine, _PendingWrite
from ebscrypt.engines.ebs import direct
from ebscrypt.storage.tables.blocks import blk_entries
from tests.helpers import local_block_engine


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    with local_block_engine(tmp_path) as eng:
        yield eng


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_head_first_lookup_finds_own_and_inherited_blocks(engine: BlockEngine) -> None:
    key = DataKey("dk", os.urandom(32))
    a, b, c = (os.urandom(BLOCK_SIZE) for _ in range(3))
    engine.write_block("snap-a", 0, a, key)
    engine.write_block("snap-a", 1, b, key)
    engine.share("snap-a", "snap-b")  # b inherits both: its head is empty
    engine.write_block("snap-b", 1, c, key)  # its own block 1 shadows the parent's
    for owner, index in (("snap-a", 0), ("snap-a", 1), ("snap-b", 0), ("snap-b", 1), ("snap-b", 5), ("none", 0)):
        assert engine.block_ref(owner, index, head_first=True) == engine.block_ref(owner, index)
    assert engine.read_block("snap-b", 1, key) == c
    assert engine.read_block("snap-b", 0, key) == a


def test_read_checked_answers_the_recorded_checksum(engine: BlockEngine) -> None:
    key = DataKey("dk", os.urandom(32))
    data = os.urandom(BLOCK_SIZE)
    engine.write_block("snap-a", 3, data, key)
    engine.write_block("snap-p", 3, data, None)
    got, checksum, _ref = engine.read_block_checked("snap-a", 3, key)
    assert got == data and checksum == _sha(data)
    got, checksum, _ref = engine.read_block_checked("snap-p", 3, None)
    assert got == data and checksum == _sha(data)


def test_altered_sealed_checksum_fails_closed(engine: BlockEngine) -> None:
    key = DataKey("dk", os.urandom(32))
    engine.write_block("snap-a", 3, os.urandom(BLOCK_SIZE), key)
    engine.write_block("snap-a", 4, os.urandom(BLOCK_SIZE), key)
    other = engine.block_ref("snap-a", 4)
    assert other is not None
    with engine.db.begin() as conn:  # block 4's sealed checksum moved onto block 3
        conn.execute(update(blk_entries).where(blk_entries.c.block_index == 3).values(checksum=other.checksum))
    with pytest.raises(BlockIntegrityError):
        engine.read_block_checked("snap-a", 3, key)


def test_group_falls_back_to_one_entry_at_a_time(engine: BlockEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the group's statements fail, the transaction is rolled back whole and each entry
    recorded on its own: the good ones stored, the failing one's error its own."""
    key = DataKey("dk", os.urandom(32))
    engine.write_block("snap-a", 0, os.urandom(BLOCK_SIZE), key)
    other = DataKey("dk-other", os.urandom(32))

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("the group's statements failed")

    monkeypatch.setattr(engine, "_record_group", broken)
    batch = [_PendingWrite("snap-a", 1, key, None, "e1:x"), _PendingWrite("snap-a", 2, other, None, "e1:y")]
    engine._record_writes(batch)
    assert batch[0].error is None and batch[1].error is not None  # another data key: refused alone
    ref = engine.block_ref("snap-a", 1)
    assert ref is not None and ref.checksum == "e1:x"
    assert engine.block_ref("snap-a", 2) is None


def _runtime(now: datetime) -> Any:
    return SimpleNamespace(clock=SimpleNamespace(now=lambda: now))


def test_session_memo_never_outlives_the_deadline() -> None:
    memo = direct._SessionMemo()
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runtime = _runtime(now)
    row = SimpleNamespace(last_activity=now - timedelta(minutes=5), timeout_minutes=10)
    assert memo.put(runtime, "snap-1", row) is not None
    assert memo.get(runtime, "snap-1", now) is not None
    # within the margin of the deadline remembered: read again (another process may have
    # moved it on, but the memo never assumes so)
    assert memo.get(runtime, "snap-1", now + timedelta(minutes=4, seconds=1)) is None
    assert memo.put(runtime, "snap-2", None) is None and memo.get(runtime, "snap-2", now) is None
    memo.drop(runtime, "snap-1")
    assert memo.get(runtime, "snap-1", now) is None
    assert memo.get(_runtime(now), "snap-1", now) is None  # another runtime: its own sessions


def test_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBSCRYPT_MALLOC_TUNE", "0")
    assert heap.reuse_large_buffers() is False
    monkeypatch.delenv("EBSCRYPT_MALLOC_TUNE")
    applied = heap.reuse_large_buffers()
    assert applied in (True, False)  # True on glibc; the process is unchanged otherwise
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists("/lib/aarch64-linux-gnu/libc.so.6"):
        assert applied
