"""Security group operations: each one transaction over the records of ``network``.

The service (services/ec2/security_groups.py) parses the request and builds the answer;
these functions take typed arguments and own their transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import network as N
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2.records import SecurityGroup, SecurityGroupRule
from ebscrypt.errors import InvalidParameterCombination, MissingParameter, NotFound


@dataclass(frozen=True)
class GroupRef:
    """The group a request names: by id, or by name (in the default VPC) where allowed."""

    group_id: str | None = None
    group_name: str | None = None


@dataclass(frozen=True)
class GroupDetail:
    """A group with its rule rows (in rule order), as DescribeSecurityGroups shows it."""

    group: SecurityGroup
    rules: list[SecurityGroupRule]


@dataclass(frozen=True)
class GroupListing:
    """DescribeSecurityGroups' selection: the groups with their rules, their tags, and
    every group's VPC (rules naming a group show its VPC)."""

    groups: list[GroupDetail]
    tags: dict[str, dict[str, str]]
    vpc_of: dict[str, str]


def _target(ctx: RequestContext, conn: Connection, ref: GroupRef) -> SecurityGroup:
    c = ctx.caller
    if ref.group_id:
        return N.get_group(conn, c.account, c.region, ref.group_id)
    if ref.group_name:
        return N.get_group_by_name(conn, c.account, c.region, ref.group_name, ctx.runtime.clock.now())
    raise MissingParameter("groupName or groupId")


def create_group(ctx: RequestContext, *, name: str, description: str, vpc_id: str | None,
                 tags: list[dict[str, str]]) -> SecurityGroup:
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        g = N.create_group(conn, c.account, c.region, ctx.runtime.clock.now(), name=name,
                           description=description, vpc_id=vpc_id)
        if tags:
            T.put_tags(conn, c.account, c.region, g.id, tags)
    return g


def describe_groups(ctx: RequestContext, *, ids: list[str], names: list[str]) -> GroupListing:
    """The caller's groups (the default VPC's made on first use), narrowed to ``ids`` and
    ``names`` (names of default-VPC groups) when given; an unknown one is refused."""
    c = ctx.caller
    for gid in ids:
        N.check_group_id(gid)
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        default_vpc = N.ensure_defaults(conn, c.account, c.region, now)
        groups = N.list_groups(conn, c.account, c.region)
        by_id = {g.id: g for g in groups}
        for gid in ids:
            if gid not in by_id:
                raise N.group_not_found(gid)
        selected = set(ids)
        for name in names:
            # GroupNames name groups of the default VPC (others: the group-name filter).
            match = [g for g in groups if g.name == name and g.vpc_id == default_vpc]
            if not match:
                raise NotFound("InvalidGroup", name,
                               f"The security group '{name}' does not exist in default VPC '{default_vpc}'")
            selected.add(match[0].id)
        if ids or names:
            groups = [g for g in groups if g.id in selected]
        rules = N.rule_rows(conn, c.account, c.region, [g.id for g in groups])
        tags = T.tag_maps_for(conn, c.account, [g.id for g in groups])
    per_group: dict[str, list[SecurityGroupRule]] = {g.id: [] for g in groups}
    for r in rules:
        per_group[r.group_id].append(r)
    return GroupListing([GroupDetail(g, per_group[g.id]) for g in groups], tags,
                        {g.id: g.vpc_id for g in by_id.values()})


def delete_group(ctx: RequestContext, ref: GroupRef) -> str:
    """Delete the group ``ref`` names; its id."""
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        g = _target(ctx, conn, ref)
        N.delete_group(conn, c.account, c.region, g)
    return g.id


def authorize(ctx: RequestContext, ref: GroupRef, permissions: list[dict[str, Any]], *, egress: bool,
              tags: list[dict[str, str]]) -> tuple[list[SecurityGroupRule], dict[str, dict[str, str]]]:
    """Add the rules of ``permissions`` (IpPermission structures) all or nothing: the new
    rule rows and their tags."""
    c = ctx.caller
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        g = _target(ctx, conn, ref)
        if not permissions:
            raise MissingParameter("ipPermissions")
        rules = N.rules_from_permissions(conn, c.account, c.region, now, permissions, is_egress=egress)
        rows = N.authorize(conn, c.account, c.region, g, rules, tags)
        rule_tags = T.tag_maps_for(conn, c.account, [r.id for r in rows])
    return rows, rule_tags


def revoke(ctx: RequestContext, ref: GroupRef, *, rule_ids: list[str], permissions: list[dict[str, Any]],
           egress: bool) -> tuple[list[SecurityGroupRule], list[N.Rule]]:
    """Remove rules by id or by permission: the revoked rows, and the rules that matched
    nothing (EC2 answers those, no error, for VPC groups)."""
    c = ctx.caller
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        g = _target(ctx, conn, ref)
        if rule_ids and permissions:
            raise InvalidParameterCombination("Specify either SecurityGroupRuleIds or IpPermissions, not both")
        unknown: list[N.Rule] = []
        if rule_ids:
            revoked = N.revoke_ids(conn, c.account, c.region, g, rule_ids, is_egress=egress)
        elif permissions:
            rules = N.rules_from_permissions(conn, c.account, c.region, now, permissions, is_egress=egress)
            revoked, unknown = N.revoke_matching(conn, c.account, c.region, g, rules)
        else:
            raise MissingParameter("ipPermissions or securityGroupRuleIds")
    return revoked, unknown


def describe_rules(ctx: RequestContext, ids: list[str]
                   ) -> tuple[list[SecurityGroupRule], dict[str, dict[str, str]]]:
    """The caller's rules (all, or those of ``ids``; an unknown one refused) and their tags."""
    c = ctx.caller
    for rid in ids:
        N.check_rule_id(rid)
    with ctx.runtime.db.begin() as conn:
        N.ensure_defaults(conn, c.account, c.region, ctx.runtime.clock.now())
        rows = N.rule_rows(conn, c.account, c.region)
        tags = T.tag_maps_for(conn, c.account, [r.id for r in rows])
    known = {r.id for r in rows}
    for rid in ids:
        if rid not in known:
            raise NotFound("InvalidSecurityGroupRuleId", rid)
    if ids:
        rows = [r for r in rows if r.id in set(ids)]
    return rows, tags
