"""Security groups and their rules (VPC security groups; the default VPC when none is named)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import filters as F
from ebscrypt.engines.ec2 import network as N
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2 import security_groups as SG
from ebscrypt.engines.ec2.records import SecurityGroupRule
from ebscrypt.services.ec2 import security_group_views as V
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page, sort_key
from ebscrypt.services.registry import operation


def _rules_of(g: SG.GroupDetail, egress: bool) -> list[SecurityGroupRule]:
    return [r for r in g.rules if r.is_egress == egress]


def _perm_values(g: SG.GroupDetail, egress: bool, field: str) -> list[Any]:
    return [v for v in (getattr(r, field) for r in _rules_of(g, egress)) if v is not None]


def _ports(g: SG.GroupDetail, egress: bool, field: str) -> list[Any]:
    return [-1 if v is None else v for v in (getattr(r, field) for r in _rules_of(g, egress))]


def _permission_filters(prefix: str, egress: bool) -> dict[str, Any]:
    return {
        f"{prefix}ip-permission.cidr": lambda g: _perm_values(g, egress, "cidr_ipv4"),
        f"{prefix}ip-permission.ipv6-cidr": lambda g: _perm_values(g, egress, "cidr_ipv6"),
        f"{prefix}ip-permission.prefix-list-id": lambda g: _perm_values(g, egress, "prefix_list_id"),
        f"{prefix}ip-permission.group-id": lambda g: _perm_values(g, egress, "ref_group_id"),
        f"{prefix}ip-permission.user-id": lambda g: _perm_values(g, egress, "ref_user_id"),
        f"{prefix}ip-permission.protocol": lambda g: [r.ip_protocol for r in _rules_of(g, egress)],
        f"{prefix}ip-permission.from-port": lambda g: _ports(g, egress, "from_port"),
        f"{prefix}ip-permission.to-port": lambda g: _ports(g, egress, "to_port"),
    }


_GROUP_FILTERS: dict[str, Any] = {
    "description": lambda g: g.group.description,
    "group-id": lambda g: g.group.id,
    "group-name": lambda g: g.group.name,
    "owner-id": lambda g: g.group.account,
    "vpc-id": lambda g: g.group.vpc_id,
    **_permission_filters("", False),
    **_permission_filters("egress.", True),
}

_RULE_FILTERS = {
    "group-id": lambda r: r.group_id,
    "security-group-rule-id": lambda r: r.id,
}


def group_view(detail: SG.GroupDetail, tags: dict[str, str], vpc_of: dict[str, str]) -> dict[str, Any]:
    """A ``SecurityGroup`` (the view convention, docs/architecture.md)."""
    g = detail.group
    return {
        "GroupId": g.id,
        "IpPermissionsEgress": V.permissions(_rules_of(detail, True), vpc_of),
        "VpcId": g.vpc_id,
        "SecurityGroupArn": N.arn(g.region, g.account, "security-group", g.id),
        "OwnerId": g.account,
        "GroupName": g.name,
        "Description": g.description,
        "IpPermissions": V.permissions(_rules_of(detail, False), vpc_of),
        "Tags": T.tag_list(tags) if tags else None,
    }


def _ref(params: dict[str, Any], *, allow_name: bool) -> SG.GroupRef:
    return SG.GroupRef(params.get("GroupId"), params.get("GroupName") if allow_name else None)


def _legacy_permissions(params: dict[str, Any]) -> list[dict[str, Any]]:
    """IpPermissions plus the pre-IpPermissions form (IpProtocol/FromPort/ToPort/CidrIp/
    SourceSecurityGroup*), as IpPermission structures."""
    perms = list(params.get("IpPermissions") or [])
    if params.get("CidrIp") or params.get("IpProtocol") is not None:
        if params.get("CidrIp"):
            perms.append({"IpProtocol": params.get("IpProtocol", "-1"), "FromPort": params.get("FromPort"),
                          "ToPort": params.get("ToPort"), "IpRanges": [{"CidrIp": params["CidrIp"]}]})
    if params.get("SourceSecurityGroupName"):
        perms.append({"IpProtocol": "-1", "UserIdGroupPairs": [{
            "GroupName": params["SourceSecurityGroupName"],
            "UserId": params.get("SourceSecurityGroupOwnerId")}]})
    return perms


@operation("ec2", "CreateSecurityGroup")
def create_security_group(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    tags = T.tag_specs(params.get("TagSpecifications"), "security-group")
    g = SG.create_group(ctx, name=params.get("GroupName", ""), description=params.get("Description", ""),
                        vpc_id=params.get("VpcId"), tags=tags)
    return {"GroupId": g.id, "SecurityGroupArn": N.arn(c.region, c.account, "security-group", g.id),
            "Tags": tags or None}


@operation("ec2", "DescribeSecurityGroups")
def describe_security_groups(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    filters = params.get("Filters")
    F.check_filters(filters, _GROUP_FILTERS, tags=True)
    listing = SG.describe_groups(ctx, ids=params.get("GroupIds") or [], names=params.get("GroupNames") or [])
    tags = listing.tags
    groups = [d for d in listing.groups if F.matches(d, filters, _GROUP_FILTERS, lambda d: tags[d.group.id])]
    # Ordered by creation (network.list_groups), so paged by that.
    chunk, token = page(groups, params, lambda d: sort_key(d.group.create_time, d.group.id))
    return {"SecurityGroups": [group_view(d, tags[d.group.id], listing.vpc_of) for d in chunk], "NextToken": token}


@operation("ec2", "DeleteSecurityGroup")
def delete_security_group(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"Return": True, "GroupId": SG.delete_group(ctx, _ref(params, allow_name=True))}


def _authorize(ctx: RequestContext, params: dict[str, Any], *, egress: bool) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    tags = T.tag_specs(params.get("TagSpecifications"), "security-group-rule")
    rows, rule_tags = SG.authorize(ctx, _ref(params, allow_name=not egress), _legacy_permissions(params),
                                   egress=egress, tags=tags)
    return {"Return": True,
            "SecurityGroupRules": [V.rule_dict(r, c.account, rule_tags[r.id]) for r in rows]}


def _revoke(ctx: RequestContext, params: dict[str, Any], *, egress: bool) -> dict[str, Any]:
    dry_run_check(params)
    revoked, unknown = SG.revoke(ctx, _ref(params, allow_name=not egress),
                                 rule_ids=params.get("SecurityGroupRuleIds") or [],
                                 permissions=_legacy_permissions(params), egress=egress)
    return {
        "Return": not unknown,
        "RevokedSecurityGroupRules": [V.revoked_rule_dict(r) for r in revoked],
        # EC2 (VPC groups): no error; the rules that matched nothing come back here.
        "UnknownIpPermissions": [V.rule_as_permission(r) for r in unknown] or None,
    }


@operation("ec2", "AuthorizeSecurityGroupIngress")
def authorize_security_group_ingress(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _authorize(ctx, params, egress=False)


@operation("ec2", "AuthorizeSecurityGroupEgress")
def authorize_security_group_egress(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _authorize(ctx, params, egress=True)


@operation("ec2", "RevokeSecurityGroupIngress")
def revoke_security_group_ingress(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _revoke(ctx, params, egress=False)


@operation("ec2", "RevokeSecurityGroupEgress")
def revoke_security_group_egress(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _revoke(ctx, params, egress=True)


@operation("ec2", "DescribeSecurityGroupRules")
def describe_security_group_rules(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    filters = params.get("Filters")
    F.check_filters(filters, _RULE_FILTERS, tags=True)
    rows, tags = SG.describe_rules(ctx, params.get("SecurityGroupRuleIds") or [])
    rows = [r for r in rows if F.matches(r, filters, _RULE_FILTERS, lambda r: tags[r.id])]
    chunk, token = page(rows, params, lambda r: sort_key(r.position, r.id))  # network.rule_rows' order
    return {"SecurityGroupRules": [V.rule_dict(r, c.account, tags[r.id]) for r in chunk], "NextToken": token}
