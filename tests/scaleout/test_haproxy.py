"""Golden paths through HAProxy over three servers (boto3), and a server killed mid-copy
whose job another server finishes (R-LIFE-1 across processes).

Round-robin spreads consecutive calls over the three processes, so a resource created on
one is waited for, described, copied and read back through the others; afterwards every
process's own view (asked directly, not through HAProxy) agrees.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import make_client
from tests.integration.test_ebs import BLOCK, download, upload
from tests.postgres.conftest import PgDatabases
from tests.scaleout.conftest import Cluster, make_cluster

ZONE = "us-east-1a"


def _data(tag: str, index: int) -> bytes:
    return (hashlib.sha256(f"{tag}:{index}".encode()).digest() * (BLOCK // 32))[:BLOCK]


def test_kms_through_the_balancer(cluster: Cluster) -> None:
    kms = cluster.aws("kms")
    key = kms.create_key(Description="balanced")["KeyMetadata"]["KeyId"]
    alias = f"alias/scale-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key)
    for i in range(6):  # each call on the next process: every one unwraps the same key
        blob = kms.encrypt(KeyId=alias, Plaintext=f"secret {i}".encode())["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == f"secret {i}".encode()
    for srv in cluster.servers:
        assert srv.client("kms").describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == key


def test_volume_snapshot_reencrypting_copy_and_ebs_read_back(cluster: Cluster) -> None:
    ec2, kms, ebs = cluster.aws("ec2"), cluster.aws("kms"), cluster.aws("ebs")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    other = kms.create_key()["KeyMetadata"]["Arn"]
    blocks = {i: _data("golden", i) for i in (0, 3, 7)}
    source = upload(ebs, blocks, Encrypted=True, KmsKeyArn=key)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[source], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    copy = ec2.copy_snapshot(SourceSnapshotId=source, SourceRegion="us-east-1", Encrypted=True,
                             KmsKeyId=other)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert download(ebs, copy) == blocks
    vol = ec2.create_volume(AvailabilityZone=ZONE, SnapshotId=copy)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert download(ebs, snap) == blocks
    for srv in cluster.servers:  # every process's own view
        direct = srv.client("ec2")
        got = {s["SnapshotId"]: s for s in direct.describe_snapshots(SnapshotIds=[source, copy, snap])["Snapshots"]}
        assert {k: v["State"] for k, v in got.items()} == {source: "completed", copy: "completed", snap: "completed"}
        assert got[copy]["KmsKeyId"] == other
        assert direct.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "available"


def test_create_returns_settled_resources_whichever_process_runs_the_job(cluster: Cluster) -> None:
    """The "wait for my job" fast path and Describe settling work when the job runs in
    another process: a small create is seen finished on the first Describe."""
    ec2 = cluster.aws("ec2")
    for _ in range(3):
        vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
        assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "available"
        snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
        assert ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["State"] == "completed"


@pytest.fixture
def slow_cluster(scale_pg: PgDatabases, tmp_path: Path) -> Iterator[Cluster]:
    """Copies pause after each batch of 32 blocks; leases last 4 s (a killed server's job is
    taken over within seconds)."""
    c = make_cluster(scale_pg, tmp_path, extra_env={"EBSCRYPT_FAULT_COPY_BATCH_DELAY": "2",
                                                    "EBSCRYPT_JOB_LEASE_SECONDS": "4"})
    try:
        yield c.start()
    finally:
        c.stop()


def _running_copy(cluster: Cluster, snapshot_id: str, timeout: float = 30) -> tuple[str, int]:
    """(job id, pid of the server running it) once the copy job has committed a batch."""
    engine = create_engine(cluster.db_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT id, runner, progress, payload FROM jobs WHERE kind = 'ec2_snapshot_copy' AND state = 'running'"
                )).all()
            for row in rows:
                if snapshot_id in row.payload and row.runner and row.progress > 0:
                    return row.id, int(row.runner.split("/")[1])
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("the copy job never reported progress")


def test_a_server_killed_mid_copy_has_its_job_finished_by_another(slow_cluster: Cluster) -> None:
    ec2, kms, ebs = slow_cluster.aws("ec2"), slow_cluster.aws("kms"), slow_cluster.aws("ebs")
    blocks = {i: _data("kill", i) for i in range(40)}  # two batches: 32 + 8
    source = upload(ebs, blocks, Encrypted=True)
    target_key = kms.create_key()["KeyMetadata"]["Arn"]
    copy = ec2.copy_snapshot(SourceSnapshotId=source, SourceRegion="us-east-1", Encrypted=True,
                             KmsKeyId=target_key)["SnapshotId"]
    job_id, pid = _running_copy(slow_cluster, copy)
    victim = slow_cluster.server_of_pid(pid)
    assert victim is not None
    victim.kill()  # SIGKILL mid-copy: the first batch committed, the second not yet
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig={"Delay": 1, "MaxAttempts": 90})
    survivors = [s for s in slow_cluster.servers if s is not victim]
    assert download(survivors[0].client("ebs"), copy) == blocks
    engine = create_engine(slow_cluster.db_url)
    try:
        with engine.connect() as conn:
            job = conn.execute(text("SELECT state, attempts FROM jobs WHERE id = :id"), {"id": job_id}).one()
    finally:
        engine.dispose()
    assert job.state == "done" and job.attempts >= 2  # claimed again by a surviving process
    for srv in survivors:
        assert srv.client("ec2").describe_snapshots(SnapshotIds=[copy])["Snapshots"][0]["State"] == "completed"
    victim.start()  # the killed host comes back and serves the same data
    assert download(make_client(victim.url, "ebs"), copy) == blocks
