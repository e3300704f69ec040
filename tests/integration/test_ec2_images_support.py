"""Helpers shared by the image / instance / template / golden-AMI integration tests.

(Named ``test_ec2_images_support`` so it sits inside ec2images' test files; it holds no
tests.) Every test takes fresh account ids from :func:`new_account`, so account settings
(EBD, default key) and listings of one test never meet another's on the session server.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

BLOCK = 524288
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"

_counter = itertools.count(1)
_run = os.getpid() % 1000


def new_account() -> str:
    """A 12-digit account id no other test (or member) uses."""
    return f"77{_run:03d}{next(_counter):07d}"


def error_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response["Error"]
    return err["Code"], err.get("Message", "")


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_snapshot(ebs: Any, blocks: dict[int, bytes], *, volume_size: int = 1, **start: Any) -> str:
    """A completed snapshot holding ``blocks`` (EBS direct APIs)."""
    snap = ebs.start_snapshot(VolumeSize=volume_size, **start)
    sid = snap["SnapshotId"]
    for index, data in blocks.items():
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                               Checksum=sha(data), ChecksumAlgorithm="SHA256")
    h = hashlib.sha256()
    for index in sorted(blocks):
        h.update(hashlib.sha256(blocks[index]).digest())
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks),
                          Checksum=base64.b64encode(h.digest()).decode(),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    return sid


def read_blocks(ebs: Any, snapshot_id: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    token = None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **({"NextToken": token} if token else {}))
        for block in page["Blocks"]:
            got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"],
                                         BlockToken=block["BlockToken"])
            out[block["BlockIndex"]] = got["BlockData"].read()
        token = page.get("NextToken")
        if not token:
            return out


def pattern(tag: str, index: int = 0) -> bytes:
    seed = hashlib.sha256(f"{tag}:{index}".encode()).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


def empty_snapshot(ec2: Any, *, size: int = 1, encrypted: bool | None = None, kms_key_id: str | None = None,
                   zone: str | None = None) -> str:
    """A completed snapshot of a new (empty) volume, through CreateVolume + CreateSnapshot."""
    region = ec2.meta.region_name
    kw: dict[str, Any] = {"AvailabilityZone": zone or f"{region}a", "Size": size}
    if encrypted is not None:
        kw["Encrypted"] = encrypted
    if kms_key_id:
        kw["KmsKeyId"] = kms_key_id
    vol = ec2.create_volume(**kw)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol])
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    ec2.delete_volume(VolumeId=vol)
    return snap


def register(ec2: Any, name: str, root_snapshot: str, *data: tuple[str, str], wait: bool = True) -> str:
    """RegisterImage over a root snapshot (/dev/xvda) and data snapshots ((device, snap))."""
    mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root_snapshot}}]
    mappings += [{"DeviceName": device, "Ebs": {"SnapshotId": snap}} for device, snap in data]
    image_id = ec2.register_image(Name=name, RootDeviceName="/dev/xvda", Architecture="x86_64",
                                  VirtualizationType="hvm", EnaSupport=True,
                                  BlockDeviceMappings=mappings)["ImageId"]
    if wait:
        ec2.get_waiter("image_available").wait(ImageIds=[image_id])
    return image_id


def image(ec2: Any, image_id: str) -> dict[str, Any]:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]


def snapshots_of(ec2: Any, image_id: str) -> dict[str, dict[str, Any]]:
    """device → the DescribeSnapshots record of that mapping's snapshot."""
    img = image(ec2, image_id)
    out = {}
    for m in img["BlockDeviceMappings"]:
        snap_id = m.get("Ebs", {}).get("SnapshotId")
        if snap_id:
            out[m["DeviceName"]] = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
    return out


def key_policy(owner: str, *others: str) -> str:
    statements: list[dict[str, Any]] = [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{owner}:root"}, "Action": "kms:*", "Resource": "*",
    }]
    if others:
        statements.append({
            "Sid": "Allow use of the key by other accounts", "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam::{o}:root" for o in others]},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                       "kms:DescribeKey", "kms:CreateGrant"],
            "Resource": "*",
        })
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def new_key(kms: Any, description: str = "ebscrypt test key") -> str:
    """A symmetric customer managed key; returns its ARN."""
    return kms.create_key(Description=description)["KeyMetadata"]["Arn"]


def volumes_of(ec2: Any, instance_id: str) -> dict[str, dict[str, Any]]:
    """device → DescribeVolumes record of each volume attached to the instance."""
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    out = {}
    for m in inst["BlockDeviceMappings"]:
        out[m["DeviceName"]] = ec2.describe_volumes(VolumeIds=[m["Ebs"]["VolumeId"]])["Volumes"][0]
    return out


def instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def managed_ebs_key(kms: Any) -> str:
    return kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
