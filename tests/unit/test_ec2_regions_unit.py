"""Regions and Availability Zones: the domain table and the handlers (no server)."""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from typing import Any

import pytest

from ebscrypt.context import Caller, RequestContext
from ebscrypt.domain import regions as R
from ebscrypt.errors import ServiceError
from ebscrypt.services.ec2.regions import describe_availability_zones, describe_regions

DEFAULT_ENABLED = {
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ap-south-1", "ap-northeast-1",
    "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "ca-central-1",
    "eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1", "sa-east-1",
}


def ctx(region: str = "us-east-1") -> RequestContext:
    return RequestContext(Caller("111111111111", region), None, "req", "ec2", "op")  # type: ignore[arg-type]


def _aws_partition() -> dict[str, Any]:
    import botocore

    path = os.path.join(os.path.dirname(botocore.__file__), "data", "partitions.json")
    with open(path) as f:
        data = json.load(f)
    return next(p for p in data["partitions"] if p["id"] == "aws")


def _compare_with_partition(partition: dict[str, Any]) -> list[str]:
    """Fail where ebscrypt's table (the source of truth, domain/regions.py) contradicts a
    botocore partition; return the regions only botocore knows (a newer botocore than
    the table), which are reported, not failed: the tests must hold with any botocore."""
    ours = {r.name: r.long_name for r in R.all_regions()}
    theirs = {k: v["description"] for k, v in partition["regions"].items() if k != "aws-global"}
    pattern = re.compile(partition["regionRegex"])
    assert [n for n in ours if not pattern.match(n)] == []
    shared = ours.keys() & theirs.keys()
    assert {n: ours[n] for n in shared} == {n: theirs[n] for n in shared}
    return sorted(theirs.keys() - ours.keys())


def test_table_agrees_with_installed_botocore_partition() -> None:
    only_botocore = _compare_with_partition(_aws_partition())
    if only_botocore:
        warnings.warn(f"botocore knows regions domain/regions.py lacks: {only_botocore}", stacklevel=1)


def test_partition_check_holds_when_botocore_adds_or_lacks_a_region() -> None:
    partition = copy.deepcopy(_aws_partition())
    partition["regions"]["us-north-9"] = {"description": "US North (Future)"}  # botocore added one
    partition["regions"].pop("sa-west-1", None)  # an older botocore without a newer one
    assert _compare_with_partition(partition) == ["us-north-9"]
    partition["regions"]["eu-west-1"] = {"description": "Europe (Somewhere else)"}
    with pytest.raises(AssertionError):  # a contradiction still fails
        _compare_with_partition(partition)


def test_short_names_and_zone_ids() -> None:
    assert R.region_info("us-east-1").short_name == "use1"
    assert R.region_info("ap-southeast-2").short_name == "apse2"
    assert R.region_info("il-central-1").short_name == "ilc1"
    zs = R.availability_zones("us-east-1")
    assert [z.name for z in zs] == [f"us-east-1{c}" for c in "abcdef"]
    assert zs[0].zone_id == "use1-az1"
    assert R.zone("use1-az3").name == "us-east-1c"
    assert R.availability_zones("nowhere-1") == ()
    assert R.is_zone_in_region("eu-west-1b", "eu-west-1")
    assert not R.is_zone_in_region("eu-west-1b", "us-east-1")
    # every zone id is unique across the partition, every region has >= 2 zones
    ids = [z.zone_id for r in R.all_regions() for z in R.availability_zones(r.name)]
    assert len(ids) == len(set(ids))
    assert all(len(R.availability_zones(r.name)) >= 2 for r in R.all_regions())


def test_describe_regions_new_account_sees_default_regions() -> None:
    out = describe_regions(ctx(), {})["Regions"]
    assert {r["RegionName"] for r in out} == DEFAULT_ENABLED
    r = next(r for r in out if r["RegionName"] == "eu-west-1")
    assert r == {"RegionName": "eu-west-1", "Endpoint": "ec2.eu-west-1.amazonaws.com",
                 "OptInStatus": "opt-in-not-required"}


def test_describe_regions_all_regions_shows_not_opted_in() -> None:
    out = describe_regions(ctx(), {"AllRegions": True})["Regions"]
    assert len(out) == len(R.all_regions())
    status = {r["RegionName"]: r["OptInStatus"] for r in out}
    assert status["af-south-1"] == "not-opted-in"
    assert status["us-west-2"] == "opt-in-not-required"


def test_describe_regions_names_and_filters() -> None:
    out = describe_regions(ctx(), {"RegionNames": ["me-south-1", "us-east-2"]})["Regions"]
    assert sorted(r["RegionName"] for r in out) == ["me-south-1", "us-east-2"]
    out = describe_regions(ctx(), {"Filters": [{"Name": "region-name", "Values": ["eu-*"]}]})["Regions"]
    assert {r["RegionName"] for r in out} == {"eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1"}
    out = describe_regions(ctx(), {"AllRegions": True, "Filters": [
        {"Name": "opt-in-status", "Values": ["not-opted-in"]},
        {"Name": "endpoint", "Values": ["ec2.ap-*"]}]})["Regions"]
    assert "ap-east-1" in {r["RegionName"] for r in out} and "ap-south-1" not in {r["RegionName"] for r in out}


def test_describe_regions_errors() -> None:
    with pytest.raises(ServiceError) as e:
        describe_regions(ctx(), {"RegionNames": ["us-east-1", "us--east-1"]})
    assert (e.value.code, e.value.message) == ("InvalidParameterValue", "Invalid region: [us--east-1]")
    with pytest.raises(ServiceError) as e:
        describe_regions(ctx(), {"Filters": [{"Name": "bogus", "Values": ["x"]}]})
    assert e.value.code == "InvalidParameterValue" and "bogus" in e.value.message
    with pytest.raises(ServiceError) as e:
        describe_regions(ctx(), {"DryRun": True})
    assert (e.value.code, e.value.status) == ("DryRunOperation", 412)


def test_describe_availability_zones_of_request_region() -> None:
    out = describe_availability_zones(ctx("us-west-1"), {})["AvailabilityZones"]
    assert [z["ZoneName"] for z in out] == ["us-west-1a", "us-west-1b"]
    z = out[0]
    assert z == {
        "OptInStatus": "opt-in-not-required", "Messages": [], "RegionName": "us-west-1",
        "ZoneName": "us-west-1a", "ZoneId": "usw1-az1", "GroupName": "us-west-1-zg-1",
        "NetworkBorderGroup": "us-west-1", "ZoneType": "availability-zone",
        "GroupLongName": "US West (N. California) 1", "State": "available",
    }


def test_describe_availability_zones_selection_and_errors() -> None:
    c = ctx("us-east-1")
    out = describe_availability_zones(c, {"ZoneNames": ["us-east-1b"], "ZoneIds": ["use1-az4"]})
    assert [z["ZoneName"] for z in out["AvailabilityZones"]] == ["us-east-1b", "us-east-1d"]
    out = describe_availability_zones(c, {"Filters": [{"Name": "zone-id", "Values": ["use1-az1", "use1-az6"]},
                                                      {"Name": "state", "Values": ["available"]}]})
    assert [z["ZoneName"] for z in out["AvailabilityZones"]] == ["us-east-1a", "us-east-1f"]
    with pytest.raises(ServiceError) as e:
        describe_availability_zones(c, {"ZoneNames": ["eu-west-1a"]})  # a zone of another region
    assert (e.value.code, e.value.message) == ("InvalidParameterValue", "Invalid availability zone: [eu-west-1a]")
    with pytest.raises(ServiceError) as e:
        describe_availability_zones(c, {"ZoneIds": ["use1-az9"]})
    assert e.value.message == "Invalid availability zone-id: [use1-az9]"
