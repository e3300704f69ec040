"""tests/integration/test_ebs.py again (EBS direct APIs: upload, download, changed blocks), on a
server whose block objects are in Ceph RGW (``--blocks s3://...``); the at-rest tests read
the bucket instead of the data dir. And the store's faults: RGW unreachable is a retryable
503 naming the cause, nothing is recorded that was not stored, and the server recovers when
RGW is back (through a TCP relay the test cuts and restores)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ServerProcess, make_client
from tests.integration.test_ebs import *  # noqa: F401,F403  (tests and their fixtures)
from tests.integration.test_ebs import BLOCK, download, error_of, list_all, sha, upload
from tests.s3.conftest import S3Target

# The data dir holds no blocks here: the bucket is checked instead (below).
del test_tampered_ciphertext_on_disk_is_detected  # noqa: F821
del test_data_dir_holds_no_plaintext  # noqa: F821
del test_crypto_shredding  # noqa: F821  (reads the data dir's blocks/ after a stop)
del test_parent_block_copied_over_the_childs_is_detected  # noqa: F821  (again below, in the bucket)


def _server_store(s3: S3Target, server: ServerProcess) -> Any:
    from ebscrypt.engines.blocks.s3store import parse_s3_url

    blocks = server.extra_args[server.extra_args.index("--blocks") + 1]
    return s3.store(parse_s3_url(blocks)[1])


def test_tampered_object_in_s3_is_detected(ebs: Any, server: ServerProcess, s3: S3Target) -> None:
    store = _server_store(s3, server)
    before = {k for k, _ in store.keys()}
    sid = upload(ebs, {0: os.urandom(BLOCK)}, Encrypted=True)
    new = sorted({k for k, _ in store.keys()} - before)
    assert len(new) == 1
    raw = bytearray(store.get(new[0]))
    raw[1000] ^= 0x04
    store.put(new[0], raw)
    token = list_all(ebs, sid)[0]["BlockToken"]
    code, _, status = error_of(lambda: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token))
    assert (code, status) == ("InternalServerException", 500)


def test_parent_object_copied_over_the_childs_in_s3_is_detected(ebs: Any, server: ServerProcess,
                                                                 s3: S3Target) -> None:
    """Issue 10 item 6 on the object store: the parent's object of block 0 put under the
    child's key (one data key, one block index) fails like a bit flip, never old bytes."""
    store = _server_store(s3, server)
    before = {k for k, _ in store.keys()}
    parent = upload(ebs, {0: os.urandom(BLOCK)}, Encrypted=True)
    parent_keys = sorted({k for k, _ in store.keys()} - before)
    new = os.urandom(BLOCK)
    child = upload(ebs, {0: new}, ParentSnapshotId=parent)
    child_keys = sorted({k for k, _ in store.keys()} - before - set(parent_keys))
    assert len(parent_keys) == 1 and len(child_keys) == 1
    assert download(ebs, child) == {0: new}
    store.put(child_keys[0], store.get(parent_keys[0]))
    token = list_all(ebs, child)[0]["BlockToken"]
    code, _, status = error_of(lambda: ebs.get_snapshot_block(SnapshotId=child, BlockIndex=0, BlockToken=token))
    assert (code, status) == ("InternalServerException", 500)


def test_bucket_holds_no_plaintext(ebs: Any, server: ServerProcess, s3: S3Target) -> None:
    """R-DATA-1 / R-KEY-1: a known pattern written through the API is in no stored object."""
    marker = b"EBSCRYPT-PLAINTEXT-MARKER-" + os.urandom(6).hex().encode()
    data = (marker * (BLOCK // len(marker) + 1))[:BLOCK]
    sid = upload(ebs, {0: data, 1: data}, Encrypted=True)
    assert download(ebs, sid)[0] == data
    needles = [marker, marker[:20], hashlib.sha256(data).digest(), sha(data).encode()]
    store = _server_store(s3, server)
    keys = [k for k, _ in store.keys()]
    assert keys
    for key in keys:
        content = store.get(key)
        for needle in needles:
            assert needle not in content, f"{needle!r} found in object {key}"


class Relay:
    """A TCP relay from a loopback port to RGW that the test can cut (connections refused
    and open ones closed) and restore, standing in for RGW going away and coming back."""

    def __init__(self, target: str) -> None:
        host, port = target.split("://", 1)[1].split(":")
        self.target = (host, int(port))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.up = True
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.sock.close()


@pytest.fixture
def relay(s3: S3Target) -> Any:
    r = Relay(s3.url)
    yield r
    r.close()


def test_rgw_unreachable_is_retryable_503_and_recovers(s3: S3Target, relay: Relay, tmp_path: Any) -> None:
    blocks = s3.new_blocks_url()
    args = ["--blocks", blocks, "--s3-endpoint-url", relay.url, "--s3-profile", "ebscrypt-test-s3"]
    srv = ServerProcess(tmp_path / "data", args, env=s3.env).start()
    try:
        ebs = make_client(srv.url, "ebs")
        sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
        first = os.urandom(BLOCK)
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=first, DataLength=BLOCK,
                               Checksum=sha(first), ChecksumAlgorithm="SHA256")
        relay.cut()
        second = os.urandom(BLOCK)
        put = lambda: ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockData=second,  # noqa: E731
                                             DataLength=BLOCK, Checksum=sha(second), ChecksumAlgorithm="SHA256")
        with pytest.raises(ClientError) as info:
            put()
        err = info.value.response
        code, message, status = err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]
        assert status == 503 and code == "ServiceUnavailableException"
        assert "block object store" in message and ("ConnectionClosedError" in message or "EndpointConnectionError" in message)
        relay.restore()
        put()  # the same request succeeds once the store is back: no restart
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2)
        blocks_listed = list_all(ebs, sid)
        assert [b["BlockIndex"] for b in blocks_listed] == [0, 1]  # nothing recorded by the failed put
        got = download(ebs, sid)
        assert got[0] == first and got[1] == second
    finally:
        relay.restore()
        srv.stop()
