"""Every KMS operation, fed odd values of the right wire types (and bad ones), answers a
4xx with an AWS error code — never a 5xx / KMSInternalException (DESIGN: bad input gets a
clear 4xx error and changes nothing)."""

from __future__ import annotations

import re
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

OPS = [
    "CreateKey", "DescribeKey", "ListKeys", "UpdateKeyDescription", "CreateAlias", "UpdateAlias",
    "DeleteAlias", "ListAliases", "EnableKey", "DisableKey", "ScheduleKeyDeletion", "CancelKeyDeletion",
    "EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus", "RotateKeyOnDemand",
    "ListKeyRotations", "GetKeyPolicy", "PutKeyPolicy", "ListKeyPolicies", "CreateGrant", "ListGrants",
    "ListRetirableGrants", "RetireGrant", "RevokeGrant", "Encrypt", "Decrypt", "ReEncrypt",
    "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateRandom", "GetPublicKey", "Sign",
    "Verify", "TagResource", "UntagResource", "ListResourceTags", "GenerateMac", "VerifyMac",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
]
ACCOUNT = "444444444499"


def _value(shape: Any, key: str, variant: int, depth: int = 0) -> Any:
    t = shape.type_name
    if t == "string":
        if shape.enum:
            return shape.enum[variant % len(shape.enum)] if variant < 3 else "BOGUS"
        return [key, "x", "", "alias/aws/ebs", f"arn:aws:kms:us-east-1:222222222222:key/{key}"][variant % 5]
    if t == "integer":
        return [1, 0, -1, 10**9, 32][variant % 5]
    if t == "boolean":
        return variant % 2 == 0
    if t == "blob":
        return [b"x", b"\x01" * 60, b""][variant % 3]
    if t == "list":
        return [_value(shape.member, key, variant, depth + 1)] if depth < 2 else []
    if t == "map":
        return {"k": "v"}
    if t == "structure":
        return {n: _value(s, key, variant, depth + 1) for n, s in shape.members.items()} if depth < 2 else {}
    return None


def test_no_kms_operation_answers_5xx(endpoint: str) -> None:
    client = boto3.client(
        "kms", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCOUNT,
        aws_secret_access_key="x", config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    key = client.create_key()["KeyMetadata"]["KeyId"]
    model = client.meta.service_model
    bad: list[tuple[str, str, str]] = []
    calls = 0
    for op in OPS:
        shape = model.operation_model(op).input_shape
        method: Callable[..., Any] = getattr(client, re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower())
        for variant in range(5):
            full = _value(shape, key, variant) if shape else {}
            required = {k: v for k, v in full.items() if k in shape.required_members} if shape else {}
            for params in (full, required):
                calls += 1
                try:
                    method(**params)
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                    if status >= 500 or "Internal" in code:
                        bad.append((op, code, exc.response["Error"].get("Message", "")))
    assert calls > 400
    assert bad == []
