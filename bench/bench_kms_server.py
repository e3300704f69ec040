"""KMS server work with 1 and 16 clients: GenerateDataKey+Decrypt pairs (and, with
``--mutating``, CreateKey and CreateGrant; with ``--ec2``, CreateVolume and
DescribeVolumes of one id, whose handlers run in worker threads) replayed raw (bench/README.md, "Server cost"),
with the server process's CPU time per pair (per call).

    python bench/bench_kms_server.py [--pairs 1000] [--rounds 3] [--fast-path DIR] [--mutating] [--ec2] [--no-pairs]

Over 16 connections the replaying client (one Python process, 16 threads) shares the
machine's cores with the server, so wall pairs/s is bounded by the client too. The
server's own cost is its CPU time (utime + stime from /proc) divided by the pairs it
answered: ``pairs per server CPU-second`` is what one core of server work sustains
(times the cores the server may use for its capacity). ``--fast-path DIR`` adds a
second server on httptools/uvloop imported from DIR (``pip install --target DIR
httptools uvloop``), measured in the same run, rounds interleaved; ``--baseline DIR``
adds a server run from another checkout (``git archive REV | tar -x -C DIR``): the
before/after ratio of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_kms import make_key, raw_create_grant, raw_create_key, raw_pair  # noqa: E402
from bench.common import RawCall  # noqa: E402
from bench.common import (Ctx, Server, cpu_seconds, free_port, print_rate_rounds, replay,  # noqa: E402
                          sign_requests, start_ebscrypt)


def _describe_one(ctx: Ctx) -> list[RawCall]:
    """DescribeVolumes of one id among 20 volumes (made once per server)."""
    if "one" not in ctx.state:
        ec2 = ctx.client("ec2")
        ctx.state["one"] = [ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
                            for _ in range(20)][7]
    return [RawCall("ec2", "describe_volumes", dict(VolumeIds=[ctx.state["one"]]),
                    ok=lambda body: body.count(b"<volumeId>") == 1)]


REPLAYS: dict[str, Callable[[Ctx], list[RawCall]]] = {  # not WORKLOADS: run.py would take it
    "pair": raw_pair,
    "CreateKey": lambda ctx: [raw_create_key(ctx)],
    "CreateGrant": lambda ctx: [raw_create_grant(ctx)],
    # --ec2: the request path under the other calls (a worker-thread handler each)
    "CreateVolume": lambda ctx: [RawCall("ec2", "create_volume", dict(AvailabilityZone="us-east-1a", Size=1))],
    "DescribeVol1": _describe_one,
}


def one_round(server: Server, ctx: Ctx, pairs: int, conns: int, workload: str = "pair") -> tuple[float, float]:
    """(iterations/s of wall time, server CPU ms per iteration) of one replay."""
    assert server.proc is not None
    rcs = REPLAYS[workload](ctx)
    signed = [sign_requests(ctx.endpoint, rc, pairs) for rc in rcs]
    reqs = [r for group in zip(*signed) for r in group]
    before = cpu_seconds(server.proc.pid)
    spent = replay(ctx.endpoint, reqs, rcs[0].ok, conns)
    used = cpu_seconds(server.proc.pid) - before
    return pairs / spent, used * 1000 / pairs


def start_checkout(root: Path, data_dir: Path, name: str) -> Server:
    """``ebscrypt serve`` from another checkout of the repository (its own code)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "ebscrypt", "serve", "--port", str(port), "--data-dir", str(data_dir),
           "--log-level", "warning", "--nbd-port", "0"]
    return Server(name, cmd, port, "/_ebscrypt/health", env=env, workdir=root).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=1000, help="pairs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--fast-path", action="append", default=[])
    p.add_argument("--baseline", type=Path, help="a checkout to compare with (its server, same run)")
    p.add_argument("--mutating", action="store_true", help="also CreateKey and CreateGrant (per call)")
    p.add_argument("--ec2", action="store_true", help="also CreateVolume and DescribeVolumes of one id (per call)")
    p.add_argument("--no-pairs", action="store_true", help="leave out the KMS pairs")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kms-server-"))
    servers: list[Server] = []
    try:
        if args.baseline:
            servers.append(start_checkout(args.baseline.resolve(), tmp / "base", "baseline"))
        servers.append(start_ebscrypt(tmp / "a", name="default"))
        if args.fast_path:
            servers.append(start_ebscrypt(tmp / "b", extra_args=["--http", "httptools", "--loop", "uvloop"],
                                          extra_path=args.fast_path, name="httptools"))
        ctxs = {s.name: Ctx("ebscrypt", s.url) for s in servers}
        for s in servers:
            make_key(ctxs[s.name])
            one_round(s, ctxs[s.name], 50, 1)  # warm up
        workloads = ([] if args.no_pairs else ["pair"]) + (["CreateKey", "CreateGrant"] if args.mutating else []) \
            + (["CreateVolume", "DescribeVol1"] if args.ec2 else [])
        results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for i in range(args.rounds):
            order = servers if i % 2 == 0 else servers[::-1]
            for wl in workloads:
                for conns in (1, args.clients):
                    for s in order:
                        n = args.pairs if wl == "pair" else max(50, args.pairs // 4)
                        results.setdefault((wl, s.name, conns), []).append(one_round(s, ctxs[s.name], n, conns, wl))
        print_rate_rounds(results)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
