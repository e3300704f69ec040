"""The security group rule views (the view convention, docs/architecture.md): built here
from the ``SecurityGroupRule`` records (engines/ec2/records.py) and the ``Rule`` values of
:mod:`ebscrypt.engines.ec2.network`."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2.network import Rule, arn
from ebscrypt.engines.ec2.records import SecurityGroupRule


def _port(value: int | None) -> int:
    return -1 if value is None else int(value)


def rule_dict(row: SecurityGroupRule, group_owner: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """A ``SecurityGroupRule`` as DescribeSecurityGroupRules / Authorize* return it."""
    return {
        "SecurityGroupRuleId": row.id,
        "GroupId": row.group_id,
        "GroupOwnerId": group_owner,
        "IsEgress": row.is_egress,
        "IpProtocol": row.ip_protocol,
        "FromPort": _port(row.from_port),
        "ToPort": _port(row.to_port),
        "CidrIpv4": row.cidr_ipv4 or None,
        "CidrIpv6": row.cidr_ipv6 or None,
        "PrefixListId": row.prefix_list_id or None,
        "ReferencedGroupInfo": ({"GroupId": row.ref_group_id, "UserId": row.ref_user_id}
                                if row.ref_group_id else None),
        "Description": row.description,
        "Tags": T.tag_list(tags),
        "SecurityGroupRuleArn": arn(row.region, group_owner, "security-group-rule", row.id),
    }


def revoked_rule_dict(row: SecurityGroupRule) -> dict[str, Any]:
    """A ``RevokedSecurityGroupRule``."""
    return {
        "SecurityGroupRuleId": row.id,
        "GroupId": row.group_id,
        "IsEgress": row.is_egress,
        "IpProtocol": row.ip_protocol,
        "FromPort": _port(row.from_port),
        "ToPort": _port(row.to_port),
        "CidrIpv4": row.cidr_ipv4,
        "CidrIpv6": row.cidr_ipv6,
        "PrefixListId": row.prefix_list_id,
        "ReferencedGroupId": row.ref_group_id,
        "Description": row.description,
    }


def permissions(rows: Iterable[SecurityGroupRule], vpc_of: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Group rules into IpPermissions as DescribeSecurityGroups shows them."""
    perms: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r.ip_protocol, r.from_port, r.to_port)
        p = perms.get(key)
        if p is None:
            p = {"IpProtocol": r.ip_protocol}
            if r.from_port is not None:
                p["FromPort"] = r.from_port
                p["ToPort"] = r.to_port
            p.update(UserIdGroupPairs=[], IpRanges=[], Ipv6Ranges=[], PrefixListIds=[])
            perms[key] = p
        desc = {"Description": r.description} if r.description is not None else {}
        if r.cidr_ipv4:
            p["IpRanges"].append({**desc, "CidrIp": r.cidr_ipv4})
        elif r.cidr_ipv6:
            p["Ipv6Ranges"].append({**desc, "CidrIpv6": r.cidr_ipv6})
        elif r.prefix_list_id:
            p["PrefixListIds"].append({**desc, "PrefixListId": r.prefix_list_id})
        elif r.ref_group_id:
            pair = {**desc, "UserId": r.ref_user_id, "GroupId": r.ref_group_id}
            if vpc_of and r.ref_group_id in vpc_of:
                pair["VpcId"] = vpc_of[r.ref_group_id]
            p["UserIdGroupPairs"].append(pair)
    return list(perms.values())


def rule_as_permission(rule: Rule) -> dict[str, Any]:
    """An ``IpPermission`` holding one rule (RevokeSecurityGroup*'s ``UnknownIpPermissions``;
    the codec writes the empty peer lists, wire/codec/ec2_always.py)."""
    ports = rule.from_port is not None
    return {
        "IpProtocol": rule.ip_protocol,
        "FromPort": rule.from_port if ports else None,
        "ToPort": rule.to_port if ports else None,
        "IpRanges": [{"CidrIp": rule.cidr_ipv4}] if rule.cidr_ipv4 else None,
        "Ipv6Ranges": [{"CidrIpv6": rule.cidr_ipv6}] if rule.cidr_ipv6 else None,
        "PrefixListIds": [{"PrefixListId": rule.prefix_list_id}] if rule.prefix_list_id else None,
        "UserIdGroupPairs": ([{"GroupId": rule.ref_group_id, "UserId": rule.ref_user_id}]
                             if rule.ref_group_id else None),
    }
