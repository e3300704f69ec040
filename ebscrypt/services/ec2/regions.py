"""DescribeRegions and DescribeAvailabilityZones, answered from :mod:`ebscrypt.domain.regions`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.domain import regions as R
from ebscrypt.engines.ec2.filters import select_matching
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.errors import InvalidParameterValue
from ebscrypt.services.registry import operation

_REGION_FILTERS = {
    "endpoint": lambda r: r["Endpoint"],
    "opt-in-status": lambda r: r["OptInStatus"],
    "region-name": lambda r: r["RegionName"],
}

_ZONE_FILTERS = {
    "group-name": lambda z: z["GroupName"],
    "group-long-name": lambda z: z["GroupLongName"],
    "message": lambda z: [m["Message"] for m in z["Messages"]],
    "network-border-group": lambda z: z["NetworkBorderGroup"],
    "opt-in-status": lambda z: z["OptInStatus"],
    "parent-zone-id": lambda z: z.get("ParentZoneId"),
    "parent-zone-name": lambda z: z.get("ParentZoneName"),
    "region-name": lambda z: z["RegionName"],
    "state": lambda z: z["State"],
    "zone-id": lambda z: z["ZoneId"],
    "zone-name": lambda z: z["ZoneName"],
    "zone-type": lambda z: z["ZoneType"],
}


def _region_dict(r: R.Region) -> dict[str, Any]:
    return {
        "RegionName": r.name,
        "Endpoint": r.endpoint,
        "OptInStatus": R.opt_in_status(r.name),
    }


@operation("ec2", "DescribeRegions")
def describe_regions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    names = params.get("RegionNames") or []
    for name in names:
        if not R.is_known_region(name):
            raise InvalidParameterValue(f"Invalid region: [{name}]")
    regions = [_region_dict(r) for r in R.all_regions()]
    if names:
        # Named regions are described whatever their opt-in status.
        regions = [r for r in regions if r["RegionName"] in names]
    elif not params.get("AllRegions"):
        regions = [r for r in regions if r["OptInStatus"] != R.NOT_OPTED_IN]
    return {"Regions": select_matching(regions, params.get("Filters"), _REGION_FILTERS)}


def _zone_dict(z: R.Zone) -> dict[str, Any]:
    return {
        "OptInStatus": R.OPT_IN_NOT_REQUIRED,
        "Messages": [],
        "RegionName": z.region,
        "ZoneName": z.name,
        "ZoneId": z.zone_id,
        "GroupName": z.group_name,
        "NetworkBorderGroup": z.region,
        "ZoneType": "availability-zone",
        "GroupLongName": z.group_long_name,
        "State": "available",
    }


@operation("ec2", "DescribeAvailabilityZones")
def describe_availability_zones(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    zones = [_zone_dict(z) for z in R.availability_zones(ctx.caller.region)]
    by_name = {z["ZoneName"]: z for z in zones}
    by_id = {z["ZoneId"]: z for z in zones}
    names = params.get("ZoneNames") or []
    ids = params.get("ZoneIds") or []
    for n in names:
        if n not in by_name:
            raise InvalidParameterValue(f"Invalid availability zone: [{n}]")
    for i in ids:
        if i not in by_id:
            raise InvalidParameterValue(f"Invalid availability zone-id: [{i}]")
    if names or ids:
        wanted = set(names) | {by_id[i]["ZoneName"] for i in ids}
        zones = [z for z in zones if z["ZoneName"] in wanted]
    return {"AvailabilityZones": select_matching(zones, params.get("Filters"), _ZONE_FILTERS)}
