"""Wire-level workloads: the cheapest EC2 calls, so the figure is the cost of the stack
(HTTP, SigV4 scope, codec, routing), not of any engine.

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


WORKLOADS = [
    Workload("DescribeRegions", describe_regions),
    Workload("DescribeAvailabilityZones", describe_availability_zones),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))
