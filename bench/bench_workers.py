"""``ebscrypt serve --workers N``: KMS pairs and CreateVolume calls over 1 and 16 connections,
``--workers 1`` beside ``--workers 2`` (and more), in one run, rounds interleaved.

    python bench/bench_workers.py [--workers 1,2] [--pairs 3000] [--calls 600] [--rounds 3] [--baseline DIR]

Requests are signed once (bench/README.md, "Server cost": the raw replay) and replayed by
``--client-procs`` client processes (default 4) sharing the connections, so the load is not
bound by one client process's GIL. Per setup and connection count: wall iterations/s, the
server's CPU ms per iteration — the whole process tree (the parent, its workers, their
block-copy processes) from /proc — and iterations per server CPU-second. On a 2-core
machine the client processes share the cores with the server: read wall figures as what
this machine sustains, CPU per iteration as the server's cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_kms import make_key, raw_pair  # noqa: E402
from bench.common import (Ctx, RawCall, Server, cpu_seconds, print_rate_rounds, replay,  # noqa: E402
                          sign_requests, start_ebscrypt)

Signed = tuple[str, str, bytes, dict[str, str]]

REPLAYS: dict[str, Callable[[Ctx], list[RawCall]]] = {  # not WORKLOADS: run.py would take it
    "KMS pair": raw_pair,  # GenerateDataKey + Decrypt: one iteration is two calls
    "CreateVolume": lambda ctx: [RawCall("ec2", "create_volume", dict(AvailabilityZone="us-east-1a", Size=1))],
}


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants alive now (/proc)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:  # ended meanwhile
            continue
    return total


def _client_proc(endpoint: str, share: list[Signed], ok: Any, conns: int, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        replay(endpoint, share, ok, conns)
        out.put(None)
    except Exception as exc:  # reported by the parent: a failed replay must not read as fast
        out.put(repr(exc))


def replay_procs(endpoint: str, reqs: Sequence[Signed], ok: Any, conns: int, procs: int) -> float:
    """Seconds to replay ``reqs`` over ``conns`` connections spread over ``procs`` processes."""
    procs = max(1, min(procs, conns))
    if procs == 1:
        return replay(endpoint, reqs, ok, conns)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    shares = [list(reqs[i::procs]) for i in range(procs)]
    children = [ctx.Process(target=_client_proc, args=(endpoint, s, ok, c, barrier, out))
                for s, c in zip(shares, per)]
    for c in children:
        c.start()
    barrier.wait()
    start = time.monotonic()
    errors = [e for e in (out.get(timeout=600) for _ in children) if e]
    spent = time.monotonic() - start
    for c in children:
        c.join()
    if errors:
        raise RuntimeError(f"replay failed: {errors[0]}")
    return spent


def one_round(server: Server, ctx: Ctx, workload: str, n: int, conns: int, procs: int) -> tuple[float, float]:
    """(iterations/s of wall time, server CPU ms per iteration). A pair's two requests are
    independent (the Decrypt is of a data key made once), so they are dealt like any."""
    assert server.proc is not None
    rcs = REPLAYS[workload](ctx)
    signed = [sign_requests(ctx.endpoint, rc, n) for rc in rcs]
    reqs = [r for group in zip(*signed) for r in group]
    before = tree_cpu_seconds(server.proc.pid)
    spent = replay_procs(ctx.endpoint, reqs, rcs[0].ok, conns, procs)
    used = tree_cpu_seconds(server.proc.pid) - before
    return n / spent, used * 1000 / n


def wait_workers(url: str, count: int, timeout: float = 120.0) -> None:
    """Until every worker answers: the server is up when its first worker is, and a
    round must not run while the others still start (their start-up would be measured)."""
    import json
    import urllib.request

    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} of {count} answered")
        with urllib.request.urlopen(f"{url}/_ebscrypt/ready", timeout=10) as resp:  # a new connection each
            seen.add(int(json.loads(resp.read()).get("worker", 0)))
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts to compare (comma-separated)")
    p.add_argument("--pairs", type=int, default=3000, help="KMS pairs per round (per connection count)")
    p.add_argument("--calls", type=int, default=600, help="CreateVolume calls per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--only", action="append", default=[], help="workload name substring (repeatable)")
    p.add_argument("--baseline", type=Path, help="another checkout (one process) measured beside, same run")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    servers: list[Server] = []
    try:
        if args.baseline:
            servers.append(start_ebscrypt(tmp / "base", name="before", tree=args.baseline.resolve()))
        for n in (int(x) for x in args.workers.split(",")):
            servers.append(start_ebscrypt(tmp / f"w{n}", extra_args=["--workers", str(n)], name=f"workers={n}"))
            wait_workers(servers[-1].url, n)
        ctxs = {s.name: Ctx("ebscrypt", s.url) for s in servers}
        for s in servers:
            make_key(ctxs[s.name])
            one_round(s, ctxs[s.name], "KMS pair", 100, args.clients, args.client_procs)  # warm every worker
        workloads = [w for w in REPLAYS if not args.only or any(o in w for o in args.only)]
        results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for i in range(args.rounds):
            order = servers if i % 2 == 0 else servers[::-1]
            for wl in workloads:
                n = args.pairs if wl == "KMS pair" else args.calls
                for conns in (1, args.clients):
                    for s in order:
                        results.setdefault((wl, s.name, conns), []).append(
                            one_round(s, ctxs[s.name], wl, n if conns > 1 else max(50, n // 4), conns,
                                      args.client_procs))
        print_rate_rounds(results, "   rounds (it/s / CPU ms)")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
