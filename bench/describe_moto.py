"""Describe at scale next to moto: the server CPU of DescribeVolumes answering every
volume of an account holding N (1,000 / 10,000), ebscrypt and moto's server in one run
(issue 15: >= 10x moto's server cost). moto ignores MaxResults for DescribeVolumes, so
both answer all N in one response (the same signed request shape, replayed raw).

    python bench/describe_moto.py [--sizes 1000,10000] [--calls 3] [--tree DIR]

ebscrypt's volumes are written into a stopped server's database (bench_describe_scale.fill);
moto's are made through its API (8 threads; ~2-4 minutes for 10,000 here). Per call: wall
ms and the server process's CPU (utime + stime from /proc), medians of ``--calls``,
interleaved; per 1,000 items. ``--tree``: run another checkout's ebscrypt.
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


def populate_moto(url: str, start: int, stop: int) -> None:
    ec2 = make_client(url, "ec2", account=ACCOUNT)

    def one(i: int) -> None:
        ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, VolumeType="gp3", Encrypted=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(start, stop)))


def one_call(srv: Any, n: int) -> tuple[float, float]:
    """(wall ms, server CPU ms) of one DescribeVolumes answering all ``n`` volumes."""
    ok = (lambda body, n=n: body.count(b"<volumeId>") >= n)
    requests = sign_requests(srv.url, RawCall("ec2", "describe_volumes", {}, ACCOUNT, ok=ok), 1)
    c0, t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
    replay(srv.url, requests, ok)
    return (time.perf_counter() - t0) * 1000, (cpu_seconds(srv.proc.pid) - c0) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--tree", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-describe-moto-"))
    start_ebscrypt(work, tree=args.tree).stop()  # the schema
    moto = start_moto()
    have = 0
    print(f"{'n':>7} {'side':>8} {'wall ms/call':>13} {'cpu ms/call':>12} {'cpu ms/1000':>12}")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            fill(work, "volumes", have, size)
            populate_moto(moto.url, have, size)
            have = size
            eb = start_ebscrypt(work, tree=args.tree)
            try:
                one_call(eb, size), one_call(moto, size)  # warm both
                runs: dict[str, list[tuple[float, float]]] = {"ebscrypt": [], "moto": []}
                for _ in range(args.calls):
                    runs["ebscrypt"].append(one_call(eb, size))
                    runs["moto"].append(one_call(moto, size))
            finally:
                eb.stop()
            for side, got in runs.items():
                wall = statistics.median(w for w, _ in got)
                cpu = statistics.median(c for _, c in got)
                print(f"{size:>7} {side:>8} {wall:>13.1f} {cpu:>12.1f} {cpu / (size / 1000):>12.1f}", flush=True)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
