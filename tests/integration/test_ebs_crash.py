"""A re-encrypting copy killed with SIGKILL mid-way resumes after a restart (R-SNAP-2, R-LIFE-1, R-DATA-1)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

BLOCK = 524288


def _put(ebs: Any, sid: str, index: int, data: bytes) -> None:
    ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                           Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                           ChecksumAlgorithm="SHA256")


def _digests(ebs: Any, sid: str) -> dict[int, str]:
    out, token = {}, None
    blocks = []
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=sid, **({"NextToken": token} if token else {}))
        blocks += page["Blocks"]
        token = page.get("NextToken")
        if not token:
            break

    def get(b: dict[str, Any]) -> tuple[int, str]:
        got = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        return b["BlockIndex"], hashlib.sha256(got["BlockData"].read()).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        out.update(pool.map(get, blocks))
    return out


def _percent(progress: str) -> int:
    return int(progress.rstrip("%") or 0)


def test_sigkill_mid_copy_then_restart(server_factory: Callable[..., Any], monkeypatch: Any) -> None:
    # The copy pauses after each committed 32-block batch, long enough that once its
    # progress shows it mid-way it cannot finish before the kill; the pause costs nothing,
    # as the kill cuts it short (and the restarted server copies without it).
    monkeypatch.setenv("EBSCRYPT_FAULT_COPY_BATCH_DELAY", "60")
    srv = server_factory()
    ebs, ec2, kms = srv.client("ebs"), srv.client("ec2"), srv.client("kms")
    n = 128  # 64 MiB: four 32-block copy batches
    seed = os.urandom(BLOCK)
    blocks = {i: hashlib.sha256(i.to_bytes(4, "big")).digest() + seed[32:] for i in range(n)}
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _put(ebs, sid, i, blocks[i]), blocks))
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=n)
    expected = {i: hashlib.sha256(b).hexdigest() for i, b in blocks.items()}

    key = kms.create_key()["KeyMetadata"]["Arn"]
    copy_id = ec2.copy_snapshot(SourceSnapshotId=sid, SourceRegion="us-east-1", Encrypted=True, KmsKeyId=key)["SnapshotId"]
    deadline = time.monotonic() + 60  # generous for a loaded machine; met in seconds
    snap = ec2.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
    while snap["State"] == "pending" and _percent(snap["Progress"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        snap = ec2.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
    seen = snap["Progress"]
    # Mid-way: at least one batch committed, and (paused a minute after it) not finished.
    assert snap["State"] == "pending" and 0 < _percent(seen) < 100, f"not caught mid-copy ({snap['State']}, {seen})"
    srv.kill()  # SIGKILL: no shutdown code runs
    monkeypatch.delenv("EBSCRYPT_FAULT_COPY_BATCH_DELAY")
    srv.start()
    ebs, ec2 = srv.client("ebs"), srv.client("ec2")
    deadline = time.monotonic() + 120
    while True:
        snap = ec2.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
        if snap["State"] != "pending":
            break
        assert time.monotonic() < deadline, "the copy never finished after the restart"
        time.sleep(0.2)
    assert snap["State"] == "completed", snap  # resumed (copies are resumable jobs), not lost
    assert snap["KmsKeyId"] == key
    assert _digests(ebs, copy_id) == expected
    assert _digests(ebs, sid) == expected  # the source is never touched
    print(f"killed at progress {seen}")
