"""R-VOL (SPEC §2 through CreateVolume), R-KEY-2/4/5/6, R-LIFE-1, volume operations (boto3)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.helpers import (
    create_key,
    error_code,
    final_snapshot,
    final_volume,
    make_snapshot,
    new_account,
    volume,
)

AZ = "us-east-1a"


@pytest.fixture
def acct() -> str:
    return new_account()


@pytest.fixture
def ec2(aws, acct):
    return aws("ec2", account=acct)


@pytest.fixture
def kms(aws, acct):
    return aws("kms", account=acct)


def aws_ebs_key(kms) -> str:
    return kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]


# ------------------------------------------------------------------ the outcome rule


def test_r_out_6_empty_volume_unencrypted(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    assert vol["State"] == "creating" and vol["Encrypted"] is False and "KmsKeyId" not in vol
    assert vol["VolumeId"].startswith("vol-") and len(vol["VolumeId"]) == 21
    assert final_volume(ec2, vol["VolumeId"])["State"] == "available"


def test_r_out_5_encrypted_empty_volume_uses_default_key(ec2, kms) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True)
    assert vol["Encrypted"] is True
    assert vol["KmsKeyId"] == aws_ebs_key(kms)
    assert final_volume(ec2, vol["VolumeId"])["State"] == "available"


def test_r_out_5_r_out_7_ebd_encrypts_even_with_encrypted_false(ec2, kms) -> None:
    ec2.enable_ebs_encryption_by_default()
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=False)
    assert vol["Encrypted"] is True and vol["KmsKeyId"] == aws_ebs_key(kms)


def test_r_out_1_kms_key_without_encrypted(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    before = ec2.describe_volumes()["Volumes"]
    for extra in ({}, {"Encrypted": False}):
        with pytest.raises(ClientError) as err:
            ec2.create_volume(AvailabilityZone=AZ, Size=1, KmsKeyId=key, **extra)
        assert error_code(err.value) == "InvalidParameterDependency"
        assert err.value.response["Error"]["Message"] == \
            "The parameter KmsKeyId requires the parameter Encrypted to be set."
    assert ec2.describe_volumes()["Volumes"] == before  # nothing created


def test_r_out_2_key_forms_all_resolve_to_the_key_arn(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    key_id = key.rsplit("/", 1)[1]
    kms.create_alias(AliasName="alias/vol-key", TargetKeyId=key_id)
    forms = [key_id, key, "alias/vol-key", f"arn:aws:kms:us-east-1:{acct}:alias/vol-key"]
    for form in forms:  # R-KEY-6: id, ARN, alias name, alias ARN
        vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True, KmsKeyId=form)
        assert vol["KmsKeyId"] == key
        assert final_volume(ec2, vol["VolumeId"])["State"] == "available"


def test_r_out_3_r_key_2_volume_from_own_encrypted_snapshot_same_key(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    snap = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    ec2.enable_ebs_encryption_by_default()  # EBD does not change the key choice
    vol = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Encrypted=False)
    assert vol["KmsKeyId"] == key and vol["Size"] == 1 and vol["SnapshotId"] == snap["SnapshotId"]
    assert final_volume(ec2, vol["VolumeId"])["State"] == "available"
    # R-KEY-2: a snapshot of that volume carries the same data key as the source snapshot
    snap2 = ec2.create_snapshot(VolumeId=vol["VolumeId"])
    assert final_snapshot(ec2, snap2["SnapshotId"])["DataEncryptionKeyId"] == snap["DataEncryptionKeyId"]


def test_r_out_2_r_key_2_reencrypt_volume_from_snapshot_new_data_key(ec2, kms, acct) -> None:
    key_a, key_b = create_key(kms, acct), create_key(kms, acct)
    snap = make_snapshot(ec2, Encrypted=True, KmsKeyId=key_a)
    vol = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Encrypted=True, KmsKeyId=key_b)
    assert vol["KmsKeyId"] == key_b
    assert final_volume(ec2, vol["VolumeId"])["State"] == "available"
    snap2 = ec2.create_snapshot(VolumeId=vol["VolumeId"])
    done = final_snapshot(ec2, snap2["SnapshotId"])
    assert done["KmsKeyId"] == key_b and done["DataEncryptionKeyId"] != snap["DataEncryptionKeyId"]


def test_r_out_5_unencrypted_snapshot_encrypted_volume(ec2, kms) -> None:
    snap = make_snapshot(ec2)
    assert snap["Encrypted"] is False
    plain = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"])
    assert plain["Encrypted"] is False  # R-OUT-6
    enc = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Encrypted=True)
    assert enc["Encrypted"] is True and enc["KmsKeyId"] == aws_ebs_key(kms)  # R-OUT-5
    assert final_volume(ec2, enc["VolumeId"])["State"] == "available"


def test_r_out_4_r_share_4_volume_from_shared_snapshot(aws) -> None:
    owner, other, stranger = new_account(), new_account(), new_account()
    ec2_o, kms_o = aws("ec2", account=owner), aws("kms", account=owner)
    key = create_key(kms_o, owner, other)  # the key policy lets `other` use it, not `stranger`
    snap = make_snapshot(ec2_o, Encrypted=True, KmsKeyId=key)
    ec2_o.modify_snapshot_attribute(SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission",
                                    OperationType="add", UserIds=[other, stranger])
    ec2_r, kms_r = aws("ec2", account=other), aws("kms", account=other)
    vol = ec2_r.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"])
    assert vol["KmsKeyId"] == aws_ebs_key(kms_r)  # R-OUT-4: recipient's default key
    assert final_volume(ec2_r, vol["VolumeId"])["State"] == "available"
    # R-SHARE-4: the key policy does not name `stranger`: the volume ends in error
    ec2_s = aws("ec2", account=stranger)
    bad = ec2_s.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"])
    assert final_volume(ec2_s, bad["VolumeId"])["State"] == "error"


# ------------------------------------------------------------------ key problems (R-KEY-5/6)


@pytest.mark.parametrize("problem", ["unknown", "disabled", "pending-deletion", "asymmetric", "foreign"])
def test_r_key_6_key_problems_end_in_error(aws, ec2, kms, acct, problem) -> None:
    if problem == "unknown":
        key = "arn:aws:kms:us-east-1:%s:key/00000000-0000-0000-0000-000000000000" % acct
    elif problem == "asymmetric":  # R-KEY-5
        key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    elif problem == "foreign":  # another account's key whose policy does not name us (R-KEY-7)
        other = new_account()
        key = create_key(aws("kms", account=other), other)
    else:
        key = create_key(kms, acct)
        if problem == "disabled":
            kms.disable_key(KeyId=key)
        else:
            kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True, KmsKeyId=key)
    final = final_volume(ec2, vol["VolumeId"])
    assert final["State"] == "error"
    assert final.get("KmsKeyId") != aws_ebs_key(kms)  # never encrypted under some other key


def test_r_key_6_source_key_disabled_after_snapshot(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    snap = make_snapshot(ec2, Encrypted=True, KmsKeyId=key)
    kms.disable_key(KeyId=key)
    vol = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"])
    assert final_volume(ec2, vol["VolumeId"])["State"] == "error"


# ------------------------------------------------------------------ validation and errors


@pytest.mark.parametrize("kwargs, code", [
    ({"Size": 0}, "InvalidParameterValue"),
    ({"Size": 20000}, "InvalidParameterValue"),
    ({"Size": 100, "VolumeType": "st1"}, "InvalidParameterValue"),
    ({"Size": 2000, "VolumeType": "standard"}, "InvalidParameterValue"),
    ({"Size": 10, "VolumeType": "io1"}, "MissingParameter"),
    ({"Size": 10, "VolumeType": "io1", "Iops": 1000}, "InvalidParameterValue"),  # > 50:1
    ({"Size": 10, "VolumeType": "gp2", "Iops": 300}, "InvalidParameterCombination"),
    ({"Size": 10, "VolumeType": "gp2", "Throughput": 200}, "InvalidParameterCombination"),
    ({"Size": 10, "VolumeType": "gp3", "Throughput": 100}, "InvalidParameterValue"),
    ({"Size": 10, "VolumeType": "gp3", "Iops": 2000}, "InvalidParameterValue"),
    ({"Size": 10, "VolumeType": "fast"}, "InvalidParameterValue"),
    ({}, "MissingParameter"),
])
def test_volume_spec_validation(ec2, kwargs, code) -> None:
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone=AZ, **kwargs)
    assert error_code(err.value) == code


def test_volume_types_and_defaults(ec2) -> None:
    gp3 = ec2.create_volume(AvailabilityZone=AZ, Size=10, VolumeType="gp3")
    assert (gp3["Iops"], gp3["Throughput"]) == (3000, 125)
    gp2 = ec2.create_volume(AvailabilityZone=AZ, Size=10)
    assert gp2["VolumeType"] == "gp2" and gp2["Iops"] == 100
    io2 = ec2.create_volume(AvailabilityZone=AZ, Size=10, VolumeType="io2", Iops=5000)
    assert io2["Iops"] == 5000
    st1 = ec2.create_volume(AvailabilityZone=AZ, Size=125, VolumeType="st1")
    assert "Iops" not in st1


def test_invalid_zone(ec2) -> None:
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone="us-east-1z", Size=1)
    assert error_code(err.value) == "InvalidZone.NotFound"
    with pytest.raises(ClientError) as err:  # a zone of another region
        ec2.create_volume(AvailabilityZone="eu-west-1a", Size=1)
    assert error_code(err.value) == "InvalidZone.NotFound"


def test_size_smaller_than_snapshot(ec2) -> None:
    snap = make_snapshot(ec2, size=4)
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Size=2)
    assert error_code(err.value) == "InvalidParameterValue"
    bigger = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Size=8)
    assert bigger["Size"] == 8


def test_not_found_and_malformed(ec2, aws) -> None:
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(VolumeIds=["vol-0123456789abcdef0"])
    assert error_code(err.value) == "InvalidVolume.NotFound"
    assert err.value.response["Error"]["Message"] == "The volume 'vol-0123456789abcdef0' does not exist."
    with pytest.raises(ClientError) as err:
        ec2.delete_volume(VolumeId="volume-1")
    assert error_code(err.value) == "InvalidVolumeID.Malformed"
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone=AZ, SnapshotId="snap-0123456789abcdef0")
    assert error_code(err.value) == "InvalidSnapshot.NotFound"
    # another account's volume is not found either
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    with pytest.raises(ClientError) as err:
        aws("ec2", account=new_account()).delete_volume(VolumeId=vol["VolumeId"])
    assert error_code(err.value) == "InvalidVolume.NotFound"


def test_client_token_idempotency(ec2) -> None:
    a = ec2.create_volume(AvailabilityZone=AZ, Size=3, ClientToken="tok-1")
    b = ec2.create_volume(AvailabilityZone=AZ, Size=3, ClientToken="tok-1")
    assert a["VolumeId"] == b["VolumeId"]
    assert len(ec2.describe_volumes()["Volumes"]) == 1


def test_delete_volume(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    ec2.delete_volume(VolumeId=vol["VolumeId"])
    with pytest.raises(ClientError) as err:
        volume(ec2, vol["VolumeId"])
    assert error_code(err.value) == "InvalidVolume.NotFound"


def test_detach_unattached_volume_is_incorrect_state(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    final_volume(ec2, vol["VolumeId"])
    with pytest.raises(ClientError) as err:
        ec2.detach_volume(VolumeId=vol["VolumeId"])
    assert error_code(err.value) == "IncorrectState"


# ------------------------------------------------------------------ describe: filters, paging, tags


def test_describe_filters_and_tags(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    plain = ec2.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "red"}]}])
    enc = ec2.create_volume(AvailabilityZone="us-east-1b", Size=2, VolumeType="gp3", Encrypted=True,
                            KmsKeyId=key, TagSpecifications=[
                                {"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "blue"}]}])
    assert plain["Tags"] == [{"Key": "team", "Value": "red"}]
    final_volume(ec2, plain["VolumeId"]), final_volume(ec2, enc["VolumeId"])

    def ids(*filters):
        vols = ec2.describe_volumes(Filters=[{"Name": n, "Values": v} for n, v in filters])["Volumes"]
        return {v["VolumeId"] for v in vols}

    assert ids(("encrypted", ["true"])) == {enc["VolumeId"]}
    assert ids(("encrypted", ["false"])) == {plain["VolumeId"]}
    assert ids(("tag:team", ["bl*"])) == {enc["VolumeId"]}
    assert ids(("tag-key", ["team"])) == {plain["VolumeId"], enc["VolumeId"]}
    assert ids(("availability-zone", ["us-east-1b"])) == {enc["VolumeId"]}
    assert ids(("volume-type", ["gp3"]), ("size", ["2"])) == {enc["VolumeId"]}
    assert ids(("status", ["available"])) == {plain["VolumeId"], enc["VolumeId"]}
    assert ids(("volume-id", [plain["VolumeId"]])) == {plain["VolumeId"]}
    assert ids(("kms-key-id", [key])) == {enc["VolumeId"]}
    assert ids(("attachment.instance-id", ["i-0123456789abcdef0"])) == set()
    with pytest.raises(ClientError) as err:
        ids(("no-such-filter", ["x"]))
    assert error_code(err.value) == "InvalidParameterValue"


def test_paging(ec2) -> None:
    created = {ec2.create_volume(AvailabilityZone=AZ, Size=1)["VolumeId"] for _ in range(12)}
    seen, token, pages = [], None, 0
    while True:
        kw = {"MaxResults": 5, **({"NextToken": token} if token else {})}
        page = ec2.describe_volumes(**kw)
        seen += [v["VolumeId"] for v in page["Volumes"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert pages == 3 and len(seen) == 12 and set(seen) == created
    paginated = [v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate(
        PaginationConfig={"PageSize": 5}) for v in p["Volumes"]]
    assert sorted(paginated) == sorted(seen)
    # Above 500 AWS returns at most 500 rather than refusing (the AWS CLI sends 1000); below 5 it refuses.
    assert sorted(v["VolumeId"] for v in ec2.describe_volumes(MaxResults=1000)["Volumes"]) == sorted(seen)
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(MaxResults=4)
    assert error_code(err.value) == "InvalidParameterValue"


# ------------------------------------------------------------------ lifecycle, modify, attributes


def test_r_life_1_volume_available_waiter_is_fast(ec2, kms, acct) -> None:
    key_a, key_b = create_key(kms, acct), create_key(kms, acct)
    snap = make_snapshot(ec2, Encrypted=True, KmsKeyId=key_a)
    start = time.monotonic()
    vol = ec2.create_volume(AvailabilityZone=AZ, SnapshotId=snap["SnapshotId"], Encrypted=True, KmsKeyId=key_b)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol["VolumeId"]])
    assert time.monotonic() - start < 10


def test_modify_volume_and_modifications(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=10)
    final_volume(ec2, vol["VolumeId"])
    mod = ec2.modify_volume(VolumeId=vol["VolumeId"], Size=20, VolumeType="gp3")["VolumeModification"]
    assert (mod["OriginalSize"], mod["TargetSize"], mod["TargetVolumeType"]) == (10, 20, "gp3")
    deadline = time.monotonic() + 10
    while True:
        mods = ec2.describe_volumes_modifications(VolumeIds=[vol["VolumeId"]])["VolumesModifications"]
        if mods[0]["ModificationState"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mods[0]["ModificationState"] == "completed"
    v = volume(ec2, vol["VolumeId"])
    assert (v["Size"], v["VolumeType"], v["Iops"], v["Throughput"]) == (20, "gp3", 3000, 125)
    with pytest.raises(ClientError) as err:
        ec2.modify_volume(VolumeId=vol["VolumeId"], Size=5)
    assert error_code(err.value) == "InvalidParameterValue"


def test_volume_attribute(ec2) -> None:
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)
    got = ec2.describe_volume_attribute(VolumeId=vol["VolumeId"], Attribute="autoEnableIO")
    assert got["AutoEnableIO"]["Value"] is False
    ec2.modify_volume_attribute(VolumeId=vol["VolumeId"], AutoEnableIO={"Value": True})
    got = ec2.describe_volume_attribute(VolumeId=vol["VolumeId"], Attribute="autoEnableIO")
    assert got["AutoEnableIO"]["Value"] is True


def test_dry_run(ec2) -> None:
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone=AZ, Size=1, DryRun=True)
    assert error_code(err.value) == "DryRunOperation"


def test_r_key_3_service_grant_for_encrypted_volume(ec2, kms, acct) -> None:
    key = create_key(kms, acct)
    before = kms.list_grants(KeyId=key)["Grants"]
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True, KmsKeyId=key)
    assert final_volume(ec2, vol["VolumeId"])["State"] == "available"
    grants = kms.list_grants(KeyId=key)["Grants"]
    assert len(grants) > len(before)
    assert any(g["GranteePrincipal"] == "ec2.us-east-1.amazonaws.com" and "Decrypt" in g["Operations"]
               for g in grants)


def test_r_key_7_key_policy_without_ebs_actions_is_unusable(aws) -> None:
    """A key whose policy does not give the caller's account the EBS actions cannot be used."""
    owner, user = new_account(), new_account()
    key = create_key(aws("kms", account=owner), owner)  # policy names only the owner
    ec2 = aws("ec2", account=user)
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True, KmsKeyId=key)
    assert final_volume(ec2, vol["VolumeId"])["State"] == "error"
    owner_ec2 = aws("ec2", account=owner)
    ok = owner_ec2.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True, KmsKeyId=key)
    assert final_volume(owner_ec2, ok["VolumeId"])["State"] == "available"
