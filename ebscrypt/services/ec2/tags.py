"""CreateTags, DeleteTags, DescribeTags for every EC2 resource type (one generic table)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import tag_operations as TO
from ebscrypt.engines.ec2.filters import apply_filters as filter_select
from ebscrypt.errors import MissingParameter
from ebscrypt.services.ec2.paging import page
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.registry import operation


def _resources(params: dict[str, Any]) -> list[str]:
    resources = params.get("Resources") or []
    if not resources:
        raise MissingParameter("resourceIdSet")
    return resources


@operation("ec2", "CreateTags")
def create_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    resources = _resources(params)
    tags = params.get("Tags") or []
    TO.create_tags(ctx, resources, tags)
    return {}


@operation("ec2", "DeleteTags")
def delete_tags(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    resources = _resources(params)
    TO.delete_tags(ctx, resources, params.get("Tags"))
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
    items = TO.all_tags(ctx)
    items = filter_select(items, params.get("Filters"), _FILTERS,
                          lambda d: {d["Key"]: d["Value"]})
    chunk, token = page(items, params, lambda d: f"{d['ResourceId']}\x00{d['Key']}", low=5, high=1000)
    return {"Tags": chunk, "NextToken": token}
