"""CreateTags, DeleteTags, DescribeTags for every EC2 resource type (one generic table)."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Connection

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import snapshots as S
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2 import volumes as V
from ebscrypt.engines.ec2.filters import apply_filters as filter_select
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page
from ebscrypt.errors import ServiceError
from ebscrypt.services.registry import operation

# Existence checks per id prefix (the caller must own the resource). Other members may add
# theirs with ``register_tag_target(prefix, fn(conn, caller, resource_id))`` (raise if absent).
_TARGETS: dict[str, Callable[[Connection, Any, str], Any]] = {
    "vol": lambda conn, caller, rid: V.get_volume(conn, caller, rid),
    "snap": lambda conn, caller, rid: S.owned_snapshot(conn, caller, rid),
}


def register_tag_target(prefix: str, fn: Callable[[Connection, Any, str], Any]) -> None:
    _TARGETS[prefix] = fn


def _resources(params: dict[str, Any]) -> list[str]:
    resources = params.get("Resources") or []
    if not resources:
        raise ServiceError("The request must contain the parameter resourceIdSet", code="MissingParameter")
    return resources


def _check_targets(conn: Connection, ctx: RequestContext, resources: list[str]) -> None:
    for rid in resources:
        check = _TARGETS.get(rid.split("-", 1)[0])
        if check is not None:
            check(conn, ctx.caller, rid)
        elif "-" not in rid:
            raise ServiceError(f"Invalid id: \"{rid}\"", code="InvalidID")


@operation("ec2", "CreateTags")
def create_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    resources = _resources(params)
    tags = params.get("Tags") or []
    with ctx.runtime.db.begin() as conn:
        _check_targets(conn, ctx, resources)
        for rid in resources:
            T.put_tags(conn, ctx.caller.account, ctx.caller.region, rid, tags)
    return {}


@operation("ec2", "DeleteTags")
def delete_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    resources = _resources(params)
    with ctx.runtime.db.begin() as conn:
        _check_targets(conn, ctx, resources)
        for rid in resources:
            T.remove_tags(conn, rid, params.get("Tags"))
    return {}


_FILTERS = {
    "key": lambda d: d["Key"],
    "value": lambda d: d["Value"],
    "resource-id": lambda d: d["ResourceId"],
    "resource-type": lambda d: d["ResourceType"],
}


@operation("ec2", "DescribeTags")
def describe_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    with ctx.runtime.db.read() as conn:
        items = T.all_tags(conn, ctx.caller.account, ctx.caller.region)
    items = filter_select(items, params.get("Filters"), _FILTERS,
                          lambda d: {d["Key"]: d["Value"]})
    chunk, token = page(items, params, lambda d: f"{d['ResourceId']}\x00{d['Key']}", low=5, high=1000)
    out: dict[str, Any] = {"Tags": chunk}
    if token:
        out["NextToken"] = token
    return out
