"""EC2 volume workloads, ebscrypt next to moto_server (both started by the harness):

- CreateVolume (empty gp3, 1 GiB): calls/s
- CreateVolume(encrypted): with a data key from the KMS engine (ebscrypt does the real
  GenerateDataKeyWithoutPlaintext + CreateGrant + Decrypt; moto only flags the volume)
- DescribeVolumes(1000): all volumes of an account holding 1,000 volumes, one response
- DescribeVolumes(1000, 2 pages): the same through MaxResults=500 + NextToken (2 calls)
- DescribeVolumes(1000, filter): encrypted=true filter over the same 1,000 volumes
- DescribeVolumes(1 id of 1000): one VolumeId among 1,000
- CreateSnapshot of an empty volume; CopySnapshot(same key) of an encrypted snapshot
  (metadata only: one transaction each)

    python bench/bench_ec2.py                 # or: python bench/run.py --only Volume
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, RawCall, Workload, main

CREATE_ACCOUNT = "700000000001"
DESCRIBE_ACCOUNT = "700000000002"
N_VOLUMES = 1000


def create_volume(ctx: Ctx) -> None:
    vol = ctx.client("ec2", account=CREATE_ACCOUNT).create_volume(AvailabilityZone="us-east-1a", Size=1,
                                                                  VolumeType="gp3")
    assert vol["VolumeId"].startswith("vol-")


def create_encrypted_volume(ctx: Ctx) -> None:
    vol = ctx.client("ec2", account=CREATE_ACCOUNT).create_volume(AvailabilityZone="us-east-1b", Size=1,
                                                                  Encrypted=True)
    assert vol["Encrypted"] is True


def populate(ctx: Ctx) -> None:
    """1,000 volumes (every 4th encrypted, tagged) in the describe account; untimed."""
    ec2 = ctx.client("ec2", account=DESCRIBE_ACCOUNT)
    if "one" in ctx.state:
        return

    def one(i: int) -> None:
        kw = {"Encrypted": True} if i % 4 == 0 else {}
        ec2.create_volume(AvailabilityZone="us-east-1a", Size=1 + i % 8, TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "n", "Value": str(i)}]}], **kw)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(N_VOLUMES)))
    first = ec2.describe_volumes()["Volumes"]
    ctx.state["one"] = first[len(first) // 2]["VolumeId"]
    assert len(first) >= N_VOLUMES, len(first)


def describe_all(ctx: Ctx) -> None:
    vols = ctx.client("ec2", account=DESCRIBE_ACCOUNT).describe_volumes()["Volumes"]
    # moto keeps every access key in one account: another workload's volume may show up there
    assert len(vols) == N_VOLUMES or (ctx.side == "moto" and len(vols) >= N_VOLUMES), len(vols)


def describe_two_pages(ctx: Ctx) -> None:
    ec2 = ctx.client("ec2", account=DESCRIBE_ACCOUNT)
    page = ec2.describe_volumes(MaxResults=500)
    rest = ec2.describe_volumes(MaxResults=500, NextToken=page["NextToken"])
    assert len(page["Volumes"]) + len(rest["Volumes"]) == N_VOLUMES


def describe_filtered(ctx: Ctx) -> None:
    vols = ctx.client("ec2", account=DESCRIBE_ACCOUNT).describe_volumes(
        Filters=[{"Name": "encrypted", "Values": ["true"]}])["Volumes"]
    assert len(vols) == N_VOLUMES // 4, len(vols)


def describe_one(ctx: Ctx) -> None:
    vols = ctx.client("ec2", account=DESCRIBE_ACCOUNT).describe_volumes(VolumeIds=[ctx.state["one"]])["Volumes"]
    assert len(vols) == 1


def create_snapshot_setup(ctx: Ctx) -> None:
    if "snap_vol" not in ctx.state:
        ctx.state["snap_vol"] = ctx.client("ec2", account=CREATE_ACCOUNT).create_volume(
            AvailabilityZone="us-east-1a", Size=1)["VolumeId"]


def create_snapshot(ctx: Ctx) -> None:
    snap = ctx.client("ec2", account=CREATE_ACCOUNT).create_snapshot(VolumeId=ctx.state["snap_vol"])
    assert snap["SnapshotId"].startswith("snap-")


def copy_snapshot_setup(ctx: Ctx) -> None:
    """An encrypted volume's snapshot: CopySnapshot without a KmsKeyId keeps its key (R-SNAP-2:
    same key, same region -> the same data key, shared blocks: metadata only)."""
    if "copy_src" not in ctx.state:
        ec2 = ctx.client("ec2", account=CREATE_ACCOUNT)
        vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
        snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
        ctx.state["copy_src"] = snap


def copy_snapshot(ctx: Ctx) -> None:
    snap = ctx.client("ec2", account=CREATE_ACCOUNT).copy_snapshot(SourceSnapshotId=ctx.state["copy_src"],
                                                                   SourceRegion="us-east-1")
    assert snap["SnapshotId"].startswith("snap-")


def _count(tag: bytes, n: int):  # a check of a replayed DescribeVolumes answer
    return lambda body: body.count(tag) >= n


# Raw replay requests (bench/README.md, "Server cost"): the same calls, signed once each.
def raw_create(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "create_volume", dict(AvailabilityZone="us-east-1a", Size=1, VolumeType="gp3"),
                   CREATE_ACCOUNT)


def raw_create_encrypted(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "create_volume", dict(AvailabilityZone="us-east-1b", Size=1, Encrypted=True),
                   CREATE_ACCOUNT)


def raw_snapshot(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "create_snapshot", dict(VolumeId=ctx.state["snap_vol"]), CREATE_ACCOUNT)


def raw_copy_snapshot(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "copy_snapshot", dict(SourceSnapshotId=ctx.state["copy_src"], SourceRegion="us-east-1"),
                   CREATE_ACCOUNT)


def raw_describe_all(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "describe_volumes", {}, DESCRIBE_ACCOUNT, ok=_count(b"<volumeId>", N_VOLUMES))


def raw_describe_filtered(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "describe_volumes", dict(Filters=[{"Name": "encrypted", "Values": ["true"]}]),
                   DESCRIBE_ACCOUNT, ok=_count(b"<volumeId>", N_VOLUMES // 4))


def raw_describe_one(ctx: Ctx) -> RawCall:
    return RawCall("ec2", "describe_volumes", dict(VolumeIds=[ctx.state["one"]]), DESCRIBE_ACCOUNT,
                   ok=_count(b"<volumeId>", 1))


# The describe workloads run first: moto puts every access key in one account, so volumes
# the CreateVolume workloads make would otherwise be counted there.
WORKLOADS = [
    Workload("DescribeVolumes(1000 vols)", describe_all, setup=populate, raw=raw_describe_all),
    # moto ignores MaxResults/NextToken for DescribeVolumes: ebscrypt only.
    Workload("DescribeVolumes(1000 vols, 2 pages)", describe_two_pages, setup=populate, calls_per_iteration=2,
             sides=("ebscrypt",)),
    Workload("DescribeVolumes(1000 vols, encrypted filter)", describe_filtered, setup=populate,
             raw=raw_describe_filtered),
    Workload("DescribeVolumes(1 id of 1000)", describe_one, setup=populate, raw=raw_describe_one),
    Workload("CreateVolume", create_volume, raw=raw_create, many_clients=True),
    Workload("CreateVolume(encrypted)", create_encrypted_volume, raw=raw_create_encrypted, many_clients=True),
    Workload("CreateSnapshot", create_snapshot, setup=create_snapshot_setup, raw=raw_snapshot, many_clients=True),
    Workload("CopySnapshot(same key)", copy_snapshot, setup=copy_snapshot_setup, raw=raw_copy_snapshot,
             many_clients=True),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))
