"""KMS key lifecycle handlers: create, describe, list, describe-update, enable/disable,
scheduled deletion, rotation, tags (engine: :mod:`ebscrypt.engines.kms.keys`,
:mod:`~ebscrypt.engines.kms.rotation`, :mod:`~ebscrypt.engines.kms.tags`)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.kms import api
from ebscrypt.services.kms.call import audited
from ebscrypt.services.registry import operation


@operation("kms", "CreateKey")
def create_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "CreateKey", params) as kms:
        return kms.create_key(ctx.caller, api.from_members(api.CreateKey, params))


@operation("kms", "DescribeKey", inline=True)
def describe_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "DescribeKey", params) as kms:
        return kms.describe_key_metadata(ctx.caller, api.from_members(api.KeyWithGrantTokens, params))


@operation("kms", "ListKeys")
def list_keys(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListKeys", params) as kms:
        return kms.list_keys(ctx.caller, api.from_members(api.Page, params))


@operation("kms", "UpdateKeyDescription")
def update_key_description(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "UpdateKeyDescription", params) as kms:
        return kms.update_key_description(ctx.caller, api.from_members(api.UpdateKeyDescription, params))


@operation("kms", "EnableKey")
def enable_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "EnableKey", params) as kms:
        return kms.enable_key(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "DisableKey")
def disable_key(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "DisableKey", params) as kms:
        return kms.disable_key(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "ScheduleKeyDeletion")
def schedule_key_deletion(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ScheduleKeyDeletion", params) as kms:
        return kms.schedule_key_deletion(ctx.caller, api.from_members(api.ScheduleKeyDeletion, params))


@operation("kms", "CancelKeyDeletion")
def cancel_key_deletion(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "CancelKeyDeletion", params) as kms:
        return kms.cancel_key_deletion(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "EnableKeyRotation")
def enable_key_rotation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "EnableKeyRotation", params) as kms:
        return kms.enable_key_rotation(ctx.caller, api.from_members(api.EnableKeyRotation, params))


@operation("kms", "DisableKeyRotation")
def disable_key_rotation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "DisableKeyRotation", params) as kms:
        return kms.disable_key_rotation(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "GetKeyRotationStatus")
def get_key_rotation_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GetKeyRotationStatus", params) as kms:
        return kms.get_key_rotation_status(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "RotateKeyOnDemand")
def rotate_key_on_demand(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "RotateKeyOnDemand", params) as kms:
        return kms.rotate_key_on_demand(ctx.caller, api.from_members(api.KeyRef, params))


@operation("kms", "ListKeyRotations")
def list_key_rotations(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListKeyRotations", params) as kms:
        return kms.list_key_rotations(ctx.caller, api.from_members(api.KeyPage, params))


@operation("kms", "TagResource")
def tag_resource(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "TagResource", params) as kms:
        return kms.tag_resource(ctx.caller, api.from_members(api.TagResource, params))


@operation("kms", "UntagResource")
def untag_resource(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "UntagResource", params) as kms:
        return kms.untag_resource(ctx.caller, api.from_members(api.UntagResource, params))


@operation("kms", "ListResourceTags")
def list_resource_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListResourceTags", params) as kms:
        return kms.list_resource_tags(ctx.caller, api.from_members(api.KeyPage, params))
