"""ModifySnapshotAttribute / DescribeSnapshotAttribute / ResetSnapshotAttribute in the forms
real tools send, through real boto3 clients.

- Packer 1.6 ``snapshot_users``: ``CreateVolumePermission.Add.N.UserId`` plus the flat
  ``UserId.N``, with neither OperationType nor Attribute.
- The flat-list form proper: ``Attribute=createVolumePermission&OperationType=add|remove``.
- Attribute names in any case (as for images: Ansible's ec2_ami capitalises them).

R-SHARE-1..3 hold whatever the form.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from tests.helpers import create_key, error_code, make_snapshot, new_account


@pytest.fixture
def acct() -> str:
    return new_account("33")


@pytest.fixture
def ec2(aws: Callable[..., Any], acct: str) -> Any:
    return aws("ec2", account=acct)


@pytest.fixture
def kms(aws: Callable[..., Any], acct: str) -> Any:
    return aws("kms", account=acct)


def perms(ec2: Any, sid: str) -> list[dict[str, str]]:
    return ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")[
        "CreateVolumePermissions"]


def refused(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as err:
        call()
    return error_code(err.value), err.value.response["Error"].get("Message", "")


def test_packer_form_without_operation_type_shares(aws: Callable[..., Any], ec2: Any, kms: Any, acct: str) -> None:
    """R-SHARE-1: Packer's snapshot_users request shares the snapshot with the account it names twice."""
    friend = new_account("33")
    sid = make_snapshot(ec2, Encrypted=True, KmsKeyId=create_key(kms, acct, friend))["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=sid, UserIds=[friend],
                                  CreateVolumePermission={"Add": [{"UserId": friend}]})
    assert perms(ec2, sid) == [{"UserId": friend}]
    seen = aws("ec2", account=friend).describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]
    assert [s["SnapshotId"] for s in seen] == [sid]


def test_flat_list_without_operation_type_adds_and_remove_removes(ec2: Any) -> None:
    a, b = new_account("33"), new_account("33")
    sid = make_snapshot(ec2)["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", UserIds=[a, b])
    assert {p["UserId"] for p in perms(ec2, sid)} == {a, b}
    ec2.modify_snapshot_attribute(SnapshotId=sid, OperationType="remove", UserIds=[a])
    assert perms(ec2, sid) == [{"UserId": b}]


def test_flat_list_forms_keep_share_rules(ec2: Any, kms: Any, acct: str) -> None:
    """R-SHARE-2 (no public encrypted snapshot) and R-SHARE-3 (not under alias/aws/ebs) with
    the Packer form; refused calls change nothing."""
    sid = make_snapshot(ec2, Encrypted=True, KmsKeyId=create_key(kms, acct))["SnapshotId"]
    code, _ = refused(lambda: ec2.modify_snapshot_attribute(
        SnapshotId=sid, GroupNames=["all"], CreateVolumePermission={"Add": [{"Group": "all"}]}))
    assert code == "OperationNotPermitted"
    assert perms(ec2, sid) == []
    managed = make_snapshot(ec2, Encrypted=True)["SnapshotId"]   # alias/aws/ebs
    friend = new_account("33")
    code, message = refused(lambda: ec2.modify_snapshot_attribute(
        SnapshotId=managed, UserIds=[friend], CreateVolumePermission={"Add": [{"UserId": friend}]}))
    assert code == "InvalidParameter" and "AWS Managed" in message
    assert perms(ec2, managed) == []


def test_flat_list_bad_input(ec2: Any) -> None:
    sid = make_snapshot(ec2)["SnapshotId"]
    code, message = refused(lambda: ec2.modify_snapshot_attribute(
        SnapshotId=sid, OperationType="replace", UserIds=[new_account("33")]))
    assert code == "InvalidParameterValue" and "replace" in message
    code, _ = refused(lambda: ec2.modify_snapshot_attribute(SnapshotId=sid, UserIds=["12345"]))
    assert code == "InvalidUserID.Malformed"
    code, _ = refused(lambda: ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission"))
    assert code == "MissingParameter"
    assert perms(ec2, sid) == []


def test_attribute_names_in_any_case(ec2: Any) -> None:
    friend = new_account("33")
    sid = make_snapshot(ec2)["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="CreateVolumePermission", OperationType="add",
                                  UserIds=[friend])
    attr = ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="CreateVolumePermission")
    assert attr["CreateVolumePermissions"] == [{"UserId": friend}]
    assert ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="ProductCodes")["ProductCodes"] == []
    ec2.reset_snapshot_attribute(SnapshotId=sid, Attribute="CREATEVOLUMEPERMISSION")
    assert perms(ec2, sid) == []
    code, message = refused(lambda: ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="colour"))
    assert code == "InvalidParameterValue" and "colour" in message
