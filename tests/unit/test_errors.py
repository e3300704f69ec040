"""The typed error hierarchy (ebscrypt/errors.py): each class names one AWS code, holds
its message template, and each codec renders it in its protocol's envelope so that
botocore reads back the same code and message (R-WIRE).

The messages pinned here are the ones the handlers wrote inline before the hierarchy:
a template must not change a message a client (or a test) relies on.
"""

from __future__ import annotations

import json

import botocore.parsers
import pytest
from botocore.awsrequest import HeadersDict

from ebscrypt import errors as E
from ebscrypt.wire.codec import codec_for


def _read_back(service: str, operation: str, error: E.ServiceError) -> tuple[int, dict]:
    """Render ``error`` with the service's codec; parse it as botocore would."""
    codec = codec_for(service)
    op = codec.service_model.operation_model(operation)
    resp = codec.serialize_error(error, "rid-1")
    parser = botocore.parsers.create_parser(codec.service_model.protocol)
    parsed = parser.parse(
        {"status_code": resp.status, "headers": HeadersDict(resp.headers), "body": resp.body},
        op.output_shape,
    )
    return resp.status, parsed["Error"]


# --------------------------------------------------------------------------- templates


def test_missing_parameter_template() -> None:
    err = E.MissingParameter("VolumeId")
    assert (err.code, err.status, err.message) == (
        "MissingParameter", 400, "The request must contain the parameter VolumeId")
    assert err.name == "VolumeId"


def test_not_found_templates_keep_ec2_wording() -> None:
    # The wording differs per kind (nouns, final period) as AWS's does.
    assert E.NotFound("InvalidVolume", "vol-1").message == "The volume 'vol-1' does not exist."
    assert E.NotFound("InvalidInstanceID", "i-1").message == "The instance ID 'i-1' does not exist"
    assert E.NotFound("InvalidAMIID", "ami-1").message == "The image id '[ami-1]' does not exist"
    err = E.NotFound("InvalidSnapshot", "snap-1")
    assert (err.code, err.kind, err.ident) == ("InvalidSnapshot.NotFound", "InvalidSnapshot", "snap-1")
    # An explicit message wins (plural forms, extra context).
    assert E.NotFound("InvalidInstanceID", "i-1", "The instance IDs 'i-1, i-2' do not exist").message \
        == "The instance IDs 'i-1, i-2' do not exist"


def test_malformed_template() -> None:
    err = E.Malformed("InvalidVolumeID", "vol-x", prefix="vol")
    assert err.code == "InvalidVolumeID.Malformed"
    assert err.message == 'Invalid id: "vol-x" (expecting "vol-...")'
    assert E.Malformed("InvalidInstanceID", "i-x").message == 'Invalid id: "i-x"'


def test_kms_templates() -> None:
    assert E.KmsNotFound.key("arn:k").message == "Key 'arn:k' does not exist"
    assert E.KmsNotFound.alias("arn:a").message == "Alias arn:a is not found."
    assert E.KmsNotFound.grant("g1").message == "Grant ID g1 not found"
    assert E.KmsDryRun().message == "The request would have succeeded, but the DryRun flag is set."
    assert E.KmsValidation.out_of_range(0, "numberOfBytes", 1, 1024).message == (
        "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy "
        "constraint: Member must have value between 1 and 1024")
    denied = E.KmsAccessDenied.no_policy_allows("arn:p", "arn:k", "kms:Decrypt")
    assert denied.message == ("User: arn:p is not authorized to perform: kms:Decrypt on resource: "
                              "arn:k because no resource-based policy allows the kms:Decrypt action.")
    unavailable = E.KmsKeyUnavailable("down")
    assert (unavailable.code, unavailable.status) == ("KeyUnavailableException", 500)


def test_a_kms_validation_is_not_the_codecs_model_validation() -> None:
    # The codec maps ValidationError to each protocol's own code (EC2:
    # InvalidParameterValue); an engine's KMS ValidationException keeps its code wherever
    # it surfaces.
    assert not isinstance(E.KmsValidation("x"), E.ValidationError)
    assert codec_for("ec2").serialize_error(E.KmsValidation("bad"), "r").body.count(b"ValidationException") == 1


def test_ebs_errors_carry_reason() -> None:
    nf = E.EbsNotFound("snap-1")
    assert (nf.code, nf.status, nf.message, nf.fields) == (
        "ResourceNotFoundException", 404, "The snapshot 'snap-1' does not exist.", {"Reason": "SNAPSHOT_NOT_FOUND"})
    assert E.EbsValidation("m").fields == {}
    assert E.EbsAccessDenied("m").fields == {"Reason": "UNAUTHORIZED_ACCOUNT"}
    assert (E.EbsInternal("m").code, E.EbsInternal("m").status) == ("InternalServerException", 500)


@pytest.mark.parametrize("error,code,message,status", [
    (E.MissingParameter("size or snapshotId"), "MissingParameter",
     "The request must contain the parameter size or snapshotId", 400),
    (E.MissingParameter("CreateVolumePermission", "No permission changes were specified."), "MissingParameter",
     "No permission changes were specified.", 400),
    (E.Duplicate("InvalidKeyPair", "The keypair 'k' already exists."), "InvalidKeyPair.Duplicate",
     "The keypair 'k' already exists.", 400),
    (E.NotFound("InvalidGroup", "sg-1", "The security group 'sg-1' does not exist"), "InvalidGroup.NotFound",
     "The security group 'sg-1' does not exist", 400),
    (E.NotFound("InvalidVpcID", "vpc-1"), "InvalidVpcID.NotFound", "The vpc ID 'vpc-1' does not exist", 400),
    (E.Malformed("InvalidGroupId", "sg", prefix="sg"), "InvalidGroupId.Malformed",
     'Invalid id: "sg" (expecting "sg-...")', 400),
    (E.UnauthorizedOperation(), "UnauthorizedOperation", "You are not authorized to perform this operation.", 403),
    (E.DryRunOperation(), "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412),
    (E.InvalidNextToken("x"), "InvalidNextToken", "The token 'x' is invalid.", 400),
    (E.InvalidKeyFormat(), "InvalidKey.Format", "Key is not in valid OpenSSH public key format", 400),
    (E.VolumeZoneMismatch("vol-1", "i-1"), "InvalidVolume.ZoneMismatch",
     "The volume 'vol-1' is not in the same availability zone as instance 'i-1'", 400),
    (E.SnapshotInUse("snap-1", "ami-1"), "InvalidSnapshot.InUse",
     "The snapshot snap-1 is currently in use by ami-1", 400),
    (E.LaunchTemplateNameNotFound(), "InvalidLaunchTemplateName.NotFoundException",
     "At least one of the launch templates specified in the request does not exist.", 400),
    (E.LaunchTemplateNameExists(), "InvalidLaunchTemplateName.AlreadyExistsException",
     "Launch template name already in use.", 400),
    (E.UnknownResource("The resource 'x' does not exist."), "NotFound", "The resource 'x' does not exist.", 404),
])
def test_ec2_templates_keep_the_inline_wording(error: E.ServiceError, code: str, message: str, status: int) -> None:
    """The EC2 classes that replaced inline ServiceError(code=...) calls (issue 11 item 6)
    give the code, message and status those calls spelled out."""
    assert (error.code, error.message, error.status) == (code, message, status)


def test_no_ec2_engine_or_service_spells_an_error_code() -> None:
    """Issue 11 item 6: engines/ec2, services/ec2, insight and domain raise typed errors;
    a ``ServiceError(..., code=...)`` there is a code written where it is raised."""
    import ast
    from pathlib import Path

    root = Path(E.__file__).parent
    found = []
    for folder in ("engines/ec2", "services/ec2", "engines/insight", "engines/ebs", "domain"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ServiceError"
                        and any(k.arg == "code" for k in node.keywords)):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []


def test_every_typed_error_is_a_service_error_with_a_code() -> None:
    def walk(cls: type) -> list[type]:
        return [cls] + [c for sub in cls.__subclasses__() for c in walk(sub)]

    for cls in walk(E.CodedError):
        assert cls.__module__ == "ebscrypt.errors"
        assert issubclass(cls, E.ServiceError) and cls.code, cls


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("error", [
    E.MissingParameter("VolumeId"),
    E.InvalidParameterValue("Value (x) for parameter Size is invalid."),
    E.NotFound("InvalidVolume", "vol-0123456789abcdef0"),
    E.Malformed("InvalidVolumeID", "vol-x", prefix="vol"),
    E.UnknownParameter("Bogus"),
    E.Duplicate("InvalidGroup", "The security group 'g' already exists for VPC 'vpc-1'"),
    E.InvalidNextToken("garbage"),
])
def test_ec2_renders_code_and_message(error: E.ServiceError) -> None:
    status, parsed = _read_back("ec2", "DescribeVolumes", error)
    assert (status, parsed["Code"], parsed["Message"]) == (400, error.code, error.message)


@pytest.mark.parametrize("error", [
    E.KmsNotFound.key("arn:aws:kms:us-east-1:111122223333:key/x"),
    E.KmsDisabled("arn:k is disabled."),
    E.KmsInvalidState("arn:k is pending deletion."),
    E.KmsValidation("KeyId must be a non-empty string"),
    E.KmsKeyUnavailable("hsm down"),
    E.KmsDryRun(),
])
def test_kms_renders_type_and_message(error: E.ServiceError) -> None:
    status, parsed = _read_back("kms", "DescribeKey", error)
    assert (status, parsed["Code"], parsed["Message"]) == (error.status, error.code, error.message)


@pytest.mark.parametrize("error,status,reason", [
    (E.EbsNotFound("snap-1"), 404, "SNAPSHOT_NOT_FOUND"),
    (E.EbsValidation("bad index", "INVALID_BLOCK"), 400, "INVALID_BLOCK"),
    (E.EbsAccessDenied("not yours"), 403, "UNAUTHORIZED_ACCOUNT"),
    (E.EbsThrottled("retry", "RESOURCE_LEVEL_THROTTLE"), 400, "RESOURCE_LEVEL_THROTTLE"),
    (E.EbsInternal("broken"), 500, None),
])
def test_ebs_renders_error_type_and_reason(error: E.ServiceError, status: int, reason: str | None) -> None:
    codec = codec_for("ebs")
    resp = codec.serialize_error(error, "rid-1")
    assert resp.status == status
    assert resp.header("x-amzn-errortype") == error.code
    got, parsed = _read_back("ebs", "GetSnapshotBlock", error)
    assert parsed["Code"] == error.code and parsed["Message"] == error.message
    assert json.loads(resp.body).get("Reason") == reason
