"""KMS access handlers: key policies, aliases and grants (engine:
:mod:`ebscrypt.engines.kms.policies`, :mod:`~ebscrypt.engines.kms.aliases`,
:mod:`~ebscrypt.engines.kms.grants`)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.kms import api
from ebscrypt.services.kms.call import audited
from ebscrypt.services.registry import operation


@operation("kms", "GetKeyPolicy")
def get_key_policy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "GetKeyPolicy", params) as kms:
        return kms.get_key_policy(ctx.caller, api.from_members(api.GetKeyPolicy, params))


@operation("kms", "ListKeyPolicies")
def list_key_policies(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListKeyPolicies", params) as kms:
        return kms.list_key_policies(ctx.caller, api.from_members(api.KeyPage, params))


@operation("kms", "PutKeyPolicy")
def put_key_policy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "PutKeyPolicy", params) as kms:
        return kms.put_key_policy(ctx.caller, api.from_members(api.PutKeyPolicy, params))


@operation("kms", "CreateAlias")
def create_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "CreateAlias", params) as kms:
        return kms.create_alias(ctx.caller, api.from_members(api.AliasTarget, params))


@operation("kms", "UpdateAlias")
def update_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "UpdateAlias", params) as kms:
        return kms.update_alias(ctx.caller, api.from_members(api.AliasTarget, params))


@operation("kms", "DeleteAlias")
def delete_alias(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "DeleteAlias", params) as kms:
        return kms.delete_alias(ctx.caller, api.from_members(api.DeleteAlias, params))


@operation("kms", "ListAliases")
def list_aliases(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListAliases", params) as kms:
        return kms.list_aliases(ctx.caller, api.from_members(api.ListAliases, params))


@operation("kms", "CreateGrant")
def create_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "CreateGrant", params) as kms:
        return kms.create_grant(ctx.caller, api.from_members(api.CreateGrant, params))


@operation("kms", "ListGrants")
def list_grants(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListGrants", params) as kms:
        return kms.list_grants(ctx.caller, api.from_members(api.ListGrants, params))


@operation("kms", "ListRetirableGrants")
def list_retirable_grants(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "ListRetirableGrants", params) as kms:
        return kms.list_retirable_grants(ctx.caller, api.from_members(api.ListRetirableGrants, params))


@operation("kms", "RetireGrant")
def retire_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "RetireGrant", params) as kms:
        return kms.retire_grant(ctx.caller, api.from_members(api.RetireGrant, params))


@operation("kms", "RevokeGrant")
def revoke_grant(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with audited(ctx, "RevokeGrant", params) as kms:
        return kms.revoke_grant(ctx.caller, api.from_members(api.RevokeGrant, params))
