"""Launch templates through real boto3 clients, and RunInstances with a template plus
overrides (R-RUN-1 for launch templates)."""

from __future__ import annotations

from typing import Any, Callable

from tests.helpers import (
    empty_snapshot,
    error_of,
    instance,
    managed_ebs_key,
    new_account,
    new_key,
    register,
    volumes_of,
)


def test_create_describe_version_delete(ec2: Any, acct: str) -> None:
    created = ec2.create_launch_template(
        LaunchTemplateName="web-tpl", VersionDescription="first",
        LaunchTemplateData={"ImageId": "ami-0123456789abcdef0", "InstanceType": "t3.micro"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "env", "Value": "test"}]}],
    )["LaunchTemplate"]
    tid = created["LaunchTemplateId"]
    assert tid.startswith("lt-") and created["DefaultVersionNumber"] == 1 and created["LatestVersionNumber"] == 1
    assert created["CreatedBy"] == f"arn:aws:iam::{acct}:root"
    code, _ = error_of(lambda: ec2.create_launch_template(LaunchTemplateName="web-tpl", LaunchTemplateData={"InstanceType": "t3.micro"}))
    assert code == "InvalidLaunchTemplateName.AlreadyExistsException"

    v2 = ec2.create_launch_template_version(LaunchTemplateId=tid, SourceVersion="1", VersionDescription="bigger",
                                            LaunchTemplateData={"InstanceType": "m5.large"})["LaunchTemplateVersion"]
    assert v2["VersionNumber"] == 2 and v2["DefaultVersion"] is False
    assert v2["LaunchTemplateData"] == {"ImageId": "ami-0123456789abcdef0", "InstanceType": "m5.large"}

    listed = ec2.describe_launch_templates(LaunchTemplateNames=["web-tpl"])["LaunchTemplates"]
    assert listed[0]["LatestVersionNumber"] == 2 and listed[0]["Tags"] == [{"Key": "env", "Value": "test"}]
    assert [t["LaunchTemplateId"] for t in ec2.describe_launch_templates(
        Filters=[{"Name": "tag:env", "Values": ["test"]}])["LaunchTemplates"]] == [tid]

    versions = ec2.describe_launch_template_versions(LaunchTemplateId=tid)["LaunchTemplateVersions"]
    assert [v["VersionNumber"] for v in versions] == [2, 1]
    latest = ec2.describe_launch_template_versions(LaunchTemplateName="web-tpl", Versions=["$Latest"])
    assert [v["VersionNumber"] for v in latest["LaunchTemplateVersions"]] == [2]
    default = ec2.describe_launch_template_versions(LaunchTemplateId=tid, Versions=["$Default"])
    assert default["LaunchTemplateVersions"][0]["LaunchTemplateData"]["InstanceType"] == "t3.micro"

    ec2.modify_launch_template(LaunchTemplateId=tid, DefaultVersion="2")
    assert ec2.describe_launch_templates(LaunchTemplateIds=[tid])["LaunchTemplates"][0]["DefaultVersionNumber"] == 2
    res = ec2.delete_launch_template_versions(LaunchTemplateId=tid, Versions=["1", "2"])
    assert [v["VersionNumber"] for v in res["SuccessfullyDeletedLaunchTemplateVersions"]] == [1]
    assert res["UnsuccessfullyDeletedLaunchTemplateVersions"][0]["VersionNumber"] == 2

    deleted = ec2.delete_launch_template(LaunchTemplateName="web-tpl")["LaunchTemplate"]
    assert deleted["LaunchTemplateId"] == tid
    assert error_of(lambda: ec2.describe_launch_templates(LaunchTemplateIds=[tid])) == (
        "InvalidLaunchTemplateId.NotFound",
        f"The specified launch template, with template ID {tid}, does not exist.")
    assert error_of(lambda: ec2.describe_launch_templates(LaunchTemplateNames=["web-tpl"]))[0] == (
        "InvalidLaunchTemplateName.NotFoundException")


def test_template_refuses_kms_key_without_encrypted(ec2: Any, kms: Any) -> None:
    code, _ = error_of(lambda: ec2.create_launch_template(LaunchTemplateName="bad-tpl", LaunchTemplateData={
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"KmsKeyId": new_key(kms)}}]}))
    assert code == "InvalidParameterDependency"
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def test_templates_are_per_account_and_region(aws: Callable[..., Any], ec2: Any, acct: str) -> None:
    ec2.create_launch_template(LaunchTemplateName="mine", LaunchTemplateData={"InstanceType": "t3.micro"})
    assert aws("ec2", account=new_account()).describe_launch_templates()["LaunchTemplates"] == []
    assert aws("ec2", account=acct, region="eu-west-1").describe_launch_templates()["LaunchTemplates"] == []


def test_run_instances_from_template_with_overrides(ec2: Any, kms: Any) -> None:
    """R-RUN-1 through a template: the template's mappings encrypt the volumes; the
    request's mappings override them per device; request parameters override the template's."""
    key_t, key_r = new_key(kms, "template key"), new_key(kms, "request key")
    image_id = register(ec2, "tpl-src", empty_snapshot(ec2), ("/dev/sdb", empty_snapshot(ec2)))
    tid = ec2.create_launch_template(LaunchTemplateName="enc-tpl", LaunchTemplateData={
        "ImageId": image_id, "InstanceType": "c5.large",
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": key_t}},
            {"DeviceName": "/dev/sdb", "Ebs": {"Encrypted": True, "KmsKeyId": key_t}},
        ],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "from", "Value": "template"}]}],
    })["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=tid, SourceVersion="1", LaunchTemplateData={
        "InstanceType": "m5.large"})

    # the default version (1), with per-device overrides and a request InstanceType
    res = ec2.run_instances(MinCount=1, MaxCount=1, InstanceType="t3.small",
                            LaunchTemplate={"LaunchTemplateId": tid},
                            BlockDeviceMappings=[{"DeviceName": "/dev/sdb", "Ebs": {"Encrypted": True, "KmsKeyId": key_r}}])
    iid = res["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
    inst = instance(ec2, iid)
    assert inst["InstanceType"] == "t3.small" and inst["ImageId"] == image_id
    assert {"Key": "from", "Value": "template"} in inst["Tags"]
    vols = volumes_of(ec2, iid)
    assert vols["/dev/xvda"]["KmsKeyId"] == key_t and vols["/dev/sdb"]["KmsKeyId"] == key_r

    # $Latest (version 2) by name, no overrides
    iid2 = ec2.run_instances(MinCount=1, MaxCount=1,
                             LaunchTemplate={"LaunchTemplateName": "enc-tpl", "Version": "$Latest"})["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid2])
    assert instance(ec2, iid2)["InstanceType"] == "m5.large"
    assert {v["KmsKeyId"] for v in volumes_of(ec2, iid2).values()} == {key_t}

    code, _ = error_of(lambda: ec2.run_instances(MinCount=1, MaxCount=1,
                                                 LaunchTemplate={"LaunchTemplateId": tid, "Version": "9"}))
    assert code == "InvalidLaunchTemplateId.VersionNotFound"
    assert managed_ebs_key(kms) not in {v["KmsKeyId"] for v in volumes_of(ec2, iid2).values()}
