"""DescribeRegions / DescribeAvailabilityZones through boto3 and the AWS CLI (issue 2)."""

from __future__ import annotations

import json
import subprocess

import pytest
from botocore.exceptions import ClientError


def err(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    e = excinfo.value.response["Error"]
    return e["Code"], e["Message"]


def test_describe_regions(aws) -> None:
    ec2 = aws("ec2")
    regions = {r["RegionName"]: r for r in ec2.describe_regions()["Regions"]}
    assert len(regions) == 17 and "af-south-1" not in regions
    assert regions["us-east-1"] == {"RegionName": "us-east-1", "Endpoint": "ec2.us-east-1.amazonaws.com",
                                    "OptInStatus": "opt-in-not-required"}
    everything = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions(AllRegions=True)["Regions"]}
    assert everything["af-south-1"] == "not-opted-in" and len(everything) > len(regions)
    named = ec2.describe_regions(RegionNames=["eu-west-1", "il-central-1"])["Regions"]
    assert sorted(r["RegionName"] for r in named) == ["eu-west-1", "il-central-1"]
    filtered = ec2.describe_regions(Filters=[{"Name": "endpoint", "Values": ["*.us-*"]}])["Regions"]
    assert sorted(r["RegionName"] for r in filtered) == ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]
    with pytest.raises(ClientError) as e:
        ec2.describe_regions(RegionNames=["mars-north-1"])
    assert err(e) == ("InvalidParameterValue", "Invalid region: [mars-north-1]")


def test_describe_availability_zones_follows_the_request_region(aws) -> None:
    zones = aws("ec2", region="eu-west-1").describe_availability_zones()["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    z = zones[0]
    assert (z["ZoneId"], z["State"], z["RegionName"], z["ZoneType"], z["NetworkBorderGroup"], z["GroupName"]) == (
        "euw1-az1", "available", "eu-west-1", "availability-zone", "eu-west-1", "eu-west-1-zg-1")
    ec2 = aws("ec2")
    by_id = ec2.describe_availability_zones(ZoneIds=["use1-az2"])["AvailabilityZones"]
    assert [z["ZoneName"] for z in by_id] == ["us-east-1b"]
    by_filter = ec2.describe_availability_zones(Filters=[{"Name": "zone-name", "Values": ["us-east-1[ab]", "us-east-1c"]}])
    assert [z["ZoneName"] for z in by_filter["AvailabilityZones"]] == ["us-east-1c"]  # no bracket classes in EC2
    with pytest.raises(ClientError) as e:
        ec2.describe_availability_zones(ZoneNames=["us-east-1z"])
    assert err(e) == ("InvalidParameterValue", "Invalid availability zone: [us-east-1z]")
    with pytest.raises(ClientError) as e:
        ec2.describe_availability_zones(DryRun=True)
    assert err(e)[0] == "DryRunOperation"


def test_aws_cli_describe_regions(endpoint, aws_cli_env) -> None:
    out = subprocess.run(
        ["aws", "--endpoint-url", endpoint, "ec2", "describe-regions", "--region", "ap-southeast-2",
         "--query", "Regions[?RegionName=='ap-southeast-2']", "--output", "json"],
        env=aws_cli_env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"RegionName": "ap-southeast-2", "Endpoint": "ec2.ap-southeast-2.amazonaws.com",
                                       "OptInStatus": "opt-in-not-required"}]
