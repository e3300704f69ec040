"""THE golden-AMI path, end to end through real boto3 clients, with real bytes.

Builder account B: an instance whose root comes from a snapshot holding data, with data
volumes under different keys → CreateImage (several keys, R-IMG-2) → CopyImage re-encrypted
to one key (R-IMG-1) → shared with consumer account C (launch permission + snapshot
permission + KMS key policy via PutKeyPolicy, R-SHARE-1/4) → C copies it to its own key
and launches it (R-RUN-1). The data written at the start reads back unchanged at the end
(R-DATA-1). And the refusal: when the key policy does not name C, C's copy ends ``failed``
and a direct launch ends ``terminated`` (R-SHARE-4, R-KEY-6).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.helpers import (
    REGION,
    error_of,
    image,
    instance,
    key_policy,
    new_account,
    new_key,
    pattern,
    read_blocks,
    snapshots_of,
    upload_snapshot,
    volumes_of,
)


def build_golden(aws: Callable[..., Any], builder: str) -> dict[str, Any]:
    """Builder's side up to the re-encrypted golden image; returns ids, keys and data."""
    ec2, kms, ebs = aws("ec2", account=builder), aws("kms", account=builder), aws("ebs", account=builder)
    key_root, key_data1, key_data2, key_golden = (new_key(kms, n) for n in ("root", "data-1", "data-2", "golden"))

    # a base image whose root snapshot holds real bytes, encrypted under key_root
    data = {0: pattern("root", 0), 5: pattern("root", 5)}
    root_snap = upload_snapshot(ebs, data, volume_size=1, Encrypted=True, KmsKeyArn=key_root)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[root_snap])
    base = ec2.register_image(Name="base-os", RootDeviceName="/dev/xvda", Architecture="x86_64",
                              VirtualizationType="hvm", EnaSupport=True,
                              BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root_snap}}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[base])

    # an instance with two data volumes under two more keys (seed 000, "unique CMKs")
    iid = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="m5.large", BlockDeviceMappings=[
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1, "Encrypted": True, "KmsKeyId": key_data1}},
        {"DeviceName": "/dev/sdg", "Ebs": {"VolumeSize": 2, "Encrypted": True, "KmsKeyId": key_data2}},
    ])["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
    vols = volumes_of(ec2, iid)
    assert {d: v["KmsKeyId"] for d, v in vols.items()} == {
        "/dev/xvda": key_root, "/dev/sdf": key_data1, "/dev/sdg": key_data2}

    # CreateImage: one snapshot per volume, each under its volume's key (R-IMG-2)
    multi = ec2.create_image(InstanceId=iid, Name="golden-multikey", NoReboot=True)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[multi])
    multi_snaps = snapshots_of(ec2, multi)
    assert {d: s["KmsKeyId"] for d, s in multi_snaps.items()} == {
        "/dev/xvda": key_root, "/dev/sdf": key_data1, "/dev/sdg": key_data2}
    assert read_blocks(ebs, multi_snaps["/dev/xvda"]["SnapshotId"]) == data

    # CopyImage re-encrypted to one key (R-IMG-1, R-OUT-2)
    golden = ec2.copy_image(Name="golden", SourceImageId=multi, SourceRegion=REGION, Encrypted=True,
                            KmsKeyId=key_golden, Description="golden AMI")["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[golden])
    golden_snaps = snapshots_of(ec2, golden)
    assert {s["KmsKeyId"] for s in golden_snaps.values()} == {key_golden}
    assert read_blocks(ebs, golden_snaps["/dev/xvda"]["SnapshotId"]) == data
    return {"ec2": ec2, "kms": kms, "golden": golden, "key_golden": key_golden, "snaps": golden_snaps,
            "data": data, "instance": iid}


def share(b: dict[str, Any], consumer: str) -> None:
    """Launch permission for the image, createVolumePermission for its snapshots."""
    ec2 = b["ec2"]
    ec2.modify_image_attribute(ImageId=b["golden"], LaunchPermission={"Add": [{"UserId": consumer}]})
    for snap in b["snaps"].values():
        ec2.modify_snapshot_attribute(SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission",
                                      OperationType="add", UserIds=[consumer])


def test_golden_ami_path(aws: Callable[..., Any]) -> None:
    builder, consumer = new_account(), new_account()
    b = build_golden(aws, builder)
    # share with the consumer: image + snapshots + the key policy naming the consumer
    share(b, consumer)
    b["kms"].put_key_policy(KeyId=b["key_golden"], PolicyName="default", Policy=key_policy(builder, consumer))

    ec2_c, kms_c, ebs_c = aws("ec2", account=consumer), aws("kms", account=consumer), aws("ebs", account=consumer)
    shared = ec2_c.describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in shared] == [b["golden"]] and shared[0]["OwnerId"] == builder

    # best practice (R-SHARE-4): copy to a key the consumer controls, then launch the copy
    own_key = new_key(kms_c, "consumer's key")
    mine = ec2_c.copy_image(Name="golden-local", SourceImageId=b["golden"], SourceRegion=REGION,
                            Encrypted=True, KmsKeyId=own_key)["ImageId"]
    ec2_c.get_waiter("image_available").wait(ImageIds=[mine])
    my_snaps = snapshots_of(ec2_c, mine)
    assert {s["KmsKeyId"] for s in my_snaps.values()} == {own_key}
    assert {s["OwnerId"] for s in my_snaps.values()} == {consumer}
    assert read_blocks(ebs_c, my_snaps["/dev/xvda"]["SnapshotId"]) == b["data"]

    iid = ec2_c.run_instances(ImageId=mine, MinCount=1, MaxCount=1, InstanceType="t3.small")["Instances"][0]["InstanceId"]
    ec2_c.get_waiter("instance_running").wait(InstanceIds=[iid])
    vols = volumes_of(ec2_c, iid)
    assert set(vols) == {"/dev/xvda", "/dev/sdf", "/dev/sdg"}
    assert {v["KmsKeyId"] for v in vols.values()} == {own_key}
    assert vols["/dev/sdg"]["Size"] == 2

    # the bytes survived launch → image → copy → share → copy → launch: image the
    # consumer's instance and read its root snapshot back
    final = ec2_c.create_image(InstanceId=iid, Name="consumer-final")["ImageId"]
    ec2_c.get_waiter("image_available").wait(ImageIds=[final])
    assert read_blocks(ebs_c, snapshots_of(ec2_c, final)["/dev/xvda"]["SnapshotId"]) == b["data"]

    # the builder revoking the key policy leaves the consumer's own copy usable
    b["kms"].put_key_policy(KeyId=b["key_golden"], PolicyName="default", Policy=key_policy(builder))
    again = ec2_c.run_instances(ImageId=mine, MinCount=1, MaxCount=1, InstanceType="t3.small")["Instances"][0]["InstanceId"]
    ec2_c.get_waiter("instance_running").wait(InstanceIds=[again])


def test_golden_ami_refused_when_key_policy_does_not_name_recipient(aws: Callable[..., Any]) -> None:
    builder, consumer = new_account(), new_account()
    b = build_golden(aws, builder)
    share(b, consumer)  # image and snapshots shared, but the key policy names only the builder
    ec2_c, kms_c = aws("ec2", account=consumer), aws("kms", account=consumer)
    assert [i["ImageId"] for i in ec2_c.describe_images(ExecutableUsers=["self"])["Images"]] == [b["golden"]]

    copy = ec2_c.copy_image(Name="golden-local", SourceImageId=b["golden"], SourceRegion=REGION,
                            Encrypted=True, KmsKeyId=new_key(kms_c))["ImageId"]
    with pytest.raises(Exception) as waited:
        ec2_c.get_waiter("image_available").wait(ImageIds=[copy])
    assert "failed" in str(waited.value)
    img = image(ec2_c, copy)
    assert img["State"] == "failed" and img["StateReason"]["Code"] == "Client.InvalidKMSKey.InvalidState"
    assert b["key_golden"].split("/")[-1] in img["StateReason"]["Message"]

    iid = ec2_c.run_instances(ImageId=b["golden"], MinCount=1, MaxCount=1,
                              InstanceType="t3.small")["Instances"][0]["InstanceId"]
    with pytest.raises(Exception):
        ec2_c.get_waiter("instance_running").wait(InstanceIds=[iid])
    inst = instance(ec2_c, iid)
    assert inst["State"]["Name"] == "terminated"
    assert inst["StateReason"] == {"Code": "Client.InvalidKMSKey.InvalidState",
                                   "Message": "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"}
    # nothing of the consumer's is left running or holding volumes
    assert ec2_c.describe_volumes()["Volumes"] == []
    # and the golden image is untouched for its owner
    assert image(b["ec2"], b["golden"])["State"] == "available"
    assert error_of(lambda: ec2_c.deregister_image(ImageId=b["golden"]))[0] == "AuthFailure"
