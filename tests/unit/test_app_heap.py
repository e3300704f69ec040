"""The server's heap after start-up (app._settle_heap, issue 15): what start-up made is out
of the collector's reach, and the youngest generation is collected past a Describe page's
live containers, not every 700."""

from __future__ import annotations

import gc
from typing import Iterator

import pytest

from ebscrypt import app


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settle_heap_freezes_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    app._settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (app.YOUNG_COLLECTION_THRESHOLD, 10, 10)


def test_a_describe_page_of_live_containers_runs_no_young_collection(restored_gc: None) -> None:
    # ~5,000 containers alive at once, as a cold DescribeImages page of 1,000 holds
    app._settle_heap()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        page = [(i, [i], {"k": i}, [{"i": i}]) for i in range(1_000)]
        del page
    finally:
        gc.callbacks.remove(count)
    assert collections == []
