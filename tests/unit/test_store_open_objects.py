"""LocalDirStore's kept-open object descriptors (issue 12: a random 4 KiB read of an
attached volume costs one pread, not open + pread + close): bounded, reference-counted,
never a descriptor closed under a read, never an object's bytes after its deletion or
replacement."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ebscrypt.engines.blocks.store import LocalDirStore, ObjectMissing, OpenObjects, new_object_key


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_ranged_reads_reuse_one_descriptor_and_the_cache_is_bounded(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path, open_objects=4)
    keys = [new_object_key() for _ in range(10)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 8192)
    base = _open_fds()
    calls = []
    real_open = os.open

    def counting_open(path, flags, *args):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real_open(path, flags, *args)
    os.open = counting_open  # type: ignore[assignment]
    try:
        for _ in range(5):
            assert store.read_ranges(keys[0], [(0, 4), (4096, 4)]) == [b"\0" * 4] * 2
    finally:
        os.open = real_open  # type: ignore[assignment]
    assert len(calls) == 1  # opened once, then kept
    for i, key in enumerate(keys):
        assert store.read_ranges(key, [(100, 3)]) == [bytes([i]) * 3]
    assert _open_fds() - base <= 4  # the least recently used are closed
    store.close()
    assert _open_fds() <= base


def test_a_stream_reads_into_place_and_never_pushes_out_kept_descriptors(tmp_path: Path) -> None:
    """``read_range_into`` (a sequential reader of an attached volume): the bytes read in
    place, a short count past the end, ObjectMissing for a deleted object; with
    ``keep=False`` a descriptor is kept only while the bound has room, so the objects random
    reads keep open stay open."""
    store = LocalDirStore(tmp_path, open_objects=4)
    keys = [new_object_key() for _ in range(8)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 8192)
    buf = bytearray(6000)
    assert store.read_range_into(keys[1], 4000, memoryview(buf)) == 4192  # short: the object ends
    assert buf[:4192] == bytes([1]) * 4192
    for key in keys[:3]:  # kept (room for 4): one is left
        store.read_ranges(key, [(0, 1)])
    kept = dict(store._open._fds)
    assert len(kept) == 3
    for i, key in enumerate(keys[3:], 3):  # a stream over five more objects
        view = memoryview(bytearray(100))
        assert store.read_range_into(key, 50, view, keep=False) == 100 and bytes(view) == bytes([i]) * 100
    fds = store._open._fds
    assert all(k in fds for k in keys[:3]) and len(fds) == 4  # the first streamed one filled the room
    store.delete(keys[3])
    with pytest.raises(ObjectMissing):
        store.read_range_into(keys[3], 0, memoryview(bytearray(1)), keep=False)
    store.close()


def test_a_deleted_or_replaced_object_is_never_read_again(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    key = new_object_key()
    store.put(key, b"a" * 4096)
    assert store.read_ranges(key, [(0, 1)]) == [b"a"]
    store.delete(key)
    with pytest.raises(ObjectMissing):
        store.read_ranges(key, [(0, 1)])
    assert store.read_range_cached(key, 0, 1) is None
    key2 = new_object_key()
    store.put(key2, b"b" * 4096)
    assert store.read_ranges(key2, [(0, 1)]) == [b"b"]
    store.put(key2, b"c" * 4096)  # the store's contract: an overwrite replaces the object whole
    assert store.read_ranges(key2, [(0, 1)]) == [b"c"]


def test_a_descriptor_in_use_is_closed_only_by_its_last_reader(tmp_path: Path) -> None:
    """forget (a deletion) and eviction while a read holds the descriptor: the read goes
    on with it; it is closed when released, and never lent again."""
    path = tmp_path / "obj"
    path.write_bytes(b"x" * 100)
    cache = OpenObjects(1)
    fd = cache.acquire("00/k", str(path))
    assert cache.acquire("00/k", str(path)) == fd  # shared, two users
    cache.forget("00/k")
    os.fstat(fd)  # still open: two reads hold it
    cache.release("00/k", fd)
    assert os.pread(fd, 1, 0) == b"x"
    cache.release("00/k", fd)
    with pytest.raises(OSError):
        os.fstat(fd)
    # eviction of a held descriptor
    other = tmp_path / "other"
    other.write_bytes(b"y")
    fd = cache.acquire("00/k", str(path))
    fd2 = cache.acquire("00/o", str(other))  # evicts 00/k (limit 1), which is in use
    assert os.pread(fd, 1, 0) == b"x"
    cache.release("00/k", fd)
    with pytest.raises(OSError):
        os.fstat(fd)
    cache.release("00/o", fd2)
    os.fstat(fd2)  # kept (listed, no user)
    cache.close()
    with pytest.raises(OSError):
        os.fstat(fd2)


def test_an_open_racing_a_deletion_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that opened the object just before it was deleted uses that descriptor for
    itself only: later reads do not get the deleted object's bytes."""
    path = tmp_path / "obj"
    path.write_bytes(b"x")
    cache = OpenObjects(8)
    real_open = os.open

    def open_then_delete(p, flags, *args):  # type: ignore[no-untyped-def]
        fd = real_open(p, flags, *args)
        os.unlink(p)
        cache.forget("00/k")  # the deleting thread's forget lands between open and listing
        return fd
    monkeypatch.setattr(os, "open", open_then_delete)
    fd = cache.acquire("00/k", str(path))
    monkeypatch.setattr(os, "open", real_open)
    assert os.pread(fd, 1, 0) == b"x"  # this read: the object as it was when it began
    cache.release("00/k", fd)
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ObjectMissing):
        cache.acquire("00/k", str(path))


def test_concurrent_readers_replacers_and_deleters(tmp_path: Path) -> None:
    """Threads reading while objects are replaced (renamed over, as the store's contract
    allows) and deleted: every read returns the object's bytes or ObjectMissing, a
    deleted object is never read again, and no descriptor leaks."""
    store = LocalDirStore(tmp_path, open_objects=8)
    keys = [new_object_key() for _ in range(16)]
    for key in keys:
        store.put(key, key.encode() * 4)
    base = _open_fds()
    errors: list[str] = []
    stop = threading.Event()
    deleted = keys[1::4]

    def reader() -> None:
        while not stop.is_set():
            for key in keys:
                try:
                    got = store.read_ranges(key, [(0, len(key))])[0]
                except ObjectMissing:
                    continue
                if got != key.encode():
                    errors.append(f"{key}: {got!r}")

    def writer() -> None:
        for n in range(40):
            for key in keys[::4]:
                store.put(key, key.encode() * 4)  # replaced whole
            if n == 15:
                for key in deleted:
                    store.delete(key)
        stop.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    for key in deleted:
        with pytest.raises(ObjectMissing):
            store.read_ranges(key, [(0, 1)])
    assert _open_fds() - base <= 8
    store.close()


def test_hot_reads_lease_kept_descriptors_and_never_read_a_deleted_object(tmp_path: Path) -> None:
    """``read_hot_into`` (an attached volume's random reads): an object not kept open is
    read the way of ``read_range_cached`` (and kept); a kept one through a lease of its
    descriptor; a deleted object is not read (False). A leased descriptor is closed only
    when its lease is given back, and a deleted object's is never leased again."""
    store = LocalDirStore(tmp_path)
    key = new_object_key()
    data = os.urandom(20000)
    store.put(key, data)
    assert store._open.lease(key) is None  # not open yet: nothing opened by a lease
    assert (tmp_path / key).read_bytes() == data  # (in the page cache: the store may write with O_DIRECT)
    dest = memoryview(bytearray(4096))
    assert store.read_hot_into(key, 1000, dest) and bytes(dest) == data[1000:5096]
    fd = store._open.lease(key)  # kept by that read
    assert fd is not None
    store._open.release(key, fd)
    assert store.read_hot_into(key, 15000, dest) and bytes(dest) == data[15000:19096]
    assert not store.read_hot_into(key, 18000, dest)  # past the end: short, not served
    fd = store._open.lease(key)
    assert fd is not None
    store.delete(key)  # forget: the lease holds the descriptor, never lent again
    assert store._open.lease(key) is None
    assert os.pread(fd, 4, 0) == data[:4]
    store._open.release(key, fd)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert not store.read_hot_into(key, 0, dest)
    store.close()


def test_a_hot_read_racing_a_delete_reads_its_descriptor_then_closes_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_hot_into``'s lease, read and release in one call (``OpenObjects.pread_kept``):
    an object deleted while its descriptor is being read keeps it open until that read is
    done (the read gets its bytes), then the descriptor is closed and never lent again."""
    from ebscrypt.engines.blocks import store as store_mod

    store = LocalDirStore(tmp_path)
    key = new_object_key()
    data = os.urandom(20000)
    store.put(key, data)
    assert (tmp_path / key).read_bytes() == data
    dest = memoryview(bytearray(4096))
    assert store.read_hot_into(key, 0, dest)  # opened and kept
    fd = store._open.lease(key)
    assert fd is not None
    store._open.release(key, fd)
    real = os.preadv

    def deleted_meanwhile(fd_: int, bufs: list[memoryview], offset: int, *flags: int) -> int:
        store.delete(key)  # forgotten while this read holds the descriptor
        return real(fd_, bufs, offset, *flags)
    monkeypatch.setattr(store_mod.os, "preadv", deleted_meanwhile)
    assert store.read_hot_into(key, 5000, dest) and bytes(dest) == data[5000:9096]
    monkeypatch.undo()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the read that held it last
    assert store._open.lease(key) is None and fd not in store._open._lent
    store.close()
