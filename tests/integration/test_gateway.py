"""The gateway end to end: accounts from access keys, strict SigV4, and bad input.

Every request here goes over HTTP to a real server process; the clients are boto3's.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from unittest import mock

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError


def test_two_accounts_are_two_identities(aws) -> None:
    a = aws("sts", account="111111111111").get_caller_identity()
    b = aws("sts", account="222222222222").get_caller_identity()
    assert a["Account"] == "111111111111"
    assert b["Account"] == "222222222222"
    assert a["Arn"] == "arn:aws:iam::111111111111:root"


def test_non_numeric_access_key_acts_as_default_account(endpoint) -> None:
    client = boto3.client("sts", endpoint_url=endpoint, region_name="eu-west-1",
                          aws_access_key_id="AKIAWHATEVER", aws_secret_access_key="x")
    assert client.get_caller_identity()["Account"] == "000000000000"


def test_region_comes_from_the_credential_scope(aws) -> None:
    regions = aws("ec2", region="eu-west-1").describe_availability_zones()["AvailabilityZones"]
    assert regions and all(z["RegionName"] == "eu-west-1" for z in regions)


def test_describe_regions_through_boto3(aws) -> None:
    names = {r["RegionName"] for r in aws("ec2").describe_regions()["Regions"]}
    assert {"us-east-1", "eu-west-1"} <= names


# -- strict mode -------------------------------------------------------------------------

CREDS = """
[alice]
aws_access_key_id = "AKIAALICE00000000001"
aws_secret_access_key = "alice-secret"
account_id = "333333333333"

[bob]
aws_access_key_id = "AKIABOB0000000000002"
aws_secret_access_key = "bob-secret"
account_id = "444444444444"
user_name = "bob"
"""


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    from tests.conftest import ServerProcess

    root = tmp_path_factory.mktemp("strict")
    creds = root / "creds.toml"
    creds.write_text(CREDS)
    srv = ServerProcess(root / "data", ["--auth", "strict", "--credentials", str(creds)]).start()
    yield srv
    srv.stop()


def _client(url: str, service: str, key: str, secret: str):
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def test_strict_accepts_valid_signatures(strict_server) -> None:
    alice = _client(strict_server.url, "sts", "AKIAALICE00000000001", "alice-secret").get_caller_identity()
    bob = _client(strict_server.url, "sts", "AKIABOB0000000000002", "bob-secret").get_caller_identity()
    assert alice["Account"] == "333333333333"
    assert bob["Arn"] == "arn:aws:iam::444444444444:user/bob"
    regions = _client(strict_server.url, "ec2", "AKIAALICE00000000001", "alice-secret").describe_regions()
    assert regions["Regions"]


@pytest.mark.parametrize(
    "service, call, code",
    [
        ("ec2", lambda c: c.describe_regions(), "AuthFailure"),
        ("kms", lambda c: c.list_keys(), "InvalidSignatureException"),
        ("sts", lambda c: c.get_caller_identity(), "SignatureDoesNotMatch"),
    ],
)
def test_strict_refuses_a_wrong_secret(strict_server, service, call, code) -> None:
    with pytest.raises(ClientError) as err:
        call(_client(strict_server.url, service, "AKIAALICE00000000001", "not-the-secret"))
    assert err.value.response["Error"]["Code"] == code


@pytest.mark.parametrize(
    "service, call, code",
    [
        ("ec2", lambda c: c.describe_regions(), "AuthFailure"),
        ("kms", lambda c: c.list_keys(), "UnrecognizedClientException"),
        ("sts", lambda c: c.get_caller_identity(), "InvalidClientTokenId"),
    ],
)
def test_strict_refuses_an_unknown_key(strict_server, service, call, code) -> None:
    with pytest.raises(ClientError) as err:
        call(_client(strict_server.url, service, "AKIANOBODY0000000000", "whatever"))
    assert err.value.response["Error"]["Code"] == code


def test_strict_refuses_a_stale_timestamp(strict_server) -> None:
    stale = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=20)
    client = _client(strict_server.url, "ec2", "AKIAALICE00000000001", "alice-secret")
    with mock.patch("botocore.auth.get_current_datetime", return_value=stale):
        with pytest.raises(ClientError) as err:
            client.describe_regions()
    assert err.value.response["Error"]["Code"] == "RequestExpired"


def test_strict_refuses_unsigned_requests(strict_server) -> None:
    resp = httpx.post(strict_server.url, data={"Action": "DescribeRegions", "Version": "2016-11-15"})
    assert resp.status_code in (400, 401, 403)
    assert b"<Code>" in resp.content


def test_strict_refuses_a_tampered_body(strict_server) -> None:
    """A signature over one body does not cover another (the signed body hash is checked)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = "Action=DescribeRegions&Version=2016-11-15"
    req = AWSRequest(method="POST", url=strict_server.url + "/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials("AKIAALICE00000000001", "alice-secret"), "ec2", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    ok = httpx.post(strict_server.url + "/", content=body, headers=headers)
    assert ok.status_code == 200
    bad = httpx.post(strict_server.url + "/", content=body + "&AllRegions=true", headers=headers)
    assert bad.status_code in (401, 403)


def test_dev_auth_refused_on_a_public_address(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ebscrypt", "serve", "--host", "0.0.0.0", "--auth", "dev",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "strict" in out.stderr


# -- bad input over the wire --------------------------------------------------------------

EC2_FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": "AWS4-HMAC-SHA256 Credential=111111111111/20260101/us-east-1/ec2/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=00"}
KMS_JSON = {"Content-Type": "application/x-amz-json-1.1",
            "Authorization": "AWS4-HMAC-SHA256 Credential=111111111111/20260101/us-east-1/kms/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=00"}
EBS_AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=111111111111/20260101/us-east-1/ebs/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=00"}


def _ec2_code(resp: httpx.Response) -> str:
    text = resp.text
    return text.split("<Code>")[1].split("</Code>")[0]


@pytest.mark.parametrize(
    "body, code",
    [
        ("Action=NoSuchThing&Version=2016-11-15", "InvalidAction"),
        ("Action=AttachVolume&Version=2016-11-15&VolumeId=vol-1&InstanceId=i-1", "MissingParameter"),
        ("Action=DescribeVolumes&Version=2016-11-15&MaxResults=lots", "InvalidParameterValue"),
        ("Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size=1&Encrypted=maybe",
         "InvalidParameterValue"),
    ],
)
def test_ec2_bad_input(endpoint, body, code) -> None:
    resp = httpx.post(endpoint + "/", content=body, headers=EC2_FORM)
    assert 400 <= resp.status_code < 500, resp.text
    assert _ec2_code(resp) == code
    assert "<RequestID>" in resp.text


@pytest.mark.parametrize(
    "target, body, code",
    [
        ("TrentService.NoSuchThing", "{}", "UnknownOperationException"),
        ("TrentService.DescribeKey", "{not json", "SerializationException"),
        ("TrentService.DescribeKey", "{}", "ValidationException"),
        ("TrentService.DescribeKey", '{"KeyId": 42}', "SerializationException"),
        ("TrentService.Encrypt", '{"KeyId": "alias/x", "Plaintext": "***not base64***"}', "SerializationException"),
    ],
)
def test_kms_bad_input(endpoint, target, body, code) -> None:
    resp = httpx.post(endpoint + "/", content=body, headers={**KMS_JSON, "X-Amz-Target": target})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["__type"].split("#")[-1] == code


@pytest.mark.parametrize(
    "method, path, headers, code",
    [
        ("GET", "/snapshots/snap-0123456789abcdef0/blocks/notanumber?blockToken=x", {}, "ValidationException"),
        ("POST", "/snapshots", {"Content-Type": "application/json"}, "ValidationException"),
    ],
)
def test_ebs_bad_input(endpoint, method, path, headers, code) -> None:
    content = b"{}" if method == "POST" else None
    resp = httpx.request(method, endpoint + path, content=content, headers={**EBS_AUTH, **headers})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["x-amzn-ErrorType"].split(":")[0] == code


def test_oversized_body_refused_before_it_is_read(endpoint) -> None:
    body = b"Action=DescribeRegions&Version=2016-11-15&Junk=" + b"x" * (3 * 1024 * 1024)
    resp = httpx.post(endpoint + "/", content=body, headers=EC2_FORM)
    assert resp.status_code == 413


def test_request_naming_no_service(endpoint) -> None:
    resp = httpx.get(endpoint + "/nothing-here")
    assert 400 <= resp.status_code < 500


def test_unimplemented_model_operation_is_a_clear_4xx(aws) -> None:
    with pytest.raises(ClientError) as err:
        aws("ec2").describe_fleets()
    assert err.value.response["Error"]["Code"] == "UnsupportedOperation"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_aws_cli_through_the_endpoint(endpoint, aws_cli_env) -> None:
    import subprocess

    out = subprocess.run(["aws", "--endpoint-url", endpoint, "sts", "get-caller-identity", "--output", "json"],
                         capture_output=True, text=True, env=aws_cli_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Account"] == "111111111111"
    out = subprocess.run(["aws", "--endpoint-url", endpoint, "ec2", "describe-regions", "--output", "json"],
                         capture_output=True, text=True, env=aws_cli_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert any(r["RegionName"] == "us-east-1" for r in json.loads(out.stdout)["Regions"])
