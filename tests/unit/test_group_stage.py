"""The block group commit's stage (engines/blocks/engine.py ``_GroupStage``): every item is
worked on exactly once, in arrival order, before its caller returns; a failure is its
group's alone; a caller is woken only when its item is done or it is to lead (targeted
wake-ups instead of ``notify_all``, issue 15)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from ebscrypt.engines.blocks.engine import _GroupStage, _PendingWrite


def _item(n: int) -> _PendingWrite:
    return _PendingWrite(owner_id="vol-x", index=n, key=None, object_key=None, checksum="")


class _Recorder:
    def __init__(self, fail_index: int | None = None, delay: float = 0.002) -> None:
        self.batches: list[list[int]] = []
        self.fail_index = fail_index
        self.delay = delay
        self.running = 0
        self.overlap = False
        self._lock = threading.Lock()

    def work(self, batch: list[_PendingWrite]) -> None:
        with self._lock:
            self.running += 1
            self.overlap |= self.running > 1
        try:
            time.sleep(self.delay * random.random())
            for it in batch:
                assert not it.done, "an item was worked on twice"
            self.batches.append([it.index for it in batch])
            if self.fail_index is not None and any(it.index == self.fail_index for it in batch):
                raise RuntimeError("this group failed")
        finally:
            with self._lock:
                self.running -= 1


def _run_threads(stage: _GroupStage, callers: list[list[_PendingWrite]]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(callers))

    def call(items: list[_PendingWrite]) -> None:
        try:
            start.wait()
            if len(items) == 1:
                stage.run(items[0])
            else:
                stage.run_all(items)
            for it in items:
                assert it.done, "a caller returned before its item was done"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(items,)) for items in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a caller never returned (a lost wake-up)"
    return errors


@pytest.mark.parametrize("rounds", range(3))
def test_every_item_once_in_order_and_groups_shared(rounds: int) -> None:
    rec = _Recorder()
    stage = _GroupStage(rec.work, "done", limit=4)
    items = [_item(i) for i in range(48)]
    assert _run_threads(stage, [[it] for it in items]) == []
    worked = [i for b in rec.batches for i in b]
    assert sorted(worked) == list(range(48))  # each exactly once
    assert all(len(b) <= 4 for b in rec.batches)
    assert stage.groups == len(rec.batches) < 48  # callers shared groups
    assert not rec.overlap  # one leader at a time
    assert stage._gates == {} and not stage._busy  # every gate opened, the lead given up


def test_run_all_and_run_mixed() -> None:
    rec = _Recorder()
    stage = _GroupStage(rec.work, "done", limit=3)
    callers = [[_item(100 * c + i) for i in range(1 + c % 5)] for c in range(24)]
    assert _run_threads(stage, callers) == []
    worked = [i for b in rec.batches for i in b]
    assert sorted(worked) == sorted(it.index for items in callers for it in items)
    for items in callers:  # a caller's items stay in its order
        pos = [worked.index(it.index) for it in items]
        assert pos == sorted(pos)
    assert stage._gates == {} and not stage._busy


def test_a_failed_group_fails_its_items_only() -> None:
    rec = _Recorder(fail_index=7)
    stage = _GroupStage(rec.work, "done", limit=4)
    items = [_item(i) for i in range(32)]
    assert _run_threads(stage, [[it] for it in items]) == []
    failed_group = next(b for b in rec.batches if 7 in b)
    for it in items:
        assert (it.error is not None) == (it.index in failed_group)
    assert stage._gates == {} and not stage._busy


def test_waiters_are_woken_once_each() -> None:
    """A caller that waits is woken exactly once (its gate), not on every group's end."""
    wakes = 0
    wakes_lock = threading.Lock()
    real_lock = threading.Lock

    class CountingGate:
        def __init__(self) -> None:
            self._lock = real_lock()
            self._held = False

        def acquire(self) -> bool:
            nonlocal wakes
            got = self._lock.acquire()
            if self._held:  # the second acquire: the waiter's wake-up
                with wakes_lock:
                    wakes += 1
            self._held = True
            return got

        def release(self) -> None:
            self._lock.release()

    rec = _Recorder(delay=0.004)
    stage = _GroupStage(rec.work, "done", limit=2)
    items = [_item(i) for i in range(40)]
    stage.gate = CountingGate  # type: ignore[method-assign]
    assert _run_threads(stage, [[it] for it in items]) == []
    leaders = stage.groups  # at most one caller per group led without waiting first
    assert wakes <= len(items)  # one wake-up per waiting caller at most
    assert wakes >= len(items) - leaders
