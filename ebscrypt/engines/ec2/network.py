"""EC2 networking records: default VPC and subnets, security groups and their rules.

Also the EC2 ``Filters`` matcher shared by the describe operations of this area.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ebscrypt.context import RequestContext
from ebscrypt.domain import regions as R
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2.ids import new_id
from ebscrypt.engines.ec2.records import SecurityGroup, SecurityGroupRule, Subnet, Vpc
from ebscrypt.errors import (
    CannotDelete,
    DependencyViolation,
    Duplicate,
    InternalFailure,
    InvalidParameterValue,
    Malformed,
    MissingParameter,
    NotFound,
    RulesPerSecurityGroupLimitExceeded,
)
from ebscrypt.storage.tables.ec2_images import ec2_instances
from ebscrypt.storage.tables.ec2_net import (
    ec2_net_defaults,
    ec2_security_group_rules,
    ec2_security_groups,
    ec2_subnets,
    ec2_vpcs,
)

# --------------------------------------------------------------------------- ARNs


def arn(region: str, account: str, kind: str, rid: str) -> str:
    return f"arn:aws:ec2:{region}:{account}:{kind}/{rid}"


# --------------------------------------------------------------------------- default VPC

DEFAULT_VPC_CIDR = "172.31.0.0/16"
DEFAULT_SUBNET_PREFIX = 20
# AWS reserves 5 addresses in every subnet.
DEFAULT_SUBNET_FREE_IPS = 2 ** (32 - DEFAULT_SUBNET_PREFIX) - 5


def ensure_defaults(conn: Connection, account: str, region: str, now: datetime) -> str:
    """The default VPC id of ``account`` in ``region``, creating the default VPC, one
    default subnet per Availability Zone and the VPC's default security group on first use
    (as AWS has them for a new account)."""
    row = conn.execute(
        select(ec2_net_defaults.c.default_vpc_id).where(
            ec2_net_defaults.c.account == account, ec2_net_defaults.c.region == region
        )
    ).first()
    if row is not None:
        return str(row.default_vpc_id)
    try:
        with conn.begin_nested():
            conn.execute(insert(ec2_net_defaults).values(account=account, region=region,
                                                         default_vpc_id=None, created_at=now))
    except IntegrityError:  # another request created them concurrently (PostgreSQL)
        return ensure_defaults(conn, account, region, now)
    vpc_id = new_id("vpc")
    conn.execute(insert(ec2_vpcs).values(
        id=vpc_id, account=account, region=region, cidr_block=DEFAULT_VPC_CIDR,
        cidr_association_id=new_id("vpc-cidr-assoc"), dhcp_options_id=new_id("dopt"),
        instance_tenancy="default", is_default=True, state="available", create_time=now,
    ))
    base = ipaddress.ip_network(DEFAULT_VPC_CIDR)
    subnets = list(base.subnets(new_prefix=DEFAULT_SUBNET_PREFIX))
    for zone, cidr in zip(R.availability_zones(region), subnets):
        conn.execute(insert(ec2_subnets).values(
            id=new_id("subnet"), account=account, region=region, vpc_id=vpc_id,
            availability_zone=zone.name, availability_zone_id=zone.zone_id, cidr_block=str(cidr),
            default_for_az=True, map_public_ip_on_launch=True,
            available_ip_count=DEFAULT_SUBNET_FREE_IPS, state="available", create_time=now,
        ))
    _create_default_group(conn, account, region, vpc_id, now)
    conn.execute(update(ec2_net_defaults)
                 .where(ec2_net_defaults.c.account == account, ec2_net_defaults.c.region == region)
                 .values(default_vpc_id=vpc_id))
    return vpc_id


def _create_default_group(conn: Connection, account: str, region: str, vpc_id: str, now: datetime) -> str:
    gid = new_id("sg")
    conn.execute(insert(ec2_security_groups).values(
        id=gid, account=account, region=region, vpc_id=vpc_id, name="default",
        description="default VPC security group", is_default=True, create_time=now,
    ))
    # Inbound: all traffic from members of the group itself. Outbound: all traffic.
    _insert_rule(conn, gid, account, region, Rule(False, "-1", None, None, ref_group_id=gid, ref_user_id=account))
    _insert_rule(conn, gid, account, region, Rule(True, "-1", None, None, cidr_ipv4="0.0.0.0/0"))
    return gid


def list_vpcs(conn: Connection, account: str, region: str) -> list[Vpc]:
    return [Vpc.from_row(r) for r in conn.execute(
        select(ec2_vpcs).where(ec2_vpcs.c.account == account, ec2_vpcs.c.region == region)
        .order_by(ec2_vpcs.c.create_time, ec2_vpcs.c.id)
    ).mappings()]


def list_subnets(conn: Connection, account: str, region: str) -> list[Subnet]:
    return [Subnet.from_row(r) for r in conn.execute(
        select(ec2_subnets).where(ec2_subnets.c.account == account, ec2_subnets.c.region == region)
        .order_by(ec2_subnets.c.availability_zone, ec2_subnets.c.id)
    ).mappings()]


_Net = TypeVar("_Net", Vpc, Subnet)


def _with_defaults(ctx: RequestContext, records_of: Callable[[Connection, str, str], list[_Net]]
                   ) -> tuple[list[_Net], dict[str, dict[str, str]]]:
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:  # a write: the defaults are created on first use
        ensure_defaults(conn, c.account, c.region, ctx.runtime.clock.now())
        records = records_of(conn, c.account, c.region)
        return records, T.tag_maps_for(conn, c.account, [r.id for r in records])


def vpcs_of(ctx: RequestContext) -> tuple[list[Vpc], dict[str, dict[str, str]]]:
    """The caller's VPCs (the default one made on first use) and their tags."""
    return _with_defaults(ctx, list_vpcs)


def subnets_of(ctx: RequestContext) -> tuple[list[Subnet], dict[str, dict[str, str]]]:
    """The caller's subnets (the default ones made on first use) and their tags."""
    return _with_defaults(ctx, list_subnets)


def _owned_row(conn: Connection, table: Table, code: str, account: str, region: str,
               resource_id: str) -> dict[str, Any]:
    """The row of ``resource_id`` in ``table`` if the caller (account + region) owns it;
    ``<code>.NotFound`` otherwise."""
    row = conn.execute(select(table).where(
        table.c.id == resource_id, table.c.account == account, table.c.region == region
    )).mappings().first()
    if row is None:
        raise NotFound(code, resource_id)
    return dict(row)


def get_vpc(conn: Connection, account: str, region: str, vpc_id: str) -> Vpc:
    return Vpc.from_row(_owned_row(conn, ec2_vpcs, "InvalidVpcID", account, region, vpc_id))


def get_subnet(conn: Connection, account: str, region: str, subnet_id: str) -> Subnet:
    """A subnet of the caller (for RunInstances ``SubnetId``); InvalidSubnetID.NotFound if none."""
    return Subnet.from_row(_owned_row(conn, ec2_subnets, "InvalidSubnetID", account, region, subnet_id))


def default_subnet(conn: Connection, account: str, region: str, now: datetime,
                   availability_zone: str | None = None) -> Subnet | None:
    """The default subnet for ``availability_zone`` (or of the first zone) — what
    RunInstances uses when the caller names no subnet."""
    vpc_id = ensure_defaults(conn, account, region, now)
    q = select(ec2_subnets).where(ec2_subnets.c.vpc_id == vpc_id, ec2_subnets.c.default_for_az.is_(True))
    if availability_zone:
        q = q.where(ec2_subnets.c.availability_zone == availability_zone)
    row = conn.execute(q.order_by(ec2_subnets.c.availability_zone)).mappings().first()
    return Subnet.from_row(row) if row else None


# --------------------------------------------------------------------------- security groups

_SG_ID = re.compile(r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$")
_SGR_ID = re.compile(r"^sgr-[0-9a-f]{8}([0-9a-f]{9})?$")


def group_not_found(ref: str) -> NotFound:
    return NotFound("InvalidGroup", ref, f"The security group '{ref}' does not exist")


def check_group_id(gid: str) -> None:
    if not _SG_ID.match(gid or ""):
        raise Malformed("InvalidGroupId", gid, prefix="sg")


def list_groups(conn: Connection, account: str, region: str) -> list[SecurityGroup]:
    return [SecurityGroup.from_row(r) for r in conn.execute(
        select(ec2_security_groups)
        .where(ec2_security_groups.c.account == account, ec2_security_groups.c.region == region)
        .order_by(ec2_security_groups.c.create_time, ec2_security_groups.c.id)
    ).mappings()]


def get_group(conn: Connection, account: str, region: str, group_id: str) -> SecurityGroup:
    check_group_id(group_id)
    row = conn.execute(select(ec2_security_groups).where(
        ec2_security_groups.c.id == group_id, ec2_security_groups.c.account == account,
        ec2_security_groups.c.region == region,
    )).mappings().first()
    if row is None:
        raise group_not_found(group_id)
    return SecurityGroup.from_row(row)


def get_group_by_name(conn: Connection, account: str, region: str, name: str, now: datetime,
                      vpc_id: str | None = None) -> SecurityGroup:
    """A group by name in ``vpc_id`` (default: the default VPC, as EC2's GroupName does)."""
    in_default = vpc_id is None
    vpc_id = vpc_id or ensure_defaults(conn, account, region, now)
    row = conn.execute(select(ec2_security_groups).where(
        ec2_security_groups.c.account == account, ec2_security_groups.c.region == region,
        ec2_security_groups.c.vpc_id == vpc_id, ec2_security_groups.c.name == name,
    )).mappings().first()
    if row is None:
        where = "default VPC" if in_default else "VPC"
        raise NotFound("InvalidGroup", name, f"The security group '{name}' does not exist in {where} '{vpc_id}'")
    return SecurityGroup.from_row(row)


def resolve_groups(conn: Connection, account: str, region: str, now: datetime, *,
                   ids: Iterable[str] = (), names: Iterable[str] = ()) -> list[SecurityGroup]:
    """Groups by id and/or name (names in the default VPC) — for RunInstances."""
    out = [get_group(conn, account, region, g) for g in ids]
    out += [get_group_by_name(conn, account, region, n, now) for n in names]
    return out


def default_group(conn: Connection, account: str, region: str, vpc_id: str) -> SecurityGroup:
    row = conn.execute(select(ec2_security_groups).where(
        ec2_security_groups.c.vpc_id == vpc_id, ec2_security_groups.c.is_default.is_(True),
        ec2_security_groups.c.account == account, ec2_security_groups.c.region == region,
    )).mappings().first()
    if row is None:  # cannot happen: created with the VPC
        raise InternalFailure(f"VPC {vpc_id} has no default security group")
    return SecurityGroup.from_row(row)


def create_group(conn: Connection, account: str, region: str, now: datetime, *, name: str,
                 description: str, vpc_id: str | None) -> SecurityGroup:
    if not name:
        raise MissingParameter("GroupName")
    if description is None or description == "":
        raise MissingParameter("GroupDescription")
    if len(name) > 255:
        raise InvalidParameterValue(f"Value ({name}) for parameter GroupName is invalid. "
                                    "Group name must be no more than 255 characters")
    if len(description) > 255:
        raise InvalidParameterValue("Value for parameter GroupDescription is invalid. "
                                    "Group description must be no more than 255 characters")
    if name.lower().startswith("sg-"):
        raise InvalidParameterValue("Group names may not be in the format sg-*.")
    default_vpc = ensure_defaults(conn, account, region, now)
    vpc_id = vpc_id or default_vpc
    get_vpc(conn, account, region, vpc_id)
    exists = conn.execute(select(ec2_security_groups.c.id).where(
        ec2_security_groups.c.vpc_id == vpc_id, ec2_security_groups.c.name == name
    )).first()
    dup = Duplicate("InvalidGroup", f"The security group '{name}' already exists for VPC '{vpc_id}'")
    if exists:
        raise dup
    gid = new_id("sg")
    try:
        with conn.begin_nested():
            conn.execute(insert(ec2_security_groups).values(
                id=gid, account=account, region=region, vpc_id=vpc_id, name=name,
                description=description, is_default=False, create_time=now,
            ))
    except IntegrityError:
        raise dup from None
    # A new VPC security group allows all outbound traffic.
    _insert_rule(conn, gid, account, region, Rule(True, "-1", None, None, cidr_ipv4="0.0.0.0/0"))
    return get_group(conn, account, region, gid)


def delete_group(conn: Connection, account: str, region: str, group: SecurityGroup) -> None:
    gid = group.id
    if group.is_default:
        raise CannotDelete(f'the specified group: "{gid}" name: "{group.name}" cannot be deleted by a user')
    referencing = conn.execute(select(ec2_security_group_rules.c.group_id).where(
        ec2_security_group_rules.c.ref_group_id == gid, ec2_security_group_rules.c.group_id != gid
    )).first()
    if referencing is not None or _used_by_instance(conn, account, region, gid):
        raise DependencyViolation(f"resource {gid} has a dependent object")
    rule_ids = [r.id for r in conn.execute(select(ec2_security_group_rules.c.id)
                                            .where(ec2_security_group_rules.c.group_id == gid))]
    conn.execute(delete(ec2_security_group_rules).where(ec2_security_group_rules.c.group_id == gid))
    conn.execute(delete(ec2_security_groups).where(ec2_security_groups.c.id == gid))
    for rid in (gid, *rule_ids):
        T.delete_tags_of(conn, rid)


def _used_by_instance(conn: Connection, account: str, region: str, gid: str) -> bool:
    """A group in use by a not-yet-terminated instance cannot go."""
    rows = conn.execute(select(ec2_instances.c.security_groups).where(
        ec2_instances.c.account == account, ec2_instances.c.region == region,
        ec2_instances.c.state != "terminated", ec2_instances.c.security_groups.contains(gid),
    ))
    for r in rows:
        try:
            if any(g.get("GroupId") == gid for g in json.loads(r.security_groups or "[]")):
                return True
        except (ValueError, AttributeError):
            continue
    return False


# --------------------------------------------------------------------------- rules

_PROTOCOL_NAMES = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp",
                   "icmpv6": "icmpv6", "58": "icmpv6", "-1": "-1", "all": "-1"}


@dataclass(frozen=True)
class Rule:
    """One security group rule: a direction, a protocol and port range, and one peer."""

    is_egress: bool
    ip_protocol: str
    from_port: int | None
    to_port: int | None
    cidr_ipv4: str | None = None
    cidr_ipv6: str | None = None
    prefix_list_id: str | None = None
    ref_group_id: str | None = None
    ref_user_id: str | None = None
    description: str | None = None

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.is_egress, self.ip_protocol, self.from_port, self.to_port, self.cidr_ipv4,
                self.cidr_ipv6, self.prefix_list_id, self.ref_group_id)

    def peer(self) -> str:
        return self.cidr_ipv4 or self.cidr_ipv6 or self.prefix_list_id or self.ref_group_id or ""

    def describe_for_error(self) -> str:
        proto = {"-1": "ALL"}.get(self.ip_protocol, self.ip_protocol.upper())
        parts = [f"peer: {self.peer()}", proto]
        if self.ip_protocol in ("tcp", "udp"):
            parts += [f"from port: {self.from_port}", f"to port: {self.to_port}"]
        elif self.ip_protocol in ("icmp", "icmpv6"):
            parts += [f"type: {self.from_port}", f"code: {self.to_port}"]
        parts.append("ALLOW")
        return ", ".join(parts)


def _as_rule(r: SecurityGroupRule) -> Rule:
    return Rule(r.is_egress, r.ip_protocol, r.from_port, r.to_port, r.cidr_ipv4, r.cidr_ipv6, r.prefix_list_id,
                r.ref_group_id, r.ref_user_id, r.description)


def normalize_protocol(value: Any) -> str:
    raw = str(value).strip().lower() if value is not None else ""
    if raw in _PROTOCOL_NAMES:
        return _PROTOCOL_NAMES[raw]
    if raw.isdigit() and 0 <= int(raw) <= 255:
        return raw
    raise InvalidParameterValue(f"Invalid value '{value}' for IP protocol. Unknown protocol.")


def _ports(proto: str, from_port: Any, to_port: Any) -> tuple[int | None, int | None]:
    if proto in ("tcp", "udp"):
        if from_port is None or to_port is None:
            missing = "fromPort" if from_port is None else "toPort"
            raise InvalidParameterValue(f"Invalid value 'null' for {missing}. "
                                        f"You must specify a port range for protocol {proto}.")
        if not (0 <= from_port <= 65535 and 0 <= to_port <= 65535) or from_port > to_port:
            raise InvalidParameterValue(f"Invalid TCP/UDP port range {from_port}-{to_port}: ports must be 0-65535 "
                                        "and fromPort <= toPort")
        return from_port, to_port
    if proto in ("icmp", "icmpv6"):
        f = -1 if from_port is None else from_port
        t = -1 if to_port is None else to_port
        if not (-1 <= f <= 255 and -1 <= t <= 255):
            raise InvalidParameterValue(f"Invalid ICMP type/code {f}/{t}")
        return f, t
    return None, None  # all protocols, or a protocol without ports


def _cidr(value: str, version: int) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        net = None
    if net is None or net.version != version or "/" not in value:
        raise InvalidParameterValue(f"CIDR block {value} is malformed")
    return value


def rules_from_permissions(conn: Connection, account: str, region: str, now: datetime,
                           permissions: list[dict[str, Any]], *, is_egress: bool) -> list[Rule]:
    """Expand IpPermissions into one :class:`Rule` per peer, validated."""
    rules: list[Rule] = []
    for perm in permissions:
        proto = normalize_protocol(perm.get("IpProtocol"))
        fp, tp = _ports(proto, perm.get("FromPort"), perm.get("ToPort"))
        base: dict[str, Any] = dict(is_egress=is_egress, ip_protocol=proto, from_port=fp, to_port=tp)
        peers = 0
        for r in perm.get("IpRanges") or []:
            rules.append(Rule(**base, cidr_ipv4=_cidr(r.get("CidrIp", ""), 4), description=r.get("Description")))
            peers += 1
        for r in perm.get("Ipv6Ranges") or []:
            rules.append(Rule(**base, cidr_ipv6=_cidr(r.get("CidrIpv6", ""), 6), description=r.get("Description")))
            peers += 1
        for r in perm.get("PrefixListIds") or []:
            pl = r.get("PrefixListId", "")
            if not re.match(r"^pl-[0-9a-f]+$", pl):
                raise Malformed("InvalidPrefixListId", pl, f"The prefix list ID '{pl}' is malformed")
            rules.append(Rule(**base, prefix_list_id=pl, description=r.get("Description")))
            peers += 1
        for pair in perm.get("UserIdGroupPairs") or []:
            user = pair.get("UserId") or account
            if pair.get("GroupId"):
                check_group_id(pair["GroupId"])
                found = conn.execute(select(ec2_security_groups.c.id).where(
                    ec2_security_groups.c.id == pair["GroupId"], ec2_security_groups.c.account == user,
                    ec2_security_groups.c.region == region,
                )).first()
                if found is None:
                    raise group_not_found(pair["GroupId"])
                target_id = str(found.id)
            elif pair.get("GroupName"):
                target_id = get_group_by_name(conn, user, region, pair["GroupName"], now).id
            else:
                raise MissingParameter("GroupId", "A source group must be given by GroupId or GroupName in "
                                                  "UserIdGroupPairs")
            rules.append(Rule(**base, ref_group_id=target_id, ref_user_id=user,
                              description=pair.get("Description")))
            peers += 1
        if peers == 0:
            # An IpPermission with no peer means "from anywhere" for nothing: EC2 refuses it.
            raise MissingParameter("ipPermissions.N.ipRanges, ipv6Ranges, prefixListIds or groups")
    return rules


def rule_rows(conn: Connection, account: str, region: str,
              group_ids: list[str] | None = None) -> list[SecurityGroupRule]:
    q = select(ec2_security_group_rules).where(ec2_security_group_rules.c.account == account,
                                               ec2_security_group_rules.c.region == region)
    if group_ids is not None:
        if not group_ids:
            return []
        q = q.where(ec2_security_group_rules.c.group_id.in_(group_ids))
    # id breaks ties (two processes' positions may meet): DescribeSecurityGroupRules pages by both.
    order = (ec2_security_group_rules.c.position, ec2_security_group_rules.c.id)
    return [SecurityGroupRule.from_row(r) for r in conn.execute(q.order_by(*order)).mappings()]


_position = itertools.count()


def _insert_rule(conn: Connection, gid: str, account: str, region: str, rule: Rule) -> SecurityGroupRule:
    # position orders rules by creation; a wall-clock-based value keeps it increasing
    # across processes sharing a database.
    pos = time.time_ns() // 1000 * 1000 + next(_position) % 1000
    row = dict(id=new_id("sgr"), group_id=gid, account=account, region=region, is_egress=rule.is_egress,
               ip_protocol=rule.ip_protocol, from_port=rule.from_port, to_port=rule.to_port,
               cidr_ipv4=rule.cidr_ipv4, cidr_ipv6=rule.cidr_ipv6, prefix_list_id=rule.prefix_list_id,
               ref_group_id=rule.ref_group_id, ref_user_id=rule.ref_user_id, description=rule.description,
               position=pos)
    conn.execute(insert(ec2_security_group_rules).values(**row))
    return SecurityGroupRule.from_row(row)


def authorize(conn: Connection, account: str, region: str, group: SecurityGroup, rules: list[Rule],
              tags: list[dict[str, str]]) -> list[SecurityGroupRule]:
    """Add ``rules`` to ``group`` all or nothing; a rule already there → InvalidPermission.Duplicate."""
    existing = {_as_rule(r).identity for r in rule_rows(conn, account, region, [group.id])}
    seen: set[tuple[Any, ...]] = set()
    for rule in rules:
        if rule.identity in existing or rule.identity in seen:
            raise Duplicate("InvalidPermission", f'the specified rule "{rule.describe_for_error()}" already exists')
        seen.add(rule.identity)
    _check_rule_quota(conn, account, region, group, rules)
    rows = [_insert_rule(conn, group.id, account, region, rule) for rule in rules]
    if tags:
        for row in rows:
            T.put_tags(conn, account, region, row.id, tags)
    return rows


# EC2 quota "Inbound or outbound rules per security group": 60, counted separately for
# IPv4 and IPv6 peers (a prefix list or group peer counts as IPv4).
RULES_PER_GROUP = 60


def _check_rule_quota(conn: Connection, account: str, region: str, group: SecurityGroup,
                      rules: list[Rule]) -> None:
    counts: dict[tuple[bool, bool], int] = {}
    for r in rule_rows(conn, account, region, [group.id]):
        key = (r.is_egress, r.cidr_ipv6 is not None)
        counts[key] = counts.get(key, 0) + 1
    for rule in rules:
        key = (rule.is_egress, rule.cidr_ipv6 is not None)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > RULES_PER_GROUP:
            raise RulesPerSecurityGroupLimitExceeded("The maximum number of rules per security group has been reached.")


def revoke_matching(conn: Connection, account: str, region: str, group: SecurityGroup,
                    rules: list[Rule]) -> tuple[list[SecurityGroupRule], list[Rule]]:
    """Remove the rules of ``group`` equal to ``rules``; return (revoked rows, unknown rules)."""
    by_identity = {_as_rule(r).identity: r for r in rule_rows(conn, account, region, [group.id])}
    revoked, unknown = [], []
    for rule in rules:
        row = by_identity.pop(rule.identity, None)
        if row is None:
            unknown.append(rule)
        else:
            revoked.append(row)
    _delete_rules(conn, [r.id for r in revoked])
    return revoked, unknown


def revoke_ids(conn: Connection, account: str, region: str, group: SecurityGroup, rule_ids: list[str],
               *, is_egress: bool) -> list[SecurityGroupRule]:
    rows = {r.id: r for r in rule_rows(conn, account, region, [group.id]) if r.is_egress == is_egress}
    for rid in rule_ids:
        if not _SGR_ID.match(rid):
            raise Malformed("InvalidSecurityGroupRuleId", rid, prefix="sgr")
        if rid not in rows:
            raise NotFound("InvalidSecurityGroupRuleId", rid)
    revoked = [rows[rid] for rid in dict.fromkeys(rule_ids)]
    _delete_rules(conn, [r.id for r in revoked])
    return revoked


def _delete_rules(conn: Connection, ids: list[str]) -> None:
    if ids:
        conn.execute(delete(ec2_security_group_rules).where(ec2_security_group_rules.c.id.in_(ids)))
        for rid in ids:
            T.delete_tags_of(conn, rid)


def check_rule_id(rid: str) -> None:
    if not _SGR_ID.match(rid or ""):
        raise Malformed("InvalidSecurityGroupRuleId", rid, prefix="sgr")
