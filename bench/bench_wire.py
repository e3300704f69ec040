"""Wire-level workloads: the cheapest EC2 calls, so the figure is the cost of the stack
(HTTP, SigV4 scope, codec, routing), not of any engine; then the network and key-pair
calls a Packer build makes (temporary key pair and security group).

    python bench/bench_wire.py            # or: python -m bench.bench_wire
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, Workload, main


def describe_regions(ctx: Ctx) -> None:
    regions = ctx.client("ec2").describe_regions()["Regions"]
    assert regions, "DescribeRegions returned no region"


def describe_availability_zones(ctx: Ctx) -> None:
    zones = ctx.client("ec2").describe_availability_zones()["AvailabilityZones"]
    assert zones, "DescribeAvailabilityZones returned no zone"


def describe_vpcs(ctx: Ctx) -> None:
    assert ctx.client("ec2").describe_vpcs()["Vpcs"], "no default VPC"


def describe_security_groups(ctx: Ctx) -> None:
    assert ctx.client("ec2").describe_security_groups(GroupNames=["default"])["SecurityGroups"]


def key_pair_cycle(ctx: Ctx) -> None:
    # Packer's temporary key pair: create (real key generation), then delete.
    ec2 = ctx.client("ec2")
    n = ctx.state.setdefault("kp_counter", 0)
    ctx.state["kp_counter"] = n + 1
    name = f"bench-kp-{n}"
    ec2.create_key_pair(KeyName=name, KeyType="ed25519")
    ec2.delete_key_pair(KeyName=name)


def security_group_cycle(ctx: Ctx) -> None:
    # Packer's temporary group: create, open port 22, delete.
    ec2 = ctx.client("ec2")
    n = ctx.state.setdefault("sg_counter", 0)
    ctx.state["sg_counter"] = n + 1
    gid = ec2.create_security_group(GroupName=f"bench-sg-{n}", Description="bench")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.delete_security_group(GroupId=gid)


WORKLOADS = [
    Workload("DescribeRegions", describe_regions),
    Workload("DescribeAvailabilityZones", describe_availability_zones),
    Workload("DescribeVpcs", describe_vpcs),
    Workload("DescribeSecurityGroups(default)", describe_security_groups),
    Workload("Create+DeleteKeyPair(ed25519)", key_pair_cycle, calls_per_iteration=2),
    Workload("Create+Authorize+DeleteSecurityGroup", security_group_cycle, calls_per_iteration=3),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))
