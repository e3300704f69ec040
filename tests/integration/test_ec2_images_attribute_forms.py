"""ModifyImageAttribute / DescribeImageAttribute / ResetImageAttribute in every form real
tools send, and DeregisterImage ``DeleteAssociatedSnapshots``, through real boto3 clients.

- Packer 1.6 ``ami_users`` / ``ami_groups``: ``LaunchPermission.Add.N.UserId`` (or ``.Group``)
  plus the flat ``UserId.N`` (``UserGroup.N``), with neither OperationType nor Attribute.
- The flat-list form proper: ``Attribute=launchPermission&OperationType=add|remove&UserId.N``.
- Ansible's ec2_ami: ``Attribute=LaunchPermission`` and ``Attribute=Description`` (capitalised).

R-SHARE-1 (sharing), R-SHARE-2 (no public encrypted image), R-SHARE-3 (no sharing under
alias/aws/ebs) hold whatever the form; R-IMG-3 / R-SNAP-3 for DeregisterImage.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.helpers import empty_snapshot, error_of, image, key_policy, new_account, new_key, register


@pytest.fixture
def shareable(ec2: Any, kms: Any, acct: str) -> str:
    """An image with a snapshot encrypted under a customer managed key (shareable, R-SHARE-3)."""
    key = new_key(kms)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=key_policy(acct))
    return register(ec2, "shareable", empty_snapshot(ec2, encrypted=True, kms_key_id=key))


def users(ec2: Any, image_id: str) -> list[dict[str, str]]:
    return ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]


# ------------------------------------------------------------------------ launch permission forms


def test_packer_form_without_operation_type_shares_once(aws: Callable[..., Any], ec2: Any, shareable: str) -> None:
    """R-SHARE-1: Packer's ami_users request (structured Add + flat UserId, no OperationType,
    no Attribute) shares the image; the account named twice is granted once."""
    friend = new_account()
    ec2.modify_image_attribute(ImageId=shareable, UserIds=[friend],
                               LaunchPermission={"Add": [{"UserId": friend}]})
    assert users(ec2, shareable) == [{"UserId": friend}]
    seen = aws("ec2", account=friend).describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in seen] == [shareable]


def test_flat_list_without_operation_type_adds(ec2: Any, shareable: str) -> None:
    """``UserId.N`` alone (Attribute given, OperationType omitted) is an addition."""
    a, b = new_account(), new_account()
    ec2.modify_image_attribute(ImageId=shareable, Attribute="launchPermission", UserIds=[a, b])
    assert {p["UserId"] for p in users(ec2, shareable)} == {a, b}


def test_flat_list_remove_and_structured_add_in_one_call(ec2: Any, shareable: str) -> None:
    a, b = new_account(), new_account()
    ec2.modify_image_attribute(ImageId=shareable, Attribute="launchPermission", OperationType="add", UserIds=[a])
    ec2.modify_image_attribute(ImageId=shareable, Attribute="launchPermission", OperationType="remove",
                               UserIds=[a], LaunchPermission={"Add": [{"UserId": b}]})
    assert users(ec2, shareable) == [{"UserId": b}]


def test_packer_groups_form_makes_unencrypted_image_public(aws: Callable[..., Any], ec2: Any) -> None:
    """Packer's ami_groups: ``LaunchPermission.Add.1.Group=all`` + ``UserGroup.1=all``."""
    plain = register(ec2, "groups", empty_snapshot(ec2))
    ec2.modify_image_attribute(ImageId=plain, UserGroups=["all"], LaunchPermission={"Add": [{"Group": "all"}]})
    assert image(ec2, plain)["Public"] is True and users(ec2, plain) == [{"Group": "all"}]
    ec2.modify_image_attribute(ImageId=plain, Attribute="launchPermission", OperationType="remove",
                               UserGroups=["all"])
    assert image(ec2, plain)["Public"] is False
    other = aws("ec2", account=new_account())
    assert error_of(lambda: other.describe_images(ImageIds=[plain]))[0] == "InvalidAMIID.NotFound"


def test_flat_list_forms_keep_share_rules(ec2: Any, shareable: str) -> None:
    """R-SHARE-2 / R-SHARE-3 whatever the form: no public encrypted image, no sharing of an
    image under alias/aws/ebs; refused calls change nothing."""
    code, message = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, UserGroups=["all"], LaunchPermission={"Add": [{"Group": "all"}]}))
    assert code == "UnsupportedOperation" and "publicly" in message
    code, _ = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", OperationType="add", UserGroups=["all"]))
    assert code == "UnsupportedOperation"
    assert image(ec2, shareable)["Public"] is False and users(ec2, shareable) == []

    managed = register(ec2, "managed", empty_snapshot(ec2, encrypted=True))   # alias/aws/ebs
    friend = new_account()
    for call in (
        lambda: ec2.modify_image_attribute(ImageId=managed, UserIds=[friend],
                                           LaunchPermission={"Add": [{"UserId": friend}]}),
        lambda: ec2.modify_image_attribute(ImageId=managed, Attribute="LaunchPermission",
                                           OperationType="add", UserIds=[friend]),
    ):
        code, message = error_of(call)
        assert code == "InvalidParameter" and "AWS Managed" in message
    assert users(ec2, managed) == []


def test_flat_list_bad_input(ec2: Any, shareable: str) -> None:
    """Bad input → 4xx, nothing changed."""
    friend = new_account()
    code, message = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", OperationType="replace", UserIds=[friend]))
    assert code == "InvalidParameterValue" and "replace" in message
    code, _ = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", OperationType="add", UserIds=["12345"]))
    assert code == "InvalidAMIAttributeItemValue"
    code, _ = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", OperationType="add", UserGroups=["everyone"]))
    assert code == "InvalidAMIAttributeItemValue"
    code, _ = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", OperationType="add",
        OrganizationArns=["arn:aws:organizations::123456789012:organization/o-abcdefghij"]))
    assert code == "UnsupportedOperation"
    code, _ = error_of(lambda: ec2.modify_image_attribute(ImageId=shareable, Attribute="launchPermission"))
    assert code == "InvalidParameterCombination"
    assert users(ec2, shareable) == []


def test_only_the_owner_may_use_the_flat_list_form(aws: Callable[..., Any], ec2: Any, shareable: str) -> None:
    friend = new_account()
    ec2.modify_image_attribute(ImageId=shareable, UserIds=[friend], LaunchPermission={"Add": [{"UserId": friend}]})
    theirs = aws("ec2", account=friend)
    code, _ = error_of(lambda: theirs.modify_image_attribute(
        ImageId=shareable, Attribute="launchPermission", UserIds=[new_account()]))
    assert code == "AuthFailure"
    assert users(ec2, shareable) == [{"UserId": friend}]


# ------------------------------------------------------------------------ attribute names, any case


def test_ansible_capitalised_attribute_names(ec2: Any, shareable: str) -> None:
    """ec2_ami sends ``Attribute=LaunchPermission`` and ``Attribute=Description``."""
    friend = new_account()
    ec2.modify_image_attribute(ImageId=shareable, Attribute="LaunchPermission",
                               LaunchPermission={"Add": [{"UserId": friend}]})
    ec2.modify_image_attribute(ImageId=shareable, Attribute="Description", Description={"Value": "second"})
    assert image(ec2, shareable)["Description"] == "second"
    # the top-level Value with Attribute=description, in any case
    ec2.modify_image_attribute(ImageId=shareable, Attribute="DESCRIPTION", Value="third")
    assert ec2.describe_image_attribute(ImageId=shareable, Attribute="Description")["Description"] == {
        "Value": "third"}
    assert ec2.describe_image_attribute(ImageId=shareable, Attribute="LaunchPermission")[
        "LaunchPermissions"] == [{"UserId": friend}]
    ec2.reset_image_attribute(ImageId=shareable, Attribute="LaunchPermission")
    assert users(ec2, shareable) == []


def test_unknown_attribute_names_are_refused(ec2: Any, shareable: str) -> None:
    code, message = error_of(lambda: ec2.describe_image_attribute(ImageId=shareable, Attribute="colour"))
    assert code == "InvalidParameterValue" and "colour" in message
    code, message = error_of(lambda: ec2.modify_image_attribute(
        ImageId=shareable, Attribute="colour", Value="red"))
    assert code == "InvalidParameterValue" and "colour" in message
    # a real attribute ModifyImageAttribute cannot change
    code, _ = error_of(lambda: ec2.modify_image_attribute(ImageId=shareable, Attribute="kernel", Value="aki-1"))
    assert code == "InvalidParameterValue"
    code, _ = error_of(lambda: ec2.reset_image_attribute(ImageId=shareable, Attribute="description"))
    assert code == "InvalidParameterValue"
    assert image(ec2, shareable).get("Description") is None


def test_imds_support_can_be_set_to_v2(ec2: Any) -> None:
    image_id = register(ec2, "imds", empty_snapshot(ec2))
    code, _ = error_of(lambda: ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v1.0"}))
    assert code == "InvalidParameterValue"
    assert "ImdsSupport" not in image(ec2, image_id)
    ec2.modify_image_attribute(ImageId=image_id, Attribute="imdsSupport", Value="v2.0")
    assert image(ec2, image_id)["ImdsSupport"] == "v2.0"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="imdsSupport")["ImdsSupport"] == {"Value": "v2.0"}


# ------------------------------------------------------------------------ DeleteAssociatedSnapshots


def test_deregister_deletes_associated_snapshots_not_pinned_elsewhere(ec2: Any) -> None:
    """DeleteAssociatedSnapshots: the image's snapshots go, except one another image still
    names (R-SNAP-3: ``skipped``, and it stays)."""
    root, data, shared = empty_snapshot(ec2), empty_snapshot(ec2), empty_snapshot(ec2)
    image_id = register(ec2, "doomed", root, ("/dev/sdb", data), ("/dev/sdc", shared))
    keeper = register(ec2, "keeper", shared)
    out = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    assert out["Return"] is True
    assert out["DeleteSnapshotResults"] == [
        {"SnapshotId": root, "ReturnCode": "success"},
        {"SnapshotId": data, "ReturnCode": "success"},
        {"SnapshotId": shared, "ReturnCode": "skipped"},
    ]
    assert error_of(lambda: ec2.describe_images(ImageIds=[image_id]))[0] == "InvalidAMIID.NotFound"
    for gone in (root, data):
        assert error_of(lambda: ec2.describe_snapshots(SnapshotIds=[gone]))[0] == "InvalidSnapshot.NotFound"
    assert ec2.describe_snapshots(SnapshotIds=[shared])["Snapshots"][0]["State"] == "completed"
    # once the last image naming it goes, it can go too
    out = ec2.deregister_image(ImageId=keeper, DeleteAssociatedSnapshots=True)
    assert out["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "success"}]


def test_deregister_without_the_flag_keeps_snapshots(ec2: Any) -> None:
    """R-IMG-3: the default leaves the snapshots (and reports no deletions)."""
    root = empty_snapshot(ec2)
    image_id = register(ec2, "kept", root)
    for flag in ({}, {"DeleteAssociatedSnapshots": False}):
        again = register(ec2, f"kept-{len(flag)}", root) if flag else image_id
        out = ec2.deregister_image(ImageId=again, **flag)
        assert out["Return"] is True and "DeleteSnapshotResults" not in out
    assert ec2.describe_snapshots(SnapshotIds=[root])["Snapshots"][0]["SnapshotId"] == root


def test_deregister_with_snapshots_is_for_the_owner_only(aws: Callable[..., Any], ec2: Any, shareable: str) -> None:
    friend = new_account()
    ec2.modify_image_attribute(ImageId=shareable, LaunchPermission={"Add": [{"UserId": friend}]})
    snap = image(ec2, shareable)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    code, _ = error_of(lambda: aws("ec2", account=friend).deregister_image(
        ImageId=shareable, DeleteAssociatedSnapshots=True))
    assert code == "AuthFailure"
    assert image(ec2, shareable)["State"] == "available"
    assert ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["SnapshotId"] == snap
