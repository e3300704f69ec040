"""Default VPC and subnets, as AWS has them for a new account (issue 6)."""

from __future__ import annotations

import ipaddress
import re

import pytest
from botocore.exceptions import ClientError

from ebscrypt.domain.regions import availability_zones


def err(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    e = excinfo.value.response["Error"]
    return e["Code"], e["Message"]


def test_new_account_has_one_default_vpc(aws) -> None:
    ec2 = aws("ec2", account="444444444444")
    vpcs = ec2.describe_vpcs()["Vpcs"]
    assert len(vpcs) == 1
    v = vpcs[0]
    assert re.fullmatch(r"vpc-[0-9a-f]{17}", v["VpcId"])
    assert v["CidrBlock"] == "172.31.0.0/16" and v["IsDefault"] is True and v["State"] == "available"
    assert v["OwnerId"] == "444444444444" and v["InstanceTenancy"] == "default"
    assert v["DhcpOptionsId"].startswith("dopt-")
    assert v["CidrBlockAssociationSet"][0]["CidrBlock"] == "172.31.0.0/16"
    assert v["CidrBlockAssociationSet"][0]["CidrBlockState"] == {"State": "associated"}
    # stable across calls
    assert ec2.describe_vpcs()["Vpcs"][0]["VpcId"] == v["VpcId"]


def test_one_default_subnet_per_zone(aws) -> None:
    ec2 = aws("ec2", account="444444444444", region="us-east-1")
    vpc_id = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = ec2.describe_subnets()["Subnets"]
    zones = [z.name for z in availability_zones("us-east-1")]
    assert sorted(s["AvailabilityZone"] for s in subnets) == zones
    cidrs = sorted((ipaddress.ip_network(s["CidrBlock"]) for s in subnets), key=lambda n: n.network_address)
    assert [str(c) for c in cidrs] == [f"172.31.{16 * i}.0/20" for i in range(len(zones))]
    for s in subnets:
        assert s["VpcId"] == vpc_id and s["DefaultForAz"] is True and s["MapPublicIpOnLaunch"] is True
        assert s["State"] == "available" and s["AvailableIpAddressCount"] == 4091
        assert s["SubnetArn"] == f"arn:aws:ec2:us-east-1:444444444444:subnet/{s['SubnetId']}"
        assert s["AvailabilityZoneId"].startswith("use1-az")


def test_filters_and_ids(aws) -> None:
    ec2 = aws("ec2", account="444444444444", region="eu-west-1")
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    assert ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["false"]}])["Vpcs"] == []
    assert ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"] == vpc_id
    assert ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["VpcId"] == vpc_id
    sub = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": ["eu-west-1b"]},
                                        {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    assert [s["AvailabilityZone"] for s in sub] == ["eu-west-1b"]
    assert ec2.describe_subnets(SubnetIds=[sub[0]["SubnetId"]])["Subnets"][0]["CidrBlock"] == sub[0]["CidrBlock"]
    assert len(ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]) == 3
    ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": "main"}])
    tagged = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["main"]}])["Vpcs"]
    assert [v["VpcId"] for v in tagged] == [vpc_id] and tagged[0]["Tags"] == [{"Key": "Name", "Value": "main"}]
    with pytest.raises(ClientError) as e:
        ec2.describe_vpcs(VpcIds=["vpc-0123456789abcdef0"])
    assert err(e) == ("InvalidVpcID.NotFound", "The vpc ID 'vpc-0123456789abcdef0' does not exist")
    with pytest.raises(ClientError) as e:
        ec2.describe_subnets(SubnetIds=["subnet-0123456789abcdef0"])
    assert err(e) == ("InvalidSubnetID.NotFound", "The subnet ID 'subnet-0123456789abcdef0' does not exist")
    with pytest.raises(ClientError) as e:
        ec2.describe_subnets(Filters=[{"Name": "bogus", "Values": ["1"]}])
    assert err(e)[0] == "InvalidParameterValue"


def test_paging(aws) -> None:
    ec2 = aws("ec2", account="444444444444", region="us-east-1")
    first = ec2.describe_subnets(MaxResults=5)
    assert len(first["Subnets"]) == 5 and first["NextToken"]
    rest = ec2.describe_subnets(MaxResults=5, NextToken=first["NextToken"])
    assert len(rest["Subnets"]) == 1 and "NextToken" not in rest
    ids = {s["SubnetId"] for s in first["Subnets"] + rest["Subnets"]}
    assert len(ids) == 6
    paginator = ec2.get_paginator("describe_subnets")
    assert sum(len(p["Subnets"]) for p in paginator.paginate(PaginationConfig={"PageSize": 5})) == 6


def test_accounts_and_regions_have_their_own_default_vpc(aws) -> None:
    a = aws("ec2", account="444444444444").describe_vpcs()["Vpcs"]
    b = aws("ec2", account="555555555555").describe_vpcs()["Vpcs"]
    c = aws("ec2", account="444444444444", region="us-west-2").describe_vpcs()["Vpcs"]
    assert len({a[0]["VpcId"], b[0]["VpcId"], c[0]["VpcId"]}) == 3
    with pytest.raises(ClientError) as e:
        aws("ec2", account="555555555555").describe_vpcs(VpcIds=[a[0]["VpcId"]])
    assert err(e)[0] == "InvalidVpcID.NotFound"
