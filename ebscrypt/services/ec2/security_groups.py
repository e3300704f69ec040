"""Security groups and their rules (VPC security groups; the default VPC when none is named)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import filters as F
from ebscrypt.engines.ec2 import network as N
from ebscrypt.errors import ServiceError
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import paginate
from ebscrypt.services.registry import operation


def _rules_of(g: dict[str, Any], egress: bool) -> list[dict[str, Any]]:
    return [r for r in g["_rules"] if r["is_egress"] == egress]


def _perm_values(g: dict[str, Any], egress: bool, col: str) -> list[Any]:
    return [r[col] for r in _rules_of(g, egress) if r[col] is not None]


def _ports(g: dict[str, Any], egress: bool, col: str) -> list[Any]:
    return [-1 if r[col] is None else r[col] for r in _rules_of(g, egress)]


def _permission_filters(prefix: str, egress: bool) -> dict[str, Any]:
    return {
        f"{prefix}ip-permission.cidr": lambda g: _perm_values(g, egress, "cidr_ipv4"),
        f"{prefix}ip-permission.ipv6-cidr": lambda g: _perm_values(g, egress, "cidr_ipv6"),
        f"{prefix}ip-permission.prefix-list-id": lambda g: _perm_values(g, egress, "prefix_list_id"),
        f"{prefix}ip-permission.group-id": lambda g: _perm_values(g, egress, "ref_group_id"),
        f"{prefix}ip-permission.user-id": lambda g: _perm_values(g, egress, "ref_user_id"),
        f"{prefix}ip-permission.protocol": lambda g: [r["ip_protocol"] for r in _rules_of(g, egress)],
        f"{prefix}ip-permission.from-port": lambda g: _ports(g, egress, "from_port"),
        f"{prefix}ip-permission.to-port": lambda g: _ports(g, egress, "to_port"),
    }


_GROUP_FILTERS: dict[str, Any] = {
    "description": lambda g: g["description"],
    "group-id": lambda g: g["id"],
    "group-name": lambda g: g["name"],
    "owner-id": lambda g: g["account"],
    "vpc-id": lambda g: g["vpc_id"],
    **_permission_filters("", False),
    **_permission_filters("egress.", True),
}

_RULE_FILTERS = {
    "group-id": lambda r: r["group_id"],
    "security-group-rule-id": lambda r: r["id"],
}


def _group_dict(g: dict[str, Any], tags: dict[str, str], vpc_of: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "GroupId": g["id"],
        "IpPermissionsEgress": N.permissions(_rules_of(g, True), vpc_of),
        "VpcId": g["vpc_id"],
        "SecurityGroupArn": N.arn(g["region"], g["account"], "security-group", g["id"]),
        "OwnerId": g["account"],
        "GroupName": g["name"],
        "Description": g["description"],
        "IpPermissions": N.permissions(_rules_of(g, False), vpc_of),
    }
    if tags:
        out["Tags"] = N.tag_list(tags)
    return out


def _target_group(ctx: RequestContext, conn: Any, params: dict[str, Any], *, allow_name: bool) -> dict[str, Any]:
    c = ctx.caller
    if params.get("GroupId"):
        return N.get_group(conn, c.account, c.region, params["GroupId"])
    if allow_name and params.get("GroupName"):
        return N.get_group_by_name(conn, c.account, c.region, params["GroupName"], ctx.runtime.clock.now())
    raise ServiceError("The request must contain the parameter groupName or groupId", code="MissingParameter")


@operation("ec2", "CreateSecurityGroup")
def create_security_group(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    tags = N.tags_from_specifications(params.get("TagSpecifications"), "security-group")
    with ctx.runtime.db.begin() as conn:
        g = N.create_group(conn, c.account, c.region, ctx.runtime.clock.now(), name=params.get("GroupName", ""),
                           description=params.get("Description", ""), vpc_id=params.get("VpcId"))
        N.put_tags(conn, g["id"], c.account, c.region, tags)
    out: dict[str, Any] = {"GroupId": g["id"],
                           "SecurityGroupArn": N.arn(c.region, c.account, "security-group", g["id"])}
    if tags:
        out["Tags"] = tags
    return out


@operation("ec2", "DescribeSecurityGroups")
def describe_security_groups(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    filters = params.get("Filters")
    F.check_filters(filters, _GROUP_FILTERS, tags=True)
    ids = params.get("GroupIds") or []
    names = params.get("GroupNames") or []
    for gid in ids:
        N.check_group_id(gid)
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        default_vpc = N.ensure_defaults(conn, c.account, c.region, now)
        groups = N.group_rows(conn, c.account, c.region)
        by_id = {g["id"]: g for g in groups}
        for gid in ids:
            if gid not in by_id:
                raise N.group_not_found(gid)
        selected = set(ids)
        for name in names:
            # GroupNames name groups of the default VPC (others: the group-name filter).
            match = [g for g in groups if g["name"] == name and g["vpc_id"] == default_vpc]
            if not match:
                raise ServiceError(f"The security group '{name}' does not exist in default VPC '{default_vpc}'",
                                   code="InvalidGroup.NotFound")
            selected.add(match[0]["id"])
        if ids or names:
            groups = [g for g in groups if g["id"] in selected]
        rules = N.rule_rows(conn, c.account, c.region, [g["id"] for g in groups])
        tags = N.tags_of(conn, c.account, [g["id"] for g in groups])
    per_group: dict[str, list[dict[str, Any]]] = {g["id"]: [] for g in groups}
    for r in rules:
        per_group[r["group_id"]].append(r)
    for g in groups:
        g["_rules"] = per_group[g["id"]]
    groups = [g for g in groups if F.matches(g, filters, _GROUP_FILTERS, lambda g: tags[g["id"]])]
    page, token = paginate(groups, params)
    vpc_of = {g["id"]: g["vpc_id"] for g in by_id.values()}
    out: dict[str, Any] = {"SecurityGroups": [_group_dict(g, tags[g["id"]], vpc_of) for g in page]}
    if token:
        out["NextToken"] = token
    return out


@operation("ec2", "DeleteSecurityGroup")
def delete_security_group(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        g = _target_group(ctx, conn, params, allow_name=True)
        N.delete_group(conn, c.account, c.region, g)
    return {"Return": True, "GroupId": g["id"]}


def _authorize(ctx: RequestContext, params: dict[str, Any], *, egress: bool) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    tags = N.tags_from_specifications(params.get("TagSpecifications"), "security-group-rule")
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        g = _target_group(ctx, conn, params, allow_name=not egress)
        perms = N.legacy_permissions(params)
        if not perms:
            raise ServiceError("The request must contain the parameter ipPermissions", code="MissingParameter")
        rules = N.rules_from_permissions(conn, c.account, c.region, now, perms, is_egress=egress)
        rows = N.authorize(conn, c.account, c.region, g, rules, tags)
        rule_tags = N.tags_of(conn, c.account, [r["id"] for r in rows])
    return {"Return": True,
            "SecurityGroupRules": [N.rule_dict(r, c.account, rule_tags[r["id"]]) for r in rows]}


def _revoke(ctx: RequestContext, params: dict[str, Any], *, egress: bool) -> dict[str, Any]:
    dry_run_check(params)
    c = ctx.caller
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        g = _target_group(ctx, conn, params, allow_name=not egress)
        rule_ids = params.get("SecurityGroupRuleIds") or []
        perms = N.legacy_permissions(params)
        if rule_ids and perms:
            raise ServiceError("Specify either SecurityGroupRuleIds or IpPermissions, not both",
                               code="InvalidParameterCombination")
        unknown: list[N.Rule] = []
        if rule_ids:
            revoked = N.revoke_ids(conn, c.account, c.region, g, rule_ids, is_egress=egress)
        elif perms:
            rules = N.rules_from_permissions(conn, c.account, c.region, now, perms, is_egress=egress)
            revoked, unknown = N.revoke_matching(conn, c.account, c.region, g, rules)
        else:
            raise ServiceError("The request must contain the parameter ipPermissions or securityGroupRuleIds",
                               code="MissingParameter")
    out: dict[str, Any] = {"Return": not unknown,
                           "RevokedSecurityGroupRules": [N.revoked_rule_dict(r) for r in revoked]}
    if unknown:
        # EC2 (VPC groups): no error; the rules that matched nothing come back here.
        out["UnknownIpPermissions"] = [N.rule_as_permission(r) for r in unknown]
    return out


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
    ids = params.get("SecurityGroupRuleIds") or []
    for rid in ids:
        N.check_rule_id(rid)
    with ctx.runtime.db.begin() as conn:
        N.ensure_defaults(conn, c.account, c.region, ctx.runtime.clock.now())
        rows = N.rule_rows(conn, c.account, c.region)
        tags = N.tags_of(conn, c.account, [r["id"] for r in rows])
    known = {r["id"] for r in rows}
    for rid in ids:
        if rid not in known:
            raise ServiceError(f"The security group rule ID '{rid}' does not exist",
                               code="InvalidSecurityGroupRuleId.NotFound")
    if ids:
        rows = [r for r in rows if r["id"] in set(ids)]
    rows = [r for r in rows if F.matches(r, filters, _RULE_FILTERS, lambda r: tags[r["id"]])]
    page, token = paginate(rows, params)
    out: dict[str, Any] = {"SecurityGroupRules": [N.rule_dict(r, c.account, tags[r["id"]]) for r in page]}
    if token:
        out["NextToken"] = token
    return out
