"""R-ACC: encryption by default and the default KMS key, per account and region (boto3)."""

from __future__ import annotations

import subprocess

import pytest
from botocore.exceptions import ClientError

from tests.helpers import create_key, error_code, final_volume, new_account


def test_r_acc_ebd_is_off_by_default_and_per_account_and_region(aws) -> None:
    a, b = new_account(), new_account()
    ec2_a = aws("ec2", account=a)
    assert ec2_a.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert ec2_a.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert ec2_a.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    # another account, and the same account in another region, are unaffected
    assert aws("ec2", account=b).get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert aws("ec2", account=a, region="eu-west-1").get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert ec2_a.disable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert ec2_a.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False


def test_r_acc_default_key_is_aws_ebs_alias_arn(aws) -> None:
    acct = new_account()
    got = aws("ec2", account=acct, region="eu-west-1").get_ebs_default_kms_key_id()["KmsKeyId"]
    assert got == f"arn:aws:kms:eu-west-1:{acct}:alias/aws/ebs"


def test_r_acc_modify_and_reset_default_key(aws) -> None:
    acct = new_account()
    ec2, kms = aws("ec2", account=acct), aws("kms", account=acct)
    key = create_key(kms, acct)
    key_id = key.rsplit("/", 1)[1]
    assert ec2.modify_ebs_default_kms_key_id(KmsKeyId=key_id)["KmsKeyId"] == key
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == key
    # alias names resolve too
    kms.create_alias(AliasName="alias/ebs-default", TargetKeyId=key_id)
    assert ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/ebs-default")["KmsKeyId"] == key
    reset = ec2.reset_ebs_default_kms_key_id()["KmsKeyId"]
    assert reset == f"arn:aws:kms:us-east-1:{acct}:alias/aws/ebs"
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == reset


def test_r_acc_r_key_5_only_symmetric_keys_can_be_default(aws) -> None:
    acct = new_account()
    ec2, kms = aws("ec2", account=acct), aws("kms", account=acct)
    asym = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    with pytest.raises(ClientError) as err:
        ec2.modify_ebs_default_kms_key_id(KmsKeyId=asym)
    assert error_code(err.value) == "InvalidParameterValue"
    assert ec2.get_ebs_default_kms_key_id()["KmsKeyId"].endswith(":alias/aws/ebs")


def test_r_acc_unknown_default_key_refused(aws) -> None:
    ec2 = aws("ec2", account=new_account())
    with pytest.raises(ClientError) as err:
        ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/does-not-exist")
    assert error_code(err.value) == "InvalidParameterValue"


def test_r_acc_ebd_changes_no_existing_resource(aws) -> None:
    acct = new_account()
    ec2 = aws("ec2", account=acct)
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    assert final_volume(ec2, vol["VolumeId"])["Encrypted"] is False
    ec2.enable_ebs_encryption_by_default()
    assert final_volume(ec2, vol["VolumeId"])["Encrypted"] is False
    new = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
    assert new["Encrypted"] is True  # R-OUT-5


def test_r_acc_default_key_change_applies_to_new_volumes(aws) -> None:
    acct = new_account()
    ec2, kms = aws("ec2", account=acct), aws("kms", account=acct)
    ec2.enable_ebs_encryption_by_default()
    first = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)
    aws_key = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
    assert aws_key["KeyManager"] == "AWS"
    assert first["KmsKeyId"] == aws_key["Arn"]
    key = create_key(kms, acct)
    ec2.modify_ebs_default_kms_key_id(KmsKeyId=key)
    second = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)
    assert second["KmsKeyId"] == key
    assert final_volume(ec2, first["VolumeId"])["KmsKeyId"] == aws_key["Arn"]  # R-KEY-4


def test_aws_cli_account_settings(endpoint, aws_cli_env) -> None:
    acct = new_account()
    env = dict(aws_cli_env, AWS_ACCESS_KEY_ID=acct)

    def cli(*args: str) -> str:
        out = subprocess.run(["aws", "--endpoint-url", endpoint, "ec2", *args, "--output", "text"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert cli("get-ebs-encryption-by-default").split()[0] == "False"
    assert cli("enable-ebs-encryption-by-default") == "True"
    assert cli("get-ebs-default-kms-key-id") == f"arn:aws:kms:us-east-1:{acct}:alias/aws/ebs"
    vol_id = cli("create-volume", "--availability-zone", "us-east-1a", "--size", "1", "--query", "VolumeId")
    assert vol_id.startswith("vol-")
    assert cli("describe-volumes", "--volume-ids", vol_id, "--query", "Volumes[0].Encrypted") == "True"
