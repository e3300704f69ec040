"""The ObjectStore contract, on the local directory store and on Ceph RGW (S3Store).

Each contract test runs against both stores: the S3 one is skipped with the reason when
no S3 server is given (see conftest.py). Plus what only the S3 store has: the unreachable
endpoint (a retryable 503-class error with its cause, nothing stored), put_many's bounded
concurrency and cleanup on failure, a worker process's copy of the store, and the orphan
sweep's minimum age when the store is shared.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from ebscrypt.engines.blocks.s3store import S3Store, parse_s3_url
from ebscrypt.engines.blocks.store import LocalDirStore, ObjectMissing, StoreUnavailable, new_object_key
from ebscrypt.errors import ServiceUnavailable

from tests.s3.conftest import S3Target


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        yield LocalDirStore(tmp_path / "blocks")
        return
    s3: S3Target = request.getfixturevalue("s3")
    st = s3.store()
    yield st
    for key, _ in list(st.keys()):
        st.delete(key)
    st.close()


def test_put_get_roundtrip_and_exists(store: Any) -> None:
    key = new_object_key()
    data = os.urandom(512 * 1024 + 28)
    assert not store.exists(key)
    store.put(key, data)
    assert store.exists(key)
    assert store.get(key) == data


def test_read_into_reuses_buffer_and_shows_overlong_object(store: Any) -> None:
    key = new_object_key()
    data = os.urandom(1000)
    store.put(key, memoryview(data))
    buf = bytearray(1001)
    assert bytes(store.read_into(key, buf)) == data
    short = bytearray(10)  # an object longer than expected shows as len(buf) bytes
    assert len(store.read_into(key, short)) == 10


def test_read_ranges_reads_parts_and_shows_short_ranges(store: Any) -> None:
    """Ranged reads (a sector read of an attached volume): each (offset, length) as
    stored; a range running past the end comes back short, one wholly past it empty."""
    key = new_object_key()
    data = os.urandom(40000)
    store.put(key, data)
    assert store.read_ranges(key, [(0, 24), (16408, 16400), (39990, 100), (50000, 10)]) == [
        data[:24], data[16408:32808], data[39990:], b""]
    with pytest.raises(ObjectMissing):
        store.read_ranges(new_object_key(), [(0, 10)])


def test_missing_object(store: Any) -> None:
    key = new_object_key()
    with pytest.raises(ObjectMissing):
        store.get(key)
    with pytest.raises(ObjectMissing):
        store.read_into(key, bytearray(10))
    store.delete(key)  # deleting a missing object is no error


def test_overwrite_is_whole(store: Any) -> None:
    key = new_object_key()
    store.put(key, b"a" * 100)
    store.put(key, b"b" * 50)
    assert store.get(key) == b"b" * 50


def test_delete(store: Any) -> None:
    key = new_object_key()
    store.put(key, b"x")
    store.delete(key)
    assert not store.exists(key)


def test_put_many_from_a_generator_reusing_one_buffer(store: Any) -> None:
    """put_many pulls lazily and may not keep a reference to a buffer it was handed: the
    re-encrypting workers yield one reused buffer (S3Store copies before the next pull)."""
    buf = bytearray(4096)
    keys = [new_object_key("ab") for _ in range(40)]

    def items() -> Iterator[tuple[str, memoryview]]:
        for i, key in enumerate(keys):
            buf[:] = bytes([i]) * len(buf)
            yield key, memoryview(buf)

    store.put_many(items())
    for i, key in enumerate(keys):
        assert store.get(key) == bytes([i]) * 4096


def test_keys_lists_objects_with_recent_times(store: Any) -> None:
    keys = {new_object_key() for _ in range(3)}
    before = time.time()
    for key in keys:
        store.put(key, b"k")
    listed = dict(store.keys())
    assert keys <= set(listed)
    for key in keys:
        assert abs(listed[key] - before) < 120  # the store's clock against ours: same machine


def test_bad_key_refused(store: Any) -> None:
    with pytest.raises(ValueError):
        store.put("../etc/passwd", b"x")


# -- S3 only -----------------------------------------------------------------------------


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    for bad in ("http://x/y", "s3://A_B", "s3://x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def _dead_endpoint() -> str:
    import socket

    with socket.socket() as s:  # a port nothing listens on (bound, then freed)
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_endpoint_is_a_retryable_error_with_its_cause() -> None:
    store = S3Store("some-bucket", "p", endpoint_url=_dead_endpoint())
    import boto3
    from botocore.config import Config

    store._client = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                                 aws_access_key_id="a", aws_secret_access_key="b",
                                 config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    key = new_object_key()
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
                 lambda: list(store.keys()), lambda: store.put_many([(key, b"x")])):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value, ServiceUnavailable) and info.value.status == 503
        assert "EndpointConnectionError" in info.value.message and store.endpoint_url in info.value.message


def test_put_many_failure_deletes_what_it_stored(s3: S3Target) -> None:
    store = s3.store(concurrency=4)
    good = [new_object_key("cd") for _ in range(6)]

    def items() -> Iterator[tuple[str, bytes]]:
        for key in good:
            yield key, b"ok"
        yield "not a key", b"bad"  # put raises: the batch fails

    with pytest.raises(ValueError):
        store.put_many(items())
    assert [k for k, _ in store.keys()] == []


def test_put_many_is_concurrent_and_bounded(s3: S3Target) -> None:
    store = s3.store(concurrency=4)
    active = 0
    peak = 0
    lock = threading.Lock()
    real_put = store.put

    def counting_put(key: str, data: bytes) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)
            real_put(key, data)
        finally:
            with lock:
                active -= 1

    store.put = counting_put  # type: ignore[method-assign]
    keys = [new_object_key() for _ in range(16)]
    store.put_many((k, b"z") for k in keys)
    assert 2 <= peak <= 4
    assert all(store.exists(k) for k in keys)


def test_store_pickles_to_one_store_per_process(s3: S3Target) -> None:
    store = s3.store()
    copy1 = pickle.loads(pickle.dumps(store))
    copy2 = pickle.loads(pickle.dumps(store))
    assert copy1 is copy2 and (copy1.bucket, copy1.prefix, copy1.endpoint_url) == (
        store.bucket, store.prefix, store.endpoint_url)


def test_shared_store_orphan_sweep_keeps_young_objects(s3: S3Target, tmp_path: Path) -> None:
    """Another process may have stored an object and not yet recorded it: with a shared
    store, even the first sweep after start keeps every object younger than an hour."""
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.blocks.maintenance import ORPHAN_MIN_AGE_SECONDS
    from ebscrypt.storage.db import Database

    store = s3.store()
    engine = BlockEngine(Database(f"sqlite:///{tmp_path / 'm.db'}"), store, processes=0)
    assert engine.shared_objects()
    key = new_object_key()
    store.put(key, b"in flight in another process")
    assert engine.sweep_orphans(ORPHAN_MIN_AGE_SECONDS) == 0 and store.exists(key)
    assert engine.sweep_orphans(0) == 1 and not store.exists(key)  # once old enough: swept
    engine.close()


def test_sector_reads_over_s3(s3: S3Target, tmp_path: Path) -> None:
    """Format 3 sector reads through ranged GETs (issue 12, read side): encrypted and
    plain blocks read by sector as written; a tampered sector fails, never wrong bytes."""
    from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, BlockIntegrityError, DataKey
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.storage.db import Database

    st = s3.store()
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, st, processes=0, gc_grace_seconds=0)
    try:
        key = DataKey("dk-s3", os.urandom(32))
        data = os.urandom(BLOCK_SIZE)
        engine.write_block("vol-s3e", 3, data, key)
        engine.write_block("vol-s3p", 3, data, None)
        for owner, k in (("vol-s3e", key), ("vol-s3p", None)):
            assert engine.read_sectors(owner, 3, 70000, 5000, k) == data[70000:75000]
        ref = engine.block_ref("vol-s3e", 3)
        assert ref is not None and ref.object_key is not None
        raw = bytearray(st.get(ref.object_key))
        raw[24 + 4 * (16384 + 16) + 9] ^= 1  # the sector of offset 70000
        st.put(ref.object_key, raw)
        with pytest.raises(BlockIntegrityError):
            engine.read_sectors("vol-s3e", 3, 70000, 5000, key)
        assert engine.read_sectors("vol-s3e", 3, 0, 4096, key) == data[:4096]
    finally:
        engine.close()
        db.dispose()
        for k, _ in list(st.keys()):
            st.delete(k)
