"""Responses carry the empty lists AWS always sends, and ListAliases the predefined AWS
aliases that have no key yet (issue 10 item 9; R-WIRE).

Ansible's amazon.aws ec2_snapshot failed with ``KeyError: 'Tags'`` on CreateSnapshot of a
snapshot made without tags: AWS answers ``<tagSet/>`` there. The table of such members and
the evidence for each entry is ebscrypt/wire/codec/ec2_always.py.
"""

from __future__ import annotations

from typing import Any, Callable

from tests.helpers import new_account

PREDEFINED = {"alias/aws/acm", "alias/aws/dynamodb", "alias/aws/ebs", "alias/aws/rds", "alias/aws/s3"}


def test_ec2_answers_carry_the_lists_aws_always_sends(aws: Callable[..., Any]) -> None:
    ec2 = aws("ec2", account=new_account())
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    assert vol["Tags"] == []
    assert "Attachments" not in vol  # AWS: "not returned by CreateVolume"
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol["VolumeId"]], WaiterConfig={"Delay": 0.2})
    described = ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"][0]
    assert (described["Tags"], described["Attachments"]) == ([], [])

    snap = ec2.create_snapshot(VolumeId=vol["VolumeId"])  # no TagSpecifications: the Ansible case
    assert snap["Tags"] == []
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap["SnapshotId"]], WaiterConfig={"Delay": 0.2})
    assert ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"][0]["Tags"] == []
    copy = ec2.copy_snapshot(SourceSnapshotId=snap["SnapshotId"], SourceRegion="us-east-1")
    assert copy["Tags"] == []

    image = ec2.register_image(Name="shapes", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap["SnapshotId"]}}])["ImageId"]
    img = ec2.describe_images(ImageIds=[image])["Images"][0]
    assert [m["DeviceName"] for m in img["BlockDeviceMappings"]] == ["/dev/xvda"]

    run = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    for reservation in (run, ec2.describe_instances(InstanceIds=[run["Instances"][0]["InstanceId"]])[
            "Reservations"][0]):
        assert reservation["Groups"] == []
        inst = reservation["Instances"][0]
        assert inst["ProductCodes"] == []
        assert isinstance(inst["BlockDeviceMappings"], list) and isinstance(inst["NetworkInterfaces"], list)
        assert [g["GroupName"] for g in inst["SecurityGroups"]] == ["default"]

    # Tags given are still returned as given
    tagged = ec2.create_snapshot(VolumeId=vol["VolumeId"], TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}])
    assert tagged["Tags"] == [{"Key": "k", "Value": "v"}]


def test_list_aliases_includes_predefined_aliases_without_a_key(aws: Callable[..., Any]) -> None:
    account = new_account()
    kms = aws("kms", account=account)
    listed = kms.list_aliases()["Aliases"]
    names = [a["AliasName"] for a in listed]
    assert PREDEFINED <= set(names) and names == sorted(names)
    for alias in listed:
        assert "TargetKeyId" not in alias  # none has a key yet in a new account
        assert alias["AliasArn"] == f"arn:aws:kms:us-east-1:{account}:{alias['AliasName']}"
    key = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["KeyId"]  # made on first use
    key2 = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/mine", TargetKeyId=key2)
    listed = {a["AliasName"]: a for a in kms.list_aliases()["Aliases"]}
    assert listed["alias/aws/ebs"]["TargetKeyId"] == key
    assert listed["alias/mine"]["TargetKeyId"] == key2
    assert "TargetKeyId" not in listed["alias/aws/s3"]
    assert len([n for n in listed if n == "alias/aws/ebs"]) == 1
    # a key's aliases never include predefined ones without a key
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key2)["Aliases"]] == ["alias/mine"]
    # paging walks the merged list
    seen, marker = [], None
    while True:
        page = kms.list_aliases(Limit=4, **({"Marker": marker} if marker else {}))
        seen += [a["AliasName"] for a in page["Aliases"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert seen == sorted(listed)
