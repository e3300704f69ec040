"""Strict mode: everything that selects the action is signed (issue 10, item 4).

A request signed over ``host;x-amz-date`` only must not be accepted once its
``X-Amz-Target`` is rewritten (DescribeKey → DisableKey): ``Host``, every ``X-Amz-*``
header present and, for the JSON protocols, ``Content-Type`` must be signed headers.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.conftest import ServerProcess

KEY_ID, SECRET = "AKIACAROL00000000003", "carol-secret"
CREDS = f"""
[carol]
aws_access_key_id = "{KEY_ID}"
aws_secret_access_key = "{SECRET}"
account_id = "555555555555"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("strict-signed")
    (root / "creds.toml").write_text(CREDS)
    server = ServerProcess(root / "data", ["--auth", "strict", "--credentials", str(root / "creds.toml")]).start()
    yield server
    server.stop()


def _kms(srv: ServerProcess) -> Any:
    return boto3.client("kms", endpoint_url=srv.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))


class _Narrow(SigV4Auth):
    """A signer that covers only the headers it is told to (as a careless client might)."""

    def __init__(self, service: str, only: tuple[str, ...]) -> None:
        super().__init__(Credentials(KEY_ID, SECRET), service, "us-east-1")
        self.only = only

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        for name in list(headers.keys()):
            if name.lower() not in self.only:
                del headers[name]
        return headers


def _signed(srv: ServerProcess, service: str, body: str, headers: dict[str, str], only: tuple[str, ...]) -> dict[str, str]:
    req = AWSRequest(method="POST", url=srv.url + "/", data=body, headers=headers)
    _Narrow(service, only).add_auth(req)
    return dict(req.headers.items())


def test_rewritten_target_is_refused_and_changes_nothing(srv: ServerProcess) -> None:
    kms = _kms(srv)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    body = json.dumps({"KeyId": key_id})
    headers = _signed(srv, "kms", body, {"X-Amz-Target": "TrentService.DescribeKey",
                                         "Content-Type": "application/x-amz-json-1.1"}, ("host", "x-amz-date"))
    headers["X-Amz-Target"] = "TrentService.DisableKey"
    resp = httpx.post(srv.url + "/", content=body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["__type"].split("#")[-1] == "InvalidSignatureException"
    assert "'X-Amz-Target' must be a 'SignedHeader'" in resp.json()["message"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_unsigned_content_type_on_a_json_protocol_is_refused(srv: ServerProcess) -> None:
    body = "{}"
    headers = _signed(srv, "kms", body, {"X-Amz-Target": "TrentService.ListKeys",
                                         "Content-Type": "application/x-amz-json-1.1"},
                      ("host", "x-amz-date", "x-amz-target"))
    resp = httpx.post(srv.url + "/", content=body, headers=headers)
    assert resp.status_code == 400 and "'Content-Type' must be a 'SignedHeader'" in resp.json()["message"]


def test_unsigned_host_is_refused_with_aws_wording(srv: ServerProcess) -> None:
    body = "Action=DescribeRegions&Version=2016-11-15"
    headers = _signed(srv, "ec2", body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                      ("x-amz-date", "content-type"))
    resp = httpx.post(srv.url + "/", content=body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert "<Code>IncompleteSignature</Code>" in resp.text
    assert "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization." in resp.text


def test_an_unsigned_x_amz_header_on_ec2_is_refused(srv: ServerProcess) -> None:
    body = "Action=DescribeRegions&Version=2016-11-15"
    headers = _signed(srv, "ec2", body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                      ("host", "x-amz-date", "content-type"))
    headers["X-Amz-Security-Token"] = "smuggled"
    resp = httpx.post(srv.url + "/", content=body, headers=headers)
    assert resp.status_code == 400 and "<Code>IncompleteSignature</Code>" in resp.text


def test_fully_signed_requests_still_work(srv: ServerProcess) -> None:
    body = "{}"
    headers = _signed(srv, "kms", body, {"X-Amz-Target": "TrentService.ListKeys",
                                         "Content-Type": "application/x-amz-json-1.1"},
                      ("host", "x-amz-date", "x-amz-target", "content-type"))
    assert httpx.post(srv.url + "/", content=body, headers=headers).status_code == 200
    assert "Keys" in _kms(srv).list_keys()
    ebs = boto3.client("ebs", endpoint_url=srv.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                       aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))
    snap = ebs.start_snapshot(VolumeSize=1)
    ebs.put_snapshot_block(SnapshotId=snap["SnapshotId"], BlockIndex=0, BlockData=b"x" * 524288, DataLength=524288,
                           Checksum="7IuzOIEbv4AKi15QfQbgih2dBb3nQpT29ziPO7+6guU=", ChecksumAlgorithm="SHA256")
