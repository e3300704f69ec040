"""A small encrypted-image pipeline built through boto3, shared by the console tests and
docs/screenshots.py: account A (the builder) makes a golden image under its customer key
and shares it with account B, which copies it re-encrypted to its own key; A also has an
unencrypted volume and a second key pending deletion with a snapshot under it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

ZONE = "us-east-1a"


@dataclass
class Scenario:
    a: str
    b: str
    key_a: str  # key id
    key_a_arn: str
    key_b: str
    key_b_arn: str
    doomed_key: str
    volume: str  # A's encrypted volume
    plain_volume: str
    snapshot: str  # A's snapshot of the volume, shared with B
    doomed_snapshot: str
    image: str  # A's image of the snapshot, shared with B
    copy_image: str  # B's re-encrypted copy
    copy_snapshot: str


def key_shared_with(kms: Any, key_id: str, other: str) -> None:
    """Let ``other`` use ``key_id`` (R-SHARE-4) through the key policy."""
    policy = json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    policy["Statement"].append({"Sid": "share", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{other}:root"},
                                "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*",
                                           "kms:GenerateDataKeyWithoutPlaintext"], "Resource": "*"})
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))


def build(client: Callable[..., Any], a: str, b: str) -> Scenario:
    ec2a, kmsa, ec2b, kmsb = client("ec2", a), client("kms", a), client("ec2", b), client("kms", b)
    key_a = kmsa.create_key(Description="golden images")["KeyMetadata"]
    kmsa.create_alias(AliasName="alias/golden", TargetKeyId=key_a["KeyId"])
    key_shared_with(kmsa, key_a["KeyId"], b)
    key_b = kmsb.create_key(Description="team B")["KeyMetadata"]
    kmsb.create_alias(AliasName="alias/team-b", TargetKeyId=key_b["KeyId"])

    vol = ec2a.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True, KmsKeyId="alias/golden")["VolumeId"]
    plain = ec2a.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2a.get_waiter("volume_available").wait(VolumeIds=[vol, plain], WaiterConfig={"Delay": 1})
    snap = ec2a.create_snapshot(VolumeId=vol, Description="golden root")["SnapshotId"]
    ec2a.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
    image = ec2a.register_image(Name="golden-1", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                                BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]
    ec2a.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig={"Delay": 1})
    ec2a.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission", OperationType="add",
                                   UserIds=[b])
    ec2a.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": b}]})

    copy = ec2b.copy_image(SourceImageId=image, SourceRegion="us-east-1", Name="golden-1-team-b", Encrypted=True,
                           KmsKeyId=key_b["Arn"])["ImageId"]
    ec2b.get_waiter("image_available").wait(ImageIds=[copy], WaiterConfig={"Delay": 1})
    copy_snap = ec2b.describe_images(ImageIds=[copy])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]

    doomed = kmsa.create_key(Description="old builds")["KeyMetadata"]
    dvol = ec2a.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=True, KmsKeyId=doomed["KeyId"])["VolumeId"]
    ec2a.get_waiter("volume_available").wait(VolumeIds=[dvol], WaiterConfig={"Delay": 1})
    dsnap = ec2a.create_snapshot(VolumeId=dvol)["SnapshotId"]
    ec2a.get_waiter("snapshot_completed").wait(SnapshotIds=[dsnap], WaiterConfig={"Delay": 1})
    ec2a.delete_volume(VolumeId=dvol)
    kmsa.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)
    return Scenario(a, b, key_a["KeyId"], key_a["Arn"], key_b["KeyId"], key_b["Arn"], doomed["KeyId"], vol, plain,
                    snap, dsnap, image, copy, copy_snap)
