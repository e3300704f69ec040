"""A resource deleted while its re-encrypting copy runs leaves nothing behind (R-LIFE-1,
R-SNAP-2, R-IMG-3): the copy is cancelled, its job ends cleanly, and the block store holds
exactly the objects of the resources that survive.

The copy is slowed with ``EBSCRYPT_FAULT_COPY_BATCH_DELAY`` (a pause after each committed
32-block batch) so the deletion lands mid-way. AWS accepts DeleteSnapshot of a snapshot
still in progress ("Although you can delete a snapshot that is still in progress ...",
Amazon EBS User Guide, Delete an Amazon EBS snapshot), DeleteVolume refuses only attached
volumes, and a pending AMI copy may be deregistered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from tests.conftest import DEFAULT_ACCOUNT

BLOCK = 524288
N_BLOCKS = 64  # two 32-block copy batches, above the inline limit: the copy runs in worker processes
BATCH_DELAY = "2"  # seconds: the copy spends >= 4 s after its first batch, the test acts within 1 s
ZONE = "us-east-1a"


@pytest.fixture
def srv(server_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("EBSCRYPT_FAULT_COPY_BATCH_DELAY", BATCH_DELAY)
    return server_factory()


# ------------------------------------------------------------------------ helpers


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _source_snapshot(ebs: Any, n: int = N_BLOCKS) -> str:
    """A completed snapshot of ``n`` distinct blocks, encrypted under the default key."""
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]

    def put(index: int) -> None:
        data = (hashlib.sha256(f"{sid}:{index}".encode()).digest() * (BLOCK // 32))[:BLOCK]
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                               Checksum=_sha(data), ChecksumAlgorithm="SHA256")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=n)
    return sid


def _objects(srv: Any) -> set[str]:
    """Every file under the block store (``blocks/<shard>/<name>``, temp files included)."""
    root = Path(srv.data_dir) / "blocks"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _job_rows(srv: Any, kind: str, resource_id: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{Path(srv.data_dir) / 'metadata.db'}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM jobs WHERE kind = ?", (kind,)).fetchall()
    finally:
        db.close()
    return [dict(r) for r in rows if resource_id in json.loads(r["payload"]).values()]


def _job_ended(srv: Any, kind: str, resource_id: str) -> dict[str, Any]:
    """The resource's job once it stopped running (queued/running: keep waiting)."""
    def ended() -> dict[str, Any] | None:
        rows = _job_rows(srv, kind, resource_id)
        assert len(rows) == 1, rows
        return rows[0] if rows[0]["state"] not in ("queued", "running") else None

    return _wait_for(f"the {kind} job of {resource_id} to end", ended)


def _assert_ended_cleanly(srv: Any, job: dict[str, Any]) -> None:
    # Cancelled because its resource is gone: not a failure, not retried, no traceback.
    assert (job["state"], job["error"], job["attempts"]) == ("done", None, 1), job
    log = Path(srv.log_path).read_text()
    assert "Traceback" not in log and " ERROR " not in log, log


def _percent(progress: str) -> int:
    return int(progress.rstrip("%") or 0)


def _mid_copy_progress(ec2: Any, snapshot_id: str) -> str:
    """R-LIFE-1: wait until the pending copy shows a real intermediate Progress."""
    def seen() -> str | None:
        snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        assert snap["State"] == "pending", f"the copy finished before the test could act: {snap}"
        return snap["Progress"] if 0 < _percent(snap["Progress"]) < 100 else None

    return _wait_for(f"{snapshot_id} to report progress", seen)


def _pending_snapshot(ec2: Any) -> str:
    """The id of the one pending snapshot (the copy: this server holds nothing else pending)."""
    found = _wait_for("the copy", lambda: [s["SnapshotId"] for s in ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}])["Snapshots"]])
    assert len(found) == 1, found
    return found[0]


def _error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


# ------------------------------------------------------------------------ (a) volume


def test_delete_volume_while_creating_from_reencrypted_snapshot(srv: Any) -> None:
    ebs, ec2, kms = srv.client("ebs"), srv.client("ec2"), srv.client("kms")
    sid = _source_snapshot(ebs)
    before = _objects(srv)
    assert len(before) == N_BLOCKS
    other_key = kms.create_key()["KeyMetadata"]["Arn"]

    with ThreadPoolExecutor(1) as bg:  # CreateVolume waits a moment for its job; act meanwhile
        created = bg.submit(ec2.create_volume, SnapshotId=sid, AvailabilityZone=ZONE, Encrypted=True,
                            KmsKeyId=other_key)
        volume_id = _wait_for("the volume", lambda: [
            v["VolumeId"] for v in ec2.describe_volumes(
                Filters=[{"Name": "snapshot-id", "Values": [sid]}])["Volumes"]])[0]
        # mid-way: at least one batch committed (the volume's job reports it; DescribeVolumes has no Progress)
        _wait_for("the copy to commit a batch", lambda: _job_rows(srv, "ec2_volume_create", volume_id)[0]["progress"] > 0)
        assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "creating"
        ec2.delete_volume(VolumeId=volume_id)
        assert created.result()["VolumeId"] == volume_id

    assert _error_code(lambda: ec2.describe_volumes(VolumeIds=[volume_id])) == "InvalidVolume.NotFound"
    job = _job_ended(srv, "ec2_volume_create", volume_id)
    assert _objects(srv) == before  # the copy's objects are gone, the source's all kept
    _assert_ended_cleanly(srv, job)
    assert ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"][N_BLOCKS - 1]["BlockIndex"] == N_BLOCKS - 1


# ------------------------------------------------------------------------ (b) snapshot copy


def test_delete_pending_snapshot_copy_under_another_key(srv: Any) -> None:
    ebs, ec2, kms = srv.client("ebs"), srv.client("ec2"), srv.client("kms")
    sid = _source_snapshot(ebs)
    before = _objects(srv)
    other_key = kms.create_key()["KeyMetadata"]["Arn"]

    with ThreadPoolExecutor(1) as bg:
        copied = bg.submit(ec2.copy_snapshot, SourceSnapshotId=sid, SourceRegion="us-east-1",
                           Encrypted=True, KmsKeyId=other_key)
        copy_id = _pending_snapshot(ec2)
        seen = _mid_copy_progress(ec2, copy_id)
        ec2.delete_snapshot(SnapshotId=copy_id)  # AWS accepts deleting a snapshot in progress
        assert copied.result()["SnapshotId"] == copy_id

    assert _error_code(lambda: ec2.describe_snapshots(SnapshotIds=[copy_id])) == "InvalidSnapshot.NotFound"
    job = _job_ended(srv, "ec2_snapshot_copy", copy_id)
    assert _objects(srv) == before, f"deleted at progress {seen}"
    _assert_ended_cleanly(srv, job)
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed"


# ------------------------------------------------------------------------ (c) image copy


@pytest.mark.parametrize("delete_snapshots", [True, False], ids=["with-snapshots", "image-only"])
def test_deregister_pending_reencrypted_image_copy(srv: Any, delete_snapshots: bool) -> None:
    ebs, ec2, kms = srv.client("ebs"), srv.client("ec2"), srv.client("kms")
    sid = _source_snapshot(ebs)
    source = ec2.register_image(Name="mid-copy-source", RootDeviceName="/dev/xvda", Architecture="x86_64",
                                VirtualizationType="hvm",
                                BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])["ImageId"]
    before = _objects(srv)
    other_key = kms.create_key()["KeyMetadata"]["Arn"]

    image_id = ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="mid-copy",
                              Encrypted=True, KmsKeyId=other_key)["ImageId"]
    # (not DescribeImages here: it waits a moment for a pending image to settle, eating the window)
    copy_id = _pending_snapshot(ec2)
    seen = _mid_copy_progress(ec2, copy_id)  # its snapshot pending: the image is pending too
    out = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=delete_snapshots)
    assert _error_code(lambda: ec2.describe_images(ImageIds=[image_id])) == "InvalidAMIID.NotFound"

    job = _job_ended(srv, "ec2_snapshot_copy", copy_id)
    _assert_ended_cleanly(srv, job)
    after = _objects(srv)
    if delete_snapshots:
        assert out["DeleteSnapshotResults"] == [{"SnapshotId": copy_id, "ReturnCode": "success"}]
        assert _error_code(lambda: ec2.describe_snapshots(SnapshotIds=[copy_id])) == "InvalidSnapshot.NotFound"
        assert after == before, f"deregistered at progress {seen}"
    else:  # R-IMG-3: the snapshot copy is not the image's to stop; it finishes and keeps its blocks
        snap = ec2.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
        assert (snap["State"], snap["Progress"], snap["KmsKeyId"]) == ("completed", "100%", other_key)
        assert before < after and len(after) == len(before) + N_BLOCKS
    assert ec2.describe_images(ImageIds=[source])["Images"][0]["State"] == "available"


# ------------------------------------------------------------------------ deleted before the copy starts


@pytest.fixture
def offline(server_factory: Callable[..., Any]) -> Any:
    """A source snapshot and a second key made through a server, then that data dir opened
    in this process with no job workers: the test runs the job itself, step by step."""
    from ebscrypt.context import Settings
    from ebscrypt.runtime import build_runtime, close_runtime

    srv = server_factory()
    sid = _source_snapshot(srv.client("ebs"), n=4)
    key = srv.client("kms").create_key()["KeyMetadata"]["Arn"]
    srv.stop()
    runtime = build_runtime(Settings(data_dir=srv.data_dir), start_jobs=False)
    try:
        yield srv, runtime, sid, key
    finally:
        close_runtime(runtime)


def _delete_on_first_key_use(monkeypatch: pytest.MonkeyPatch, module: Any, delete: Callable[[], None]) -> None:
    """The job's first data-key unwrap (after it has read its resource, before any block
    moves) first deletes the resource, as a DeleteX request landing at that moment would."""
    real = module.data_key_for
    calls = []

    def racing(ctx: Any, record: Any) -> Any:
        if not calls:
            calls.append(record)
            delete()
        return real(ctx, record)

    monkeypatch.setattr(module, "data_key_for", racing)


@pytest.mark.parametrize("kind", ["volume", "snapshot"])
def test_resource_deleted_before_its_copy_starts_leaves_nothing(offline: Any, monkeypatch: pytest.MonkeyPatch,
                                                                kind: str) -> None:
    """The deletion releases the blocks before the job has created any: the job, finding its
    resource gone once it has stored them, releases them itself."""
    from ebscrypt.engines.ec2 import snapshots, volumes
    from ebscrypt.engines.ec2.ids import job_ctx

    srv, runtime, sid, key = offline
    before = _objects(srv)
    if kind == "volume":
        ctx = job_ctx(runtime, DEFAULT_ACCOUNT, "us-east-1", "CreateVolume")
        rid = volumes.create_volume(ctx, wait_seconds=0, availability_zone=ZONE, snapshot_id=sid,
                                    encrypted=True, kms_key_id=key).id
        _delete_on_first_key_use(monkeypatch, volumes, lambda: volumes.delete_volume(ctx, rid))
        job_kind = "ec2_volume_create"
    else:
        ctx = job_ctx(runtime, DEFAULT_ACCOUNT, "us-east-1", "CopySnapshot")
        rid = snapshots.copy_snapshot(ctx, sid, encrypted=True, kms_key_id=key, wait_seconds=0).id
        _delete_on_first_key_use(monkeypatch, snapshots, lambda: snapshots.delete_snapshot(ctx, rid))
        job_kind = "ec2_snapshot_copy"
    assert runtime.jobs.run_pending() == 1
    (job,) = _job_rows(srv, job_kind, rid)
    assert (job["state"], job["error"]) == ("done", None), job
    assert not runtime.blocks.exists(rid)  # no owner left for a resource that is gone
    runtime.blocks.sweep(0)  # (what it had copied waited out the garbage grace period)
    assert _objects(srv) == before
