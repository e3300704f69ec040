"""The EC2 views the services build from engine records (issue 11 item 7, the view
convention of docs/architecture.md): every key is a member of the output shape it claims
to be (the codec writes shape members only, so a misspelt key would be dropped without a
word), a member AWS leaves out is None, and the codec's answer parses back as AWS's.
R-RUN-1 (an instance's block device mappings), R-LIFE-1 (state changes)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import botocore.parsers
import pytest

from ebscrypt.domain import instance_types as it
from ebscrypt.engines.ec2.image_permissions import ImageAttributeReading
from ebscrypt.engines.ec2.image_records import Image
from ebscrypt.engines.ec2.instance_attributes import AttributeReading
from ebscrypt.engines.ec2.instance_records import Instance
from ebscrypt.engines.ec2.keypairs import KeyPair
from ebscrypt.engines.ec2.instances import InstanceAttrs, InstanceDetail, Reservation, StateChange
from ebscrypt.engines.ec2.network import Rule
from ebscrypt.engines.ec2.records import Attachment, SecurityGroup, SecurityGroupRule, Subnet, Vpc
from ebscrypt.engines.ec2.security_groups import GroupDetail
from ebscrypt.engines.ec2.templates import LaunchTemplate, TemplateVersion, VersionDeletion
from ebscrypt.services.ec2 import images as image_views
from ebscrypt.services.ec2 import instances as instance_views
from ebscrypt.services.ec2 import keypairs as key_pair_views
from ebscrypt.services.ec2 import launch_templates as template_views
from ebscrypt.services.ec2 import security_group_views as rule_views
from ebscrypt.services.ec2 import security_groups as group_views
from ebscrypt.services.ec2 import vpcs as vpc_views
from ebscrypt.wire.codec import codec_for
from tests.unit.test_codec_roundtrip import _response_dict

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def _instance(state: str = it.RUNNING, **changes: Any) -> Instance:
    values: dict[str, Any] = dict(
        instance_id="i-0123456789abcdef0", reservation_id="r-0123456789abcdef0", account="111122223333",
        region="us-east-1", image_id="ami-0123456789abcdef0", instance_type="t3.micro", state=state,
        state_reason_code=None, state_reason_message=None, state_transition_reason=None, launch_time=NOW,
        key_name=None, subnet_id=None, vpc_id=None, security_groups=[], availability_zone="us-east-1a",
        private_ip="172.31.1.2", ami_launch_index=0, root_device_name=None, architecture=None,
        virtualization_type=None, ena_support=None, ebs_optimized=False, client_token=None, launch_plan=[],
        updated_at=NOW,
    )
    values.update(changes)
    return Instance(**values)


def _image(**changes: Any) -> Image:
    values: dict[str, Any] = dict(
        image_id="ami-0123456789abcdef0", account="111122223333", region="us-east-1", name="web",
        description=None, state="available", state_reason_code=None, state_reason_message=None,
        architecture="x86_64", virtualization_type="hvm", root_device_name="/dev/xvda", root_device_type="ebs",
        ena_support=True, sriov_net_support=None, boot_mode=None, tpm_support=None, imds_support=None,
        image_location=None, kernel_id=None, ramdisk_id=None, platform=None, public=False,
        mappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0123456789abcdef0", "VolumeSize": 8,
                                                      "DeleteOnTermination": True, "Iops": None}},
                  {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}],
        source_image_id=None, source_region=None, source_instance_id=None, client_token=None, created_at=NOW,
    )
    values.update(changes)
    return Image(**values)


_VPC = Vpc("vpc-0123456789abcdef0", "111122223333", "us-east-1", "172.31.0.0/16", "vpc-cidr-assoc-1", "dopt-1",
           "default", True, "available", NOW)
_SUBNET = Subnet("subnet-0123456789abcdef0", "111122223333", "us-east-1", _VPC.id, "us-east-1a", "use1-az1",
                 "172.31.0.0/20", True, True, 4091, "available", NOW)
_GROUP = SecurityGroup("sg-0123456789abcdef0", "111122223333", "us-east-1", _VPC.id, "default", "d", True, NOW)


def _attachment(device: str, volume_id: str) -> tuple[Any, Attachment]:
    return SimpleNamespace(id=volume_id), Attachment(volume_id, "i-0123456789abcdef0", device, "attached", NOW, True)


def _members(shape: str) -> set[str]:
    return set(codec_for("ec2").service_model.shape_for(shape).members)


def _keys_outside(view: dict[str, Any], shape: str) -> set[str]:
    return set(view) - _members(shape)


def _full_instance() -> InstanceDetail:
    instance = _instance(
        key_name="ops", subnet_id="subnet-0123456789abcdef0", vpc_id="vpc-0123456789abcdef0",
        security_groups=[{"GroupId": "sg-0123456789abcdef0", "GroupName": "default"}],
        root_device_name="/dev/xvda", ena_support=True, client_token="tok",
        state_reason_code="Client.UserInitiatedShutdown", state_reason_message="m",
    )
    attrs = InstanceAttrs(sriov_net_support="simple", kernel_id="aki-1", ramdisk_id="ari-1")
    return InstanceDetail(instance, [_attachment("/dev/sdf", "vol-2"), _attachment("/dev/xvda", "vol-1")],
                          [{"Key": "role", "Value": "db"}], attrs)


VIEWS = [
    ("Reservation", lambda: instance_views.reservation_view(
        Reservation("r-0123456789abcdef0", "111122223333", [_full_instance()]))),
    ("Instance", lambda: instance_views.instance_view(_full_instance())),
    ("InstanceStatus", lambda: instance_views.status_view(_instance())),
    ("InstanceStateChange", lambda: instance_views.state_change_view(
        StateChange("i-0123456789abcdef0", it.RUNNING, it.STOPPING))),
    ("LaunchTemplate", lambda: template_views.template_view(
        LaunchTemplate("lt-0123456789abcdef0", "web", NOW, "arn:aws:iam::111122223333:root", 1, 2,
                       [{"Key": "k", "Value": "v"}]))),
    ("LaunchTemplateVersion", lambda: template_views.version_view(
        TemplateVersion("lt-0123456789abcdef0", "web", 2, NOW, "arn", True, "second",
                        {"ImageId": "ami-0123456789abcdef0", "NotEchoed": 1}))),
    ("DeleteLaunchTemplateVersionsResponseErrorItem", lambda: template_views.deletion_view(
        VersionDeletion("lt-0123456789abcdef0", "web", 1, "launchTemplateVersionIsDefault", "m"))),
    ("SecurityGroupRule", lambda: rule_views.rule_dict(_rule_row(), "111122223333", {"k": "v"})),
    ("RevokedSecurityGroupRule", lambda: rule_views.revoked_rule_dict(_rule_row())),
    ("KeyPairInfo", lambda: key_pair_views._info(
        KeyPair("key-0123456789abcdef0", "111122223333", "us-east-1", "ops", "rsa", "aa:bb", "ssh-rsa AAAA",
                False, NOW), {"k": "v"}, True)),
    ("Image", lambda: image_views.image_view(_image(), [{"Key": "k", "Value": "v"}])),
    ("BlockDeviceMapping", lambda: image_views.mapping_view(_image().mappings[0])),
    ("Vpc", lambda: vpc_views.vpc_view(_VPC, {"k": "v"})),
    ("Subnet", lambda: vpc_views.subnet_view(_SUBNET, {})),
    ("SecurityGroup", lambda: group_views.group_view(GroupDetail(_GROUP, [_rule_row()]), {},
                                                     {"sg-0fedcba9876543210": _VPC.id})),
    ("IpPermission", lambda: rule_views.rule_as_permission(
        Rule(False, "tcp", 22, 22, cidr_ipv4="10.0.0.0/8"))),
]


def _rule_row() -> SecurityGroupRule:
    return SecurityGroupRule("sgr-0123456789abcdef0", "sg-0123456789abcdef0", "111122223333", "us-east-1", False,
                             "tcp", None, None, None, None, None, "sg-0fedcba9876543210", "111122223333", "", 1)


@pytest.mark.parametrize(("shape", "build"), VIEWS, ids=[v[0] for v in VIEWS])
def test_every_key_of_a_view_is_a_member_of_its_output_shape(shape: str, build: Any) -> None:
    assert _keys_outside(build(), shape) == set()


def test_the_instance_view_leaves_out_what_the_record_lacks() -> None:
    view = instance_views.instance_view(InstanceDetail(_instance(it.TERMINATED), [], [], InstanceAttrs()))
    absent = {k for k, v in view.items() if v is None}
    assert absent == {"PrivateIpAddress", "RootDeviceName", "KeyName", "SubnetId", "VpcId", "EnaSupport",
                      "SriovNetSupport", "KernelId", "RamdiskId", "ClientToken", "StateReason", "Tags"}
    assert view["PrivateDnsName"] == ""  # a terminated instance keeps no address
    assert view["Architecture"] == "x86_64" and view["VirtualizationType"] == "hvm"


def test_run_instances_answer_through_the_codec() -> None:
    """The Reservation view serialized and parsed as botocore does: mappings in device
    order, the lists AWS always sends present, the left-out members absent."""
    codec = codec_for("ec2")
    op = codec.service_model.operation_model("RunInstances")
    bare = InstanceDetail(_instance(it.PENDING), [], [], InstanceAttrs())
    reservation = Reservation("r-0123456789abcdef0", "111122223333", [_full_instance(), bare])
    resp = codec.serialize(op, instance_views.reservation_view(reservation), "rid")
    parsed = botocore.parsers.create_parser("ec2").parse(_response_dict(resp, False), op.output_shape)
    full, empty = parsed["Instances"]
    assert [m["DeviceName"] for m in full["BlockDeviceMappings"]] == ["/dev/sdf", "/dev/xvda"]
    assert full["KeyName"] == "ops" and full["Tags"] == [{"Key": "role", "Value": "db"}]
    assert full["StateReason"] == {"Code": "Client.UserInitiatedShutdown", "Message": "m"}
    assert empty["BlockDeviceMappings"] == [] and empty["ProductCodes"] == [] and empty["SecurityGroups"] == []
    assert not {"KeyName", "Tags", "StateReason", "SubnetId", "ClientToken"} & set(empty)
    assert empty["State"] == {"Code": 0, "Name": "pending"}


def test_attribute_view_answers_one_member() -> None:
    reading = AttributeReading(_instance(), InstanceAttrs(kernel_id="aki-1"), [_attachment("/dev/xvda", "vol-1")])
    assert instance_views.attribute_view("i-1", "kernel", reading) == {"InstanceId": "i-1", "KernelId": {"Value": "aki-1"}}
    assert instance_views.attribute_view("i-1", "ramdisk", reading) == {"InstanceId": "i-1", "RamdiskId": {}}
    mappings = instance_views.attribute_view("i-1", "blockDeviceMapping", reading)["BlockDeviceMappings"]
    assert [m["Ebs"]["VolumeId"] for m in mappings] == ["vol-1"]
    assert _keys_outside(instance_views.attribute_view("i-1", "enaSupport", reading),
                         "InstanceAttribute") == set()


def test_template_version_echoes_only_response_members() -> None:
    view = template_views.version_view(TemplateVersion("lt-0123456789abcdef0", "web", 3, NOW, "arn", False, None,
                                                       {"ImageId": "ami-1", "NotEchoed": 1}))
    assert view["LaunchTemplateData"] == {"ImageId": "ami-1"}
    assert view["VersionDescription"] is None  # left out, as EC2 does for a version without one
    assert _keys_outside(view["LaunchTemplateData"], "ResponseLaunchTemplateData") == set()


_IMAGE_ATTRIBUTES = ["launchPermission", "description", "blockDeviceMapping", "kernel", "ramdisk", "productCodes",
                     "sriovNetSupport", "bootMode", "tpmSupport", "imdsSupport", "deregistrationProtection",
                     "uefiData", "lastLaunchedTime"]


@pytest.mark.parametrize("attribute", _IMAGE_ATTRIBUTES)
def test_image_attribute_view_answers_one_member_of_its_shape(attribute: str) -> None:
    view = image_views.image_attribute_view(ImageAttributeReading(attribute, _image(), []))
    assert _keys_outside(view, "ImageAttribute") == set()
    assert view["ImageId"] == "ami-0123456789abcdef0" and len(view) <= 2


def test_image_attribute_view_values() -> None:
    """R-SHARE (launch permissions): a public image answers the ``all`` group first; an
    attribute the image lacks is an empty value, an empty description is still a value."""
    shared = ImageAttributeReading("launchPermission", _image(public=True), ["444455556666"])
    assert image_views.image_attribute_view(shared)["LaunchPermissions"] == [{"Group": "all"},
                                                                            {"UserId": "444455556666"}]
    assert image_views.image_attribute_view(ImageAttributeReading("kernel", _image(), []))["KernelId"] == {}
    assert image_views.image_attribute_view(
        ImageAttributeReading("description", _image(description=""), []))["Description"] == {"Value": ""}
    assert image_views.image_attribute_view(ImageAttributeReading("description", _image(), []))["Description"] == {}
    mappings = image_views.image_attribute_view(ImageAttributeReading("blockDeviceMapping", _image(), []))
    assert [image_views.mapping_view(m) for m in _image().mappings] == mappings["BlockDeviceMappings"]
    root, ephemeral = mappings["BlockDeviceMappings"]
    assert root["Ebs"] == {"SnapshotId": "snap-0123456789abcdef0", "VolumeSize": 8, "DeleteOnTermination": True}
    assert ephemeral["Ebs"] is None and ephemeral["VirtualName"] == "ephemeral0"  # None: the codec drops it


def test_image_attribute_through_the_codec_leaves_out_uefi_data() -> None:
    codec = codec_for("ec2")
    op = codec.service_model.operation_model("DescribeImageAttribute")
    view = image_views.image_attribute_view(ImageAttributeReading("uefiData", _image(), []))
    resp = codec.serialize(op, view, "rid")
    parsed = botocore.parsers.create_parser("ec2").parse(_response_dict(resp, False), op.output_shape)
    assert parsed["ImageId"] == "ami-0123456789abcdef0" and "UefiData" not in parsed
