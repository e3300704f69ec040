"""EC2 refuses fields its operation does not have, and values of the wrong type (R-WIRE).

Raw form requests, signed with botocore's SigV4 signer, sent over HTTP to a real server;
the error document is read back with botocore's own EC2 parser, as an SDK would.

- A field the operation lacks → 400 ``UnknownParameter`` "The parameter X is not
  recognized", X being the first unrecognised name segment as sent (AWS names ``Item`` for
  ``Filter.Item.1.Name``, ``VolumeType`` for ``BlockDeviceMapping.1.Ebs.VolumeType``), checked
  before missing or malformed members, and the request changes nothing.
- A scalar of the wrong type → 400 ``InvalidParameterValue`` "Value (x) for parameter p is
  invalid.", p being EC2's lowerCamel name at the top level (``maxResults``, ``size``).
- The protocol's own fields (Action, Version, SigV4 query auth ``X-Amz-*``, SigV2 common
  parameters) and every form real tools send (Packer 1.6 / aws-sdk-go v1 legacy lists) pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import botocore.parsers
import httpx
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HeadersDict
from botocore.credentials import Credentials

from tests.helpers import new_account

V = [("Version", "2016-11-15")]
REGION = "us-east-1"


def _send(endpoint: str, fields: list[tuple[str, str]], account: str = "111111111111") -> httpx.Response:
    """POST ``fields`` as EC2 form data, SigV4-signed as ``account`` (dev auth key = account)."""
    body = urlencode(fields)
    req = AWSRequest(method="POST", url=endpoint + "/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(account, "ebscrypt-dev-secret"), "ec2", REGION).add_auth(req)
    return httpx.post(endpoint + "/", content=body, headers=dict(req.headers.items()), timeout=30)


def _error(resp: httpx.Response) -> tuple[str, str]:
    headers = HeadersDict()
    for k, v in resp.headers.items():
        headers[k] = v
    parsed = botocore.parsers.create_parser("ec2").parse(
        {"status_code": resp.status_code, "headers": headers, "body": resp.content}, None)
    assert parsed["ResponseMetadata"].get("RequestId")
    return parsed["Error"]["Code"], parsed["Error"]["Message"]


@dataclass
class Unknown:
    id: str
    fields: list[tuple[str, str]]
    name: str  # the segment AWS names


UNKNOWN = [
    Unknown("top-level", [("Action", "DescribeVolumes"), *V, ("Colour", "red")], "Colour"),
    Unknown("nested-in-filter", [("Action", "DescribeVolumes"), *V, ("Filter.1.Name", "size"),
                                 ("Filter.1.Value.1", "1"), ("Filter.1.Foo", "x")], "Foo"),
    # query-protocol list spelling (``.member.N``) and old SDKs' ``.Item.N``: not EC2's
    Unknown("query-style-member", [("Action", "DescribeVolumes"), *V, ("VolumeId.member.1", "vol-1")], "member"),
    Unknown("item-style-list", [("Action", "DescribeVolumes"), *V, ("Filter.Item.1.Name", "size")], "Item"),
    Unknown("deep-in-block-device-mapping",
            [("Action", "RunInstances"), *V, ("ImageId", "ami-12345678"), ("MinCount", "1"), ("MaxCount", "1"),
             ("BlockDeviceMapping.1.DeviceName", "/dev/sdb"), ("BlockDeviceMapping.1.Ebs.Colour", "red")], "Colour"),
    Unknown("below-a-scalar", [("Action", "DeleteVolume"), *V, ("VolumeId", "vol-1"), ("VolumeId.Extra", "x")],
            "Extra"),
    Unknown("old-permission-member",
            [("Action", "ModifySnapshotAttribute"), *V, ("SnapshotId", "snap-1"),
             ("CreateVolumePermission.Add.1.Account", "222222222222")], "Account"),
    Unknown("action-spelled-as-member", [("Action", "DescribeRegions"), *V, ("RegionName.1", "us-east-1"),
                                         ("Regions.1", "x")], "Regions"),
    # names are case-sensitive: the lowerCamel spelling of a member is not the member
    # (AWS: "The parameter instanceId is not recognized"), and it is reported before the
    # member it stands for is found missing
    Unknown("wrong-case-before-missing", [("Action", "DeleteVolume"), *V, ("volumeId", "vol-1")], "volumeId"),
    # unknown is reported before a malformed value of a known member
    Unknown("before-bad-value", [("Action", "DescribeVolumes"), *V, ("MaxResults", "many"), ("Bogus", "1")],
            "Bogus"),
]


@pytest.mark.parametrize("case", UNKNOWN, ids=[c.id for c in UNKNOWN])
def test_unknown_parameter_is_refused(endpoint: str, case: Unknown) -> None:
    resp = _send(endpoint, case.fields)
    assert resp.status_code == 400, resp.text
    assert _error(resp) == ("UnknownParameter", f"The parameter {case.name} is not recognized")


def test_refused_request_changes_nothing(endpoint: str, aws: Callable[..., Any]) -> None:
    account = new_account()
    fields = [("Action", "CreateVolume"), *V, ("AvailabilityZone", "us-east-1a"), ("Size", "1"),
              ("TagSpecification.1.ResourceType", "volume"), ("TagSpecification.1.Tag.1.Key", "k"),
              ("TagSpecification.1.Tag.1.Value", "v"), ("TagSpecification.1.Tag.1.Colour", "red")]
    resp = _send(endpoint, fields, account)
    assert _error(resp) == ("UnknownParameter", "The parameter Colour is not recognized")
    assert aws("ec2", account=account).describe_volumes()["Volumes"] == []
    # the same request without the stray field creates the volume (the refusal was the field)
    ok = _send(endpoint, fields[:-1], account)
    assert ok.status_code == 200, ok.text
    assert len(aws("ec2", account=account).describe_volumes()["Volumes"]) == 1


@dataclass
class BadValue:
    id: str
    fields: list[tuple[str, str]]
    message: str  # the start of AWS's message


BAD_VALUES = [
    BadValue("integer", [("Action", "DescribeVolumes"), *V, ("MaxResults", "abc")],
             "Value (abc) for parameter maxResults is invalid."),
    BadValue("integer-no-location-name",
             [("Action", "CreateVolume"), *V, ("AvailabilityZone", "us-east-1a"), ("Size", "big")],
             "Value (big) for parameter size is invalid."),
    BadValue("integer-fraction", [("Action", "RunInstances"), *V, ("ImageId", "ami-12345678"), ("MinCount", "1"),
                                  ("MaxCount", "1.5")], "Value (1.5) for parameter maxCount is invalid."),
    BadValue("boolean", [("Action", "DeleteVolume"), *V, ("VolumeId", "vol-1"), ("DryRun", "yes")],
             "Value (yes) for parameter dryRun is invalid."),
    BadValue("boolean-no-location-name", [("Action", "DescribeRegions"), *V, ("AllRegions", "1")],
             "Value (1) for parameter allRegions is invalid."),
    BadValue("nested-integer",
             [("Action", "RunInstances"), *V, ("ImageId", "ami-12345678"), ("MinCount", "1"), ("MaxCount", "1"),
              ("BlockDeviceMapping.1.DeviceName", "/dev/sdb"), ("BlockDeviceMapping.1.Ebs.VolumeSize", "big")],
             "Value (big) for parameter BlockDeviceMapping.1.Ebs.VolumeSize is invalid."),
    BadValue("nested-boolean",
             [("Action", "RunInstances"), *V, ("ImageId", "ami-12345678"), ("MinCount", "1"), ("MaxCount", "1"),
              ("BlockDeviceMapping.1.DeviceName", "/dev/sdb"),
              ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "maybe")],
             "Value (maybe) for parameter BlockDeviceMapping.1.Ebs.DeleteOnTermination is invalid."),
    BadValue("integer-in-list", [("Action", "AuthorizeSecurityGroupIngress"), *V, ("GroupId", "sg-1"),
                                 ("IpPermissions.1.IpProtocol", "tcp"), ("IpPermissions.1.FromPort", "ssh")],
             "Value (ssh) for parameter IpPermissions.1.FromPort is invalid."),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[c.id for c in BAD_VALUES])
def test_value_of_the_wrong_type_is_refused(endpoint: str, case: BadValue) -> None:
    resp = _send(endpoint, case.fields)
    assert resp.status_code == 400, resp.text
    code, message = _error(resp)
    assert code == "InvalidParameterValue"
    assert message.startswith(case.message), message


@dataclass
class Accepted:
    id: str
    fields: list[tuple[str, str]]
    code: str | None  # the handler's own answer (None: success) — never UnknownParameter


ACCEPTED = [
    # SigV2's common parameters are EC2 protocol fields, not operation members
    Accepted("sigv2-common-fields", [("Action", "DescribeRegions"), *V, ("AWSAccessKeyId", "AKIDEXAMPLE"),
                                     ("SignatureMethod", "HmacSHA256"), ("SignatureVersion", "2"),
                                     ("Timestamp", "2026-01-01T00:00:00Z"), ("Signature", "x")], None),
    # Packer 1.6 (aws-sdk-go v1) ami_users: the modification list plus the flat UserId.N
    Accepted("packer-ami-users", [("Action", "ModifyImageAttribute"), *V, ("ImageId", "ami-0000000000000000f"),
                                  ("LaunchPermission.Add.1.UserId", "222222222222"),
                                  ("UserId.1", "222222222222")], "InvalidAMIID.NotFound"),
    Accepted("packer-ami-groups", [("Action", "ModifyImageAttribute"), *V, ("ImageId", "ami-0000000000000000f"),
                                   ("LaunchPermission.Add.1.Group", "all"), ("UserGroup.1", "all")],
             "InvalidAMIID.NotFound"),
    Accepted("packer-snapshot-users",
             [("Action", "ModifySnapshotAttribute"), *V, ("SnapshotId", "snap-0000000000000000f"),
              ("CreateVolumePermission.Add.1.UserId", "222222222222"), ("UserId.1", "222222222222"),
              ("Attribute", "createVolumePermission"), ("OperationType", "add")], "InvalidSnapshot.NotFound"),
    Accepted("legacy-security-group-pairs",
             [("Action", "AuthorizeSecurityGroupIngress"), *V, ("GroupId", "sg-0000000000000000f"),
              ("IpPermissions.1.IpProtocol", "tcp"), ("IpPermissions.1.FromPort", "22"),
              ("IpPermissions.1.ToPort", "22"), ("IpPermissions.1.Groups.1.GroupId", "sg-0000000000000000e"),
              ("IpPermissions.1.Groups.1.UserId", "111111111111")], "InvalidGroup.NotFound"),
    Accepted("legacy-flat-ingress",
             [("Action", "AuthorizeSecurityGroupIngress"), *V, ("GroupId", "sg-0000000000000000f"),
              ("IpProtocol", "tcp"), ("FromPort", "22"), ("ToPort", "22"), ("CidrIp", "10.0.0.0/8")],
             "InvalidGroup.NotFound"),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_protocol_fields_and_tool_forms_are_recognised(endpoint: str, case: Accepted) -> None:
    resp = _send(endpoint, case.fields)
    if case.code is None:
        assert resp.status_code == 200, resp.text
    else:
        assert _error(resp)[0] == case.code, resp.text


def test_sigv4_query_auth_fields_are_not_parameters(endpoint: str) -> None:
    """A presigned GET carries X-Amz-Algorithm, X-Amz-Credential, … beside the members."""
    req = AWSRequest(method="GET", url=endpoint + "/?" + urlencode([("Action", "DescribeRegions"), *V]))
    SigV4QueryAuth(Credentials("111111111111", "ebscrypt-dev-secret"), "ec2", REGION, expires=300).add_auth(req)
    assert "X-Amz-Signature=" in req.url
    resp = httpx.get(req.url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert b"<regionInfo>" in resp.content
