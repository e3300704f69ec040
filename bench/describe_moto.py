"""Describe at scale next to moto: the server CPU of DescribeVolumes, DescribeSnapshots
(OwnerIds=self) and DescribeImages (Owners=self) answering every resource of an account
holding N (1,000 / 10,000), ebscrypt and moto's server in one run (issue 15: >= 10x moto's
server cost). moto ignores MaxResults for DescribeVolumes, so both answer all N in one
response without MaxResults (the same signed request shape, replayed raw).

    python bench/describe_moto.py [--kinds volumes,snapshots,images] [--sizes 1000,10000]
                                  [--calls 3] [--tree DIR]

ebscrypt's resources are written into a stopped server's database (bench_describe_scale.fill);
moto's are made through its API (8 threads; ~2-4 minutes for 10,000 volumes here; snapshots
of one volume, images registered from one snapshot). Per call: wall ms and the server
process's CPU (utime + stime from /proc), medians of ``--calls``, interleaved; per 1,000
items. ``--tree``: run another checkout's ebscrypt.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_describe_scale import ACCOUNT, fill  # noqa: E402
from bench.common import RawCall, cpu_seconds, make_client, replay, sign_requests, start_ebscrypt, start_moto  # noqa: E402


# Per kind: (client method, item tag, owner-self params).
KINDS: dict[str, tuple[str, bytes, dict[str, Any]]] = {
    "volumes": ("describe_volumes", b"<volumeId>", {}),
    "snapshots": ("describe_snapshots", b"<snapshotId>", {"OwnerIds": ["self"]}),
    "images": ("describe_images", b"<imageId>", {"Owners": ["self"]}),
}


def populate_moto(url: str, kind: str, start: int, stop: int) -> None:
    ec2 = make_client(url, "ec2", account=ACCOUNT)
    source: dict[str, str] = {}
    if kind != "volumes":
        vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, VolumeType="gp3", Encrypted=True)
        source["volume"] = vol["VolumeId"]
        if kind == "images":
            source["snapshot"] = ec2.create_snapshot(VolumeId=vol["VolumeId"])["SnapshotId"]

    def one(i: int) -> None:
        if kind == "volumes":
            ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, VolumeType="gp3", Encrypted=True)
        elif kind == "snapshots":
            ec2.create_snapshot(VolumeId=source["volume"], Description="bench")
        else:
            ec2.register_image(Name=f"image-{i}", Description="bench", RootDeviceName="/dev/xvda",
                               Architecture="x86_64", VirtualizationType="hvm", EnaSupport=True,
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                                   "SnapshotId": source["snapshot"], "VolumeSize": 8, "DeleteOnTermination": True,
                                   "VolumeType": "gp3"}}])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(start, stop)))


def one_call(srv: Any, kind: str, n: int) -> tuple[float, float]:
    """(wall ms, server CPU ms) of one Describe* answering all ``n`` resources of ``kind``
    (moto's own extra ones, a source volume or snapshot, may come too)."""
    method, tag, params = KINDS[kind]
    ok = (lambda body, n=n: body.count(tag) >= n)
    requests = sign_requests(srv.url, RawCall("ec2", method, params, ACCOUNT, ok=ok), 1)
    c0, t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
    replay(srv.url, requests, ok)
    return (time.perf_counter() - t0) * 1000, (cpu_seconds(srv.proc.pid) - c0) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--kinds", default="volumes,snapshots,images")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--tree", type=Path)
    args = p.parse_args(argv)
    print(f"{'kind':>9} {'n':>7} {'side':>8} {'wall ms/call':>13} {'cpu ms/call':>12} {'cpu ms/1000':>12}")
    for kind in args.kinds.split(","):
        work = Path(tempfile.mkdtemp(prefix="bench-describe-moto-"))
        start_ebscrypt(work, tree=args.tree).stop()  # the schema
        moto = start_moto()
        have = 0
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                fill(work, kind, have, size)
                populate_moto(moto.url, kind, have, size)
                have = size
                eb = start_ebscrypt(work, tree=args.tree)
                try:
                    one_call(eb, kind, size), one_call(moto, kind, size)  # warm both
                    runs: dict[str, list[tuple[float, float]]] = {"ebscrypt": [], "moto": []}
                    for _ in range(args.calls):
                        runs["ebscrypt"].append(one_call(eb, kind, size))
                        runs["moto"].append(one_call(moto, kind, size))
                finally:
                    eb.stop()
                for side, got in runs.items():
                    wall = statistics.median(w for w, _ in got)
                    cpu = statistics.median(c for _, c in got)
                    print(f"{kind:>9} {size:>7} {side:>8} {wall:>13.1f} {cpu:>12.1f} {cpu / (size / 1000):>12.1f}",
                          flush=True)
        finally:
            moto.stop()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
