"""Launch template operations: thin handlers over :mod:`ebscrypt.engines.ec2.templates`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import templates as engine
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.services.ec2.paging import page
from ebscrypt.services.registry import operation

_TEMPLATE_FILTERS = {
    "launch-template-name": lambda t: t["LaunchTemplateName"],
    "create-time": lambda t: t["CreateTime"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
}

_VERSION_FILTERS = {
    "image-id": lambda v: v["LaunchTemplateData"].get("ImageId"),
    "instance-type": lambda v: v["LaunchTemplateData"].get("InstanceType"),
    "is-default-version": lambda v: v["DefaultVersion"],
    "key-name": lambda v: v["LaunchTemplateData"].get("KeyName"),
    "ebs-optimized": lambda v: v["LaunchTemplateData"].get("EbsOptimized"),
}


def _tags(t: dict[str, Any]) -> dict[str, str]:
    return {x["Key"]: x["Value"] for x in t.get("Tags") or []}


@operation("ec2", "CreateLaunchTemplate")
def create_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    template = engine.create_template(
        ctx, name=params.get("LaunchTemplateName") or "", data=params.get("LaunchTemplateData"),
        description=params.get("VersionDescription"), tag_spec_list=params.get("TagSpecifications"),
    )
    return {"LaunchTemplate": template}


@operation("ec2", "CreateLaunchTemplateVersion")
def create_launch_template_version(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    version = engine.create_version(
        ctx, template_id=params.get("LaunchTemplateId"), name=params.get("LaunchTemplateName"),
        source_version=params.get("SourceVersion"), data=params.get("LaunchTemplateData"),
        description=params.get("VersionDescription"),
    )
    return {"LaunchTemplateVersion": version}


@operation("ec2", "ModifyLaunchTemplate")
def modify_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    template = engine.modify_default(ctx, template_id=params.get("LaunchTemplateId"),
                                     name=params.get("LaunchTemplateName"), default=params.get("DefaultVersion"))
    return {"LaunchTemplate": template}


@operation("ec2", "DescribeLaunchTemplates")
def describe_launch_templates(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    items = engine.describe_templates(ctx, ids=params.get("LaunchTemplateIds"), names=params.get("LaunchTemplateNames"))
    items = sorted(filter_select(items, params.get("Filters"), _TEMPLATE_FILTERS, tag_getter=_tags),
                   key=lambda t: t["LaunchTemplateId"])  # paging order
    chunk, token = page(items, params, lambda t: t["LaunchTemplateId"], low=1, high=200)
    out: dict[str, Any] = {"LaunchTemplates": chunk}
    if token:
        out["NextToken"] = token
    return out


@operation("ec2", "DescribeLaunchTemplateVersions")
def describe_launch_template_versions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    items = engine.describe_versions(
        ctx, template_id=params.get("LaunchTemplateId"), name=params.get("LaunchTemplateName"),
        versions=params.get("Versions"), min_version=params.get("MinVersion"), max_version=params.get("MaxVersion"),
    )
    items = filter_select(items, params.get("Filters"), _VERSION_FILTERS)
    # newest version first, as EC2 lists them; the key sorts the same way
    chunk, token = page(items, params, lambda v: f"{v['LaunchTemplateId']}:{10**12 - v['VersionNumber']:012d}",
                        low=1, high=200)
    out: dict[str, Any] = {"LaunchTemplateVersions": chunk}
    if token:
        out["NextToken"] = token
    return out


@operation("ec2", "DeleteLaunchTemplate")
def delete_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"LaunchTemplate": engine.delete_template(ctx, template_id=params.get("LaunchTemplateId"),
                                                     name=params.get("LaunchTemplateName"))}


@operation("ec2", "DeleteLaunchTemplateVersions")
def delete_launch_template_versions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    ok, failed = engine.delete_versions(ctx, template_id=params.get("LaunchTemplateId"),
                                        name=params.get("LaunchTemplateName"), versions=params.get("Versions") or [])
    return {"SuccessfullyDeletedLaunchTemplateVersions": ok, "UnsuccessfullyDeletedLaunchTemplateVersions": failed}
