"""A delete cut short by kill -9 (record gone, blocks not yet released) is finished at the
next start: the block store keeps nothing that no volume or snapshot names."""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

BLOCK = 524288


def _snapshot_with_blocks(srv: Any, account: str, count: int) -> str:
    ebs = srv.client("ebs", account=account)
    snap = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for index in range(count):
        data = os.urandom(BLOCK)
        ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                               Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                               ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=count)
    srv.client("ec2", account=account).get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    return snap


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_stray_block_owner_of_a_deleted_snapshot_is_released_at_start(
        server_factory: Callable[..., Any]) -> None:
    account = "777777777701"
    srv = server_factory()
    kept = _snapshot_with_blocks(srv, account, 2)
    lost = _snapshot_with_blocks(srv, account, 3)
    srv.stop()
    db = srv.data_dir / "metadata.db"
    # What a kill between DeleteSnapshot's commit and its release leaves: no record, an owner.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ec2_snapshots WHERE id = ?", (lost,))
    owners = {r[0] for r in _rows(db, "SELECT owner_id FROM blk_owners")}
    assert {kept, lost} <= owners
    garbage_before = len(_rows(db, "SELECT object_key FROM blk_garbage"))

    srv.start()
    srv.stop()
    owners = {r[0] for r in _rows(db, "SELECT owner_id FROM blk_owners")}
    assert kept in owners and lost not in owners
    # the lost snapshot's three objects await the sweep; the kept one still reads back whole
    assert len(_rows(db, "SELECT object_key FROM blk_garbage")) == garbage_before + 3
    srv.start()
    ebs = srv.client("ebs", account=account)
    listed = ebs.list_snapshot_blocks(SnapshotId=kept)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == [0, 1]
    for b in listed:
        out = ebs.get_snapshot_block(SnapshotId=kept, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        assert len(out["BlockData"].read()) == BLOCK
