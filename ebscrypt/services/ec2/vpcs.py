"""DescribeVpcs and DescribeSubnets: the default VPC and its default subnets, per account
and region, created on first use as AWS has them for a new account."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import filters as F
from ebscrypt.engines.ec2 import network as N
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2.records import Subnet, Vpc
from ebscrypt.errors import NotFound
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page, sort_key
from ebscrypt.services.registry import operation

_VPC_FILTERS = {
    "vpc-id": lambda v: v.id,
    "is-default": lambda v: v.is_default,
    "isDefault": lambda v: v.is_default,  # legacy spelling, still accepted by EC2
    "cidr": lambda v: v.cidr_block,
    "cidr-block-association.cidr-block": lambda v: v.cidr_block,
    "cidr-block-association.association-id": lambda v: v.cidr_association_id,
    "cidr-block-association.state": lambda v: "associated",
    "dhcp-options-id": lambda v: v.dhcp_options_id,
    "owner-id": lambda v: v.account,
    "state": lambda v: v.state,
}

_SUBNET_FILTERS = {
    "subnet-id": lambda s: s.id,
    "subnet-arn": lambda s: N.arn(s.region, s.account, "subnet", s.id),
    "vpc-id": lambda s: s.vpc_id,
    "availability-zone": lambda s: s.availability_zone,
    "availabilityZone": lambda s: s.availability_zone,
    "availability-zone-id": lambda s: s.availability_zone_id,
    "availabilityZoneId": lambda s: s.availability_zone_id,
    "available-ip-address-count": lambda s: s.available_ip_count,
    "cidr-block": lambda s: s.cidr_block,
    "cidr": lambda s: s.cidr_block,
    "cidrBlock": lambda s: s.cidr_block,
    "default-for-az": lambda s: s.default_for_az,
    "defaultForAz": lambda s: s.default_for_az,
    "map-public-ip-on-launch": lambda s: s.map_public_ip_on_launch,
    "owner-id": lambda s: s.account,
    "state": lambda s: s.state,
}

_BPA = {"InternetGatewayBlockMode": "off"}


def vpc_view(v: Vpc, tags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "OwnerId": v.account,
        "InstanceTenancy": v.instance_tenancy,
        "CidrBlockAssociationSet": [{
            "AssociationId": v.cidr_association_id,
            "CidrBlock": v.cidr_block,
            "CidrBlockState": {"State": "associated"},
        }],
        "IsDefault": v.is_default,
        "BlockPublicAccessStates": dict(_BPA),
        "VpcId": v.id,
        "State": v.state,
        "CidrBlock": v.cidr_block,
        "DhcpOptionsId": v.dhcp_options_id,
        "Tags": T.tag_list(tags) if tags else None,
    }
    return out


def subnet_view(s: Subnet, tags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "AvailabilityZoneId": s.availability_zone_id,
        "MapCustomerOwnedIpOnLaunch": False,
        "OwnerId": s.account,
        "AssignIpv6AddressOnCreation": False,
        "Ipv6CidrBlockAssociationSet": [],
        "SubnetArn": N.arn(s.region, s.account, "subnet", s.id),
        "EnableDns64": False,
        "Ipv6Native": False,
        "PrivateDnsNameOptionsOnLaunch": {
            "HostnameType": "ip-name",
            "EnableResourceNameDnsARecord": False,
            "EnableResourceNameDnsAAAARecord": False,
        },
        "BlockPublicAccessStates": dict(_BPA),
        "SubnetId": s.id,
        "State": s.state,
        "VpcId": s.vpc_id,
        "CidrBlock": s.cidr_block,
        "AvailableIpAddressCount": s.available_ip_count,
        "AvailabilityZone": s.availability_zone,
        "DefaultForAz": s.default_for_az,
        "MapPublicIpOnLaunch": s.map_public_ip_on_launch,
        "Tags": T.tag_list(tags) if tags else None,
    }
    return out


_Net = TypeVar("_Net", Vpc, Subnet)


def _describe(ctx: RequestContext, params: dict[str, Any], *,
              rows_of: Callable[[RequestContext], tuple[list[_Net], dict[str, dict[str, str]]]],
              getters: dict[str, Any], ids_param: str, not_found: str,
              order: Callable[[_Net], str],
              render: Callable[[_Net, dict[str, str]], dict[str, Any]], out_key: str) -> dict[str, Any]:
    """The shared shape of DescribeVpcs/DescribeSubnets: defaults made on first use, ids
    looked up (an unknown one refused), filters, paging (by ``order``: the rows' sort key)."""
    dry_run_check(params)
    F.check_filters(params.get("Filters"), getters, tags=True)
    rows, tags = rows_of(ctx)
    ids = params.get(ids_param) or []
    known = {r.id for r in rows}
    for i in ids:
        if i not in known:
            raise NotFound(not_found, i)
    if ids:
        rows = [r for r in rows if r.id in set(ids)]
    rows = [r for r in rows if F.matches(r, params.get("Filters"), getters, lambda r: tags[r.id])]
    chunk, token = page(rows, params, order)
    return {out_key: [render(r, tags[r.id]) for r in chunk], "NextToken": token}


@operation("ec2", "DescribeVpcs")
def describe_vpcs(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _describe(ctx, params, rows_of=N.vpcs_of, getters=_VPC_FILTERS, ids_param="VpcIds",
                     not_found="InvalidVpcID",
                     order=lambda r: sort_key(r.create_time, r.id),  # network.list_vpcs' order
                     render=vpc_view, out_key="Vpcs")


@operation("ec2", "DescribeSubnets")
def describe_subnets(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _describe(ctx, params, rows_of=N.subnets_of, getters=_SUBNET_FILTERS, ids_param="SubnetIds",
                     not_found="InvalidSubnetID",
                     order=lambda r: sort_key(r.availability_zone, r.id),  # network.list_subnets' order
                     render=subnet_view, out_key="Subnets")
