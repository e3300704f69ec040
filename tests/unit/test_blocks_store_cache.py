"""LocalDirStore gives an object's page-cache pages back once it is durable (issue 15,
bench/README.md section U: on this project's VMs a fresh page-cache page costs a host
fault, ~2.5 ms of system CPU per 512 KiB object written, unless the pages written before
are freed and so reused). Observed with mincore(2): the control (``drop_written=False``)
must show the pages resident, else the page cache is not observable here and the test
skips."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import pytest

from ebscrypt.engines.blocks.store import LocalDirStore, new_object_key

PAGE = mmap.PAGESIZE
SIZE = 524288 + 4096  # about a sealed block


def _resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore of a private mapping
    that was never touched: it reports the file's cached pages)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(mm)
            pages = -(-size // PAGE)
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(ctypes.addressof(anchor), size, vec) != 0:
                pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
            del anchor
            return sum(b & 1 for b in vec.raw)
        finally:
            mm.close()


def _publish(store: LocalDirStore, n: int) -> list[tuple[str, bytes]]:
    items = [(new_object_key(), os.urandom(SIZE)) for _ in range(n)]
    store.put_many(items)
    return items


@pytest.mark.parametrize("n", [1, 3])  # one object: fdatasync; several: one syncfs
def test_published_objects_leave_the_page_cache_and_read_back(tmp_path: Path, n: int) -> None:
    control = LocalDirStore(tmp_path / "keep", drop_written=False)
    kept = _publish(control, n)
    if _resident_pages(control.root / kept[0][0]) == 0:
        pytest.skip("written pages are not resident here (page cache not observable)")
    store = LocalDirStore(tmp_path / "drop", drop_written=True)
    items = _publish(store, n)
    for key, data in items:
        assert _resident_pages(store.root / key) == 0
        assert store.get(key) == data  # read back from the disk, whole


def test_the_switch_defaults_on_and_the_environment_turns_it_off(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EBSCRYPT_STORE_DROP_WRITTEN", raising=False)
    assert LocalDirStore(tmp_path / "a").drop_written
    monkeypatch.setenv("EBSCRYPT_STORE_DROP_WRITTEN", "0")
    assert not LocalDirStore(tmp_path / "b").drop_written
    assert LocalDirStore(tmp_path / "c", drop_written=True).drop_written
