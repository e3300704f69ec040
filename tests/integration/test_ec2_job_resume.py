"""A job killed at any point of its block step finishes on the next start (R-LIFE-1).

A server killed while a resumable job runs leaves the job ``running``; the next start
queues it again and the job repeats its step over whatever the killed attempt left in the
block store. Each test runs the first attempt in this process (a data dir made by a real
server, no job workers) and stops it, as ``kill -9`` would, at a chosen point: after the
first committed copy batch (a partial destination) or right after the block step finished
(a complete destination the job had not yet recorded). Nothing after that point runs: no
cleanup, no state change. A real server then starts on the data dir and must finish the
job (done, not failed), with the source's bytes in the resource and no object in the block
store that no block entry references.

Sources: a snapshot of 4 distinct blocks (copied 2 blocks per batch in the first attempt),
and an empty snapshot (its copy creates the destination in one step: only "complete").
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import DEFAULT_ACCOUNT

BLOCK = 524288
N_BLOCKS = 4
ZONE = "us-east-1a"
REGION = "us-east-1"


class _Killed(BaseException):
    """The simulated kill -9: not an Exception, so no handler in the job path catches it
    (the job runner records nothing, the job stays ``running``)."""


# ------------------------------------------------------------------------ helpers


def _data(snapshot_id: str, index: int) -> bytes:
    return (hashlib.sha256(f"{snapshot_id}:{index}".encode()).digest() * (BLOCK // 32))[:BLOCK]


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _full_snapshot(ebs: Any) -> str:
    """A completed snapshot of N_BLOCKS distinct blocks, encrypted under the default key."""
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]

    def put(index: int) -> None:
        data = _data(sid, index)
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                               Checksum=_sha(data), ChecksumAlgorithm="SHA256")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(N_BLOCKS)))
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=N_BLOCKS)
    return sid


def _empty_snapshot(ec2: Any) -> str:
    """A completed snapshot of a new (never written) encrypted volume."""
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol])
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    ec2.delete_volume(VolumeId=vol)
    return snap


def _objects(data_dir: Path) -> set[str]:
    """Every file under the block store (``<shard>/<name>``, temp files included)."""
    root = data_dir / "blocks"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _query(data_dir: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _referenced(data_dir: Path) -> set[str]:
    return {r["object_key"] for r in _query(data_dir, "SELECT object_key FROM blk_entries WHERE object_key IS NOT NULL")}


def _job(data_dir: Path, kind: str, resource_id: str) -> dict[str, Any]:
    rows = [dict(r) for r in _query(data_dir, "SELECT * FROM jobs WHERE kind = ?", kind)
            if resource_id in json.loads(r["payload"]).values()]
    assert len(rows) == 1, rows
    return rows[0]


def _snapshot_bytes(ebs: Any, snapshot_id: str) -> dict[int, bytes]:
    out = {}
    for block in ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"],
                                     BlockToken=block["BlockToken"])
        out[block["BlockIndex"]] = got["BlockData"].read()
    return out


@pytest.fixture
def setup(server_factory: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """Sources and a second key made through a server, which is then stopped."""
    srv = server_factory()
    ec2, ebs, kms = srv.client("ec2"), srv.client("ebs"), srv.client("kms")
    full, empty = _full_snapshot(ebs), _empty_snapshot(ec2)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    # a volume for CreateSnapshot (same data key as its source: a shared reference)
    vol = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=full)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol])
    srv.stop()
    yield {"srv": srv, "full": full, "empty": empty, "key": key, "volume": vol}
    srv.stop()


def _first_attempt(data_dir: Path, start: Callable[[Any, Any], str], kill: str,
                   monkeypatch: pytest.MonkeyPatch) -> str:
    """Create the resource in this process and run its job until the ``kill`` point."""
    from ebscrypt.context import Settings
    from ebscrypt.engines.ec2 import snapshots
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime

    runtime = build_runtime(Settings(data_dir=data_dir), start_jobs=False)
    try:
        runtime.blocks.BATCH_BLOCKS = 2  # two batches: a partial copy is possible
        record = runtime.jobs._record_progress

        def progress(job_id: str, percent: float, checkpoint: Any) -> None:
            record(job_id, percent, checkpoint)  # as far as the killed attempt got
            if (kill == "partial" and 0 < percent < 100) or (kill == "complete" and percent >= 100):
                raise _Killed(f"killed at {percent}%")

        monkeypatch.setattr(runtime.jobs, "_record_progress", progress)
        if kill == "shared":  # a share has no progress: killed just before the job records the snapshot
            def killed(*_: Any) -> None:
                raise _Killed("killed after the share")

            monkeypatch.setattr(snapshots, "complete_snapshot", killed)
        rid = start(runtime, job_ctx(runtime, DEFAULT_ACCOUNT, REGION, "Test"))
        with pytest.raises(_Killed):
            runtime.jobs.run_pending()
        monkeypatch.undo()
    finally:
        close_runtime(runtime)
    return rid


def _create_volume(source: str, key: str) -> Callable[[Any, Any], str]:
    def start(runtime: Any, ctx: Any) -> str:
        from ebscrypt.engines.ec2 import volumes

        return volumes.create_volume(ctx, wait_seconds=0, availability_zone=ZONE, snapshot_id=source,
                                     encrypted=True, kms_key_id=key).id
    return start


def _copy_snapshot(source: str, key: str) -> Callable[[Any, Any], str]:
    def start(runtime: Any, ctx: Any) -> str:
        from ebscrypt.engines.ec2 import snapshots

        return snapshots.copy_snapshot(ctx, source, encrypted=True, kms_key_id=key, wait_seconds=0).id
    return start


def _snapshot_volume(volume_id: str) -> Callable[[Any, Any], str]:
    def start(runtime: Any, ctx: Any) -> str:
        from ebscrypt.engines.ec2 import snapshots

        with runtime.db.begin() as conn:
            return snapshots.create_snapshot_from_volume(ctx, conn, volume_id).id
    return start


def _restart_and_wait(srv: Any, data_dir: Path, kind: str, resource_id: str) -> tuple[Any, Any]:
    """Start the server on the data dir, wait for the resource, and check its job ended
    done on its second attempt; returns (ec2, ebs) clients."""
    srv.start()
    ec2, ebs = srv.client("ec2"), srv.client("ebs")
    config = {"Delay": 1, "MaxAttempts": 60}
    if resource_id.startswith("vol-"):
        ec2.get_waiter("volume_available").wait(VolumeIds=[resource_id], WaiterConfig=config)
    else:
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[resource_id], WaiterConfig=config)
    job = _job(data_dir, kind, resource_id)
    assert (job["state"], job["error"], job["attempts"]) == ("done", None, 2), job
    return ec2, ebs


def _assert_no_orphans(data_dir: Path, before: set[str], new_objects: int) -> None:
    after = _objects(data_dir)
    assert before <= after
    assert len(after - before) == new_objects, sorted(after - before)
    assert after == _referenced(data_dir)  # every stored object is some block's, nothing half-made


# ------------------------------------------------------------------------ volumes (RunInstances, CreateVolume)


@pytest.mark.parametrize("source,kill", [("full", "partial"), ("full", "complete"), ("empty", "complete")])
def test_volume_creation_killed_mid_job_finishes_on_restart(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                            source: str, kill: str) -> None:
    srv, data_dir, sid = setup["srv"], Path(setup["srv"].data_dir), setup[source]
    before = _objects(data_dir)
    vid = _first_attempt(data_dir, _create_volume(sid, setup["key"]), kill, monkeypatch)
    assert _job(data_dir, "ec2_volume_create", vid)["state"] == "running"  # as a kill leaves it

    ec2, ebs = _restart_and_wait(srv, data_dir, "ec2_volume_create", vid)
    vol = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert (vol["State"], vol["KmsKeyId"]) == ("available", setup["key"])
    copied = N_BLOCKS if source == "full" else 0
    _assert_no_orphans(data_dir, before, copied)
    # its bytes: through a snapshot of it (same data key, shared: no new object)
    snap = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    expected = {i: _data(sid, i) for i in range(N_BLOCKS)} if source == "full" else {}
    assert _snapshot_bytes(ebs, snap) == expected


# ------------------------------------------------------------------------ snapshot copies (CopySnapshot, CopyImage)


@pytest.mark.parametrize("source,kill", [("full", "partial"), ("full", "complete"), ("empty", "complete")])
def test_snapshot_copy_killed_mid_job_finishes_on_restart(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                          source: str, kill: str) -> None:
    srv, data_dir, sid = setup["srv"], Path(setup["srv"].data_dir), setup[source]
    before = _objects(data_dir)
    cid = _first_attempt(data_dir, _copy_snapshot(sid, setup["key"]), kill, monkeypatch)
    assert _job(data_dir, "ec2_snapshot_copy", cid)["state"] == "running"

    ec2, ebs = _restart_and_wait(srv, data_dir, "ec2_snapshot_copy", cid)
    snap = ec2.describe_snapshots(SnapshotIds=[cid])["Snapshots"][0]
    assert (snap["State"], snap["Progress"], snap["KmsKeyId"]) == ("completed", "100%", setup["key"])
    _assert_no_orphans(data_dir, before, N_BLOCKS if source == "full" else 0)
    expected = {i: _data(sid, i) for i in range(N_BLOCKS)} if source == "full" else {}
    assert _snapshot_bytes(ebs, cid) == expected


# ------------------------------------------------------------------------ CreateSnapshot / CreateImage


def test_snapshot_of_a_volume_killed_after_its_share_finishes_on_restart(setup: dict[str, Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    srv, data_dir = setup["srv"], Path(setup["srv"].data_dir)
    before = _objects(data_dir)
    snap_id = _first_attempt(data_dir, _snapshot_volume(setup["volume"]), "shared", monkeypatch)
    assert _job(data_dir, "ec2_snapshot_create", snap_id)["state"] == "running"

    ec2, ebs = _restart_and_wait(srv, data_dir, "ec2_snapshot_create", snap_id)
    _assert_no_orphans(data_dir, before, 0)
    assert _snapshot_bytes(ebs, snap_id) == {i: _data(setup["full"], i) for i in range(N_BLOCKS)}


# ------------------------------------------------------------------------ a source deleted under a queued copy


def _queued_then_source_deleted(data_dir: Path, start: Callable[[Any, Any], str], source: str) -> str:
    """Queue the copy (no workers), delete its source snapshot as DeleteSnapshot does, then run the job."""
    from ebscrypt.context import Settings
    from ebscrypt.engines.ec2 import snapshots
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime

    runtime = build_runtime(Settings(data_dir=data_dir), start_jobs=False)
    try:
        ctx = job_ctx(runtime, DEFAULT_ACCOUNT, REGION, "Test")
        rid = start(runtime, ctx)
        snapshots.delete_snapshot(ctx, source)
        runtime.jobs.run_pending()
    finally:
        close_runtime(runtime)
    return rid


def test_volume_from_a_snapshot_deleted_before_its_job_ends_in_error(setup: dict[str, Any]) -> None:
    """Never an empty volume standing for a snapshot's data (R-KEY-6 style: error with a reason)."""
    srv, data_dir, sid = setup["srv"], Path(setup["srv"].data_dir), setup["full"]
    vid = _queued_then_source_deleted(data_dir, _create_volume(sid, setup["key"]), sid)
    srv.start()
    vol = srv.client("ec2").describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert vol["State"] == "error"


def test_copy_of_a_snapshot_deleted_before_its_job_ends_in_error(setup: dict[str, Any]) -> None:
    srv, data_dir, sid = setup["srv"], Path(setup["srv"].data_dir), setup["full"]
    cid = _queued_then_source_deleted(data_dir, _copy_snapshot(sid, setup["key"]), sid)
    srv.start()
    snap = srv.client("ec2").describe_snapshots(SnapshotIds=[cid])["Snapshots"][0]
    assert snap["State"] == "error" and sid in snap["StateMessage"]


def test_source_deleted_after_the_job_read_it_is_caught_after_the_copy(setup: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The window between the job's read of the source record and the copy: the engine sees no
    source owner and would copy nothing; the job must notice the record is gone and fail."""
    from ebscrypt.context import Settings
    from ebscrypt.engines.ec2 import snapshots, volumes
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime

    srv, data_dir, sid = setup["srv"], Path(setup["srv"].data_dir), setup["full"]
    runtime = build_runtime(Settings(data_dir=data_dir), start_jobs=False)
    try:
        ctx = job_ctx(runtime, DEFAULT_ACCOUNT, REGION, "Test")
        vid = volumes.create_volume(ctx, wait_seconds=0, availability_zone=ZONE, snapshot_id=sid,
                                    encrypted=True, kms_key_id=setup["key"]).id
        real_data_key_for = volumes.data_key_for
        deleted: list[str] = []

        def data_key_then_delete(c: Any, resource: Any, **kw: Any) -> Any:
            out = real_data_key_for(c, resource, **kw)
            if resource.id == sid and not deleted:  # the job has read the source: delete it now
                deleted.append(sid)
                snapshots.delete_snapshot(ctx, sid)
            return out

        monkeypatch.setattr(volumes, "data_key_for", data_key_then_delete)
        runtime.jobs.run_pending()
    finally:
        close_runtime(runtime)
    assert deleted == [sid]
    srv.start()
    vol = srv.client("ec2").describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert vol["State"] == "error"
