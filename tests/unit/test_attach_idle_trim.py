"""Memory an attached volume's I/O used is given back once the exports are quiet (issue 12,
"memory stays flat"): the rule (heap.IdleTrim), the attach engine's periodic check over
its open exports, and the NBD server counting each request as activity."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ebscrypt import heap
from ebscrypt.engines.attach.engine import AttachEngine
from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE
from ebscrypt.wire import nbd
from ebscrypt.wire.nbd_server import _inline, _Session, execute
from tests.helpers import local_block_engine


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return True


def test_idle_trim_trims_once_per_quiet_spell_never_while_busy() -> None:
    trim = _Counter()
    idle = heap.IdleTrim(trim)
    assert [idle.tick(n) for n in (1, 2, 3, 4)] == [False] * 4  # busy: the counter moves at every tick
    assert trim.calls == 0
    assert idle.tick(4) is True and trim.calls == 1  # the first quiet tick trims
    assert [idle.tick(4) for _ in range(5)] == [False] * 5  # still quiet: nothing more to give back
    assert trim.calls == 1
    assert idle.tick(5) is False and idle.tick(5) is True  # busy again, then quiet: once more
    assert trim.calls == 2 and idle.trims == 2


def test_give_back_is_malloc_trim_on_glibc_and_off_when_tuning_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBSCRYPT_MALLOC_TUNE", "0")
    assert heap.give_back() is False
    monkeypatch.delenv("EBSCRYPT_MALLOC_TUNE")
    assert heap.give_back() in (True, False)  # whether anything was free to return
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists("/lib/aarch64-linux-gnu/libc.so.6"):
        assert heap._libc() is not None


def _engine(tmp_path: Path) -> tuple[AttachEngine, _Counter]:
    periodic: dict[str, Any] = {}
    runtime = SimpleNamespace(settings=SimpleNamespace(data_dir=tmp_path),
                              blocks=SimpleNamespace(add_periodic=lambda name, fn, s: periodic.setdefault(name, fn)))
    engine = AttachEngine(runtime, cache_blocks=4)
    assert periodic["attach-trim"] == engine.trim_when_idle  # registered as a periodic task
    trim = _Counter()
    engine._idle_trim = heap.IdleTrim(trim)
    return engine, trim


def test_attach_engine_trims_when_no_export_served_a_request_between_two_checks(tmp_path: Path) -> None:
    engine, trim = _engine(tmp_path)
    a = SimpleNamespace(volume_id="vol-a", activity=0)
    b = SimpleNamespace(volume_id="vol-b", activity=0)
    engine._open.update({"vol-a": a, "vol-b": b})  # type: ignore[dict-item]
    assert engine.trim_when_idle() is False  # first look
    b.activity += 1
    assert engine.trim_when_idle() is False  # one export busy: memory stays
    assert engine.trim_when_idle() is True and trim.calls == 1  # both quiet
    assert engine.trim_when_idle() is False
    del engine._open["vol-a"]  # a detach frees its cache: a change, then trimmed when quiet
    assert engine.trim_when_idle() is False and engine.trim_when_idle() is True
    snap = SimpleNamespace(volume_id="snap-1", activity=0)
    engine._snapshots[("snap-1", "111")] = (snap, 1)  # type: ignore[assignment]
    assert engine.trim_when_idle() is False
    snap.activity += 3  # a snapshot export's reads count too
    assert engine.trim_when_idle() is False and engine.trim_when_idle() is True
    assert trim.calls == 3
    engine._flusher.shutdown()


def test_each_nbd_request_counts_as_activity_of_its_export(tmp_path: Path) -> None:
    with local_block_engine(tmp_path) as blocks:
        vol = OpenVolume(blocks, "vol-00000000000000071", 1, None, account="1", instance_id="i-1",
                         cache_blocks=4, journal_path=tmp_path / "j.jnl")
        try:
            session = _Session()
            write = nbd.Request(0, nbd.CMD_WRITE, 1, 0, BLOCK_SIZE)
            assert execute(write, bytearray(b"x" * BLOCK_SIZE), vol, session) == (0, b"")
            assert vol.activity == 1
            read = nbd.Request(0, nbd.CMD_READ, 2, 0, 4096)
            _inline(read, b"", vol, session.structured)  # (served at once or not: a request either way)
            assert vol.activity == 2
            error, data = execute(read, b"", vol, session)
            assert error == 0 and bytes(data) == b"x" * 4096 and vol.activity == 3
            assert execute(nbd.Request(0, nbd.CMD_FLUSH, 3, 0, 0), b"", vol, session) == (0, b"")
            assert vol.activity == 4
        finally:
            vol.close()
