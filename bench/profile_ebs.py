"""Server CPU per block of the EBS direct APIs, without the CLI: PutSnapshotBlock and
GetSnapshotBlock replayed raw (signed once, untimed) over ``--conns`` keep-alive
connections, against this checkout's server and optionally others (``--root DIR``, a
``git archive`` of an earlier commit) started side by side, rounds interleaved.

    python bench/profile_ebs.py [--blocks 160] [--rounds 3] [--conns 8] [--root DIR ...]
                                [--pyspy DIR]   # also: py-spy profiles (non-idle samples)
                                [--profile OUT [--profiler cprofile|yappi]]  # CPU-clock profiles

Per side and direction it prints the server's CPU ms per block (user + system, from
/proc; medians of the rounds), split by thread (the event loop's thread vs the worker
threads), and MiB/s. The CPU figures are what the server costs; the MiB/s are disturbed
by whatever else runs on the machine. ``--pyspy DIR`` records one py-spy profile per
side and direction (``--threads``, idle samples dropped) and prints the functions with
the largest shares of samples, inclusive and own.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, RawCall, Server, free_port, make_client, replay, sign_requests, start_ebscrypt  # noqa: E402

BLOCK = 524288
MIB = 1024 * 1024
ACCOUNT = "111111111111"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread name ('loop' for
    the main thread); threads of one name are added up."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = collections.defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        name = "loop" if task.name == str(pid) else ("worker" if name.startswith(("python", "AnyIO", "Thread")) else name)
        out[name] += (int(fields[11]) + int(fields[12])) / tick
        out[f"({name} sys)"] += int(fields[12]) / tick
    # The process's own total: it keeps the CPU of threads that ended (anyio's idle worker
    # threads exit after 10 s), which the sum of the live threads above loses.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["(total)"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}


class Side:
    def __init__(self, name: str, server: Any) -> None:
        self.name = name
        self.server = server
        self.url = server.url
        self.pid = server.proc.pid
        self.ebs = make_client(self.url, "ebs", ACCOUNT)
        self.cpu: dict[str, list[dict[str, float]]] = {"put": [], "get": []}
        self.mibps: dict[str, list[float]] = {"put": [], "get": []}


def put_round(side: Side, data: bytes, checksum: str, blocks: int, conns: int, spy: Path | None) -> str:
    snap = side.ebs.start_snapshot(VolumeSize=64, Encrypted=True)["SnapshotId"]
    reqs = [sign_requests(side.url, RawCall("ebs", "put_snapshot_block", dict(
        SnapshotId=snap, BlockIndex=i, BlockData=data[:-8] + i.to_bytes(8, "big"), DataLength=BLOCK,
        Checksum=_sum(data[:-8] + i.to_bytes(8, "big")), ChecksumAlgorithm="SHA256"), account=ACCOUNT), 1)[0]
        for i in range(blocks)]
    _measure(side, "put", reqs, blocks, conns, spy)
    side.ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=blocks)
    return snap


def get_round(side: Side, snap: str, blocks: int, conns: int, spy: Path | None) -> None:
    listed = side.ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]
    reqs = [sign_requests(side.url, RawCall("ebs", "get_snapshot_block", dict(
        SnapshotId=snap, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]), account=ACCOUNT), 1)[0]
        for b in listed[:blocks]]
    _measure(side, "get", reqs, len(reqs), conns, spy)


def _sum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _measure(side: Side, what: str, reqs: list[Any], blocks: int, conns: int, spy: Path | None) -> None:
    prof = None
    if spy is not None and shutil.which("py-spy"):
        out = spy / f"{side.name}-{what}.txt"
        prof = subprocess.Popen(["py-spy", "record", "-p", str(side.pid), "-o", str(out), "--format", "raw",
                                 "-r", "250", "--threads", "--nonblocking",
                                 *(["--gil"] if os.environ.get("PROFILE_EBS_GIL") else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    c0 = thread_cpu(side.pid)
    seconds = replay(side.url, reqs, None, conns)
    c1 = thread_cpu(side.pid)
    if prof is not None:
        prof.send_signal(2)
        prof.wait(30)
    side.cpu[what].append({k: v * 1000 / blocks for k, v in _diff(c0, c1).items()})
    side.mibps[what].append(blocks * BLOCK / MIB / seconds)


def summarize_spy(path: Path, top: int) -> None:
    """Shares of samples by function, inclusive and own, from py-spy's raw output
    (``bench/profile.py``'s ``summarize``)."""
    from bench.profile import summarize

    total, incl, own = summarize(path, top)
    print(f"  {path.name}: {total} samples")
    print("    inclusive: " + "; ".join(f"{f} {100 * n / total:.1f}%" for f, n in incl))
    print("    own:       " + "; ".join(f"{f} {100 * n / total:.1f}%" for f, n in own))


def _serve_profiled(out: str, argv: list[str]) -> None:
    """Child mode: ``ebscrypt serve`` profiled with a CPU clock (cProfile per thread, or
    yappi for every thread: ``PROFILE_EBS_TOOL``)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [d for d in sys.path if d not in (str(here), str(here.parent), "")]
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
    if os.environ.get("PROFILE_EBS_TOOL", "cprofile") == "cprofile":
        _serve_cprofile(out, argv)
        return
    import yappi

    from ebscrypt.cli import main as cli_main

    yappi.set_clock_type("cpu")
    yappi.start()
    try:
        cli_main(argv)
    finally:
        yappi.stop()
        yappi.get_func_stats().save(out, "pstat")


def _serve_cprofile(out: str, argv: list[str]) -> None:
    """cProfile with each thread's CPU clock: the loop thread from the start, each worker
    thread from its first request (the gateway's ``_answer`` is wrapped); merged at exit."""
    import cProfile
    import pstats
    import threading

    from ebscrypt import app
    from ebscrypt.cli import main as cli_main

    profiles: list[cProfile.Profile] = []
    local = threading.local()
    inner = app._answer

    def answer(*a: Any) -> Any:
        if getattr(local, "prof", None) is None:
            local.prof = cProfile.Profile(time.thread_time)
            profiles.append(local.prof)
            local.prof.enable()
        return inner(*a)

    app._answer = answer  # type: ignore[assignment]
    main_prof = cProfile.Profile(time.thread_time)
    main_prof.enable()
    try:
        cli_main(argv)
    finally:
        main_prof.disable()
        main_prof.dump_stats(out + ".loop")  # the event loop's thread alone
        for prof in profiles:
            prof.disable()
        if profiles:  # the worker threads' together
            stats = pstats.Stats(profiles[0])
            for prof in profiles[1:]:
                stats.add(prof)
            stats.dump_stats(out)


def start_profiled(data_dir: Path, out: Path, root: Path) -> Server:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(root.resolve()))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-profiled", str(out), "serve", "--port", str(port),
           "--data-dir", str(data_dir), "--log-level", "warning", "--nbd-port", "0"]
    return Server("profiled", cmd, port, "/_ebscrypt/health", env=env, workdir=root.resolve()).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=160)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--root", action="append", default=[], help="another checkout to run beside this one")
    p.add_argument("--also-env", action="append", default=[], metavar="VAR=VALUE",
                   help="also run this checkout's server with this environment variable set (A/B of a switch)")
    p.add_argument("--pyspy", type=Path, help="record py-spy profiles into this directory (last round)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--profile", type=Path, metavar="OUT",
                   help="profile this checkout's server with each thread's CPU clock: the worker threads' pstats "
                   "in OUT (the event loop's in OUT.loop with cProfile), the top functions printed")
    p.add_argument("--profiler", choices=("cprofile", "yappi"), default="cprofile",
                   help="cProfile per thread (default) or yappi (all threads, more overhead)")
    p.add_argument("--server-arg", action="append", default=[], help="an extra argument of ebscrypt serve")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-ebs-"))
    sides: list[Side] = []
    try:
        if args.profile:
            os.environ["PROFILE_EBS_TOOL"] = args.profiler  # read by the child (--serve-profiled)
        sides.append(Side("this", start_profiled(work / "this", args.profile, REPO_ROOT) if args.profile
                          else start_ebscrypt(work / "this", extra_args=args.server_arg)))
        for n, assignment in enumerate(args.also_env):  # this checkout again, with one variable set
            var, _, value = assignment.partition("=")
            saved = os.environ.get(var)
            os.environ[var] = value
            try:
                sides.append(Side(assignment, start_ebscrypt(work / f"env{n}", name=f"env{n}")))
            finally:
                if saved is None:
                    del os.environ[var]
                else:
                    os.environ[var] = saved
        for n, root in enumerate(args.root):
            sides.append(Side(f"root{n}", start_ebscrypt(work / f"root{n}", tree=Path(root), name=f"root{n}")))
        data = os.urandom(BLOCK)
        if args.pyspy:
            args.pyspy.mkdir(parents=True, exist_ok=True)
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            spy = args.pyspy if r == args.rounds - 1 else None
            snaps = {s.name: put_round(s, data, _sum(data), args.blocks, args.conns, spy) for s in order}
            for s in order:
                get_round(s, snaps[s.name], args.blocks, args.conns, spy)
        print(f"\nEBS direct raw replay: {args.blocks} blocks x {args.rounds} rounds, {args.conns} connections "
              "(medians; CPU ms per block = the server's user + system)")
        for s in sides:
            for what in ("put", "get"):
                rounds = s.cpu[what]
                total = [c["(total)"] for c in rounds]
                names = sorted({k for c in rounds for k in c}, key=lambda k: -statistics.median(c.get(k, 0) for c in rounds))
                split = ", ".join(f"{k} {statistics.median(c.get(k, 0) for c in rounds):.2f}" for k in names
                                  if k != "(total)" and statistics.median(c.get(k, 0) for c in rounds) >= 0.01)
                print(f"  {s.name:8} {what}: CPU {statistics.median(total):.2f} ms/block "
                      f"(rounds {[round(t, 2) for t in total]}; {split}); "
                      f"{statistics.median(s.mibps[what]):.1f} MiB/s (rounds {[round(x, 1) for x in s.mibps[what]]})")
        if args.profile:
            sides[0].server.stop()
            import pstats

            stats = pstats.Stats(str(args.profile))
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
        if args.pyspy:
            for f in sorted(args.pyspy.glob("*.txt")):
                summarize_spy(f, args.top)
    finally:
        for s in sides:
            s.server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-profiled":
        _serve_profiled(sys.argv[2], sys.argv[3:])
        raise SystemExit(0)
    raise SystemExit(main())
