"""ModifyInstanceAttribute / DescribeInstanceAttribute / DescribeInstanceStatus through real
boto3 clients: one attribute per call, the attributes EC2 changes only on a stopped
instance, termination and stop protection, DeleteOnTermination driving what
TerminateInstances deletes (R-LIFE-1), R-RUN-2 on an instance type change, ENA support
carried into CreateImage (R-IMG-2's image), and the status checks of the state machine."""

from __future__ import annotations

import base64
from typing import Any, Callable

import pytest

from tests.helpers import empty_snapshot, error_of, image, instance, new_account, register, volumes_of

WAIT = {"Delay": 1, "MaxAttempts": 60}


@pytest.fixture
def ec2(aws: Callable[..., Any]) -> Any:
    return aws("ec2", account=new_account())


@pytest.fixture
def base_image(ec2: Any) -> str:
    return register(ec2, "attr-base", empty_snapshot(ec2, size=1))


def launch(ec2: Any, image_id: str, **kw: Any) -> str:
    kw.setdefault("InstanceType", "t3.micro")
    iid = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, **kw)["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    return iid


def stop(ec2: Any, iid: str) -> None:
    ec2.stop_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=WAIT)


def attribute(ec2: Any, iid: str, name: str) -> Any:
    out = ec2.describe_instance_attribute(InstanceId=iid, Attribute=name)
    assert out["InstanceId"] == iid
    return next(v for k, v in out.items() if k not in ("InstanceId", "ResponseMetadata"))


def state(ec2: Any, iid: str) -> str:
    return instance(ec2, iid)["State"]["Name"]


# ------------------------------------------------------------------------ stopped-only attributes


STOPPED_ONLY = [
    {"InstanceType": {"Value": "m5.large"}},
    {"UserData": {"Value": b"#!/bin/sh\necho hi\n"}},
    {"EnaSupport": {"Value": True}},
    {"EbsOptimized": {"Value": True}},
    {"SriovNetSupport": {"Value": "simple"}},
]


def test_stopped_only_attributes_need_a_stopped_instance(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image)
    for change in STOPPED_ONLY:
        assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, **change)) == (
            "IncorrectInstanceState", f"The instance '{iid}' is not in the 'stopped' state."), change
    # nothing changed
    assert attribute(ec2, iid, "instanceType") == {"Value": "t3.micro"}
    assert attribute(ec2, iid, "userData") == {}
    assert attribute(ec2, iid, "ebsOptimized") == {"Value": False}
    assert attribute(ec2, iid, "sriovNetSupport") == {}

    stop(ec2, iid)
    for change in STOPPED_ONLY:
        ec2.modify_instance_attribute(InstanceId=iid, **change)
    assert attribute(ec2, iid, "instanceType") == {"Value": "m5.large"}
    assert attribute(ec2, iid, "userData") == {"Value": base64.b64encode(b"#!/bin/sh\necho hi\n").decode()}
    assert attribute(ec2, iid, "enaSupport") == {"Value": True}
    assert attribute(ec2, iid, "ebsOptimized") == {"Value": True}
    assert attribute(ec2, iid, "sriovNetSupport") == {"Value": "simple"}
    view = instance(ec2, iid)
    assert (view["InstanceType"], view["EbsOptimized"], view["EnaSupport"], view["SriovNetSupport"]) == (
        "m5.large", True, True, "simple")
    # the new type is the one that starts
    ec2.start_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    assert instance(ec2, iid)["InstanceType"] == "m5.large"


def test_bad_values_change_nothing(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image)
    stop(ec2, iid)
    code, message = error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t3.huge"}))
    assert code == "InvalidInstanceAttributeValue" and "t3.huge" in message
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, SriovNetSupport={"Value": "off"}))[0] == \
        "InvalidParameterValue"
    assert error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, Attribute="userData", Value="not base64!"))[0] == "InvalidParameterValue"
    assert error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, UserData={"Value": b"x" * 16385})) == ("InvalidParameterValue", "User data is limited to 16384 bytes")
    assert error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, InstanceInitiatedShutdownBehavior={"Value": "hibernate"}))[0] == "InvalidParameterValue"
    assert error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, Attribute="disableApiTermination", Value="maybe"))[0] == "InvalidParameterValue"
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, Kernel={"Value": "aki-12345678"}))[0] == \
        "UnsupportedOperation"
    assert attribute(ec2, iid, "instanceType") == {"Value": "t3.micro"}
    assert attribute(ec2, iid, "userData") == {}
    assert attribute(ec2, iid, "instanceInitiatedShutdownBehavior") == {"Value": "stop"}
    assert attribute(ec2, iid, "disableApiTermination") == {"Value": False}


def test_type_change_keeps_r_run_2(ec2: Any, base_image: str) -> None:
    """R-RUN-2: a type without EBS encryption support cannot take an instance whose volumes
    are encrypted; with only unencrypted volumes the same type is fine."""
    enc = launch(ec2, base_image, BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}}])
    plain = launch(ec2, base_image)
    stop(ec2, enc)
    stop(ec2, plain)
    code, message = error_of(lambda: ec2.modify_instance_attribute(InstanceId=enc, InstanceType={"Value": "m1.small"}))
    assert code == "InvalidParameterCombination" and "m1.small" in message
    assert attribute(ec2, enc, "instanceType") == {"Value": "t3.micro"}
    ec2.modify_instance_attribute(InstanceId=plain, InstanceType={"Value": "m1.small"})
    assert instance(ec2, plain)["InstanceType"] == "m1.small"


# ------------------------------------------------------------------------ request form


def test_one_attribute_per_call_and_the_attribute_value_form(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image)
    code, message = error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, SourceDestCheck={"Value": False}, DisableApiTermination={"Value": True}))
    assert code == "InvalidParameterCombination" and message.startswith("Fields for multiple attribute types specified")
    assert error_of(lambda: ec2.modify_instance_attribute(
        InstanceId=iid, Attribute="disableApiStop", Value="true", SourceDestCheck={"Value": False}))[0] == \
        "InvalidParameterCombination"
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid)) == (
        "InvalidParameterCombination", "No attributes specified.")
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, Attribute="disableApiStop"))[0] == \
        "MissingParameter"
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, Attribute="productCodes", Value="x"))[0] == \
        "InvalidParameterValue"
    assert attribute(ec2, iid, "sourceDestCheck") == {"Value": True}
    assert attribute(ec2, iid, "disableApiTermination") == {"Value": False}

    # Attribute + Value (what the AWS CLI's --attribute/--value sends)
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior", Value="terminate")
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="sourceDestCheck", Value="false")
    assert attribute(ec2, iid, "instanceInitiatedShutdownBehavior") == {"Value": "terminate"}
    assert attribute(ec2, iid, "sourceDestCheck") == {"Value": False}
    assert instance(ec2, iid)["SourceDestCheck"] is False


def test_unknown_or_gone_instances(ec2: Any, base_image: str) -> None:
    missing = "i-0123456789abcdef0"
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=missing, SourceDestCheck={"Value": False})) == (
        "InvalidInstanceID.NotFound", f"The instance ID '{missing}' does not exist")
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId="i-nope", SourceDestCheck={"Value": False}))[0] == \
        "InvalidInstanceID.Malformed"
    assert error_of(lambda: ec2.describe_instance_attribute(InstanceId=missing, Attribute="userData"))[0] == \
        "InvalidInstanceID.NotFound"
    iid = launch(ec2, base_image)
    assert error_of(lambda: ec2.describe_instance_attribute(InstanceId=iid, Attribute="colour"))[0] == \
        "InvalidParameterValue"
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, SourceDestCheck={"Value": False}))[0] == \
        "IncorrectInstanceState"


# ------------------------------------------------------------------------ protection


def test_termination_protection(ec2: Any, base_image: str) -> None:
    locked = launch(ec2, base_image, DisableApiTermination=True)
    free = launch(ec2, base_image)
    assert attribute(ec2, locked, "disableApiTermination") == {"Value": True}
    root = volumes_of(ec2, locked)["/dev/xvda"]["VolumeId"]
    message = f"The instance '{locked}' may not be terminated. Modify its 'disableApiTermination' instance " \
              "attribute and try again."
    assert error_of(lambda: ec2.terminate_instances(InstanceIds=[locked])) == ("OperationNotPermitted", message)
    # all or nothing: the unprotected instance of the same call is left alone too
    assert error_of(lambda: ec2.terminate_instances(InstanceIds=[free, locked]))[0] == "OperationNotPermitted"
    assert (state(ec2, locked), state(ec2, free)) == ("running", "running")
    assert ec2.describe_volumes(VolumeIds=[root])["Volumes"][0]["State"] == "in-use"
    # protection does not stop a stop
    stop(ec2, locked)
    ec2.modify_instance_attribute(InstanceId=locked, DisableApiTermination={"Value": False})
    ec2.terminate_instances(InstanceIds=[locked])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[locked], WaiterConfig=WAIT)


def test_stop_protection_guards_stop_and_terminate(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image)
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiStop={"Value": True})
    assert attribute(ec2, iid, "disableApiStop") == {"Value": True}
    assert attribute(ec2, iid, "disableApiTermination") == {"Value": False}  # not set by stop protection
    assert error_of(lambda: ec2.stop_instances(InstanceIds=[iid])) == (
        "OperationNotPermitted",
        f"The instance '{iid}' may not be stopped. Modify its 'disableApiStop' instance attribute and try again.")
    code, message = error_of(lambda: ec2.terminate_instances(InstanceIds=[iid]))
    assert code == "OperationNotPermitted" and "'disableApiStop'" in message
    assert state(ec2, iid) == "running"
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="disableApiStop", Value="false")
    stop(ec2, iid)


# ------------------------------------------------------------------------ DeleteOnTermination


def dot_by_device(mappings: list[dict[str, Any]]) -> dict[str, bool]:
    return {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in mappings}


def test_delete_on_termination_drives_terminate(ec2: Any, base_image: str) -> None:
    """R-LIFE-1: what TerminateInstances deletes is what DeleteOnTermination says now."""
    iid = launch(ec2, base_image)
    zone = instance(ec2, iid)["Placement"]["AvailabilityZone"]
    data = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[data])
    ec2.attach_volume(VolumeId=data, InstanceId=iid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[data])
    root = volumes_of(ec2, iid)["/dev/xvda"]["VolumeId"]
    before = dot_by_device(attribute(ec2, iid, "blockDeviceMapping"))
    assert before == {"/dev/xvda": True, "/dev/sdf": False}

    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, BlockDeviceMappings=[
        {"DeviceName": "/dev/sdf", "Ebs": {"DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdz", "Ebs": {"DeleteOnTermination": True}}])) == (
        "InvalidInstanceAttributeValue", "No device is currently mapped at /dev/sdz")
    assert dot_by_device(attribute(ec2, iid, "blockDeviceMapping")) == before  # unchanged

    ec2.modify_instance_attribute(InstanceId=iid, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": False}},
        {"DeviceName": "/dev/sdf"}])  # no value: true, as EC2 documents
    assert dot_by_device(instance(ec2, iid)["BlockDeviceMappings"]) == {"/dev/xvda": False, "/dev/sdf": True}
    attachment = ec2.describe_volumes(VolumeIds=[data])["Volumes"][0]["Attachments"][0]
    assert attachment["DeleteOnTermination"] is True

    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=WAIT)
    assert ec2.describe_volumes(VolumeIds=[root])["Volumes"][0]["State"] == "available"
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [data]}])["Volumes"] == []


# ------------------------------------------------------------------------ other attributes


def test_user_data_at_launch_and_after(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image, UserData="#cloud-config\n", InstanceInitiatedShutdownBehavior="terminate")
    assert attribute(ec2, iid, "userData") == {"Value": base64.b64encode(b"#cloud-config\n").decode()}
    assert attribute(ec2, iid, "instanceInitiatedShutdownBehavior") == {"Value": "terminate"}
    stop(ec2, iid)
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="userData",
                                  Value=base64.b64encode(b"echo again").decode())
    assert attribute(ec2, iid, "userData") == {"Value": base64.b64encode(b"echo again").decode()}
    assert error_of(lambda: ec2.run_instances(ImageId=base_image, MinCount=1, MaxCount=1,
                                              InstanceInitiatedShutdownBehavior="explode"))[0] == "InvalidParameterValue"
    # no kernel images exist to launch with; refused rather than silently dropped
    assert error_of(lambda: ec2.run_instances(ImageId=base_image, MinCount=1, MaxCount=1,
                                              KernelId="aki-12345678"))[0] == "UnsupportedOperation"
    guarded = launch(ec2, base_image, DisableApiStop=True)
    assert attribute(ec2, guarded, "disableApiStop") == {"Value": True}
    assert error_of(lambda: ec2.stop_instances(InstanceIds=[guarded]))[0] == "OperationNotPermitted"


def test_security_groups(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image)
    view = instance(ec2, iid)
    web = ec2.create_security_group(GroupName="web", Description="web", VpcId=view["VpcId"])["GroupId"]
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[web])
    assert attribute(ec2, iid, "groupSet") == [{"GroupId": web, "GroupName": "web"}]
    assert instance(ec2, iid)["SecurityGroups"] == [{"GroupId": web, "GroupName": "web"}]
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, Groups=["sg-0123456789abcdef0"]))[0] == \
        "InvalidGroup.NotFound"
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[web, view["SecurityGroups"][0]["GroupId"], web])
    assert [g["GroupName"] for g in attribute(ec2, iid, "groupSet")] == ["web", "default"]
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[web])
    assert attribute(ec2, iid, "groupSet") == [{"GroupId": web, "GroupName": "web"}]


def test_ena_support_goes_into_create_image(ec2: Any) -> None:
    """What Packer's ena_support does: stop, EnaSupport=true, CreateImage → the image has it."""
    snap = empty_snapshot(ec2, size=1)
    no_ena = ec2.register_image(Name="no-ena", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                                EnaSupport=False,
                                BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[no_ena], WaiterConfig=WAIT)
    iid = launch(ec2, no_ena)
    assert attribute(ec2, iid, "enaSupport") == {"Value": False}
    stop(ec2, iid)
    ec2.modify_instance_attribute(InstanceId=iid, EnaSupport={"Value": True})
    made = ec2.create_image(InstanceId=iid, Name="with-ena")["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[made], WaiterConfig=WAIT)
    assert image(ec2, made)["EnaSupport"] is True
    assert image(ec2, no_ena)["EnaSupport"] is False


# ------------------------------------------------------------------------ DescribeInstanceStatus


def test_describe_instance_status(ec2: Any, base_image: str) -> None:
    running = launch(ec2, base_image)
    stopped = launch(ec2, base_image)
    stop(ec2, stopped)
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[running], WaiterConfig=WAIT)

    def statuses(**kw: Any) -> dict[str, dict[str, Any]]:
        return {s["InstanceId"]: s for s in ec2.describe_instance_status(**kw)["InstanceStatuses"]}

    only_running = statuses()
    assert set(only_running) == {running}
    ok = only_running[running]
    assert ok["InstanceState"] == {"Code": 16, "Name": "running"}
    assert ok["InstanceStatus"] == {"Status": "ok", "Details": [{"Name": "reachability", "Status": "passed"}]}
    assert ok["SystemStatus"]["Status"] == "ok" and ok["AvailabilityZone"].startswith("us-east-1")
    everyone = statuses(IncludeAllInstances=True)
    assert set(everyone) == {running, stopped}
    assert everyone[stopped]["InstanceState"]["Name"] == "stopped"
    assert everyone[stopped]["InstanceStatus"] == {"Status": "not-applicable"}
    assert set(statuses(IncludeAllInstances=True,
                        Filters=[{"Name": "instance-state-name", "Values": ["stopped"]}])) == {stopped}
    assert set(statuses(IncludeAllInstances=True,
                        Filters=[{"Name": "instance-status.status", "Values": ["ok"]}])) == {running}
    assert statuses(InstanceIds=[stopped]) == {}  # known, but not running
    missing = "i-0123456789abcdef0"
    assert error_of(lambda: ec2.describe_instance_status(InstanceIds=[running, missing])) == (
        "InvalidInstanceID.NotFound", f"The instance ID '{missing}' does not exist")
    assert error_of(lambda: ec2.describe_instance_status(InstanceIds=[running], MaxResults=5))[0] == \
        "InvalidParameterCombination"
    assert error_of(lambda: ec2.describe_instance_status(Filters=[{"Name": "colour", "Values": ["x"]}]))[0] == \
        "InvalidParameterValue"
    pages = list(ec2.get_paginator("describe_instance_status").paginate(
        IncludeAllInstances=True, PaginationConfig={"PageSize": 5}))
    assert {s["InstanceId"] for p in pages for s in p["InstanceStatuses"]} == {running, stopped}
