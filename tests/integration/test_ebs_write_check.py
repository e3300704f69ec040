"""PutSnapshotBlock checks its snapshot and key where its block is recorded (issue 15, E7).

While an upload runs, a server process writes each block from what it remembers of the
upload (the snapshot read by an earlier block, the data key it holds) and checks the
snapshot's state and the KMS key's authorization generation in the group commit's own
write transaction. These tests change the snapshot or the key behind that memory — through
a second server process on the same metadata, which the first hears nothing from — and
show the next block refused with the error a fresh read gives (and nothing recorded), or,
for a change that takes nothing away, written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ServerProcess
from tests.integration.test_ebs import BLOCK, _accounts, aggregate, download, error_of, list_all, put, sha

DENIED = ("AccessDeniedException", "DEPENDENCY_ACCESS_DENIED", 403)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``ebscrypt serve`` processes on one data dir (one SQLite metadata file)."""
    data_dir = tmp_path / "shared"
    first = ServerProcess(data_dir).start()
    try:
        second = ServerProcess(data_dir).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def _complete(ebs: Any, sid: str, blocks: dict[int, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=len(blocks), Checksum=aggregate(blocks),
        ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    return out


def test_a_block_for_a_snapshot_completed_elsewhere_is_refused(pair: tuple[ServerProcess, ServerProcess]) -> None:
    first, second = pair
    account = next(_accounts)
    ebs_1, ebs_2 = first.client("ebs", account), second.client("ebs", account)
    sid = ebs_1.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    blocks = {0: os.urandom(BLOCK), 1: os.urandom(BLOCK)}
    for index, data in blocks.items():  # through the second: it now remembers the upload
        assert put(ebs_2, sid, index, data)["Checksum"] == sha(data)
    assert _complete(ebs_1, sid, blocks)["Status"] == "completed"  # through the first
    late = os.urandom(BLOCK)
    assert error_of(lambda: put(ebs_2, sid, 2, late)) == ("ValidationException", "INVALID_SNAPSHOT_ID", 400)
    # nothing recorded: the completed snapshot holds exactly its blocks, read back whole
    assert [b["BlockIndex"] for b in list_all(ebs_2, sid)] == [0, 1]
    assert download(ebs_1, sid) == blocks


def test_a_block_under_a_key_disabled_elsewhere_is_refused_then_written_once_enabled(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = pair
    account = next(_accounts)
    kms, ebs_1, ebs_2 = first.client("kms", account), first.client("ebs", account), second.client("ebs", account)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    sid = ebs_1.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=key)["SnapshotId"]
    blocks = {0: os.urandom(BLOCK)}
    put(ebs_2, sid, 0, blocks[0])  # the second holds the data key now
    kms.disable_key(KeyId=key)
    refused = os.urandom(BLOCK)
    assert error_of(lambda: put(ebs_2, sid, 1, refused)) == DENIED
    assert error_of(lambda: put(ebs_2, sid, 1, refused)) == DENIED  # and stays refused
    kms.enable_key(KeyId=key)
    blocks[1] = os.urandom(BLOCK)
    put(ebs_2, sid, 1, blocks[1])
    assert _complete(ebs_2, sid, blocks)["Status"] == "completed"
    assert download(ebs_1, sid) == blocks


def test_a_key_change_that_takes_nothing_away_does_not_refuse(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """An alias created on the key bumps its authorization generation (kms:ResourceAliases
    conditions): the block held at the old generation is checked again and written."""
    first, second = pair
    account = next(_accounts)
    kms, ebs_2 = first.client("kms", account), second.client("ebs", account)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    sid = ebs_2.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=key)["SnapshotId"]
    blocks = {3: os.urandom(BLOCK)}
    put(ebs_2, sid, 3, blocks[3])
    kms.create_alias(AliasName=f"alias/e7-{sid}", TargetKeyId=key)
    blocks[4] = os.urandom(BLOCK)
    assert put(ebs_2, sid, 4, blocks[4])["Checksum"] == sha(blocks[4])
    assert _complete(ebs_2, sid, blocks)["Status"] == "completed"
    assert download(first.client("ebs", account), sid) == blocks


def test_a_wrong_checksum_on_a_remembered_upload_changes_nothing(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """The remembered path refuses a bad checksum as a fresh read does (AWS's 400), and a
    block for a completed snapshot with a bad checksum gets the snapshot's error first."""
    first, second = pair
    account = next(_accounts)
    ebs_1, ebs_2 = first.client("ebs", account), second.client("ebs", account)
    sid = ebs_2.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    blocks = {0: os.urandom(BLOCK)}
    put(ebs_2, sid, 0, blocks[0])
    data = os.urandom(BLOCK)
    bad = sha(data[:-1] + bytes([data[-1] ^ 1]))

    def put_bad() -> Any:
        return ebs_2.put_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockData=data, DataLength=BLOCK,
                                        Checksum=bad, ChecksumAlgorithm="SHA256")

    assert error_of(put_bad) == ("ValidationException", "INVALID_BLOCK", 400)
    assert _complete(ebs_1, sid, blocks)["Status"] == "completed"  # one block: the bad one was not stored
    assert error_of(put_bad) == ("ValidationException", "INVALID_SNAPSHOT_ID", 400)
    assert download(ebs_2, sid) == blocks
