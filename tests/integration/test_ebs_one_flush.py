"""EBS direct uploads through the one-flush block commit (EBSCRYPT_BLOCK_ONE_FLUSH=1,
engines/blocks/engine.py ``_one_flush_commit``; issue 15): every acknowledged block —
new ones committed before their flush, rewrites after it — survives a SIGKILL right
after the last answer and reads back exactly (R-DATA-1)."""

from __future__ import annotations

import base64
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

BLOCK = 524288


def _put(ebs: Any, sid: str, index: int, data: bytes) -> None:
    ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                           Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                           ChecksumAlgorithm="SHA256")


def test_acknowledged_blocks_survive_sigkill(server_factory: Callable[..., Any], monkeypatch: Any) -> None:
    monkeypatch.setenv("EBSCRYPT_BLOCK_ONE_FLUSH", "1")
    srv = server_factory()
    ebs = srv.client("ebs")
    seed = os.urandom(BLOCK)
    blocks = {i: hashlib.sha256(i.to_bytes(4, "big")).digest() + seed[32:] for i in range(48)}
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _put(ebs, sid, i, blocks[i]), blocks))
    for i in (3, 7):  # rewrites: recorded only after their objects are durable
        blocks[i] = hashlib.sha256(b"again" + bytes([i])).digest() + seed[32:]
        _put(ebs, sid, i, blocks[i])
    srv.kill()  # SIGKILL right after the last answer: no shutdown code runs
    srv.start()
    ebs = srv.client("ebs")
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks))
    listed = ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == sorted(blocks)
    for b in listed:
        got = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        assert got["BlockData"].read() == blocks[b["BlockIndex"]]
