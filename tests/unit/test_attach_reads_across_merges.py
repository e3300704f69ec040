"""Reads outside an attached volume's lock racing the journal's rotation and the merge of
the frozen journal outside the lock (issue 12, R-ATTACH-3): what a read overlays is taken
under the lock from BOTH journals (the frozen one being merged, then the active one), and
the files it holds stay readable after a rotation renames them and after a merge's end
deletes the frozen one; a claimed whole-block load catches up with the records appended
to either journal since its claim."""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from ebscrypt.engines.attach.journal import merging_path
from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from tests.helpers import local_block_engine

PAGE = 4096


@pytest.fixture
def blocks(tmp_path: Path):
    with local_block_engine(tmp_path) as engine:
        yield engine


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


class _MergeGate:
    """Holds the background merge (its thread) just before it stages its blocks."""

    def __init__(self, blocks: Any) -> None:
        self.blocks = blocks
        self.real = blocks.stage_blocks
        self.gate, self.inside = threading.Event(), threading.Event()
        blocks.stage_blocks = self._stage

    def _stage(self, *a: Any, **kw: Any) -> Any:
        if threading.current_thread().name.startswith("ebscrypt-merge"):
            self.inside.set()
            assert self.gate.wait(60)
        return self.real(*a, **kw)

    def rearm(self) -> None:
        self.gate.clear()
        self.inside.clear()

    def undo(self) -> None:
        self.gate.set()
        self.blocks.stage_blocks = self.real


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_reads_outside_the_lock_race_a_rotation_and_the_merge_of_the_frozen_journal(
        blocks, tmp_path: Path, encrypted: bool) -> None:
    key = DataKey("dk-test", os.urandom(32)) if encrypted else None
    vid = "vol-00000000000000031"
    nblocks = 12
    size = nblocks * BLOCK_SIZE
    pool = ThreadPoolExecutor(4)
    # 64 KiB of journal: ~15 records of 4 KiB fill it (then it rotates and is merged)
    vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=4, flusher=pool,
                     journal_path=tmp_path / "journal" / f"{vid}.jnl", journal_bytes=64 << 10)
    journal = vol._journal
    assert journal is not None
    model = bytearray(size)
    rng = random.Random(31)

    def write(offset: int, data: bytes) -> None:
        vol.write(offset, data)
        model[offset:offset + len(data)] = data

    def page(index: int, n: int, value: int) -> None:
        write(index * BLOCK_SIZE + n * PAGE, bytes([value]) * PAGE)

    def fill_until_rotation() -> None:  # small writes to blocks 2..5 (not cached) until the journal rotates
        for _ in range(200):
            if journal.merging is not None:
                return
            write(rng.randrange(2, 6) * BLOCK_SIZE + rng.randrange(BLOCK_SIZE - PAGE), os.urandom(PAGE))
        raise AssertionError("the journal never rotated")

    for i in range(nblocks):
        write(i * BLOCK_SIZE, bytes([1]) * BLOCK_SIZE)
    vol.flush()  # blocks 0..7 stored, 8..11 cached clean
    merge = _MergeGate(blocks)
    try:
        # -- 1. a random read planned while a frozen journal (being merged) and the active
        # one both hold records of its span, read after the merge ended and deleted the
        # frozen journal's file, and after newer writes: the bytes as of its start.
        page(1, 0, 2)  # in the journal that is about to freeze
        fill_until_rotation()
        assert merge.inside.wait(30)
        frozen_path = merging_path(journal.path)
        assert frozen_path.exists() and journal.merging is not None and journal.merging.has(1)
        page(1, 1, 3)  # in the new active journal
        assert journal.active.has(1)
        planned, go = threading.Event(), threading.Event()
        held: list[Any] = []
        real_read_parts = vol._read_parts

        def paused_read_parts(parts: Any, out: bytearray, k: Any, **options: Any) -> None:
            held.extend(f for part in parts if part[5] is not None for f, _e in part[5].parts)
            planned.set()
            assert go.wait(60)
            real_read_parts(parts, out, k, **options)

        vol._read_parts = paused_read_parts  # type: ignore[method-assign]
        want = bytes(model[BLOCK_SIZE:BLOCK_SIZE + 3 * PAGE])
        got: list[bytes | bytearray] = []
        vol._read_next = 100  # (not next to the last read: a random read, its sectors only)
        reader = threading.Thread(target=lambda: got.append(vol.read(BLOCK_SIZE, 3 * PAGE)))
        reader.start()
        assert planned.wait(30)
        vol._read_parts = real_read_parts  # type: ignore[method-assign]
        assert len(held) == 2 and held[0].jid != held[1].jid  # the frozen journal's file, then the active one's
        merge.gate.set()  # the merge ends: published, the frozen journal deleted
        _wait_for(lambda: not vol._merge_running)
        assert not frozen_path.exists() and journal.merging is None
        assert held[0]._fd >= 0  # still open: the read holds it
        page(1, 0, 5)  # newer than the read: not seen by it, nor by it overwritten
        page(1, 2, 6)
        go.set()
        reader.join(60)
        assert got == [want]
        assert held[0]._fd == -1  # closed by the last read letting go
        assert vol.read(BLOCK_SIZE, 3 * PAGE) == bytes(model[BLOCK_SIZE:BLOCK_SIZE + 3 * PAGE])

        # -- 2. a whole-block load claimed with the active journal's records, held while
        # more records go to it, the journal rotates (the merge held before it stages the
        # block) and a record goes to the new journal: inserted with every record since
        # its claim (the frozen journal's after the claim's position, then the new one's).
        merge.rearm()
        page(6, 0, 7)
        loading, go2 = threading.Event(), threading.Event()
        real_load_one = vol._load_one

        def paused_load_one(index: int, claim: Any, k: Any) -> bytearray:
            block = real_load_one(index, claim, k)
            if index == 6:
                loading.set()
                assert go2.wait(60)
            return block

        caught_up: list[int] = []
        real_since = journal.overlay_since

        def spy_since(index: int, buf: Any, position: Any) -> None:
            caught_up.append(index)
            real_since(index, buf, position)

        vol._load_one = paused_load_one  # type: ignore[method-assign]
        journal.overlay_since = spy_since  # type: ignore[method-assign]
        # (next to the last read, a run shorter than the cache: sequential, whole blocks claimed)
        vol._read_next, vol._adjacent, vol._run_start, vol._run_end = 6, True, 6, 6
        got2: list[bytes | bytearray] = []
        loader = threading.Thread(target=lambda: got2.append(vol.read(6 * BLOCK_SIZE, BLOCK_SIZE)))
        loader.start()
        assert loading.wait(30)
        page(6, 1, 8)  # after the claim, in the journal about to freeze
        fill_until_rotation()
        assert merge.inside.wait(30)  # the merge of that journal holds before staging block 6
        page(6, 2, 9)  # in the new active journal
        assert 6 in vol._loading  # the claim still holds (the merge registered nothing yet)
        go2.set()
        loader.join(60)
        vol._load_one = real_load_one  # type: ignore[method-assign]
        assert got2 == [bytes(model[6 * BLOCK_SIZE:7 * BLOCK_SIZE])]
        assert 6 in caught_up and 6 in vol._cache
        merge.gate.set()
        _wait_for(lambda: not vol._merge_running)
        assert vol.read(0, size) == bytes(model)
    finally:
        merge.undo()
    vol.close()
    pool.shutdown()
    fresh = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1")
    assert fresh.read(0, size) == bytes(model)
    fresh.close()


def test_a_claimed_load_failing_on_an_altered_record_lets_every_waiting_reader_go(blocks, tmp_path: Path) -> None:
    """A record appended after a load's claim and altered on disk fails that load at its
    insertion (JournalIntegrityError, never other bytes), and the claim is let go: a
    second reader waiting for the block reads it itself and fails the same way instead of
    waiting forever."""
    from ebscrypt.engines.attach.journal import JournalIntegrityError

    key = DataKey("dk-test", os.urandom(32))
    vid = "vol-00000000000000032"
    pool = ThreadPoolExecutor(4)
    vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=4, flusher=pool,
                     journal_path=tmp_path / "journal" / f"{vid}.jnl")
    journal = vol._journal
    assert journal is not None
    for i in range(12):
        vol.write(i * BLOCK_SIZE, bytes([1]) * BLOCK_SIZE)
    vol.flush()  # blocks 0..7 stored, 8..11 cached
    vol.write(7 * BLOCK_SIZE, b"\x02" * PAGE)  # a record of block 7 (not cached)
    loading, go = threading.Event(), threading.Event()
    real_load_one = vol._load_one

    def paused_load_one(index: int, claim: Any, k: Any) -> bytearray:
        block = real_load_one(index, claim, k)
        if index == 7:
            loading.set()
            assert go.wait(60)
        return block

    vol._load_one = paused_load_one  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def read_block_7() -> None:
        try:
            vol.read(7 * BLOCK_SIZE, BLOCK_SIZE)
        except BaseException as exc:
            errors.append(exc)

    vol._read_next, vol._adjacent, vol._run_start, vol._run_end = 7, True, 7, 7  # sequential: the whole block claimed
    first = threading.Thread(target=read_block_7)
    first.start()
    assert loading.wait(30)
    vol._load_one = real_load_one  # type: ignore[method-assign]
    vol.write(7 * BLOCK_SIZE + PAGE, b"\x03" * PAGE)  # after the claim: overlaid at insertion
    ext = journal.active.extents(7, PAGE, 2 * PAGE)[-1]
    with open(journal.path, "r+b") as f:  # one byte of that record's ciphertext flipped
        f.seek(ext.pos + 40)
        byte = f.read(1)[0]
        f.seek(ext.pos + 40)
        f.write(bytes([byte ^ 1]))
    with vol._lock:
        vol._read_next, vol._adjacent, vol._run_start, vol._run_end = 7, True, 7, 7
    second = threading.Thread(target=read_block_7)  # waits for the first one's claim
    second.start()
    _wait_for(lambda: 7 in vol._loading)
    go.set()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive(), "a reader waits forever for a failed load"
    assert len(errors) == 2 and all(isinstance(e, JournalIntegrityError) for e in errors), errors
    assert 7 not in vol._loading and 7 not in vol._cache
    try:
        vol.close()
    except JournalIntegrityError:
        pass  # (the merge at close meets the altered record too: the journal is left as it is)
    pool.shutdown()
