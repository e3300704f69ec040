"""The mutating calls of issue 15 (CreateVolume plain and encrypted, CreateSnapshot,
CopySnapshot same key, CreateKey, CreateGrant): the server's cost per call, replayed raw
over 1 and N connections, with the server process's CPU time per call (from /proc, as
bench_kms_server.py measures), optionally beside another checkout's server in the same run.

    python bench/bench_mutating.py [--calls 200] [--rounds 3] [--clients 16] [--baseline DIR] [--only CreateVolume]

``--baseline DIR``: a server run from another checkout (``git archive REV | tar -x -C DIR``),
rounds interleaved with this tree's. Per (workload, server, connections): calls/s of wall
time, server CPU ms per call (utime + stime of the server process), and wall ms per call
over one connection. With N connections the replaying client (one Python process) shares
the two cores with the server: the N-connection calls/s is bounded by both; the ratio
N-conn ÷ 1-conn is what group commit and the request path give when clients add up.
Not a WORKLOADS module (run.py skips it): the workloads are bench_ec2's and bench_kms's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_ec2, bench_kms  # noqa: E402
from bench.bench_kms_server import start_checkout  # noqa: E402
from bench.common import cpu_seconds  # noqa: E402
from bench.common import Ctx, Server, Workload, replay, selected, sign_requests, start_ebscrypt  # noqa: E402

NAMES = ("CreateVolume", "CreateVolume(encrypted)", "CreateSnapshot", "CopySnapshot(same key)",
         "KMS CreateKey", "KMS CreateGrant")


def mutating() -> list[Workload]:
    by_name = {w.name: w for w in [*bench_ec2.WORKLOADS, *bench_kms.WORKLOADS]}
    return [by_name[n] for n in NAMES]


def one_round(server: Server, ctx: Ctx, wl: Workload, calls: int, conns: int) -> tuple[float, float]:
    """(calls/s of wall time, server CPU ms per call) of one replay of ``calls`` calls."""
    assert server.proc is not None and wl.raw is not None
    rc = wl.raw(ctx)
    assert not isinstance(rc, list)
    reqs = sign_requests(ctx.endpoint, rc, calls)
    before = cpu_seconds(server.proc.pid)
    spent = replay(ctx.endpoint, reqs, rc.ok, conns)
    used = cpu_seconds(server.proc.pid) - before
    return calls / spent, used * 1000 / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="calls per round (per connection count)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--baseline", type=Path, help="a checkout to compare with (its server, same run)")
    p.add_argument("--only", action="append", default=[])
    args = p.parse_args(argv)
    wls = selected(mutating(), args.only)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mutating-"))
    servers: list[Server] = []
    try:
        if args.baseline:
            servers.append(start_checkout(args.baseline.resolve(), tmp / "base", "before"))
        servers.append(start_ebscrypt(tmp / "a", name="this"))
        ctxs = {s.name: Ctx("ebscrypt", s.url) for s in servers}
        for s in servers:
            for wl in wls:
                if wl.setup is not None:
                    wl.setup(ctxs[s.name])
                one_round(s, ctxs[s.name], wl, 20, 1)  # warm up (the first encrypted volume makes the EBS key…)
        results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for i in range(args.rounds):
            order = servers if i % 2 == 0 else servers[::-1]
            for wl in wls:
                for conns in (1, args.clients):
                    for s in order:
                        results.setdefault((wl.name, s.name, conns), []).append(
                            one_round(s, ctxs[s.name], wl, args.calls, conns))
        print(f"{'workload':24} {'server':7} {'conns':>5} {'calls/s':>8} {'wall ms':>8} {'CPU ms':>7}  rounds (calls/s / CPU ms)")
        for (name, srv, conns), rounds in results.items():
            rate = statistics.median(r[0] for r in rounds)
            cpu = statistics.median(r[1] for r in rounds)
            print(f"{name:24} {srv:7} {conns:5d} {rate:8.0f} {1000 / rate:8.2f} {cpu:7.2f}  "
                  + " ".join(f"{r[0]:.0f}/{r[1]:.2f}" for r in rounds), flush=True)
        print("\nN-conn / 1-conn calls/s:")
        for wl in wls:
            for s in servers:
                one = statistics.median(r[0] for r in results[(wl.name, s.name, 1)])
                many = statistics.median(r[0] for r in results[(wl.name, s.name, args.clients)])
                print(f"  {wl.name:24} {s.name:7} {many / one:5.2f}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
