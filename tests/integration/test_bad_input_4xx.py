"""Each request issue 10 (item 2) found answered with a 500 now gets a 4xx with AWS's code
and changes nothing (DESIGN "bad input gets a clear 4xx error and changes nothing"; R-WIRE).

Clients skip botocore's parameter validation, so the bad values reach the server as a
client with an older or newer model (or none) would send them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.helpers import empty_snapshot, new_account

UTC = dt.timezone.utc


def _raw(endpoint: str, service: str, account: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=account,
                        aws_secret_access_key="x",
                        config=Config(parameter_validation=False, retries={"max_attempts": 1}))


def _refused(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as info:
        call()
    resp = info.value.response
    return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Error"]["Code"], resp["Error"].get("Message", "")


@pytest.fixture
def acct() -> str:
    return new_account()


def test_kms_grant_calls_without_principal(endpoint: str, acct: str) -> None:
    kms = _raw(endpoint, "kms", acct)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    status, code, message = _refused(lambda: kms.create_grant(KeyId=key, Operations=["Decrypt"]))
    assert (status, code) == (400, "ValidationException")
    assert "Value null at 'granteePrincipal' failed to satisfy constraint: Member must not be null" in message
    assert kms.list_grants(KeyId=key)["Grants"] == []  # nothing was created
    status, code, message = _refused(lambda: kms.list_retirable_grants())
    assert (status, code) == (400, "ValidationException")
    assert "'retiringPrincipal'" in message


def _template(ec2: Any) -> str:
    tid = ec2.create_launch_template(LaunchTemplateName=f"t-{new_account()}",
                                     LaunchTemplateData={"InstanceType": "t3.micro"})["LaunchTemplate"]
    for n in range(2):
        ec2.create_launch_template_version(LaunchTemplateId=tid["LaunchTemplateId"],
                                           LaunchTemplateData={"InstanceType": "t3.small"})
    return tid["LaunchTemplateId"]


def _versions(ec2: Any, tid: str) -> list[int]:
    return sorted(v["VersionNumber"] for v in
                  ec2.describe_launch_template_versions(LaunchTemplateId=tid)["LaunchTemplateVersions"])


@pytest.mark.parametrize("bound", ["MinVersion", "MaxVersion"])
def test_describe_launch_template_versions_non_numeric_bound(endpoint: str, acct: str, bound: str) -> None:
    ec2 = _raw(endpoint, "ec2", acct)
    tid = _template(ec2)
    status, code, message = _refused(
        lambda: ec2.describe_launch_template_versions(LaunchTemplateId=tid, **{bound: "abc"}))
    assert (status, code) == (400, "InvalidParameterValue")
    assert "abc" in message
    # and without a template named (every template of the account)
    status, code, _ = _refused(lambda: ec2.describe_launch_template_versions(**{bound: "abc"}))
    assert (status, code) == (400, "InvalidParameterValue")
    assert ec2.describe_launch_template_versions(LaunchTemplateId=tid, MinVersion="2", MaxVersion="2")[
        "LaunchTemplateVersions"][0]["VersionNumber"] == 2


def test_delete_launch_template_versions_beyond_64_bits(endpoint: str, acct: str) -> None:
    ec2 = _raw(endpoint, "ec2", acct)
    tid = _template(ec2)
    status, code, message = _refused(
        lambda: ec2.delete_launch_template_versions(LaunchTemplateId=tid, Versions=["2", "99999999999999999999"]))
    assert (status, code) == (400, "InvalidParameterValue")
    assert "99999999999999999999" in message
    assert _versions(ec2, tid) == [1, 2, 3]  # version 2, listed first, was not deleted either
    status, code, _ = _refused(
        lambda: ec2.describe_launch_template_versions(LaunchTemplateId=tid, Versions=["99999999999999999999"]))
    assert (status, code) == (400, "InvalidLaunchTemplateId.VersionNotFound")


def test_get_snapshot_block_index_beyond_64_bits(endpoint: str, acct: str) -> None:
    ec2, ebs = _raw(endpoint, "ec2", acct), _raw(endpoint, "ebs", acct)
    snap = empty_snapshot(ec2)  # made by CreateSnapshot
    for index in (2**63, 2**31, -1):
        status, code, _ = _refused(
            lambda: ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockToken="x"))
        assert (status, code) == (400, "ValidationException"), index


@pytest.mark.parametrize("when", [dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),
                                  dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)])
def test_launch_template_with_timestamp_members_is_stored(endpoint: str, acct: str, when: dt.datetime) -> None:
    """A timestamp in LaunchTemplateData is valid input: EC2 accepts it, so ebscrypt stores it."""
    ec2 = _raw(endpoint, "ec2", acct)
    data = {"InstanceType": "t3.micro",
            "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"ValidUntil": when}}}
    created = ec2.create_launch_template(LaunchTemplateName=f"ts-{new_account()}", LaunchTemplateData=data)
    tid = created["LaunchTemplate"]["LaunchTemplateId"]
    version = ec2.create_launch_template_version(LaunchTemplateId=tid, SourceVersion="1",
                                                 LaunchTemplateData=data)["LaunchTemplateVersion"]
    assert version["VersionNumber"] == 2
    assert _versions(ec2, tid) == [1, 2]
