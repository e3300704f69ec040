"""EBS account settings (R-ACC): encryption by default and the default KMS key, per
account and region. EBD changes no existing resource; only symmetric keys may be default."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import account as acct
from ebscrypt.engines.ec2.encryption import describe_for_ebs
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.errors import InvalidParameterValue, MissingParameter
from ebscrypt.services.registry import operation


def _set_ebd(ctx: RequestContext, params: dict[str, Any], enabled: bool) -> dict[str, Any]:
    dry_run_check(params)
    acct.store_ebd(ctx, enabled)
    return {"EbsEncryptionByDefault": enabled}


@operation("ec2", "EnableEbsEncryptionByDefault")
def enable_ebd(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _set_ebd(ctx, params, True)


@operation("ec2", "DisableEbsEncryptionByDefault")
def disable_ebd(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _set_ebd(ctx, params, False)


@operation("ec2", "GetEbsEncryptionByDefault")
def get_ebd(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"EbsEncryptionByDefault": acct.settings_of(ctx).ebd, "SseType": "sse-ebs"}


@operation("ec2", "GetEbsDefaultKmsKeyId")
def get_default_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"KmsKeyId": acct.shown_default_key(ctx)}


@operation("ec2", "ModifyEbsDefaultKmsKeyId")
def modify_default_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    key = params.get("KmsKeyId")
    if not key:
        raise MissingParameter("KmsKeyId")
    arn, problem, manager = describe_for_ebs(ctx, key)
    if problem:
        raise InvalidParameterValue(f"Invalid KMS key {key}: {problem.split(': ', 1)[-1]}")
    stored = None if manager == "AWS" else arn  # the AWS managed key is the reset state
    return {"KmsKeyId": acct.store_default_key(ctx, stored)}


@operation("ec2", "ResetEbsDefaultKmsKeyId")
def reset_default_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"KmsKeyId": acct.store_default_key(ctx, None)}
