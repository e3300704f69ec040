"""R-SNAP-1..3, §2 through CopySnapshot (incl. cross-region), §5 sharing, R-KEY-6, R-LIFE-1."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest
from botocore.exceptions import ClientError, WaiterError

from tests.helpers import (
    create_key,
    error_code,
    final_snapshot,
    final_volume,
    make_snapshot,
    new_account,
    snapshot,
)

AZ = "us-east-1a"
BLOCK = 524288


@pytest.fixture
def acct() -> str:
    return new_account("32")


@pytest.fixture
def ec2(aws, acct):
    return aws("ec2", account=acct)


@pytest.fixture
def kms(aws, acct):
    return aws("kms", account=acct)


def aws_ebs_key(kms) -> str:
    return kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]


def copy(ec2, snap_id: str, source_region: str = "us-east-1", **kw) -> dict:
    new = ec2.copy_snapshot(SourceSnapshotId=snap_id, SourceRegion=source_region, **kw)
    return final_snapshot(ec2, new["SnapshotId"])


# ------------------------------------------------------------------ R-SNAP-1


def test_r_snap_1_snapshot_keeps_volume_key_and_data_key(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=2, Encrypted=True, KmsKeyId=key)
    final_volume(ec2, vol["VolumeId"])
    a = ec2.create_snapshot(VolumeId=vol["VolumeId"], Description="first")
    assert a["State"] == "pending" and a["SnapshotId"].startswith("snap-") and len(a["SnapshotId"]) == 22
    b = ec2.create_snapshot(VolumeId=vol["VolumeId"])
    a, b = final_snapshot(ec2, a["SnapshotId"]), final_snapshot(ec2, b["SnapshotId"])
    for s in (a, b):
        assert (s["State"], s["Progress"], s["Encrypted"], s["KmsKeyId"]) == ("completed", "100%", True, key)
        assert s["VolumeId"] == vol["VolumeId"] and s["VolumeSize"] == 2 and s["OwnerId"] == acct
    assert a["DataEncryptionKeyId"] == b["DataEncryptionKeyId"]
    assert a["Description"] == "first"


def test_r_snap_1_ebd_does_not_encrypt_snapshot_of_unencrypted_volume(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    final_volume(ec2, vol["VolumeId"])
    ec2.enable_ebs_encryption_by_default()
    snap = ec2.create_snapshot(VolumeId=vol["VolumeId"])
    assert final_snapshot(ec2, snap["SnapshotId"])["Encrypted"] is False


# ------------------------------------------------------------------ R-SNAP-2: copies


def test_r_snap_2_r_out_3_copy_same_key_is_incremental(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    out = copy(ec2, src["SnapshotId"], Description="copy")
    assert (out["State"], out["KmsKeyId"], out["VolumeId"]) == ("completed", key, "vol-ffffffff")
    assert out["DataEncryptionKeyId"] == src["DataEncryptionKeyId"]  # R-KEY-2
    explicit = copy(ec2, src["SnapshotId"], Encrypted=True, KmsKeyId=key)  # R-OUT-2, same key
    assert explicit["DataEncryptionKeyId"] == src["DataEncryptionKeyId"]


def test_r_snap_2_r_out_2_copy_reencrypts_to_another_key(ec2, kms, acct) -> None:
    key_a, key_b = create_key(kms, acct), create_key(kms, acct)
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=key_a)
    out = copy(ec2, src["SnapshotId"], Encrypted=True, KmsKeyId=key_b)
    assert (out["State"], out["KmsKeyId"]) == ("completed", key_b)
    assert out["DataEncryptionKeyId"] != src["DataEncryptionKeyId"]
    assert snapshot(ec2, src["SnapshotId"])["KmsKeyId"] == key_a  # R-KEY-4


def test_r_out_5_r_out_6_copy_unencrypted(ec2, kms) -> None:
    src = make_snapshot(ec2)
    assert copy(ec2, src["SnapshotId"])["Encrypted"] is False  # R-OUT-6
    enc = copy(ec2, src["SnapshotId"], Encrypted=True)  # R-OUT-5
    assert enc["Encrypted"] is True and enc["KmsKeyId"] == aws_ebs_key(kms)
    ec2.enable_ebs_encryption_by_default()
    by_default = copy(ec2, src["SnapshotId"], Encrypted=False)  # R-OUT-7
    assert by_default["Encrypted"] is True and by_default["KmsKeyId"] == aws_ebs_key(kms)


def test_r_out_1_copy_kms_key_without_encrypted(ec2, kms, acct) -> None:
    src = make_snapshot(ec2)
    with pytest.raises(ClientError) as err:
        ec2.copy_snapshot(SourceSnapshotId=src["SnapshotId"], SourceRegion="us-east-1",
                          KmsKeyId=create_key(kms, acct))
    assert error_code(err.value) == "InvalidParameterDependency"


def test_r_out_4_cross_region_copy_uses_destination_default_key(aws, acct, kms) -> None:
    east = aws("ec2", account=acct)
    west, west_kms = aws("ec2", account=acct, region="eu-west-1"), aws("kms", account=acct, region="eu-west-1")
    src = make_snapshot(east, Encrypted=True, KmsKeyId=create_key(kms, acct))
    out = copy(west, src["SnapshotId"], source_region="us-east-1")
    assert out["State"] == "completed"
    assert out["KmsKeyId"] == aws_ebs_key(west_kms) and ":eu-west-1:" in out["KmsKeyId"]
    assert out["DataEncryptionKeyId"] != src["DataEncryptionKeyId"]
    # with a key of the destination region
    west_key = create_key(west_kms, acct)
    assert copy(west, src["SnapshotId"], source_region="us-east-1", Encrypted=True,
                KmsKeyId=west_key)["KmsKeyId"] == west_key
    # the copy lives in eu-west-1 only
    with pytest.raises(ClientError):
        snapshot(east, out["SnapshotId"])
    # a key from the source region cannot encrypt in the destination region (R-KEY-6)
    bad = copy(west, src["SnapshotId"], source_region="us-east-1", Encrypted=True, KmsKeyId=src["KmsKeyId"])
    assert bad["State"] == "error"


def test_cross_region_unencrypted_copy_stays_unencrypted(aws, acct) -> None:
    east, west = aws("ec2", account=acct), aws("ec2", account=acct, region="eu-west-1")
    src = make_snapshot(east)
    assert copy(west, src["SnapshotId"], source_region="us-east-1")["Encrypted"] is False


def test_copy_of_missing_snapshot(ec2) -> None:
    with pytest.raises(ClientError) as err:
        ec2.copy_snapshot(SourceSnapshotId="snap-0123456789abcdef0", SourceRegion="us-east-1")
    assert error_code(err.value) == "InvalidSnapshot.NotFound"
    assert err.value.response["Error"]["Message"] == "The snapshot 'snap-0123456789abcdef0' does not exist."


# ------------------------------------------------------------------ R-KEY-6 on copies


@pytest.mark.parametrize("problem", ["unknown-alias", "disabled", "pending-deletion", "asymmetric"])
def test_r_key_6_copy_with_bad_key_ends_in_error_naming_key(ec2, kms, acct, problem) -> None:
    src = make_snapshot(ec2)
    if problem == "unknown-alias":
        key = "alias/no-such-key"
    elif problem == "asymmetric":
        key = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    else:
        key = create_key(kms, acct)
        if problem == "disabled":
            kms.disable_key(KeyId=key)
        else:
            kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    new = ec2.copy_snapshot(SourceSnapshotId=src["SnapshotId"], SourceRegion="us-east-1", Encrypted=True,
                            KmsKeyId=key)
    out = final_snapshot(ec2, new["SnapshotId"])
    assert out["State"] == "error"
    assert key in out["StateMessage"]
    with pytest.raises(WaiterError):  # waiters see the failure
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[new["SnapshotId"]],
                                                  WaiterConfig={"Delay": 1, "MaxAttempts": 3})


# ------------------------------------------------------------------ R-LIFE-1


def test_r_life_1_waiter_finishes_fast_for_reencrypted_copy(ec2, kms, acct) -> None:
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=create_key(kms, acct))
    start = time.monotonic()
    new = ec2.copy_snapshot(SourceSnapshotId=src["SnapshotId"], SourceRegion="us-east-1", Encrypted=True,
                            KmsKeyId=create_key(kms, acct))
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[new["SnapshotId"]])
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------ delete, R-SNAP-3


def test_delete_snapshot(ec2) -> None:
    src = make_snapshot(ec2)
    ec2.delete_snapshot(SnapshotId=src["SnapshotId"])
    with pytest.raises(ClientError) as err:
        snapshot(ec2, src["SnapshotId"])
    assert error_code(err.value) == "InvalidSnapshot.NotFound"
    with pytest.raises(ClientError) as err:
        ec2.delete_snapshot(SnapshotId="snapshot-1")
    assert error_code(err.value) == "InvalidSnapshotID.Malformed"


def test_r_snap_3_snapshot_of_registered_image_cannot_be_deleted(ec2) -> None:
    src = make_snapshot(ec2)
    image = ec2.register_image(Name=f"img-{src['SnapshotId']}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                     "Ebs": {"SnapshotId": src["SnapshotId"]}}])
    with pytest.raises(ClientError) as err:
        ec2.delete_snapshot(SnapshotId=src["SnapshotId"])
    assert error_code(err.value) == "InvalidSnapshot.InUse"
    assert image["ImageId"] in err.value.response["Error"]["Message"]
    ec2.deregister_image(ImageId=image["ImageId"])  # R-IMG-3: leaves the snapshot
    ec2.delete_snapshot(SnapshotId=src["SnapshotId"])


# ------------------------------------------------------------------ §5 sharing


def test_r_share_1_share_with_account_and_unshare(aws, ec2, kms, acct) -> None:
    other = new_account("32")
    key = create_key(kms, acct, other)
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    sid = src["SnapshotId"]
    theirs = aws("ec2", account=other)
    with pytest.raises(ClientError):
        snapshot(theirs, sid)
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                  CreateVolumePermission={"Add": [{"UserId": other}]})
    attr = ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert attr["CreateVolumePermissions"] == [{"UserId": other}]
    assert snapshot(theirs, sid)["OwnerId"] == acct
    assert sid in {s["SnapshotId"] for s in theirs.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]}
    assert sid not in {s["SnapshotId"] for s in theirs.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert sid in {s["SnapshotId"] for s in theirs.describe_snapshots(OwnerIds=[acct])["Snapshots"]}
    # the recipient may not delete or re-share it
    with pytest.raises(ClientError) as err:
        theirs.delete_snapshot(SnapshotId=sid)
    assert error_code(err.value) == "UnauthorizedOperation"
    with pytest.raises(ClientError):
        theirs.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                         OperationType="add", UserIds=[new_account("32")])
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                  OperationType="remove", UserIds=[other])
    with pytest.raises(ClientError):
        snapshot(theirs, sid)


def test_r_share_2_encrypted_snapshot_cannot_be_public(ec2, kms, acct) -> None:
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=create_key(kms, acct))
    with pytest.raises(ClientError) as err:
        ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                      OperationType="add", GroupNames=["all"])
    assert error_code(err.value) == "OperationNotPermitted"
    attr = ec2.describe_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission")
    assert attr["CreateVolumePermissions"] == []


def test_r_share_2_unencrypted_snapshot_can_be_public(aws, ec2) -> None:
    src = make_snapshot(ec2)
    ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                  CreateVolumePermission={"Add": [{"Group": "all"}]})
    anyone = aws("ec2", account=new_account("32"))
    assert snapshot(anyone, src["SnapshotId"])["State"] == "completed"
    ec2.reset_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission")
    with pytest.raises(ClientError):
        snapshot(anyone, src["SnapshotId"])


def test_r_share_3_aws_managed_key_snapshot_cannot_be_shared(ec2) -> None:
    src = make_snapshot(ec2, Encrypted=True)  # alias/aws/ebs
    with pytest.raises(ClientError) as err:
        ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                      OperationType="add", UserIds=[new_account("32")])
    assert error_code(err.value) == "InvalidParameter"
    assert "AWS Managed" in err.value.response["Error"]["Message"]


def test_r_share_4_recipient_copies_to_own_key_or_default(aws, ec2, kms, acct) -> None:
    other, stranger = new_account("32"), new_account("32")
    key = create_key(kms, acct, other)
    src = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                  OperationType="add", UserIds=[other, stranger])
    theirs, their_kms = aws("ec2", account=other), aws("kms", account=other)
    default_copy = copy(theirs, src["SnapshotId"])  # R-OUT-4
    assert (default_copy["State"], default_copy["KmsKeyId"]) == ("completed", aws_ebs_key(their_kms))
    own = create_key(their_kms, other)
    own_copy = copy(theirs, src["SnapshotId"], Encrypted=True, KmsKeyId=own)  # best practice
    assert (own_copy["State"], own_copy["KmsKeyId"], own_copy["OwnerId"]) == ("completed", own, other)
    # the key policy does not name `stranger`: its copy ends in error, naming the key
    bad = copy(aws("ec2", account=stranger), src["SnapshotId"])
    assert bad["State"] == "error"


def test_sharing_refusals_for_bad_input(ec2) -> None:
    src = make_snapshot(ec2)
    with pytest.raises(ClientError) as err:
        ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                      OperationType="add", UserIds=["12345"])
    assert error_code(err.value) == "InvalidUserID.Malformed"
    with pytest.raises(ClientError) as err:
        ec2.modify_snapshot_attribute(SnapshotId=src["SnapshotId"], Attribute="createVolumePermission",
                                      OperationType="add", GroupNames=["everyone"])
    assert error_code(err.value) == "InvalidParameterValue"


# ------------------------------------------------------------------ describe


def test_describe_snapshots_filters_and_paging(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    enc = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    plain = make_snapshot(ec2)
    ec2.create_tags(Resources=[plain["SnapshotId"]], Tags=[{"Key": "env", "Value": "prod"}])

    def ids(*filters, **kw):
        snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": n, "Values": v} for n, v in filters],
                                       **kw)["Snapshots"]
        return {s["SnapshotId"] for s in snaps}

    assert ids(("encrypted", ["true"])) == {enc["SnapshotId"]}
    assert ids(("kms-key-id", [key])) == {enc["SnapshotId"]}
    assert ids(("status", ["completed"])) == {enc["SnapshotId"], plain["SnapshotId"]}
    assert ids(("volume-id", [plain["VolumeId"]])) == {plain["SnapshotId"]}
    assert ids(("owner-id", [acct])) == {enc["SnapshotId"], plain["SnapshotId"]}
    assert ids(("tag:env", ["prod"])) == {plain["SnapshotId"]}
    for _ in range(4):
        make_snapshot(ec2)
    pages = list(ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"],
                                                                    PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in pages] == [5, 1]


# ------------------------------------------------------------------ data through copies (R-DATA-1)


def test_data_survives_cross_account_cross_region_reencrypting_copies(aws, ec2, kms, acct) -> None:
    other = new_account("32")
    key = create_key(kms, acct, other)
    ebs = aws("ebs", account=acct)
    data = {0: os.urandom(BLOCK), 3: os.urandom(BLOCK)}
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=key)["SnapshotId"]
    h = hashlib.sha256()
    for i, block in sorted(data.items()):
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i, BlockData=block, DataLength=BLOCK,
                               Checksum=base64.b64encode(hashlib.sha256(block).digest()).decode(),
                               ChecksumAlgorithm="SHA256")
        h.update(hashlib.sha256(block).digest())
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2, Checksum=base64.b64encode(h.digest()).decode(),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    final_snapshot(ec2, sid)
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[other])
    # the recipient copies it into its own key in another region, then reads it back
    west = aws("ec2", account=other, region="eu-west-1")
    own = create_key(aws("kms", account=other, region="eu-west-1"), other)
    out = copy(west, sid, Encrypted=True, KmsKeyId=own)
    assert out["State"] == "completed" and out["KmsKeyId"] == own
    their_ebs = aws("ebs", account=other, region="eu-west-1")
    blocks = their_ebs.list_snapshot_blocks(SnapshotId=out["SnapshotId"])
    assert [b["BlockIndex"] for b in blocks["Blocks"]] == [0, 3]
    for b in blocks["Blocks"]:
        got = their_ebs.get_snapshot_block(SnapshotId=out["SnapshotId"], BlockIndex=b["BlockIndex"],
                                           BlockToken=b["BlockToken"])
        assert got["BlockData"].read() == data[b["BlockIndex"]]


def test_aws_cli_snapshot_calls(endpoint, aws_cli_env, aws) -> None:
    import subprocess

    acct = new_account("32")
    env = dict(aws_cli_env, AWS_ACCESS_KEY_ID=acct)

    def cli(*args: str) -> str:
        out = subprocess.run(["aws", "--endpoint-url", endpoint, "ec2", *args, "--output", "text"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    vol = cli("create-volume", "--availability-zone", "us-east-1a", "--size", "1", "--encrypted",
              "--query", "VolumeId")
    cli("wait", "volume-available", "--volume-ids", vol)
    snap = cli("create-snapshot", "--volume-id", vol, "--description", "cli", "--query", "SnapshotId")
    cli("wait", "snapshot-completed", "--snapshot-ids", snap)
    copy_id = cli("copy-snapshot", "--source-snapshot-id", snap, "--source-region", "us-east-1",
                  "--query", "SnapshotId")
    cli("wait", "snapshot-completed", "--snapshot-ids", copy_id)
    state, encrypted = cli("describe-snapshots", "--snapshot-ids", copy_id, "--query",
                           "Snapshots[0].[State,Encrypted]").split()
    assert (state, encrypted) == ("completed", "True")
    out = subprocess.run(["aws", "--endpoint-url", endpoint, "ec2", "create-volume", "--availability-zone",
                          "us-east-1a", "--size", "1", "--kms-key-id", "alias/aws/ebs"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "InvalidParameterDependency" in out.stderr
