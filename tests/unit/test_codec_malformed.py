"""Malformed requests, per protocol: each gives a 4xx with AWS's code, never a crash (R-WIRE).

The codec raises; its own ``serialize_error`` renders the envelope; botocore's parser
reads the code back, as an SDK would.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import urlencode

import botocore.parsers
import pytest
from botocore.awsrequest import HeadersDict

from ebscrypt.errors import AuthError, ServiceError, ValidationError
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.http import HttpRequest


@dataclass
class Case:
    id: str
    service: str
    request: HttpRequest
    code: str
    status: int
    message: str = ""  # a fragment the message must contain


def ec2(fields: dict[str, str] | str, *, body: bytes | None = None) -> HttpRequest:
    data = body if body is not None else (fields if isinstance(fields, str) else urlencode(fields)).encode()
    return HttpRequest("POST", "/", "", {"content-type": "application/x-www-form-urlencoded"}, data)


def kms(target: str | None, body: bytes | dict) -> HttpRequest:
    headers = {"content-type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["x-amz-target"] = target
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpRequest("POST", "/", "", headers, data)


def ebs(method: str, path: str, *, query: str = "", headers: dict | None = None, body: bytes | dict = b"") -> HttpRequest:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpRequest(method, path, query, {k.lower(): v for k, v in (headers or {}).items()}, data)


V = {"Version": "2016-11-15"}
BLOCK = b"\0" * 16
PUT_HEADERS = {
    "x-amz-Data-Length": "16",
    "x-amz-Checksum": base64.b64encode(hashlib.sha256(BLOCK).digest()).decode(),
    "x-amz-Checksum-Algorithm": "SHA256",
}

CASES = [
    # -- ec2 (query, XML) -------------------------------------------------------------
    Case("ec2-unknown-action", "ec2", ec2({"Action": "LaunchRockets", **V}), "InvalidAction", 400,
         "The action LaunchRockets is not valid for this web service."),
    Case("ec2-no-action", "ec2", ec2({"Version": "2016-11-15"}), "MissingAction", 400, "Action"),
    Case("ec2-missing-required", "ec2", ec2({"Action": "DeleteVolume", **V}), "MissingParameter", 400,
         "The request must contain the parameter VolumeId"),
    Case("ec2-missing-nested-required", "ec2",
         ec2({"Action": "ImportKeyPair", **V, "KeyName": "k"}), "MissingParameter", 400, "PublicKeyMaterial"),
    Case("ec2-integer-not-a-number", "ec2", ec2({"Action": "DescribeVolumes", **V, "MaxResults": "many"}),
         "InvalidParameterValue", 400, "parameter maxResults"),
    Case("ec2-bad-boolean", "ec2", ec2({"Action": "DeleteVolume", **V, "VolumeId": "vol-1", "DryRun": "perhaps"}),
         "InvalidParameterValue", 400, "parameter dryRun"),
    Case("ec2-bad-timestamp", "ec2",
         ec2({"Action": "DescribeSpotPriceHistory", **V, "StartTime": "yesterday-ish"}),
         "InvalidParameterValue", 400, "parameter startTime"),
    Case("ec2-bad-base64", "ec2",
         ec2({"Action": "ImportKeyPair", **V, "KeyName": "k", "PublicKeyMaterial": "***"}),
         "InvalidParameterValue", 400, "parameter publicKeyMaterial"),
    Case("ec2-scalar-given-as-structure", "ec2",
         ec2({"Action": "DescribeVolumes", **V, "MaxResults.1": "5"}), "InvalidParameterValue", 400,
         "parameter maxResults"),
    Case("ec2-bad-int-in-list-of-structures", "ec2",
         ec2({"Action": "RunInstances", **V, "ImageId": "ami-1", "MinCount": "1", "MaxCount": "1",
              "BlockDeviceMapping.1.Ebs.VolumeSize": "big"}),
         "InvalidParameterValue", 400, "BlockDeviceMapping.1.Ebs.VolumeSize"),
    Case("ec2-unknown-parameter", "ec2", ec2({"Action": "DescribeVolumes", **V, "Colour": "red"}),
         "UnknownParameter", 400, "The parameter Colour is not recognized"),
    Case("ec2-unknown-nested-parameter", "ec2",
         ec2({"Action": "DescribeVolumes", **V, "Filter.1.Name": "size", "Filter.1.Foo": "x"}),
         "UnknownParameter", 400, "The parameter Foo is not recognized"),
    Case("ec2-body-not-utf8", "ec2", ec2("", body=b"Action=DescribeVolumes&x=\xff\xfe"), "InvalidParameterValue", 400),
    # -- sts (query, XML) -------------------------------------------------------------
    Case("sts-unknown-action", "sts", ec2({"Action": "GetMyIdentity", "Version": "2011-06-15"}),
         "InvalidAction", 400, "GetMyIdentity"),
    Case("sts-missing-required", "sts", ec2({"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": "arn:x"}),
         "MissingParameter", 400, "RoleSessionName"),
    # -- kms (json 1.1) ---------------------------------------------------------------
    Case("kms-unknown-target", "kms", kms("TrentService.LaunchRockets", {}), "UnknownOperationException", 400),
    Case("kms-foreign-target-prefix", "kms", kms("DynamoDB_20120810.DescribeKey", {"KeyId": "k"}),
         "UnknownOperationException", 400),
    Case("kms-no-target", "kms", kms(None, {"KeyId": "k"}), "UnknownOperationException", 400),
    # AWS's JSON 1.1 services: what does not deserialize is a SerializationException.
    Case("kms-bad-json", "kms", kms("TrentService.DescribeKey", b'{"KeyId": '), "SerializationException", 400, "JSON"),
    Case("kms-json-not-object", "kms", kms("TrentService.DescribeKey", b'["k"]'), "SerializationException", 400),
    Case("kms-missing-required", "kms", kms("TrentService.DescribeKey", {}), "ValidationException", 400,
         "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null"),
    Case("kms-null-is-missing", "kms", kms("TrentService.DescribeKey", {"KeyId": None}), "ValidationException", 400,
         "Value null at 'keyId'"),
    Case("kms-wrong-type", "kms", kms("TrentService.DescribeKey", {"KeyId": 5}), "SerializationException", 400,
         "keyId"),
    Case("kms-wrong-type-bool", "kms", kms("TrentService.GenerateRandom", {"NumberOfBytes": True}),
         "SerializationException", 400, "numberOfBytes"),
    Case("kms-bad-base64", "kms", kms("TrentService.Encrypt", {"KeyId": "k", "Plaintext": "not base64!"}),
         "SerializationException", 400, "plaintext"),
    Case("kms-too-short", "kms", kms("TrentService.DescribeKey", {"KeyId": ""}), "ValidationException", 400,
         "Member must have length greater than or equal to 1"),
    Case("kms-out-of-range", "kms", kms("TrentService.GenerateRandom", {"NumberOfBytes": 0}), "ValidationException",
         400, "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1"),
    Case("kms-bad-enum", "kms", kms("TrentService.CreateKey", {"KeySpec": "ROT13"}), "ValidationException", 400,
         "at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: ["),
    Case("kms-bad-pattern", "kms", kms("TrentService.CreateAlias", {"AliasName": "alias/no spaces", "TargetKeyId": "k"}),
         "ValidationException", 400,
         "Value 'alias/no spaces' at 'aliasName' failed to satisfy constraint: Member must satisfy regular "
         "expression pattern: ^[a-zA-Z0-9:/_-]+$"),
    Case("kms-two-problems", "kms", kms("TrentService.Encrypt", {"KeyId": ""}), "ValidationException", 400,
         "2 validation errors detected"),
    Case("kms-nested-type", "kms", kms("TrentService.Encrypt", {"KeyId": "k", "Plaintext": "AA==",
                                                                "EncryptionContext": {"a": 1}}),
         "SerializationException", 400, "encryptionContext"),
    # -- ebs (rest-json) --------------------------------------------------------------
    Case("ebs-unknown-route", "ebs", ebs("GET", "/volumes"), "UnknownOperationException", 404),
    Case("ebs-wrong-method", "ebs", ebs("DELETE", "/snapshots"), "UnknownOperationException", 404),
    Case("ebs-label-not-integer", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/first", headers=PUT_HEADERS, body=BLOCK),
         "ValidationException", 400, "blockIndex"),
    Case("ebs-negative-index", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/-1", headers=PUT_HEADERS, body=BLOCK),
         "ValidationException", 400, "Member must have value greater than or equal to 0"),
    Case("ebs-missing-header", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/0",
             headers={k: v for k, v in PUT_HEADERS.items() if k != "x-amz-Checksum"}, body=BLOCK),
         "ValidationException", 400, "Value null at 'checksum'"),
    Case("ebs-header-not-integer", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/0", headers={**PUT_HEADERS, "x-amz-Data-Length": "lots"}, body=BLOCK),
         "ValidationException", 400, "dataLength"),
    Case("ebs-progress-out-of-range", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/0", headers={**PUT_HEADERS, "x-amz-Progress": "101"}, body=BLOCK),
         "ValidationException", 400, "progress"),
    Case("ebs-bad-json", "ebs", ebs("POST", "/snapshots", body=b"{volume"), "ValidationException", 400, "JSON"),
    Case("ebs-missing-body-member", "ebs", ebs("POST", "/snapshots", body={"Description": "x"}),
         "ValidationException", 400, "Value null at 'volumeSize'"),
    Case("ebs-wrong-json-type", "ebs", ebs("POST", "/snapshots", body={"VolumeSize": "8"}),
         "ValidationException", 400, "volumeSize"),
    Case("ebs-timeout-out-of-range", "ebs", ebs("POST", "/snapshots", body={"VolumeSize": 8, "Timeout": 1}),
         "ValidationException", 400, "timeout"),
    Case("ebs-query-not-integer", "ebs", ebs("GET", "/snapshots/snap-1/blocks", query="maxResults=lots"),
         "ValidationException", 400, "maxResults"),
    Case("ebs-query-out-of-range", "ebs", ebs("GET", "/snapshots/snap-1/blocks", query="maxResults=5"),
         "ValidationException", 400, "Member must have value greater than or equal to 100"),
    Case("ebs-bad-snapshot-id-pattern", "ebs", ebs("GET", "/snapshots/vol-123/blocks"), "ValidationException", 400,
         "at 'snapshotId' failed to satisfy constraint: Member must satisfy regular expression pattern"),
    Case("ebs-bad-enum-header", "ebs",
         ebs("PUT", "/snapshots/snap-1/blocks/0", headers={**PUT_HEADERS, "x-amz-Checksum-Algorithm": "MD5"},
             body=BLOCK),
         "ValidationException", 400, "enum value set: [SHA256]"),
]


def _parse_error(service: str, resp) -> dict:
    headers = HeadersDict()
    for k, v in resp.headers:
        headers[k] = v
    parser = botocore.parsers.create_parser(codec_for(service).service_model.protocol)
    return parser.parse({"status_code": resp.status, "headers": headers, "body": resp.body}, None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request_gets_its_protocol_error(case: Case) -> None:
    codec = codec_for(case.service)
    with pytest.raises(ServiceError) as info:
        codec.parse(case.request)
    resp = codec.serialize_error(info.value, "rid-1")
    assert resp.status == case.status
    err = _parse_error(case.service, resp)
    assert err["Error"]["Code"] == case.code
    assert case.message in err["Error"]["Message"]
    assert err["ResponseMetadata"]["RequestId"] == "rid-1"


def test_well_formed_requests_of_the_table_do_parse() -> None:
    """The table's requests differ from valid ones only in the broken part."""
    op, params = codec_for("ebs").parse(ebs("PUT", "/snapshots/snap-1/blocks/7", headers=PUT_HEADERS, body=BLOCK))
    assert op.name == "PutSnapshotBlock"
    assert params == {"SnapshotId": "snap-1", "BlockIndex": 7, "BlockData": BLOCK, "DataLength": 16,
                      "Checksum": PUT_HEADERS["x-amz-Checksum"], "ChecksumAlgorithm": "SHA256"}
    op, params = codec_for("kms").parse(kms("TrentService.Encrypt", {"KeyId": "k", "Plaintext": "AA=="}))
    assert (op.name, params) == ("Encrypt", {"KeyId": "k", "Plaintext": b"\0"})
    op, params = codec_for("ec2").parse(ec2({"Action": "DeleteVolume", **V, "VolumeId": "vol-1", "DryRun": "true"}))
    assert (op.name, params) == ("DeleteVolume", {"VolumeId": "vol-1", "DryRun": True})
    # GET with the query string works for the query protocol too.
    req = HttpRequest("GET", "/", "Action=GetCallerIdentity&Version=2011-06-15", {}, b"")
    assert codec_for("sts").parse(req)[0].name == "GetCallerIdentity"


# -- protocol-level errors rendered per protocol ----------------------------------------------

AUTH = [
    ("ec2", "unknown_key", "AuthFailure", 401, "AWS was not able to validate the provided access credentials"),
    ("ec2", "bad_signature", "AuthFailure", 401, "AWS was not able to validate the provided access credentials"),
    ("ec2", "expired", "RequestExpired", 400, ""),
    ("kms", "unknown_key", "UnrecognizedClientException", 400, "The security token included in the request is invalid."),
    ("kms", "bad_signature", "InvalidSignatureException", 400, "The request signature we calculated does not match"),
    ("kms", "expired", "InvalidSignatureException", 400, "Signature expired"),
    ("ebs", "unknown_key", "UnrecognizedClientException", 403, "The security token included in the request is invalid."),
    ("ebs", "bad_signature", "InvalidSignatureException", 403, "The request signature we calculated does not match"),
    ("sts", "unknown_key", "InvalidClientTokenId", 403, "The security token included in the request is invalid."),
    ("sts", "bad_signature", "SignatureDoesNotMatch", 403, "The request signature we calculated does not match"),
]


@pytest.mark.parametrize("service,kind,code,status,message", AUTH, ids=[f"{a[0]}-{a[1]}" for a in AUTH])
def test_auth_errors_use_each_protocols_code(service, kind, code, status, message) -> None:
    error = AuthError("Signature expired: 20260101T000000Z is now earlier than 20260101T001000Z", kind=kind)
    resp = codec_for(service).serialize_error(error, "rid-2")
    assert resp.status == status
    err = _parse_error(service, resp)
    assert err["Error"]["Code"] == code
    assert message in err["Error"]["Message"]


def test_handler_validation_errors_are_mapped_per_protocol() -> None:
    missing = ValidationError("The request must contain the parameter Size", missing=True)
    bad = ValidationError("Value (x) for parameter Size is invalid.")
    assert _parse_error("ec2", codec_for("ec2").serialize_error(missing, "r"))["Error"]["Code"] == "MissingParameter"
    assert _parse_error("ec2", codec_for("ec2").serialize_error(bad, "r"))["Error"]["Code"] == "InvalidParameterValue"
    assert _parse_error("kms", codec_for("kms").serialize_error(bad, "r"))["Error"]["Code"] == "ValidationException"
    resp = codec_for("ebs").serialize_error(ValidationError("bad", Reason="INVALID_BLOCK"), "r")
    assert resp.header("x-amzn-ErrorType") == "ValidationException"
    assert json.loads(resp.body) == {"Message": "bad", "Reason": "INVALID_BLOCK"}
    # An explicit code chosen by a handler is kept.
    combo = ValidationError("both", code="InvalidParameterCombination")
    assert _parse_error("ec2", codec_for("ec2").serialize_error(combo, "r"))["Error"]["Code"] == \
        "InvalidParameterCombination"
