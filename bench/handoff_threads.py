"""Per-thread server CPU of one small worker-thread request (issue 15, section T): the
event loop's and the worker threads' CPU ms per call, from /proc/<pid>/task/*/stat, for
DescribeVolumes of a 5-item page (and CreateVolume), this tree beside another checkout,
rounds interleaved, medians.

    python bench/handoff_threads.py [--calls 1000] [--rounds 3] [--baseline DIR] [--call describe|create]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RawCall, make_client, replay, sign_requests, start_ebscrypt, thread_cpu  # noqa: E402


def _calls(url: str, call: str, n: int) -> list[tuple[str, str, bytes, dict[str, str]]]:
    if call == "describe":
        rc = RawCall("ec2", "describe_volumes", dict(MaxResults=5))
    else:
        rc = RawCall("ec2", "create_volume", dict(AvailabilityZone="us-east-1a", Size=1))
    return sign_requests(url, rc, n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path)
    p.add_argument("--call", choices=("describe", "create"), default="describe")
    args = p.parse_args()
    trees: list[tuple[str, Path | None]] = [("after", None)]
    if args.baseline:
        trees.insert(0, ("before", args.baseline))
    servers = {}
    for name, tree in trees:
        srv = start_ebscrypt(Path(tempfile.mkdtemp(prefix=f"handoff-{name}-")), tree=tree, name=name)
        ec2 = make_client(srv.url, "ec2")
        for _ in range(10):
            ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
        servers[name] = srv
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    try:
        for _ in range(args.rounds):
            for name, _tree in trees:
                srv = servers[name]
                assert srv.proc is not None
                reqs = _calls(srv.url, args.call, args.calls)
                before = thread_cpu(srv.proc.pid)
                replay(srv.url, reqs)
                after = thread_cpu(srv.proc.pid)
                loop = (after[srv.proc.pid] - before.get(srv.proc.pid, 0.0)) * 1000 / args.calls
                total = sum(after[t] - before.get(t, 0.0) for t in after) * 1000 / args.calls
                figures[name].append((loop, total - loop))
        for name, _tree in trees:
            loops = [f[0] for f in figures[name]]
            workers = [f[1] for f in figures[name]]
            print(f"{name}: {args.call} CPU ms per call: event loop {statistics.median(loops):.3f} "
                  f"(rounds {', '.join(f'{x:.2f}' for x in loops)}), other threads "
                  f"{statistics.median(workers):.3f} (rounds {', '.join(f'{x:.2f}' for x in workers)})")
    finally:
        for srv in servers.values():
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
