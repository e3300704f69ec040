"""Images (AMIs) through real boto3 clients: R-IMG-1, R-IMG-3, R-SNAP-3 (images' side),
R-KEY-6 for images, R-SHARE-1..4 for images, DescribeImages and image attributes,
several accounts and two regions."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.helpers import (
    OTHER_REGION,
    REGION,
    empty_snapshot,
    error_of,
    image,
    key_policy,
    managed_ebs_key,
    new_account,
    new_key,
    register,
    snapshots_of,
)


@pytest.fixture
def mixed_image(ec2: Any, kms: Any) -> tuple[str, str]:
    """An image with an unencrypted root and a data snapshot encrypted under key A."""
    key_a = new_key(kms, "key A")
    root = empty_snapshot(ec2)
    data = empty_snapshot(ec2, encrypted=True, kms_key_id=key_a)
    return register(ec2, "mixed", root, ("/dev/sdf", data)), key_a


# ------------------------------------------------------------------------ R-IMG-3


def test_register_describe_deregister_leaves_snapshots(ec2: Any, acct: str) -> None:
    """R-IMG-3 + R-SNAP-3: a registered image pins its snapshots; deregistering frees them."""
    root = empty_snapshot(ec2, size=2)
    data = empty_snapshot(ec2)
    image_id = register(ec2, "r-img-3", root, ("/dev/sdb", data))
    img = image(ec2, image_id)
    assert img["State"] == "available" and img["OwnerId"] == acct and img["Public"] is False
    assert img["RootDeviceName"] == "/dev/xvda" and img["RootDeviceType"] == "ebs"
    assert img["Name"] == "r-img-3" and img["Architecture"] == "x86_64" and img["EnaSupport"] is True
    devices = {m["DeviceName"]: m["Ebs"] for m in img["BlockDeviceMappings"]}
    assert devices["/dev/xvda"]["SnapshotId"] == root and devices["/dev/xvda"]["VolumeSize"] == 2
    assert devices["/dev/sdb"]["SnapshotId"] == data and devices["/dev/sdb"]["Encrypted"] is False

    code, message = error_of(lambda: ec2.delete_snapshot(SnapshotId=root))
    assert code == "InvalidSnapshot.InUse" and image_id in message

    assert ec2.deregister_image(ImageId=image_id)["Return"] is True
    assert {s["SnapshotId"] for s in ec2.describe_snapshots(SnapshotIds=[root, data])["Snapshots"]} == {root, data}
    assert error_of(lambda: ec2.describe_images(ImageIds=[image_id]))[0] == "InvalidAMIID.NotFound"
    ec2.delete_snapshot(SnapshotId=root)  # no longer in use


def test_register_validation(ec2: Any) -> None:
    snap = empty_snapshot(ec2, size=2)
    register(ec2, "dup-name", snap)
    code, message = error_of(lambda: register(ec2, "dup-name", snap, wait=False))
    assert code == "InvalidAMIName.Duplicate" and "dup-name" in message
    code, _ = error_of(lambda: ec2.register_image(
        Name="too-small", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap, "VolumeSize": 1}}]))
    assert code == "InvalidBlockDeviceMapping"
    code, _ = error_of(lambda: ec2.register_image(
        Name="missing-snap", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0123456789abcdef0"}}]))
    assert code == "InvalidSnapshot.NotFound"


# ------------------------------------------------------------------------ DescribeImages


def test_describe_images_errors_use_aws_codes_and_messages(ec2: Any) -> None:
    assert error_of(lambda: ec2.describe_images(ImageIds=["ami-nothex"])) == (
        "InvalidAMIID.Malformed", 'Invalid id: "ami-nothex" (expecting "ami-...")')
    assert error_of(lambda: ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])) == (
        "InvalidAMIID.NotFound", "The image id '[ami-0123456789abcdef0]' does not exist")
    code, _ = error_of(lambda: ec2.describe_images(Filters=[{"Name": "no-such-filter", "Values": ["x"]}]))
    assert code == "InvalidParameterValue"


def test_describe_images_filters_and_owners(ec2: Any, kms: Any, acct: str, aws: Callable[..., Any],
                                            mixed_image: tuple[str, str]) -> None:
    mixed, _key = mixed_image
    plain = register(ec2, "plain", empty_snapshot(ec2))
    ec2.create_tags(Resources=[plain], Tags=[{"Key": "team", "Value": "blue"}])

    def ids(**kw: Any) -> set[str]:
        return {i["ImageId"] for i in ec2.describe_images(**kw)["Images"]}

    assert ids(Owners=["self"]) == {mixed, plain}
    assert ids(Owners=[acct]) == {mixed, plain}
    assert ids(Owners=["self"], Filters=[{"Name": "block-device-mapping.encrypted", "Values": ["true"]}]) == {mixed}
    assert ids(Owners=["self"], Filters=[{"Name": "tag:team", "Values": ["blue"]}]) == {plain}
    assert ids(Owners=["self"], Filters=[{"Name": "name", "Values": ["pl*"]}]) == {plain}
    assert ids(Owners=["self"], Filters=[{"Name": "state", "Values": ["available"]},
                                         {"Name": "is-public", "Values": ["false"]}]) == {mixed, plain}
    assert ids(Owners=["self"], Filters=[{"Name": "image-id", "Values": [plain]}]) == {plain}
    snap = image(ec2, mixed)["BlockDeviceMappings"][1]["Ebs"]["SnapshotId"]
    assert ids(Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": [snap]}]) == {mixed}
    assert ids(Filters=[{"Name": "owner-id", "Values": [acct]}]) == {mixed, plain}
    tags = {t["Key"]: t["Value"] for t in image(ec2, plain)["Tags"]}
    assert tags == {"team": "blue"}
    # another account sees none of them; the same account in another region neither
    assert aws("ec2", account=new_account()).describe_images(Owners=[acct])["Images"] == []
    assert aws("ec2", account=acct, region=OTHER_REGION).describe_images(Owners=["self"])["Images"] == []
    page = ec2.describe_images(Owners=["self"], MaxResults=1)
    assert len(page["Images"]) == 1 and page["NextToken"]
    rest = ec2.describe_images(Owners=["self"], MaxResults=1, NextToken=page["NextToken"])
    assert {page["Images"][0]["ImageId"], rest["Images"][0]["ImageId"]} == {mixed, plain}


# ------------------------------------------------------------------------ R-IMG-1 (CopyImage)


def test_copy_image_without_parameters_keeps_each_snapshot_state(ec2: Any, mixed_image: tuple[str, str]) -> None:
    """R-IMG-1 / seed 000: unencrypted root + encrypted data stays so; data keeps key A."""
    src, key_a = mixed_image
    copy = ec2.copy_image(Name="copy-plain", SourceImageId=src, SourceRegion=REGION)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[copy])
    img = image(ec2, copy)
    assert img["SourceImageId"] == src and img["State"] == "available"
    snaps = snapshots_of(ec2, copy)
    assert snaps["/dev/xvda"]["Encrypted"] is False
    assert snaps["/dev/sdf"]["Encrypted"] is True and snaps["/dev/sdf"]["KmsKeyId"] == key_a
    # distinct snapshots from the source's
    assert set(s["SnapshotId"] for s in snaps.values()).isdisjoint(s["SnapshotId"] for s in snapshots_of(ec2, src).values())


def test_copy_image_encrypted_with_key_reencrypts_every_snapshot(ec2: Any, kms: Any, mixed_image: tuple[str, str]) -> None:
    """R-IMG-1 + R-OUT-2: one KmsKeyId for all snapshots, root and data."""
    src, key_a = mixed_image
    key_b = new_key(kms, "key B")
    copy = ec2.copy_image(Name="copy-b", SourceImageId=src, SourceRegion=REGION, Encrypted=True,
                          KmsKeyId=key_b)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[copy])
    snaps = snapshots_of(ec2, copy)
    assert {(s["Encrypted"], s["KmsKeyId"]) for s in snaps.values()} == {(True, key_b)}
    assert all(m["Ebs"]["Encrypted"] for m in image(ec2, copy)["BlockDeviceMappings"])


def test_copy_image_encrypted_only(ec2: Any, kms: Any, mixed_image: tuple[str, str]) -> None:
    """Seed 002: Encrypted alone → unencrypted → default key; encrypted owned → same key."""
    src, key_a = mixed_image
    copy = ec2.copy_image(Name="copy-enc", SourceImageId=src, SourceRegion=REGION, Encrypted=True)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[copy])
    snaps = snapshots_of(ec2, copy)
    assert snaps["/dev/xvda"]["Encrypted"] is True and snaps["/dev/xvda"]["KmsKeyId"] == managed_ebs_key(kms)
    assert snaps["/dev/sdf"]["KmsKeyId"] == key_a


def test_copy_image_under_ebd_encrypts_unencrypted_snapshots(ec2: Any, kms: Any, mixed_image: tuple[str, str]) -> None:
    src, key_a = mixed_image
    key_d = new_key(kms, "default key")
    ec2.enable_ebs_encryption_by_default()
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key_d)
    copy = ec2.copy_image(Name="copy-ebd", SourceImageId=src, SourceRegion=REGION)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[copy])
    snaps = snapshots_of(ec2, copy)
    assert snaps["/dev/xvda"]["KmsKeyId"] == key_d and snaps["/dev/sdf"]["KmsKeyId"] == key_a


def test_copy_image_kms_key_without_encrypted_is_refused(ec2: Any, kms: Any, mixed_image: tuple[str, str]) -> None:
    src, _ = mixed_image
    before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert error_of(lambda: ec2.copy_image(Name="x-dep", SourceImageId=src, SourceRegion=REGION,
                                           KmsKeyId=new_key(kms))) == (
        "InvalidParameterDependency", "The parameter KmsKeyId requires the parameter Encrypted to be set.")
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == before


def test_copy_image_client_token_is_idempotent(ec2: Any, mixed_image: tuple[str, str]) -> None:
    src, _ = mixed_image
    first = ec2.copy_image(Name="tok", SourceImageId=src, SourceRegion=REGION, ClientToken="tok-1")["ImageId"]
    again = ec2.copy_image(Name="tok", SourceImageId=src, SourceRegion=REGION, ClientToken="tok-1")["ImageId"]
    assert first == again
    assert len(ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["tok"]}])["Images"]) == 1


def test_copy_image_across_regions(aws: Callable[..., Any], ec2: Any, kms: Any, acct: str,
                                   mixed_image: tuple[str, str]) -> None:
    """R-OUT-4 per snapshot: into another region encrypted snapshots take the destination's
    default key; the unencrypted root stays unencrypted."""
    src, _key_a = mixed_image
    ec2_eu = aws("ec2", account=acct, region=OTHER_REGION)
    kms_eu = aws("kms", account=acct, region=OTHER_REGION)
    copy = ec2_eu.copy_image(Name="eu-copy", SourceImageId=src, SourceRegion=REGION)["ImageId"]
    ec2_eu.get_waiter("image_available").wait(ImageIds=[copy])
    img = image(ec2_eu, copy)
    assert img["SourceImageRegion"] == REGION
    snaps = snapshots_of(ec2_eu, copy)
    assert snaps["/dev/xvda"]["Encrypted"] is False
    assert snaps["/dev/sdf"]["KmsKeyId"] == managed_ebs_key(kms_eu)
    assert ":eu-west-1:" in snaps["/dev/sdf"]["KmsKeyId"]
    # the source is not visible from the destination region as an image id
    assert error_of(lambda: ec2_eu.describe_images(ImageIds=[src]))[0] == "InvalidAMIID.NotFound"


@pytest.mark.parametrize("problem", ["disabled", "unknown", "pending-deletion", "asymmetric"])
def test_copy_image_with_unusable_key_ends_failed(ec2: Any, kms: Any, mixed_image: tuple[str, str], problem: str) -> None:
    """R-KEY-6: the image ends ``failed`` with a StateReason naming key and cause; never available."""
    src, _ = mixed_image
    if problem == "unknown":
        key = "alias/no-such-key"
    elif problem == "asymmetric":
        key = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    else:
        key = new_key(kms)
        if problem == "disabled":
            kms.disable_key(KeyId=key)
        else:
            kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    copy = ec2.copy_image(Name=f"bad-{problem}", SourceImageId=src, SourceRegion=REGION, Encrypted=True,
                          KmsKeyId=key)["ImageId"]
    with pytest.raises(Exception) as waited:
        ec2.get_waiter("image_available").wait(ImageIds=[copy])
    assert "failed" in str(waited.value)
    img = image(ec2, copy)
    assert img["State"] == "failed"
    reason = img["StateReason"]
    assert reason["Code"].startswith("Client.InvalidKMSKey")
    assert (key.split("/")[-1] in reason["Message"]) or ("no-such-key" in reason["Message"])
    cause = {"disabled": "disabled", "unknown": "not", "pending-deletion": "pending deletion",
             "asymmetric": "asymmetric"}[problem]
    assert cause in reason["Message"]


# ------------------------------------------------------------------------ attributes, sharing


def test_launch_permissions_share_and_unshare(aws: Callable[..., Any], ec2: Any, kms: Any, acct: str) -> None:
    """R-SHARE-1: an image shared with an account appears to it (ExecutableUsers=self); a
    third account sees nothing; removing the permission hides it again."""
    key = new_key(kms)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(acct))
    image_id = register(ec2, "shared", empty_snapshot(ec2, encrypted=True, kms_key_id=key))
    friend, stranger = new_account(), new_account()
    ec2_friend, ec2_stranger = aws("ec2", account=friend), aws("ec2", account=stranger)
    assert ec2_friend.describe_images(ExecutableUsers=["self"])["Images"] == []

    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": friend}]})
    attr = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    assert attr["LaunchPermissions"] == [{"UserId": friend}]
    seen = ec2_friend.describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in seen] == [image_id] and seen[0]["OwnerId"] == acct
    assert [i["ImageId"] for i in ec2_friend.describe_images(Owners=[acct])["Images"]] == [image_id]
    assert ec2_friend.describe_images(Owners=["self"])["Images"] == []
    assert error_of(lambda: ec2_stranger.describe_images(ImageIds=[image_id]))[0] == "InvalidAMIID.NotFound"
    # only the owner may change or read the permissions
    assert error_of(lambda: ec2_friend.modify_image_attribute(
        ImageId=image_id, LaunchPermission={"Add": [{"UserId": stranger}]}))[0] == "AuthFailure"

    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Remove": [{"UserId": friend}]})
    assert ec2_friend.describe_images(ExecutableUsers=["self"])["Images"] == []
    assert error_of(lambda: ec2_friend.describe_images(ImageIds=[image_id]))[0] == "InvalidAMIID.NotFound"

    # the legacy form (OperationType + UserIds) and ResetImageAttribute
    ec2.modify_image_attribute(ImageId=image_id, Attribute="launchPermission", OperationType="add",
                               UserIds=[friend, stranger])
    assert {p["UserId"] for p in ec2.describe_image_attribute(
        ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]} == {friend, stranger}
    ec2.reset_image_attribute(ImageId=image_id, Attribute="launchPermission")
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    code, _ = error_of(lambda: ec2.modify_image_attribute(
        ImageId=image_id, LaunchPermission={"Add": [{"UserId": "12345"}]}))
    assert code == "InvalidAMIAttributeItemValue"


def test_description_attribute(ec2: Any) -> None:
    image_id = register(ec2, "described", empty_snapshot(ec2))
    ec2.modify_image_attribute(ImageId=image_id, Description={"Value": "golden base"})
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="description")["Description"] == {
        "Value": "golden base"}
    assert image(ec2, image_id)["Description"] == "golden base"
    mappings = ec2.describe_image_attribute(ImageId=image_id, Attribute="blockDeviceMapping")["BlockDeviceMappings"]
    assert mappings[0]["DeviceName"] == "/dev/xvda"


def test_public_images(aws: Callable[..., Any], ec2: Any, kms: Any, acct: str) -> None:
    """R-SHARE-2: an image with an encrypted snapshot cannot be made public; an unencrypted one can."""
    key = new_key(kms)
    encrypted = register(ec2, "enc", empty_snapshot(ec2), ("/dev/sdb", empty_snapshot(ec2, encrypted=True, kms_key_id=key)))
    code, message = error_of(lambda: ec2.modify_image_attribute(
        ImageId=encrypted, LaunchPermission={"Add": [{"Group": "all"}]}))
    assert code == "UnsupportedOperation" and "publicly" in message
    assert image(ec2, encrypted)["Public"] is False

    plain = register(ec2, "pub", empty_snapshot(ec2))
    ec2.modify_image_attribute(ImageId=plain, LaunchPermission={"Add": [{"Group": "all"}]})
    assert image(ec2, plain)["Public"] is True
    other = aws("ec2", account=new_account())
    assert plain in {i["ImageId"] for i in other.describe_images(ExecutableUsers=["all"])["Images"]}
    assert plain in {i["ImageId"] for i in other.describe_images(
        Owners=[acct], Filters=[{"Name": "is-public", "Values": ["true"]}])["Images"]}
    assert ec2.describe_image_attribute(ImageId=plain, Attribute="launchPermission")["LaunchPermissions"] == [
        {"Group": "all"}]
    ec2.modify_image_attribute(ImageId=plain, LaunchPermission={"Remove": [{"Group": "all"}]})
    assert plain not in {i["ImageId"] for i in other.describe_images(ExecutableUsers=["all"])["Images"]}


def test_image_under_aws_managed_key_cannot_be_shared(ec2: Any) -> None:
    """R-SHARE-3: a snapshot under alias/aws/ebs makes the image unshareable."""
    image_id = register(ec2, "managed", empty_snapshot(ec2, encrypted=True))
    code, message = error_of(lambda: ec2.modify_image_attribute(
        ImageId=image_id, LaunchPermission={"Add": [{"UserId": new_account()}]}))
    assert code == "InvalidParameter" and "AWS Managed" in message
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []


def test_shared_image_copy_needs_storage_access_and_key_policy(aws: Callable[..., Any], ec2: Any, kms: Any,
                                                              acct: str) -> None:
    """R-SHARE-4: sharing an image shares neither its snapshots nor its key. The recipient
    can copy it once the snapshots are shared (else AWS's "storage" error), and the copy
    completes only if the key policy names the recipient (else ``failed``)."""
    key = new_key(kms)
    image_id = register(ec2, "to-share", empty_snapshot(ec2, encrypted=True, kms_key_id=key))
    snap = image(ec2, image_id)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    friend = new_account()
    ec2_friend, kms_friend = aws("ec2", account=friend), aws("kms", account=friend)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": friend}]})
    assert error_of(lambda: ec2_friend.copy_image(Name="cp0", SourceImageId=image_id, SourceRegion=REGION)) == (
        "InvalidRequest", "You do not have permission to access the storage of this ami")

    ec2.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[friend])
    denied = ec2_friend.copy_image(Name="cp1", SourceImageId=image_id, SourceRegion=REGION)["ImageId"]
    with pytest.raises(Exception):
        ec2_friend.get_waiter("image_available").wait(ImageIds=[denied])
    failed = image(ec2_friend, denied)
    assert failed["State"] == "failed" and failed["StateReason"]["Code"].startswith("Client.")

    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(acct, friend))
    mine = new_key(kms_friend)
    ok = ec2_friend.copy_image(Name="cp2", SourceImageId=image_id, SourceRegion=REGION, Encrypted=True,
                               KmsKeyId=mine)["ImageId"]
    ec2_friend.get_waiter("image_available").wait(ImageIds=[ok])
    copied = snapshots_of(ec2_friend, ok)["/dev/xvda"]
    assert copied["OwnerId"] == friend and copied["KmsKeyId"] == mine
    # without KmsKeyId a shared encrypted snapshot goes to the recipient's default key (R-OUT-4)
    default = ec2_friend.copy_image(Name="cp3", SourceImageId=image_id, SourceRegion=REGION)["ImageId"]
    ec2_friend.get_waiter("image_available").wait(ImageIds=[default])
    assert snapshots_of(ec2_friend, default)["/dev/xvda"]["KmsKeyId"] == managed_ebs_key(kms_friend)
