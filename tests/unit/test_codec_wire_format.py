"""Exact wire formats AWS uses where botocore's parsers would tolerate others (R-WIRE).

The round-trip tests prove botocore reads what we write; these pin the details a
stricter client (the AWS CLI's XML handling, Terraform's Go SDK, Java SDKs) relies on.
"""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET

from ebscrypt.errors import ServiceError, UnknownOperation
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.http import HttpRequest

T = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
EC2_NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"


def _op(service: str, name: str):
    return codec_for(service).service_model.operation_model(name)


def test_ec2_response_document() -> None:
    result = {"Volumes": [{"VolumeId": "vol-1", "Encrypted": True, "Size": 8, "CreateTime": T,
                           "Tags": [{"Key": "a&b", "Value": "<x>"}]}]}
    resp = codec_for("ec2").serialize(_op("ec2", "DescribeVolumes"), result, "rid-ec2")
    assert resp.status == 200
    assert resp.header("content-type").startswith("text/xml")
    root = ET.fromstring(resp.body)
    assert root.tag == EC2_NS + "DescribeVolumesResponse"
    assert [c.tag for c in root][0] == EC2_NS + "requestId"
    assert root.findtext(EC2_NS + "requestId") == "rid-ec2"
    item = root.find(f"{EC2_NS}volumeSet/{EC2_NS}item")
    assert item.findtext(EC2_NS + "volumeId") == "vol-1"
    assert item.findtext(EC2_NS + "encrypted") == "true"
    assert item.findtext(EC2_NS + "size") == "8"
    assert item.findtext(EC2_NS + "createTime") == "2024-01-02T03:04:05.123Z"
    assert item.findtext(f"{EC2_NS}tagSet/{EC2_NS}item/{EC2_NS}key") == "a&b"
    assert item.findtext(f"{EC2_NS}tagSet/{EC2_NS}item/{EC2_NS}value") == "<x>"


def test_ec2_operation_without_output_returns_true() -> None:
    op = _op("ec2", "DeleteVolume")
    assert op.output_shape is None
    root = ET.fromstring(codec_for("ec2").serialize(op, {}, "rid").body)
    assert root.tag == EC2_NS + "DeleteVolumeResponse"
    assert root.findtext(EC2_NS + "requestId") == "rid"
    assert root.findtext(EC2_NS + "return") == "true"


def test_ec2_error_document() -> None:
    err = ServiceError("The volume 'vol-1' does not exist.", code="InvalidVolume.NotFound")
    resp = codec_for("ec2").serialize_error(err, "rid-e")
    assert resp.status == 400
    root = ET.fromstring(resp.body)
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "InvalidVolume.NotFound"
    assert root.findtext("Errors/Error/Message") == "The volume 'vol-1' does not exist."
    assert root.findtext("RequestID") == "rid-e"


def test_ec2_unknown_action_message() -> None:
    req = HttpRequest("POST", "/", "", {}, b"Action=Frobnicate&Version=2016-11-15")
    try:
        codec_for("ec2").parse(req)
    except UnknownOperation as exc:
        resp = codec_for("ec2").serialize_error(exc, "r")
    root = ET.fromstring(resp.body)
    assert root.findtext("Errors/Error/Code") == "InvalidAction"
    assert root.findtext("Errors/Error/Message") == "The action Frobnicate is not valid for this web service."


def test_sts_documents() -> None:
    ns = "{https://sts.amazonaws.com/doc/2011-06-15/}"
    result = {"Account": "111111111111", "Arn": "arn:aws:iam::111111111111:root", "UserId": "111111111111"}
    resp = codec_for("sts").serialize(_op("sts", "GetCallerIdentity"), result, "rid-s")
    root = ET.fromstring(resp.body)
    assert root.tag == ns + "GetCallerIdentityResponse"
    assert root.findtext(f"{ns}GetCallerIdentityResult/{ns}Account") == "111111111111"
    assert root.findtext(f"{ns}ResponseMetadata/{ns}RequestId") == "rid-s"
    resp = codec_for("sts").serialize_error(ServiceError("no", code="AccessDenied", status=403), "rid-s")
    root = ET.fromstring(resp.body)
    assert root.tag == ns + "ErrorResponse"
    assert root.findtext(f"{ns}Error/{ns}Type") == "Sender"
    assert root.findtext(f"{ns}Error/{ns}Code") == "AccessDenied"
    assert root.findtext(f"{ns}RequestId") == "rid-s"
    assert resp.status == 403


def test_kms_json_numbers_and_envelope() -> None:
    result = {"KeyMetadata": {"KeyId": "k", "CreationDate": T, "Enabled": True}}
    resp = codec_for("kms").serialize(_op("kms", "DescribeKey"), result, "rid-k")
    assert resp.header("content-type") == "application/x-amz-json-1.1"
    assert resp.header("x-amzn-RequestId") == "rid-k"
    doc = json.loads(resp.body)
    assert doc == {"KeyMetadata": {"KeyId": "k", "CreationDate": 1704164645.123, "Enabled": True}}
    resp = codec_for("kms").serialize(_op("kms", "Encrypt"), {"CiphertextBlob": b"\x00\xff", "KeyId": "k"}, "r")
    assert json.loads(resp.body)["CiphertextBlob"] == "AP8="
    resp = codec_for("kms").serialize_error(ServiceError("Key 'x' does not exist", code="NotFoundException"), "rid")
    assert resp.status == 400
    assert json.loads(resp.body) == {"__type": "NotFoundException", "message": "Key 'x' does not exist"}
    assert resp.header("x-amzn-RequestId") == "rid"


def test_ebs_status_headers_and_raw_payload() -> None:
    codec = codec_for("ebs")
    resp = codec.serialize(_op("ebs", "PutSnapshotBlock"), {"Checksum": "abc=", "ChecksumAlgorithm": "SHA256"}, "r")
    assert resp.status == 201
    assert resp.header("x-amz-Checksum") == "abc="
    assert resp.header("x-amz-Checksum-Algorithm") == "SHA256"
    data = bytes(range(256)) * 4
    resp = codec.serialize(_op("ebs", "GetSnapshotBlock"),
                           {"BlockData": data, "DataLength": len(data), "Checksum": "c=", "ChecksumAlgorithm": "SHA256"},
                           "r")
    assert resp.status == 200
    assert resp.body == data
    assert resp.header("x-amz-Data-Length") == "1024"
    assert resp.header("content-type") == "application/octet-stream"
    resp = codec.serialize(_op("ebs", "StartSnapshot"), {"SnapshotId": "snap-1", "StartTime": T, "VolumeSize": 8}, "r")
    assert resp.status == 201
    assert json.loads(resp.body) == {"SnapshotId": "snap-1", "StartTime": 1704164645.123, "VolumeSize": 8}


def test_ebs_error_status_comes_from_the_model() -> None:
    codec = codec_for("ebs")
    err = ServiceError("The snapshot 'snap-1' does not exist.", code="ResourceNotFoundException",
                       Reason="SNAPSHOT_NOT_FOUND")
    resp = codec.serialize_error(err, "rid")
    assert resp.status == 404  # the model's httpStatusCode, though the error said 400
    assert resp.header("x-amzn-ErrorType") == "ResourceNotFoundException"
    assert resp.header("x-amzn-RequestId") == "rid"
    assert json.loads(resp.body) == {"Message": "The snapshot 'snap-1' does not exist.", "Reason": "SNAPSHOT_NOT_FOUND"}
    resp = codec.serialize_error(ServiceError("busy", code="SomethingElse", status=409), "rid")
    assert resp.status == 409


def test_ebs_request_members_parsed_from_a_plan_built_once_per_shape(monkeypatch) -> None:
    """The rest-json codec reads where each input member travels (label, query, header)
    from the model once per shape, not per request; the members parse as before: URI
    labels, headers (case-insensitive), the query, the raw payload."""
    from ebscrypt.wire.codec import restjson

    codec = restjson.RestJsonCodec(codec_for("ebs").service_model)  # a fresh codec: no plan yet
    built: list[str] = []
    real = restjson._input_plan
    monkeypatch.setattr(restjson, "_input_plan", lambda shape: built.append(shape.name) or real(shape))
    data = bytes(range(256)) * 2048
    for index in (3, 4):
        op, params = codec.parse(HttpRequest(
            method="PUT", path=f"/snapshots/snap-1/blocks/{index}", query="",
            headers={"x-amz-data-length": "524288", "x-amz-checksum": "c=", "x-amz-checksum-algorithm": "SHA256",
                     "x-amz-progress": "50"}, body=data))
        assert op.name == "PutSnapshotBlock"
        assert params == {"SnapshotId": "snap-1", "BlockIndex": index, "DataLength": 524288, "Checksum": "c=",
                          "ChecksumAlgorithm": "SHA256", "Progress": 50, "BlockData": data}
    op, params = codec.parse(HttpRequest(method="GET", path="/snapshots/snap-1/blocks/7", query="blockToken=tok%3D",
                                         headers={}, body=b""))
    assert op.name == "GetSnapshotBlock" and params == {"SnapshotId": "snap-1", "BlockIndex": 7, "BlockToken": "tok="}
    assert built == ["PutSnapshotBlockRequest", "GetSnapshotBlockRequest"]
