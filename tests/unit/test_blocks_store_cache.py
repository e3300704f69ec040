"""LocalDirStore keeps objects it writes out of the page cache (issue 15, bench/README.md
section U: on this project's VMs a fresh page-cache page costs a host fault, ~2.5 ms of
system CPU per 512 KiB object written in some moments): an object's page-aligned head is
written with O_DIRECT, and its pages are given back once it is durable. Observed with
mincore(2): the control (both off) must show the pages resident, else the page cache is
not observable here and the test skips."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import pytest

from ebscrypt.engines.blocks import store as store_mod
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


def _control(tmp_path: Path) -> None:
    control = LocalDirStore(tmp_path / "keep", drop_written=False, direct_writes=False)
    kept = _publish(control, 1)
    if _resident_pages(control.root / kept[0][0]) == 0:
        pytest.skip("written pages are not resident here (page cache not observable)")
    assert control.get(kept[0][0]) == kept[0][1]


@pytest.mark.parametrize("n", [1, 3])  # one object: fdatasync; several: one syncfs
def test_published_objects_leave_the_page_cache_and_read_back(tmp_path: Path, n: int) -> None:
    _control(tmp_path)
    store = LocalDirStore(tmp_path / "drop", drop_written=True, direct_writes=False)
    items = _publish(store, n)
    for key, data in items:
        assert _resident_pages(store.root / key) == 0
        assert store.get(key) == data  # read back from the disk, whole


@pytest.mark.parametrize("size", [SIZE, 524288, 524288 - 1, 70000, 100])
def test_direct_writes_bypass_the_page_cache_and_read_back(tmp_path: Path, size: int) -> None:
    _control(tmp_path)
    store = LocalDirStore(tmp_path / "direct", drop_written=False, direct_writes=True)
    items = [(new_object_key(), os.urandom(size)) for _ in range(2)]
    store.put_many(items)
    if not store.direct_writes:
        pytest.skip("this file system refused O_DIRECT")
    for key, data in items:
        resident = _resident_pages(store.root / key)
        if size >= 2 * 4096 and size >= 64 * 1024:
            assert resident <= 1  # at most the tail's page, written through the cache
        assert os.path.getsize(store.root / key) == size
        assert store.get(key) == data
        buf = bytearray(size + 1)
        assert bytes(store.read_into(key, buf)) == data


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, view: memoryview) -> None:
        os.pwrite(fd, view[:4096], 0)  # a partial write first, then the refusal
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(store_mod, "_write_direct", refuse)
    store = LocalDirStore(tmp_path, drop_written=True, direct_writes=True)
    items = [(new_object_key(), os.urandom(SIZE)) for _ in range(2)]
    store.put_many(items)
    assert not store.direct_writes
    for key, data in items:
        assert store.get(key) == data


def test_other_direct_write_errors_are_raised_and_leave_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int, view: memoryview) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store_mod, "_write_direct", fail)
    store = LocalDirStore(tmp_path, direct_writes=True)
    with pytest.raises(OSError):
        store.put(new_object_key(), os.urandom(SIZE))
    assert store.direct_writes
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_switch_defaults_on_and_the_environment_turns_it_off(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EBSCRYPT_STORE_DROP_WRITTEN", raising=False)
    monkeypatch.delenv("EBSCRYPT_STORE_DIRECT_WRITES", raising=False)
    assert LocalDirStore(tmp_path / "a").drop_written
    assert LocalDirStore(tmp_path / "a").direct_writes == hasattr(os, "O_DIRECT")
    monkeypatch.setenv("EBSCRYPT_STORE_DROP_WRITTEN", "0")
    monkeypatch.setenv("EBSCRYPT_STORE_DIRECT_WRITES", "0")
    assert not LocalDirStore(tmp_path / "b").drop_written
    assert not LocalDirStore(tmp_path / "b").direct_writes
    assert LocalDirStore(tmp_path / "c", drop_written=True).drop_written


@pytest.mark.parametrize("size", [SIZE, 524288, 4096, 100, 0])
def test_direct_reads_read_what_was_written_and_keep_the_length_check(tmp_path: Path, size: int) -> None:
    store = LocalDirStore(tmp_path, direct_reads=True)
    key = new_object_key()
    data = os.urandom(size)
    store.put(key, data)
    buf = bytearray(SIZE + 1)
    assert bytes(store.read_into_direct(key, buf)) == data == bytes(store.read_into(key, bytearray(SIZE + 1)))
    short = bytearray(size // 2 + 1) if size else bytearray(1)
    got = store.read_into_direct(key, short)  # too long for the buffer: a view as long as it
    assert len(got) == min(size, len(short)) and bytes(got) == data[:len(got)]
    with pytest.raises(store_mod.ObjectMissing):
        store.read_into_direct(new_object_key(), buf)


def test_a_refused_direct_read_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalDirStore(tmp_path, direct_reads=True)
    key = new_object_key()
    data = os.urandom(SIZE)
    store.put(key, data)
    real_open = os.open

    def refuse(path: str, flags: int, *args: int) -> int:
        if flags & store_mod._O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", refuse)
    assert bytes(store.read_into_direct(key, bytearray(SIZE + 1))) == data
    assert not store.direct_reads


def test_unsynced_writes_stay_in_the_page_cache(tmp_path: Path) -> None:
    """An attached volume's evicted block (write_unsynced) is read back soon: buffered."""
    _control(tmp_path)
    store = LocalDirStore(tmp_path / "evict", drop_written=True, direct_writes=True)
    key = new_object_key()
    data = os.urandom(SIZE)
    store.write_unsynced(key, data)
    store.sync_objects([key])
    assert _resident_pages(store.root / key) > 1
    assert store.get(key) == data


def test_an_aligned_object_is_written_straight_from_its_buffer(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sealed block (BlockCipher seals into a page-aligned buffer) is written with O_DIRECT
    from that buffer: no copy into the store's own aligned buffer (issue 15, section E6)."""
    from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, GCM_OBJECT_SIZE, BlockCipher, DataKey

    store = LocalDirStore(tmp_path, drop_written=False, direct_writes=True)
    cipher = BlockCipher(DataKey("k1", os.urandom(32)))
    block = os.urandom(BLOCK_SIZE)
    key = new_object_key()
    sealed = cipher.seal(key, 3, block)
    assert len(sealed) == GCM_OBJECT_SIZE
    assert store_mod._is_aligned(sealed)
    copies = []
    real = store_mod._aligned_buffer
    monkeypatch.setattr(store_mod, "_aligned_buffer", lambda n: copies.append(n) or real(n))
    store.put(key, sealed)
    if not store.direct_writes:
        pytest.skip("this file system refused O_DIRECT")
    assert copies == []  # written from the cipher's buffer itself
    assert bytes(cipher.open(key, 3, store.get(key), "")) == block
    # an unaligned or read-only source still goes through the aligned buffer, and reads back
    for data in (bytes(sealed), memoryview(bytearray(b"x" + bytes(sealed)))[1:]):
        assert not store_mod._is_aligned(memoryview(data))
        other = new_object_key()
        store.put(other, data)
        assert store.get(other) == bytes(sealed)
    assert len(copies) == 2


def test_plain_objects_sealed_into_the_aligned_buffer_read_back() -> None:
    from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, PLAIN_OBJECT_SIZE, BlockCipher, sha256_b64

    cipher = BlockCipher(None)
    block = os.urandom(BLOCK_SIZE)
    view, checksum = cipher.seal_block("ab/" + "c" * 32, 0, block, sha256_b64(block))
    assert len(view) == PLAIN_OBJECT_SIZE
    assert bytes(BlockCipher(None).open("ab/" + "c" * 32, 0, bytes(view), checksum)) == block
