"""Launch template operations: thin handlers over :mod:`ebscrypt.engines.ec2.templates`, and
the ``LaunchTemplate`` / ``LaunchTemplateVersion`` views built from its records (the view
convention, docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Callable

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import templates as engine
from ebscrypt.engines.ec2.templates import LaunchTemplate, TemplateVersion, VersionDeletion
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.services.ec2.paging import page
from ebscrypt.services.registry import operation

_TEMPLATE_FILTERS: dict[str, Callable[[LaunchTemplate], Any]] = {
    "launch-template-name": lambda t: t.name,
    "create-time": lambda t: t.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
}

# On the echoed data, as the filters see what DescribeLaunchTemplateVersions shows.
_VERSION_FILTERS: dict[str, Callable[[TemplateVersion], Any]] = {
    "image-id": lambda v: v.echoed_data().get("ImageId"),
    "instance-type": lambda v: v.echoed_data().get("InstanceType"),
    "is-default-version": lambda v: v.is_default,
    "key-name": lambda v: v.echoed_data().get("KeyName"),
    "ebs-optimized": lambda v: v.echoed_data().get("EbsOptimized"),
}


def _tags(t: LaunchTemplate) -> dict[str, str]:
    return {x["Key"]: x["Value"] for x in t.tags}


def template_view(template: LaunchTemplate) -> dict[str, Any]:
    """The model's ``LaunchTemplate`` structure."""
    return {
        "LaunchTemplateId": template.template_id,
        "LaunchTemplateName": template.name,
        "CreateTime": template.created_at,
        "CreatedBy": template.created_by,
        "DefaultVersionNumber": template.default_version,
        "LatestVersionNumber": template.latest_version,
        "Tags": template.tags or None,
    }


def version_view(version: TemplateVersion) -> dict[str, Any]:
    """The model's ``LaunchTemplateVersion`` structure."""
    return {
        "LaunchTemplateId": version.template_id,
        "LaunchTemplateName": version.template_name,
        "VersionNumber": version.version,
        "VersionDescription": version.description or None,
        "CreateTime": version.created_at,
        "CreatedBy": version.created_by,
        "DefaultVersion": version.is_default,
        "LaunchTemplateData": version.echoed_data(),
    }


@operation("ec2", "CreateLaunchTemplate")
def create_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    template = engine.create_template(
        ctx, name=params.get("LaunchTemplateName") or "", data=params.get("LaunchTemplateData"),
        description=params.get("VersionDescription"), tag_spec_list=params.get("TagSpecifications"),
    )
    return {"LaunchTemplate": template_view(template)}


@operation("ec2", "CreateLaunchTemplateVersion")
def create_launch_template_version(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    version = engine.create_version(
        ctx, template_id=params.get("LaunchTemplateId"), name=params.get("LaunchTemplateName"),
        source_version=params.get("SourceVersion"), data=params.get("LaunchTemplateData"),
        description=params.get("VersionDescription"),
    )
    return {"LaunchTemplateVersion": version_view(version)}


@operation("ec2", "ModifyLaunchTemplate")
def modify_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    template = engine.modify_default(ctx, template_id=params.get("LaunchTemplateId"),
                                     name=params.get("LaunchTemplateName"), default=params.get("DefaultVersion"))
    return {"LaunchTemplate": template_view(template)}


@operation("ec2", "DescribeLaunchTemplates")
def describe_launch_templates(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    items = engine.describe_templates(ctx, ids=params.get("LaunchTemplateIds"), names=params.get("LaunchTemplateNames"))
    items = sorted(filter_select(items, params.get("Filters"), _TEMPLATE_FILTERS, tag_getter=_tags),
                   key=lambda t: t.template_id)  # paging order
    chunk, token = page(items, params, lambda t: t.template_id, low=1, high=200)
    return {"LaunchTemplates": [template_view(t) for t in chunk], "NextToken": token}


@operation("ec2", "DescribeLaunchTemplateVersions")
def describe_launch_template_versions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    items = engine.describe_versions(
        ctx, template_id=params.get("LaunchTemplateId"), name=params.get("LaunchTemplateName"),
        versions=params.get("Versions"), min_version=params.get("MinVersion"), max_version=params.get("MaxVersion"),
    )
    items = filter_select(items, params.get("Filters"), _VERSION_FILTERS)
    # newest version first, as EC2 lists them; the key sorts the same way
    chunk, token = page(items, params, lambda v: f"{v.template_id}:{10**12 - v.version:012d}", low=1, high=200)
    return {"LaunchTemplateVersions": [version_view(v) for v in chunk], "NextToken": token}


@operation("ec2", "DeleteLaunchTemplate")
def delete_launch_template(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"LaunchTemplate": template_view(engine.delete_template(ctx, template_id=params.get("LaunchTemplateId"),
                                                                   name=params.get("LaunchTemplateName")))}


@operation("ec2", "DeleteLaunchTemplateVersions")
def delete_launch_template_versions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    results = engine.delete_versions(ctx, template_id=params.get("LaunchTemplateId"),
                                     name=params.get("LaunchTemplateName"), versions=params.get("Versions") or [])
    return {
        "SuccessfullyDeletedLaunchTemplateVersions": [deletion_view(r) for r in results if r.error_code is None],
        "UnsuccessfullyDeletedLaunchTemplateVersions": [deletion_view(r) for r in results if r.error_code is not None],
    }


def deletion_view(result: VersionDeletion) -> dict[str, Any]:
    """A ``DeleteLaunchTemplateVersionsResponseSuccessItem`` or ``…ErrorItem`` (with its
    ``ResponseError``)."""
    return {
        "LaunchTemplateId": result.template_id,
        "LaunchTemplateName": result.template_name,
        "VersionNumber": result.version,
        "ResponseError": ({"Code": result.error_code, "Message": result.error_message}
                          if result.error_code is not None else None),
    }
