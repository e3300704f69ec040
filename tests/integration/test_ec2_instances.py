"""Instances through real boto3 clients: R-RUN-1, R-RUN-2, R-RUN-3, R-KEY-3, R-KEY-6 at
launch, R-SHARE-4 at launch, the lifecycle (R-LIFE-1 with default waiters), DescribeInstances
and DescribeInstanceAttribute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import (
    REGION,
    empty_snapshot,
    error_of,
    image,
    instance,
    key_policy,
    managed_ebs_key,
    new_account,
    new_key,
    register,
    volumes_of,
)


@pytest.fixture
def base_image(ec2: Any) -> str:
    """An image with an unencrypted 2 GiB root snapshot."""
    return register(ec2, "base", empty_snapshot(ec2, size=2))


def launch(ec2: Any, image_id: str, *, wait: bool = True, **kw: Any) -> str:
    kw.setdefault("InstanceType", "t3.micro")
    res = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, **kw)
    inst = res["Instances"][0]
    assert inst["State"] == {"Code": 0, "Name": "pending"}
    if wait:
        ec2.get_waiter("instance_running").wait(InstanceIds=[inst["InstanceId"]])
    return inst["InstanceId"]


# ------------------------------------------------------------------------ lifecycle


def test_run_describe_stop_start_terminate(ec2: Any, acct: str, base_image: str) -> None:
    """R-LIFE-1: pending → running, stopping → stopped, pending → running, shutting-down →
    terminated, each through boto3's default waiters; DeleteOnTermination volumes go."""
    assert error_of(lambda: launch(ec2, base_image, wait=False, KeyName="no-such-pair"))[0] == "InvalidKeyPair.NotFound"
    ec2.create_key_pair(KeyName="ops")
    res = ec2.run_instances(ImageId=base_image, MinCount=2, MaxCount=2, InstanceType="m5.large",
                            KeyName="ops", TagSpecifications=[
                                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]},
                                {"ResourceType": "volume", "Tags": [{"Key": "disk", "Value": "root"}]}])
    assert res["OwnerId"] == acct and res["ReservationId"].startswith("r-")
    ids = [i["InstanceId"] for i in res["Instances"]]
    assert [i["AmiLaunchIndex"] for i in res["Instances"]] == [0, 1]
    ec2.get_waiter("instance_running").wait(InstanceIds=ids)
    first = instance(ec2, ids[0])
    assert first["State"]["Name"] == "running" and first["InstanceType"] == "m5.large"
    assert first["ImageId"] == base_image and first["RootDeviceName"] == "/dev/xvda"
    assert first["Placement"]["AvailabilityZone"].startswith(REGION)
    assert first["Tags"] == [{"Key": "Name", "Value": "web"}] and first["KeyName"] == "ops"
    assert first["SubnetId"].startswith("subnet-") and first["VpcId"].startswith("vpc-")
    assert first["SecurityGroups"] and first["SecurityGroups"][0]["GroupName"] == "default"
    root = volumes_of(ec2, ids[0])["/dev/xvda"]
    assert root["State"] == "in-use" and root["Size"] == 2 and root["Attachments"][0]["InstanceId"] == ids[0]
    assert {"Key": "disk", "Value": "root"} in root["Tags"]

    stopping = ec2.stop_instances(InstanceIds=[ids[0]])["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running" and stopping["CurrentState"]["Name"] == "stopping"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[ids[0]])
    assert instance(ec2, ids[0])["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert ec2.start_instances(InstanceIds=[ids[0]])["StartingInstances"][0]["CurrentState"]["Name"] == "pending"
    ec2.get_waiter("instance_running").wait(InstanceIds=[ids[0]])

    # an extra volume attached by the user (DeleteOnTermination false) survives termination
    extra = ec2.create_volume(AvailabilityZone=first["Placement"]["AvailabilityZone"], Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[extra])
    ec2.attach_volume(VolumeId=extra, InstanceId=ids[0], Device="/dev/sdh")
    assert set(volumes_of(ec2, ids[0])) == {"/dev/xvda", "/dev/sdh"}

    term = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {t["CurrentState"]["Name"] for t in term} == {"shutting-down"}
    ec2.get_waiter("instance_terminated").wait(InstanceIds=ids)
    assert error_of(lambda: ec2.describe_volumes(VolumeIds=[root["VolumeId"]]))[0] == "InvalidVolume.NotFound"
    assert ec2.describe_volumes(VolumeIds=[extra])["Volumes"][0]["State"] == "available"
    code, message = error_of(lambda: ec2.start_instances(InstanceIds=[ids[0]]))
    assert code == "IncorrectInstanceState" and ids[0] in message


def test_describe_instances_filters_and_errors(ec2: Any, base_image: str) -> None:
    a = launch(ec2, base_image, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "db"}]}])
    b = launch(ec2, base_image, InstanceType="c5.large")
    ec2.stop_instances(InstanceIds=[b])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[b])

    def ids(**kw: Any) -> set[str]:
        return {i["InstanceId"] for r in ec2.describe_instances(**kw)["Reservations"] for i in r["Instances"]}

    assert ids() == {a, b}
    assert ids(Filters=[{"Name": "instance-state-name", "Values": ["running"]}]) == {a}
    assert ids(Filters=[{"Name": "tag:role", "Values": ["db"]}]) == {a}
    assert ids(Filters=[{"Name": "instance-type", "Values": ["c5.*"]}]) == {b}
    assert ids(Filters=[{"Name": "image-id", "Values": [base_image]}]) == {a, b}
    assert ids(Filters=[{"Name": "instance-id", "Values": [b]}]) == {b}
    vol = instance(ec2, a)["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert ids(Filters=[{"Name": "block-device-mapping.volume-id", "Values": [vol]}]) == {a}
    assert error_of(lambda: ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])) == (
        "InvalidInstanceID.NotFound", "The instance ID 'i-0123456789abcdef0' does not exist")
    assert error_of(lambda: ec2.describe_instances(InstanceIds=["i-xyz"]))[0] == "InvalidInstanceID.Malformed"
    attr = ec2.describe_instance_attribute(InstanceId=a, Attribute="blockDeviceMapping")
    assert attr["BlockDeviceMappings"][0]["Ebs"]["VolumeId"] == vol
    assert ec2.describe_instance_attribute(InstanceId=b, Attribute="instanceType")["InstanceType"] == {"Value": "c5.large"}


def test_instances_are_private_to_account_and_region(aws: Callable[..., Any], ec2: Any, acct: str,
                                                     base_image: str) -> None:
    iid = launch(ec2, base_image, wait=False)
    assert aws("ec2", account=new_account()).describe_instances()["Reservations"] == []
    assert aws("ec2", account=acct, region="eu-west-1").describe_instances()["Reservations"] == []
    code, _ = error_of(lambda: aws("ec2", account=new_account()).terminate_instances(InstanceIds=[iid]))
    assert code == "InvalidInstanceID.NotFound"


# ------------------------------------------------------------------------ R-RUN-1 / R-RUN-3


def test_launch_mappings_encrypt_and_reencrypt_volumes(ec2: Any, kms: Any) -> None:
    """R-RUN-1: one volume per mapping through §2, each mapping's Encrypted/KmsKeyId its own;
    R-RUN-3: encrypted and unencrypted volumes on one instance."""
    key_a, key_b = new_key(kms, "A"), new_key(kms, "B")
    image_id = register(ec2, "launch-src", empty_snapshot(ec2),
                        ("/dev/sdb", empty_snapshot(ec2, encrypted=True, kms_key_id=key_a)),
                        ("/dev/sdc", empty_snapshot(ec2)),
                        ("/dev/sdd", empty_snapshot(ec2, encrypted=True, kms_key_id=key_a)))
    iid = launch(ec2, image_id, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}},                      # R-OUT-5: default key
        {"DeviceName": "/dev/sdb", "Ebs": {"Encrypted": True, "KmsKeyId": key_b}},    # R-OUT-2: re-encrypted
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 3, "VolumeType": "gp3", "Encrypted": True,
                                           "KmsKeyId": key_a, "DeleteOnTermination": False}},  # new empty
    ])                                                                                # sdc, sdd: as the image
    vols = volumes_of(ec2, iid)
    assert set(vols) == {"/dev/xvda", "/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sdf"}
    assert vols["/dev/xvda"]["Encrypted"] and vols["/dev/xvda"]["KmsKeyId"] == managed_ebs_key(kms)
    assert vols["/dev/sdb"]["KmsKeyId"] == key_b
    assert vols["/dev/sdc"]["Encrypted"] is False                                     # R-OUT-6, R-RUN-3
    assert vols["/dev/sdd"]["KmsKeyId"] == key_a                                      # R-OUT-3
    assert vols["/dev/sdf"]["KmsKeyId"] == key_a and vols["/dev/sdf"]["Size"] == 3
    assert vols["/dev/sdf"]["VolumeType"] == "gp3"
    dot = {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in instance(ec2, iid)["BlockDeviceMappings"]}
    assert dot["/dev/xvda"] is True and dot["/dev/sdf"] is False


def test_launch_kms_key_without_encrypted_is_refused(ec2: Any, kms: Any, base_image: str) -> None:
    code, message = error_of(lambda: ec2.run_instances(
        ImageId=base_image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"KmsKeyId": new_key(kms)}}]))
    assert (code, message) == ("InvalidParameterDependency",
                               "The parameter KmsKeyId requires the parameter Encrypted to be set.")
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_volumes()["Volumes"] == []


def test_launch_under_ebd_encrypts_with_default_key(ec2: Any, kms: Any, base_image: str) -> None:
    key = new_key(kms)
    ec2.enable_ebs_encryption_by_default()
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key)
    iid = launch(ec2, base_image, BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": False}}])
    root = volumes_of(ec2, iid)["/dev/xvda"]
    assert root["Encrypted"] is True and root["KmsKeyId"] == key  # R-OUT-7: Encrypted=false has no effect


# ------------------------------------------------------------------------ R-RUN-2


@pytest.mark.parametrize("instance_type,allowed", [
    ("t3.micro", True), ("m5.large", True), ("c3.large", True), ("m3.medium", True), ("r3.large", True),
    ("i2.xlarge", True), ("g2.2xlarge", True), ("a1.large", True), ("cr1.8xlarge", True),
    ("m1.small", False), ("t1.micro", False), ("m2.xlarge", False), ("c1.medium", False),
    ("cc2.8xlarge", False), ("cg1.4xlarge", False), ("hi1.4xlarge", False), ("hs1.8xlarge", False),
])
def test_ebd_refuses_types_without_encryption_support(ec2: Any, base_image: str, instance_type: str,
                                                      allowed: bool) -> None:
    """R-RUN-2: only with EBD on; previous-generation types without EBS encryption refused."""
    ec2.enable_ebs_encryption_by_default()
    if allowed:
        launch(ec2, base_image, wait=False, InstanceType=instance_type)
        return
    code, message = error_of(lambda: launch(ec2, base_image, wait=False, InstanceType=instance_type))
    assert code == "InvalidParameterCombination" and instance_type in message
    assert ec2.describe_instances()["Reservations"] == []


def test_previous_generation_types_run_without_ebd(ec2: Any, base_image: str) -> None:
    iid = launch(ec2, base_image, InstanceType="m1.small")
    assert instance(ec2, iid)["InstanceType"] == "m1.small"
    ec2.enable_ebs_encryption_by_default()
    code, _ = error_of(lambda: ec2.run_instances(ImageId=base_image, MinCount=1, MaxCount=1))  # default m1.small
    assert code == "InvalidParameterCombination"
    assert error_of(lambda: launch(ec2, base_image, InstanceType="x9.nonsense"))[0] == "InvalidParameterValue"


# ------------------------------------------------------------------------ R-KEY-3 / R-KEY-6 / R-SHARE-4


def test_launch_grants_the_service_and_decrypts(server: Any, ec2: Any, kms: Any, acct: str) -> None:
    """R-KEY-3: a launch makes the service create a grant (for an AWS resource) on the key
    and decrypt the volume's data key, on the caller's behalf, audited."""
    key = new_key(kms)
    image_id = register(ec2, "granted", empty_snapshot(ec2, encrypted=True, kms_key_id=key))
    audit = Path(server.data_dir) / "audit" / "kms-audit.jsonl"

    def ec2_uses() -> list[str]:
        out = []
        for line in audit.read_text().splitlines():
            e = json.loads(line)
            if (e.get("userIdentity", {}).get("accountId") == acct and "errorCode" not in e
                    and e.get("userIdentity", {}).get("invokedBy") == "ec2.amazonaws.com"
                    and key.split("/")[-1] in json.dumps(e.get("resources", [])) + json.dumps(e.get("requestParameters", {}))):
                out.append(e["eventName"])
        return out

    before = ec2_uses()
    launch(ec2, image_id)
    after = ec2_uses()[len(before):]
    assert "CreateGrant" in after and "Decrypt" in after
    grants = kms.list_grants(KeyId=key)["Grants"]
    assert any(g["GranteePrincipal"] == "ec2.us-east-1.amazonaws.com" and "Decrypt" in g["Operations"] for g in grants)


@pytest.mark.parametrize("problem", ["disabled", "unknown"])
def test_launch_with_unusable_key_terminates(ec2: Any, kms: Any, base_image: str, problem: str) -> None:
    """R-KEY-6 at launch: the instance ends terminated with Client.InvalidKMSKey.InvalidState."""
    key = "alias/not-there" if problem == "unknown" else new_key(kms)
    if problem == "disabled":
        kms.disable_key(KeyId=key)
    iid = ec2.run_instances(ImageId=base_image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                  "Ebs": {"Encrypted": True, "KmsKeyId": key}}])["Instances"][0]["InstanceId"]
    with pytest.raises(Exception) as waited:
        ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
    assert "terminated" in str(waited.value)
    inst = instance(ec2, iid)
    assert inst["State"]["Name"] == "terminated"
    assert inst["StateReason"] == {"Code": "Client.InvalidKMSKey.InvalidState",
                                   "Message": "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"}
    assert inst["BlockDeviceMappings"] == []
    assert ec2.describe_volumes()["Volumes"] == []


def test_shared_image_launch_needs_key_policy(aws: Callable[..., Any], ec2: Any, kms: Any, acct: str) -> None:
    """R-SHARE-4 at launch: the recipient may launch the shared image (its snapshots need
    not be shared) only once the key policy names it; the volume then takes the
    recipient's default key (R-OUT-4)."""
    key = new_key(kms)
    image_id = register(ec2, "shared-launch", empty_snapshot(ec2, encrypted=True, kms_key_id=key))
    friend = new_account()
    ec2_friend, kms_friend = aws("ec2", account=friend), aws("kms", account=friend)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": friend}]})

    refused = launch(ec2_friend, image_id, wait=False)
    with pytest.raises(Exception):
        ec2_friend.get_waiter("instance_running").wait(InstanceIds=[refused])
    assert instance(ec2_friend, refused)["StateReason"]["Code"] == "Client.InvalidKMSKey.InvalidState"

    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(acct, friend))
    ok = launch(ec2_friend, image_id)
    root = volumes_of(ec2_friend, ok)["/dev/xvda"]
    assert root["Encrypted"] and root["KmsKeyId"] == managed_ebs_key(kms_friend)
    # a third account without launch permission cannot launch it at all
    code, _ = error_of(lambda: launch(aws("ec2", account=new_account()), image_id, wait=False))
    assert code == "InvalidAMIID.NotFound"
    assert image(ec2, image_id)["State"] == "available"


# ------------------------------------------------------------------------ R-IMG-2 (CreateImage)


def test_create_image_keeps_each_volume_key(ec2: Any, kms: Any, base_image: str) -> None:
    """R-IMG-2 / seed 000: an instance with volumes under several keys → an image whose
    snapshots keep each volume's key (and data key); an instance launched from it has
    volumes under those keys again."""
    key_1, key_2, key_3 = (new_key(kms, n) for n in ("k1", "k2", "k3"))
    iid = launch(ec2, base_image, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": key_1}}])
    zone = instance(ec2, iid)["Placement"]["AvailabilityZone"]
    for device, key in (("/dev/sdf", key_2), ("/dev/sdg", key_3)):
        vol = ec2.create_volume(AvailabilityZone=zone, Size=1, Encrypted=True, KmsKeyId=key)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[vol])
        ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device=device)
    image_id = ec2.create_image(InstanceId=iid, Name="three-keys", Description="k1 k2 k3",
                                TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "3"}]}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image_id])
    img = image(ec2, image_id)
    assert img["SourceInstanceId"] == iid and img["Tags"] == [{"Key": "k", "Value": "3"}]
    keys = {}
    for m in img["BlockDeviceMappings"]:
        snap = ec2.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"]])["Snapshots"][0]
        keys[m["DeviceName"]] = snap["KmsKeyId"]
        assert m["Ebs"]["Encrypted"] is True
    assert keys == {"/dev/xvda": key_1, "/dev/sdf": key_2, "/dev/sdg": key_3}
    dot = {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in img["BlockDeviceMappings"]}
    assert dot == {"/dev/xvda": True, "/dev/sdf": False, "/dev/sdg": False}

    again = launch(ec2, image_id)
    assert {d: v["KmsKeyId"] for d, v in volumes_of(ec2, again).items()} == keys
    # CreateImage needs the caller's own instance
    code, _ = error_of(lambda: ec2.create_image(InstanceId="i-0123456789abcdef0", Name="nope"))
    assert code == "InvalidInstanceID.NotFound"


# ------------------------------------------------------------------------ crash safety


def test_launch_and_image_survive_a_server_kill(server_factory: Callable[..., Any]) -> None:
    """kill -9 right after RunInstances / CopyImage: after a restart the instance reaches
    running and the image available (resumed jobs, repaired states), nothing half-done."""
    srv = server_factory()
    account = new_account()
    ec2, kms = srv.client("ec2", account=account), srv.client("kms", account=account)
    key = new_key(kms)
    image_id = register(ec2, "crash-src", empty_snapshot(ec2, encrypted=True, kms_key_id=key),
                        ("/dev/sdb", empty_snapshot(ec2)))
    iid = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            BlockDeviceMappings=[{"DeviceName": "/dev/sdb", "Ebs": {"Encrypted": True,
                                                                                    "KmsKeyId": key}}])["Instances"][0]["InstanceId"]
    copy = ec2.copy_image(Name="crash-copy", SourceImageId=image_id, SourceRegion=REGION, Encrypted=True,
                          KmsKeyId=new_key(kms))["ImageId"]
    srv.kill()
    srv.start()
    ec2 = srv.client("ec2", account=account)
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
    ec2.get_waiter("image_available").wait(ImageIds=[copy])
    vols = volumes_of(ec2, iid)
    assert {d: (v["State"], v["KmsKeyId"]) for d, v in vols.items()} == {
        "/dev/xvda": ("in-use", key), "/dev/sdb": ("in-use", key)}
