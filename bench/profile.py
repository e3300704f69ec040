"""Where the server's time goes: py-spy samples ``ebscrypt serve`` while a workload's raw
requests are replayed (bench/README.md, "Profiles").

    python bench/profile.py --only CreateVolume --seconds 5 [--top 25] [--out DIR]

For each selected workload (by name substring, from bench/bench_*.py): a fresh server,
the workload's setup through boto3 (untimed, not sampled), then ``py-spy record`` of
the server process for ``--seconds`` while ``time_raw_round`` replays its signed requests
over one connection (``--clients N`` for more). Prints the server ms/call of that replay,
the busiest functions (inclusive % of samples of threads holding the GIL or running)
and the top self-time frames; ``--out DIR`` keeps the collapsed stacks (flamegraph input).
Needs ``pip install py-spy`` and ptrace rights on the server process.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, selected, start_ebscrypt, time_raw_round  # noqa: E402
from bench.run import discover  # noqa: E402


def summarize(collapsed: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, inclusive counts, self counts) of a py-spy raw (collapsed) file."""
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " " + _short(f) for f in stack.split(";")]
        total += n
        for f in set(frames):
            incl[f] += n
        self_[frames[-1]] += n
    return total, incl.most_common(top), self_.most_common(top)


def _short(frame: str) -> str:
    """``(path/to/module.py:12)`` -> ``module.py``: the function's file, without its line."""
    if "(" not in frame:
        return ""
    where = frame.rsplit("(", 1)[1].rstrip(")")
    return "(" + where.rsplit("/", 1)[-1].split(":")[0] + ")"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    p.add_argument("--server-args", default="", metavar="ARGS",
                   help="more `ebscrypt serve` options, e.g. '--workers 2' (its workers are sampled too)")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL: where the server's CPU goes, without waits")
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("py-spy is not installed (python3 -m pip install py-spy)", file=sys.stderr)
        return 2
    wls = [w for w in selected(discover(), args.only) if w.raw is not None]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for wl in wls:
        tmp = Path(tempfile.mkdtemp(prefix="bench-profile-data-"))
        srv = start_ebscrypt(tmp / "data", extra_args=args.server_args.split())
        try:
            ctx = Ctx("ebscrypt", srv.url)
            if wl.setup is not None:
                wl.setup(ctx)
            for _ in range(5):
                wl.call(ctx)
            stem = "".join(c if c.isalnum() else "_" for c in wl.name)
            collapsed = out_dir / f"{stem}.txt"
            assert srv.proc is not None
            rec = subprocess.Popen([pyspy, "record", "-p", str(srv.proc.pid), "-d", str(int(args.seconds) + 1),
                                    "-r", str(args.rate), "-f", "raw", "-o", str(collapsed), "--nonblocking",
                                    *(["--gil"] if args.gil else []),
                                    *(["--subprocesses"] if "--workers" in args.server_args else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            rate: list[float] = []
            t = threading.Thread(target=lambda: rate.append(time_raw_round(ctx, wl, args.seconds, 20, args.clients)))
            t.start()
            t.join()
            _, err = rec.communicate(timeout=120)
            if not collapsed.exists():
                print(f"{wl.name}: py-spy wrote nothing: {err.decode()[-500:]}")
                continue
            total, incl, self_ = summarize(collapsed, args.top)
            print(f"\n=== {wl.name}: {1000 / rate[0]:.2f} ms/call (replay, {args.clients} connection(s)), "
                  f"{total} samples -> {collapsed}")
            print("  inclusive:")
            for name, n in incl:
                print(f"   {100 * n / total:5.1f}%  {name}")
            print("  self:")
            for name, n in self_[: max(10, args.top // 2)]:
                print(f"   {100 * n / total:5.1f}%  {name}")
        finally:
            srv.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
