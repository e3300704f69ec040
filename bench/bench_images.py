"""Image and instance workloads, ebscrypt next to moto_server (both started by the harness):

- DescribeImages(Owners=['self']) with 50 images of the account present (the headline
  figure of issue 4): each ebscrypt image has a root and a data snapshot, every other
  one encrypted, so the answer carries real block device mappings
- DescribeImages(ImageIds=[one of 50])
- DescribeImages(Owners=['self'], filter block-device-mapping.encrypted=true)
- DescribeInstances with 20 running instances

    python bench/bench_images.py               # or: python bench/run.py --only Images
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, Workload, main

IMAGE_ACCOUNT = "710000000001"
N_IMAGES = 50
N_INSTANCES = 20


def _snapshot(ec2, encrypted: bool) -> str:
    kw = {"Encrypted": True} if encrypted else {}
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, **kw)["VolumeId"]
    for _ in range(200):  # until available (ebscrypt: a job; moto: at once)
        if ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "available":
            break
        time.sleep(0.02)
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    for _ in range(200):
        if ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["State"] == "completed":
            break
        time.sleep(0.02)
    return snap


def populate(ctx: Ctx) -> None:
    """N_IMAGES images (root + data snapshot) in the image account; untimed."""
    if "images" in ctx.state:
        return
    ec2 = ctx.client("ec2", account=IMAGE_ACCOUNT)

    def one(i: int) -> str:
        root, data = _snapshot(ec2, False), _snapshot(ec2, i % 2 == 0)
        return ec2.register_image(
            Name=f"bench-image-{i:03d}", RootDeviceName="/dev/xvda", Architecture="x86_64",
            VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root}},
                                 {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": data}}],
        )["ImageId"]

    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(one, range(N_IMAGES)))
    ctx.state["images"] = images
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {i["State"] for i in ec2.describe_images(Owners=["self"])["Images"]}
        if states == {"available"}:
            break
        time.sleep(0.1)
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == N_IMAGES


def populate_instances(ctx: Ctx) -> None:
    populate(ctx)
    if "instances" in ctx.state:
        return
    ec2 = ctx.client("ec2", account=IMAGE_ACCOUNT)
    res = ec2.run_instances(ImageId=ctx.state["images"][0], MinCount=N_INSTANCES, MaxCount=N_INSTANCES,
                            InstanceType="t3.micro")
    ctx.state["instances"] = [i["InstanceId"] for i in res["Instances"]]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
        if states == {"running"}:
            break
        time.sleep(0.1)


def describe_self(ctx: Ctx) -> None:
    images = ctx.client("ec2", account=IMAGE_ACCOUNT).describe_images(Owners=["self"])["Images"]
    assert len(images) == N_IMAGES, len(images)


def describe_one(ctx: Ctx) -> None:
    one = ctx.state["images"][N_IMAGES // 2]
    images = ctx.client("ec2", account=IMAGE_ACCOUNT).describe_images(ImageIds=[one])["Images"]
    assert images[0]["ImageId"] == one


def describe_encrypted(ctx: Ctx) -> None:
    images = ctx.client("ec2", account=IMAGE_ACCOUNT).describe_images(
        Owners=["self"], Filters=[{"Name": "block-device-mapping.encrypted", "Values": ["true"]}])["Images"]
    assert len(images) == N_IMAGES // 2, len(images)


def describe_instances(ctx: Ctx) -> None:
    reservations = ctx.client("ec2", account=IMAGE_ACCOUNT).describe_instances()["Reservations"]
    assert sum(len(r["Instances"]) for r in reservations) == N_INSTANCES


WORKLOADS = [
    Workload("DescribeImages(Owners=self, 50 images)", describe_self, setup=populate),
    Workload("DescribeImages(1 id of 50)", describe_one, setup=populate),
    # moto answers this filter with an HTTP 500, so it is timed on ebscrypt alone
    Workload("DescribeImages(encrypted filter)", describe_encrypted, setup=populate, sides=("ebscrypt",)),
    Workload("DescribeInstances(20 instances)", describe_instances, setup=populate_instances),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))
