"""KMS handlers (JSON 1.1): each audits the call and delegates to the key engine.

The engine (``ctx.runtime.kms``, :mod:`ebscrypt.engines.kms.engine`) holds every rule;
a handler only names the operation. Every call, allowed or refused, appends one
CloudTrail-format record to the audit trail.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.services.registry import operation


def _run(ctx: RequestContext, name: str, params: dict[str, Any]) -> dict[str, Any]:
    engine = ctx.runtime.kms
    with engine.audited(ctx.caller, name, params, request_id=ctx.request_id):
        return getattr(engine, f"op_{name}")(ctx.caller, params)


@operation("kms", "CreateKey")
def create_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "CreateKey", params)


@operation("kms", "DescribeKey")
def describe_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "DescribeKey", params)


@operation("kms", "ListKeys")
def list_keys(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListKeys", params)


@operation("kms", "UpdateKeyDescription")
def update_key_description(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "UpdateKeyDescription", params)


@operation("kms", "CreateAlias")
def create_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "CreateAlias", params)


@operation("kms", "UpdateAlias")
def update_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "UpdateAlias", params)


@operation("kms", "DeleteAlias")
def delete_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "DeleteAlias", params)


@operation("kms", "ListAliases")
def list_aliases(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListAliases", params)


@operation("kms", "EnableKey")
def enable_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "EnableKey", params)


@operation("kms", "DisableKey")
def disable_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "DisableKey", params)


@operation("kms", "ScheduleKeyDeletion")
def schedule_key_deletion(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ScheduleKeyDeletion", params)


@operation("kms", "CancelKeyDeletion")
def cancel_key_deletion(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "CancelKeyDeletion", params)


@operation("kms", "EnableKeyRotation")
def enable_key_rotation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "EnableKeyRotation", params)


@operation("kms", "DisableKeyRotation")
def disable_key_rotation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "DisableKeyRotation", params)


@operation("kms", "GetKeyRotationStatus")
def get_key_rotation_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GetKeyRotationStatus", params)


@operation("kms", "RotateKeyOnDemand")
def rotate_key_on_demand(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "RotateKeyOnDemand", params)


@operation("kms", "ListKeyRotations")
def list_key_rotations(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListKeyRotations", params)


@operation("kms", "GetKeyPolicy")
def get_key_policy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GetKeyPolicy", params)


@operation("kms", "PutKeyPolicy")
def put_key_policy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "PutKeyPolicy", params)


@operation("kms", "ListKeyPolicies")
def list_key_policies(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListKeyPolicies", params)


@operation("kms", "CreateGrant")
def create_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "CreateGrant", params)


@operation("kms", "ListGrants")
def list_grants(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListGrants", params)


@operation("kms", "ListRetirableGrants")
def list_retirable_grants(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListRetirableGrants", params)


@operation("kms", "RetireGrant")
def retire_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "RetireGrant", params)


@operation("kms", "RevokeGrant")
def revoke_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "RevokeGrant", params)


@operation("kms", "Encrypt")
def encrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "Encrypt", params)


@operation("kms", "Decrypt")
def decrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "Decrypt", params)


@operation("kms", "ReEncrypt")
def re_encrypt(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ReEncrypt", params)


@operation("kms", "GenerateDataKey")
def generate_data_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateDataKey", params)


@operation("kms", "GenerateDataKeyWithoutPlaintext")
def generate_data_key_without_plaintext(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateDataKeyWithoutPlaintext", params)


@operation("kms", "GenerateRandom")
def generate_random(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateRandom", params)


@operation("kms", "GetPublicKey")
def get_public_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GetPublicKey", params)


@operation("kms", "Sign")
def sign(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "Sign", params)


@operation("kms", "Verify")
def verify(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "Verify", params)


@operation("kms", "TagResource")
def tag_resource(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "TagResource", params)


@operation("kms", "UntagResource")
def untag_resource(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "UntagResource", params)


@operation("kms", "ListResourceTags")
def list_resource_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "ListResourceTags", params)


@operation("kms", "GenerateMac")
def generate_mac(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateMac", params)


@operation("kms", "VerifyMac")
def verify_mac(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "VerifyMac", params)


@operation("kms", "GenerateDataKeyPair")
def generate_data_key_pair(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateDataKeyPair", params)


@operation("kms", "GenerateDataKeyPairWithoutPlaintext")
def generate_data_key_pair_without_plaintext(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _run(ctx, "GenerateDataKeyPairWithoutPlaintext", params)
