"""CreateTags / DeleteTags / DescribeTags (generic tags for every resource type), and the
volume/instance interplay ec2core owns: AttachVolume, DetachVolume, VolumeInUse, CreateSnapshots."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.helpers import error_code, final_snapshot, final_volume, make_snapshot, new_account, volume

AZ = "us-east-1a"


@pytest.fixture
def acct() -> str:
    return new_account("33")


@pytest.fixture
def ec2(aws, acct):
    return aws("ec2", account=acct)


def test_create_describe_delete_tags(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    snap = make_snapshot(ec2)
    ec2.create_tags(Resources=[vol["VolumeId"], snap["SnapshotId"]],
                    Tags=[{"Key": "Name", "Value": "x"}, {"Key": "env", "Value": "dev"}])
    tags = ec2.describe_tags()["Tags"]
    assert {(t["ResourceId"], t["ResourceType"], t["Key"], t["Value"]) for t in tags} == {
        (vol["VolumeId"], "volume", "Name", "x"), (vol["VolumeId"], "volume", "env", "dev"),
        (snap["SnapshotId"], "snapshot", "Name", "x"), (snap["SnapshotId"], "snapshot", "env", "dev"),
    }
    only_vol = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["volume"]}])["Tags"]
    assert {t["ResourceId"] for t in only_vol} == {vol["VolumeId"]}
    by_key = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["env"]}])["Tags"]
    assert len(by_key) == 2
    # overwrite a value, then delete: with a non-matching value nothing goes, without a value it goes
    ec2.create_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": "env", "Value": "prod"}])
    assert {"Key": "env", "Value": "prod"} in volume(ec2, vol["VolumeId"])["Tags"]
    ec2.delete_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": "env", "Value": "dev"}])
    assert {"Key": "env", "Value": "prod"} in volume(ec2, vol["VolumeId"])["Tags"]
    ec2.delete_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": "env"}])
    assert volume(ec2, vol["VolumeId"])["Tags"] == [{"Key": "Name", "Value": "x"}]
    ec2.delete_tags(Resources=[vol["VolumeId"]])
    assert volume(ec2, vol["VolumeId"])["Tags"] == []  # an empty tagSet, as AWS sends it


def test_tags_paging(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    ec2.create_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": f"k{i:02d}", "Value": "v"} for i in range(12)])
    pages = list(ec2.get_paginator("describe_tags").paginate(PaginationConfig={"PageSize": 5}))
    assert [len(p["Tags"]) for p in pages] == [5, 5, 2]


def test_tag_errors(aws, ec2) -> None:
    with pytest.raises(ClientError) as err:
        ec2.create_tags(Resources=["vol-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}])
    assert error_code(err.value) == "InvalidVolume.NotFound"
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    with pytest.raises(ClientError) as err:
        ec2.create_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": "aws:reserved", "Value": "b"}])
    assert error_code(err.value) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:  # another account cannot tag it
        aws("ec2", account=new_account("33")).create_tags(Resources=[vol["VolumeId"]],
                                                           Tags=[{"Key": "a", "Value": "b"}])
    assert error_code(err.value) == "InvalidVolume.NotFound"
    with pytest.raises(ClientError) as err:
        ec2.create_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": f"k{i}", "Value": ""} for i in range(51)])
    assert error_code(err.value) == "TagLimitExceeded"


def test_tags_of_a_shared_snapshot_stay_private(aws, ec2) -> None:
    other = new_account("33")
    snap = make_snapshot(ec2)
    ec2.create_tags(Resources=[snap["SnapshotId"]], Tags=[{"Key": "secret", "Value": "s"}])
    ec2.modify_snapshot_attribute(SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission",
                                  OperationType="add", UserIds=[other])
    seen = aws("ec2", account=other).describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"][0]
    assert seen["Tags"] == []  # the owner's tags are not shown; the empty tagSet is


# ------------------------------------------------------------------ attachments (with ec2images' instances)


def _instance(ec2) -> dict:
    images = ec2.describe_images(Owners=["self"])["Images"]
    snap = make_snapshot(ec2, size=8)
    image = ec2.register_image(Name=f"t-{snap['SnapshotId']}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                     "Ebs": {"SnapshotId": snap["SnapshotId"]}}],
                               Architecture="x86_64", VirtualizationType="hvm")
    del images
    ec2.get_waiter("image_available").wait(ImageIds=[image["ImageId"]], WaiterConfig={"Delay": 1})
    inst = ec2.run_instances(ImageId=image["ImageId"], InstanceType="t3.micro", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": AZ})["Instances"][0]
    ec2.get_waiter("instance_running").wait(InstanceIds=[inst["InstanceId"]], WaiterConfig={"Delay": 1})
    return inst


def test_attach_detach_and_volume_in_use(ec2) -> None:
    inst = _instance(ec2)
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True)
    final_volume(ec2, vol["VolumeId"])
    att = ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdf")
    assert att["State"] == "attaching"
    got = volume(ec2, vol["VolumeId"])
    assert got["State"] == "in-use" and got["Attachments"][0]["InstanceId"] == inst["InstanceId"]
    only = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst["InstanceId"]]}])
    assert vol["VolumeId"] in {v["VolumeId"] for v in only["Volumes"]}
    with pytest.raises(ClientError) as err:
        ec2.delete_volume(VolumeId=vol["VolumeId"])
    assert error_code(err.value) == "VolumeInUse"
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdg")
    assert error_code(err.value) == "VolumeInUse"
    # CreateSnapshots: one snapshot per attached volume, each under the volume's own key
    snaps = ec2.create_snapshots(InstanceSpecification={"InstanceId": inst["InstanceId"]},
                                 Description="all")["Snapshots"]
    by_volume = {s["VolumeId"]: s for s in snaps}
    assert vol["VolumeId"] in by_volume and len(snaps) >= 2
    done = final_snapshot(ec2, by_volume[vol["VolumeId"]]["SnapshotId"])
    assert done["Encrypted"] is True and done["KmsKeyId"] == vol["KmsKeyId"]
    ec2.detach_volume(VolumeId=vol["VolumeId"])
    assert volume(ec2, vol["VolumeId"])["State"] == "available"
    ec2.delete_volume(VolumeId=vol["VolumeId"])


def test_attach_to_unknown_instance(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId="i-0123456789abcdef0", Device="/dev/sdf")
    assert error_code(err.value) == "InvalidInstanceID.NotFound"
