"""EBS direct APIs through boto3 against a real server (R-DATA-1, R-LIFE-2, R-KEY-1/2/8, R-SNAP-2, §2)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

BLOCK = 524288

# Each test uses its own account, so account settings (EBD) of other tests never interfere.
_accounts = iter(f"5550000{n:05d}" for n in range(1, 99999))


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def aggregate(blocks: dict[int, bytes]) -> str:
    h = hashlib.sha256()
    for index in sorted(blocks):
        h.update(hashlib.sha256(blocks[index]).digest())
    return base64.b64encode(h.digest()).decode()


def put(ebs: Any, snapshot_id: str, index: int, data: bytes) -> dict[str, Any]:
    return ebs.put_snapshot_block(
        SnapshotId=snapshot_id, BlockIndex=index, BlockData=data, DataLength=len(data),
        Checksum=sha(data), ChecksumAlgorithm="SHA256",
    )


def upload(ebs: Any, blocks: dict[int, bytes], *, volume_size: int = 1, **start: Any) -> str:
    snap = ebs.start_snapshot(VolumeSize=volume_size, **start)
    sid = snap["SnapshotId"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: put(ebs, sid, *item), blocks.items()))
    assert ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=len(blocks), Checksum=aggregate(blocks),
        ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR",
    )["Status"] == "completed"
    return sid


def list_all(ebs: Any, snapshot_id: str, **kw: Any) -> list[dict[str, Any]]:
    out, token = [], None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **kw, **({"NextToken": token} if token else {}))
        out.extend(page["Blocks"])
        token = page.get("NextToken")
        if not token:
            return out


def download(ebs: Any, snapshot_id: str) -> dict[int, bytes]:
    out = {}
    for block in list_all(ebs, snapshot_id):
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"])
        data = got["BlockData"].read()
        assert got["DataLength"] == BLOCK and got["Checksum"] == sha(data) and got["ChecksumAlgorithm"] == "SHA256"
        out[block["BlockIndex"]] = data
    return out


def error_of(call: Callable[[], Any]) -> tuple[str, str | None, int]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err.get("Reason"), err["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def account() -> str:
    return next(_accounts)


@pytest.fixture
def ebs(aws: Callable[..., Any], account: str) -> Any:
    return aws("ebs", account=account)


@pytest.fixture
def ec2(aws: Callable[..., Any], account: str) -> Any:
    return aws("ec2", account=account)


def wait_snapshot(ec2: Any, snapshot_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        if snap["State"] != "pending" or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


# ------------------------------------------------------------------ round trips


def test_random_data_round_trip_encrypted(ebs: Any, ec2: Any) -> None:
    """R-DATA-1: random bytes in, the same bytes out; unwritten blocks are not listed."""
    blocks = {i: os.urandom(BLOCK) for i in (0, 1, 7, 100, 2047)}
    sid = upload(ebs, blocks, Encrypted=True, Description="round trip")
    assert download(ebs, sid) == blocks
    snap = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert snap["State"] == "completed" and snap["Encrypted"] is True and snap["VolumeSize"] == 1


def test_round_trip_unencrypted_and_pagination(ebs: Any) -> None:
    blocks = {i: os.urandom(BLOCK) for i in range(0, 250, 2)}
    sid = upload(ebs, blocks)
    first = ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    assert len(first["Blocks"]) == 100 and first["NextToken"]
    assert first["BlockSize"] == BLOCK and first["VolumeSize"] == 1 and first["ExpiryTime"]
    assert [b["BlockIndex"] for b in list_all(ebs, sid, MaxResults=100)] == sorted(blocks)
    assert [b["BlockIndex"] for b in list_all(ebs, sid, StartingBlockIndex=200)] == list(range(200, 250, 2))
    assert download(ebs, sid) == blocks


def test_start_snapshot_reports_its_encryption(ebs: Any) -> None:
    out = ebs.start_snapshot(VolumeSize=8, Encrypted=True, Tags=[{"Key": "k", "Value": "v"}], Description="d")
    assert out["Status"] == "pending" and out["SseType"] == "sse-kms" and out["KmsKeyArn"].startswith("arn:aws:kms:")
    assert out["BlockSize"] == BLOCK and out["VolumeSize"] == 8 and out["Tags"] == [{"Key": "k", "Value": "v"}]
    plain = ebs.start_snapshot(VolumeSize=1)
    assert plain["SseType"] == "none" and "KmsKeyArn" not in plain


def test_client_token_is_idempotent(ebs: Any) -> None:
    a = ebs.start_snapshot(VolumeSize=1, ClientToken="tok-123")
    b = ebs.start_snapshot(VolumeSize=1, ClientToken="tok-123")
    assert a["SnapshotId"] == b["SnapshotId"]


def test_customer_key(ebs: Any, aws: Callable[..., Any], account: str) -> None:
    kms = aws("kms", account=account)
    key = kms.create_key()["KeyMetadata"]
    blocks = {3: os.urandom(BLOCK)}
    out = ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=key["Arn"])
    assert out["KmsKeyArn"] == key["Arn"]
    put(ebs, out["SnapshotId"], 3, blocks[3])
    ebs.complete_snapshot(SnapshotId=out["SnapshotId"], ChangedBlocksCount=1)
    assert download(ebs, out["SnapshotId"]) == blocks


def test_encryption_by_default_refuses_unencrypted_start(ebs: Any, ec2: Any) -> None:
    """§2 R-OUT-5/7: with EBD on, Encrypted=false is refused and the default is encrypted."""
    ec2.enable_ebs_encryption_by_default()
    try:
        code, reason, status = error_of(lambda: ebs.start_snapshot(VolumeSize=1, Encrypted=False))
        assert (code, status) == ("ValidationException", 400)
        assert ebs.start_snapshot(VolumeSize=1)["SseType"] == "sse-kms"
    finally:
        ec2.disable_ebs_encryption_by_default()


# ------------------------------------------------------------------ lineage


def test_list_changed_blocks_parent_child(ebs: Any) -> None:
    """R-LIFE-2: a child stores only its changes; ListChangedBlocks comes from lineage."""
    parent_blocks = {i: os.urandom(BLOCK) for i in range(4)}
    parent = upload(ebs, parent_blocks, Encrypted=True)
    child_writes = {1: os.urandom(BLOCK), 9: os.urandom(BLOCK)}
    child = upload(ebs, child_writes, ParentSnapshotId=parent)
    changed = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)["ChangedBlocks"]
    assert [c["BlockIndex"] for c in changed] == [1, 9]
    assert "FirstBlockToken" in changed[0] and "SecondBlockToken" in changed[0]
    assert "FirstBlockToken" not in changed[1]
    old = ebs.get_snapshot_block(SnapshotId=parent, BlockIndex=1, BlockToken=changed[0]["FirstBlockToken"])
    new = ebs.get_snapshot_block(SnapshotId=child, BlockIndex=1, BlockToken=changed[0]["SecondBlockToken"])
    assert old["BlockData"].read() == parent_blocks[1] and new["BlockData"].read() == child_writes[1]
    # The child reads as the parent plus its changes.
    assert download(ebs, child) == {**parent_blocks, **child_writes}
    # Only the second snapshot: all its written blocks.
    only = ebs.list_changed_blocks(SecondSnapshotId=child)["ChangedBlocks"]
    assert [c["BlockIndex"] for c in only] == [0, 1, 2, 3, 9]


def test_unrelated_snapshots(ebs: Any) -> None:
    a = upload(ebs, {0: os.urandom(BLOCK)})
    b = upload(ebs, {0: os.urandom(BLOCK)})
    assert error_of(lambda: ebs.list_changed_blocks(FirstSnapshotId=a, SecondSnapshotId=b)) == (
        "ValidationException", "UNRELATED_SNAPSHOTS", 400)


def test_parent_under_another_key_is_reencrypted(ebs: Any, aws: Callable[..., Any], account: str) -> None:
    """R-KEY-2: a child under another KMS key gets a new data key; it still reads as parent + changes."""
    kms = aws("kms", account=account)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    parent_blocks = {i: os.urandom(BLOCK) for i in range(3)}
    parent = upload(ebs, parent_blocks, Encrypted=True)
    child_writes = {2: os.urandom(BLOCK)}
    child = upload(ebs, child_writes, ParentSnapshotId=parent, KmsKeyArn=key)
    assert download(ebs, child) == {**parent_blocks, **child_writes}
    changed = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)["ChangedBlocks"]
    assert [c["BlockIndex"] for c in changed] == [2]


# ------------------------------------------------------------------ refusals


def test_bad_checksum_is_refused_and_nothing_stored(ebs: Any) -> None:
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    # The checksum of other bytes: the last one flipped. (It was ``data[:-1] + b"x"``,
    # which is ``data`` itself when the random block ends in "x": 1 run in 256 saw its
    # block stored, as if a bad checksum had been accepted.)
    code, reason, status = error_of(lambda: ebs.put_snapshot_block(
        SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
        Checksum=sha(data[:-1] + bytes([data[-1] ^ 1])), ChecksumAlgorithm="SHA256"))
    assert (code, status) == ("ValidationException", 400) and reason
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    assert list_all(ebs, sid) == []


def test_wrong_size_is_refused(ebs: Any) -> None:
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for data in (os.urandom(BLOCK - 1), os.urandom(1024)):
        assert error_of(lambda: put(ebs, sid, 0, data))[0] == "ValidationException"
    # Outside the volume.
    assert error_of(lambda: put(ebs, sid, 2048, os.urandom(BLOCK)))[:2] == ("ValidationException", "INVALID_BLOCK")


def test_bad_block_tokens_are_refused(ebs: Any) -> None:
    blocks = {0: os.urandom(BLOCK), 1: os.urandom(BLOCK)}
    sid = upload(ebs, blocks)
    other = upload(ebs, {0: os.urandom(BLOCK)})
    tokens = {b["BlockIndex"]: b["BlockToken"] for b in list_all(ebs, sid)}
    other_token = list_all(ebs, other)[0]["BlockToken"]
    bad = {
        "forged": base64.b64encode(b"\x01" + os.urandom(22)).decode(),
        "other index": tokens[1],
        "other snapshot": other_token,
        "garbage": "AAAA",
    }
    for name, token in bad.items():
        assert error_of(lambda: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)) == (
            "ValidationException", "INVALID_BLOCK_TOKEN", 400), name
    # Unwritten block: no token can be valid.
    assert error_of(lambda: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=5, BlockToken=tokens[0]))[1] == "INVALID_BLOCK_TOKEN"
    assert error_of(lambda: ebs.list_snapshot_blocks(SnapshotId=sid, NextToken="AAAAAAAA"))[:2] == (
        "ValidationException", "INVALID_PAGE_TOKEN")


def test_write_after_complete_is_refused(ebs: Any) -> None:
    sid = upload(ebs, {0: os.urandom(BLOCK)})
    code, reason, status = error_of(lambda: put(ebs, sid, 1, os.urandom(BLOCK)))
    assert (code, status) == ("ValidationException", 400)


def test_unknown_snapshot(ebs: Any) -> None:
    missing = "snap-0123456789abcdef0"
    calls = [
        lambda: put(ebs, missing, 0, os.urandom(BLOCK)),
        lambda: ebs.complete_snapshot(SnapshotId=missing, ChangedBlocksCount=0),
        lambda: ebs.list_snapshot_blocks(SnapshotId=missing),
        lambda: ebs.get_snapshot_block(SnapshotId=missing, BlockIndex=0, BlockToken="AAAA"),
        lambda: ebs.list_changed_blocks(SecondSnapshotId=missing),
        lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=missing),
    ]
    for call in calls:
        assert error_of(call) == ("ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", 404)


def test_other_accounts_cannot_see_or_write(ebs: Any, aws: Callable[..., Any]) -> None:
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    intruder = aws("ebs", account=next(_accounts))
    assert error_of(lambda: put(intruder, sid, 0, os.urandom(BLOCK)))[0] == "ResourceNotFoundException"


def test_complete_checks_count_and_aggregate_checksum(ebs: Any) -> None:
    blocks = {0: os.urandom(BLOCK), 5: os.urandom(BLOCK)}
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for index, data in blocks.items():
        put(ebs, sid, index, data)
    assert error_of(lambda: ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3))[0] == "ValidationException"
    wrong = aggregate({5: blocks[5], 0: blocks[5]})
    assert error_of(lambda: ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=2, Checksum=wrong, ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR"))[0] == "ValidationException"
    assert ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=2, Checksum=aggregate(blocks), ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR")["Status"] == "completed"


def test_parent_and_encrypted_together_refused(ebs: Any) -> None:
    parent = upload(ebs, {0: os.urandom(BLOCK)})
    assert error_of(lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent, Encrypted=True))[0] == "ValidationException"


# ------------------------------------------------------------------ at rest


def _files(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def test_tampered_ciphertext_on_disk_is_detected(ebs: Any, server: Any) -> None:
    blocks_dir = server.data_dir / "blocks"
    before = set(_files(blocks_dir))
    sid = upload(ebs, {0: os.urandom(BLOCK)}, Encrypted=True)
    new = sorted(set(_files(blocks_dir)) - before)
    assert len(new) == 1
    raw = bytearray(new[0].read_bytes())
    raw[1000] ^= 0x04
    new[0].write_bytes(raw)
    token = list_all(ebs, sid)[0]["BlockToken"]
    code, _, status = error_of(lambda: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token))
    assert (code, status) == ("InternalServerException", 500)


def test_parent_block_copied_over_the_childs_is_detected(ebs: Any, server: Any) -> None:
    """Issue 10 item 6 (R-DATA-1, R-LIFE-2): a child snapshot shares its parent's data key;
    the parent's older object of the same block copied over the child's on disk fails
    like a bit flip — never the old bytes with 200."""
    blocks_dir = server.data_dir / "blocks"
    old, new = os.urandom(BLOCK), os.urandom(BLOCK)
    before = set(_files(blocks_dir))
    parent = upload(ebs, {0: old}, Encrypted=True)
    parent_files = sorted(set(_files(blocks_dir)) - before)
    child = upload(ebs, {0: new}, ParentSnapshotId=parent)
    child_files = sorted(set(_files(blocks_dir)) - before - set(parent_files))
    assert len(parent_files) == 1 and len(child_files) == 1
    assert download(ebs, child) == {0: new}
    child_files[0].write_bytes(parent_files[0].read_bytes())
    token = list_all(ebs, child)[0]["BlockToken"]
    code, _, status = error_of(lambda: ebs.get_snapshot_block(SnapshotId=child, BlockIndex=0, BlockToken=token))
    assert (code, status) == ("InternalServerException", 500)  # as any tampered block (above)
    assert download(ebs, parent) == {0: old}


def test_data_dir_holds_no_plaintext(ebs: Any, server: Any) -> None:
    """R-DATA-1 / R-KEY-1: a known pattern written through the API is nowhere on disk."""
    marker = b"EBSCRYPT-PLAINTEXT-MARKER-" + os.urandom(6).hex().encode()
    data = (marker * (BLOCK // len(marker) + 1))[:BLOCK]
    sid = upload(ebs, {0: data, 1: data}, Encrypted=True)
    assert download(ebs, sid)[0] == data
    digest = hashlib.sha256(data).digest()
    needles = [marker, marker[:20], digest, sha(data).encode()]
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"{needle!r} found in {path}"


# ------------------------------------------------------------------ EC2 interplay


def test_snapshot_copies_volumes_and_snapshots_of_volumes_read_back(ebs: Any, ec2: Any, aws: Callable[..., Any], account: str) -> None:
    """R-DATA-1 through a chain: upload -> copy (same key) -> re-encrypting copy -> volume ->
    snapshot of the volume; every step reads back the same bytes."""
    kms = aws("kms", account=account)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    blocks = {i: os.urandom(BLOCK) for i in (0, 3, 500)}
    sid = upload(ebs, blocks, Encrypted=True)
    same = ec2.copy_snapshot(SourceSnapshotId=sid, SourceRegion="us-east-1")["SnapshotId"]
    assert wait_snapshot(ec2, same)["State"] == "completed"
    rekeyed = ec2.copy_snapshot(SourceSnapshotId=same, SourceRegion="us-east-1", Encrypted=True, KmsKeyId=key)["SnapshotId"]
    snap = wait_snapshot(ec2, rekeyed)
    assert snap["State"] == "completed" and snap["KmsKeyId"] == key
    vol = ec2.create_volume(SnapshotId=rekeyed, AvailabilityZone="us-east-1a")["VolumeId"]
    deadline = time.monotonic() + 60
    while ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    of_volume = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    assert wait_snapshot(ec2, of_volume)["State"] == "completed"
    for snapshot_id in (same, rekeyed, of_volume):
        assert download(ebs, snapshot_id) == blocks, snapshot_id
    # A same-key copy shares its source's lineage.
    assert ebs.list_changed_blocks(FirstSnapshotId=sid, SecondSnapshotId=same)["ChangedBlocks"] == []


def test_start_snapshot_timeout(server_factory: Callable[..., Any]) -> None:
    """An unfinished snapshot past its Timeout goes to error and refuses writes."""
    srv = server_factory()
    ebs, ec2 = srv.client("ebs"), srv.client("ec2")
    sid = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    put(ebs, sid, 0, os.urandom(BLOCK))
    srv.stop()  # a restart does not forget the session's deadline
    srv.start()
    ebs, ec2 = srv.client("ebs"), srv.client("ec2")
    srv.advance_clock(11 * 60)
    deadline = time.monotonic() + 15
    while ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] != "error":
        assert time.monotonic() < deadline, "the snapshot never timed out"
        time.sleep(0.3)
    assert error_of(lambda: put(ebs, sid, 1, os.urandom(BLOCK)))[0] == "ValidationException"


def test_crypto_shredding(server_factory: Callable[..., Any]) -> None:
    """R-KEY-8: once the KMS key is deleted, the snapshot is unreadable through the API, and the
    stored objects hold nothing readable (checked in the store directly)."""
    srv = server_factory()
    ebs, kms = srv.client("ebs"), srv.client("kms")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    marker = b"SHRED-" + os.urandom(4).hex().encode()
    data = (marker * (BLOCK // len(marker) + 1))[:BLOCK]
    sid = upload(ebs, {0: data}, Encrypted=True, KmsKeyArn=key)
    assert download(ebs, sid) == {0: data}
    kept = upload(ebs, {0: data}, Encrypted=True, KmsKeyArn=kms.create_key()["KeyMetadata"]["Arn"])  # control
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    srv.advance_clock(8 * 86400)
    time.sleep(1)
    token = list_all(ebs, sid)[0]["BlockToken"]
    code, _, _ = error_of(lambda: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token))
    assert code == "AccessDeniedException", code  # DEPENDENCY_ACCESS_DENIED: the KMS key is gone
    srv.stop()
    for path in srv.data_dir.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes()
    # Reading the store directly: the only way to the block key is the wrapped data key,
    # and KMS can no longer unwrap it — even with the server's own files at hand.
    from sqlalchemy import select

    from ebscrypt.context import Caller, Settings
    from ebscrypt.errors import ServiceError
    from ebscrypt.runtime import build_runtime, close_runtime
    from ebscrypt.storage.tables.ec2 import ec2_snapshots

    runtime = build_runtime(Settings(data_dir=srv.data_dir, db_url=srv.db_url), start_jobs=False)
    try:
        def unwrap(snapshot_id: str) -> bytes:
            with runtime.db.read() as conn:
                row = conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.id == snapshot_id)).mappings().first()
            assert row["data_key_blob"] and row["encrypted"]
            return runtime.kms.decrypt(Caller(account="111111111111", region="us-east-1"), row["data_key_blob"],
                                       encryption_context=json.loads(row["data_key_context"]),
                                       via_service="ec2.us-east-1.amazonaws.com")[1]

        assert len(unwrap(kept)) == 32  # the same path works while the key exists
        with pytest.raises(ServiceError):
            unwrap(sid)
        ref = runtime.blocks.block_ref(sid, 0)
        raw = (srv.data_dir / "blocks" / ref.object_key).read_bytes()
        from ebscrypt.engines.blocks.crypto import GCM_OBJECT_SIZE  # (format 3: sectors each with a tag)

        assert marker not in raw and len(raw) == GCM_OBJECT_SIZE
    finally:
        close_runtime(runtime)


def test_shared_snapshot_readable_only_with_key_permission(ebs: Any, ec2: Any, aws: Callable[..., Any], account: str) -> None:
    """R-SHARE-1/4: a snapshot shared with another account reads back there when the key
    policy lets that account use the key; without it, the read is refused."""
    other, stranger = next(_accounts), next(_accounts)
    kms = aws("kms", account=account)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "recipient", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{other}:root"},
             "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext",
                        "kms:ReEncryptFrom", "kms:ReEncryptTo"], "Resource": "*"},
        ],
    }
    key = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    blocks = {4: os.urandom(BLOCK)}
    sid = upload(ebs, blocks, Encrypted=True, KmsKeyArn=key)
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other, stranger])
    assert download(aws("ebs", account=other), sid) == blocks
    stranger_ebs = aws("ebs", account=stranger)
    token = list_all(stranger_ebs, sid)[0]["BlockToken"]
    code, reason, status = error_of(lambda: stranger_ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=4, BlockToken=token))
    assert (code, reason, status) == ("AccessDeniedException", "DEPENDENCY_ACCESS_DENIED", 403)
    # Writing into someone else's snapshot is never allowed.
    pending = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=pending, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other])
    assert error_of(lambda: put(aws("ebs", account=other), pending, 0, os.urandom(BLOCK))) == (
        "AccessDeniedException", "UNAUTHORIZED_ACCOUNT", 403)
