"""Where the event loop's CPU goes on KMS data-key pairs: cProfile of the server's loop
thread with a CPU clock (``time.thread_time``), while pairs are replayed raw.

    python bench/profile_cpu.py [--pairs 2000] [--clients 1] [--top 40] [--root DIR]

Why beside ``bench/profile.py --gil``: py-spy's GIL samples count the time the loop
thread holds the GIL while the kernel runs the client it has just woken (a loopback
``send`` that gets the thread preempted), which on a loaded 2-core machine made the
response write look like half of the server's work; its CPU time is a few percent. A
thread-CPU clock counts only what the loop thread computes. Only the loop thread is
profiled (the inline KMS handlers run there; worker-thread handlers do not show).
``--root DIR`` profiles another checkout's server (``git archive REV | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _serve_profiled(out: str, argv: list[str]) -> None:
    """Child mode: ``ebscrypt serve`` under cProfile with the thread's CPU clock."""
    # bench/ is first on sys.path when this file runs as a script, and bench/profile.py
    # would shadow the standard library's ``profile`` that cProfile imports.
    # The server's code is the checkout in PYTHONPATH (--root), not this file's.
    here = Path(__file__).resolve().parent
    sys.path[:] = [d for d in sys.path if d not in (str(here), str(here.parent), "")]
    sys.path.insert(0, os.environ["PYTHONPATH"])
    import cProfile

    from ebscrypt.cli import main

    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        main(argv)
    finally:
        prof.disable()
        prof.dump_stats(out)


def main(argv: list[str] | None = None) -> int:
    import pstats

    from bench.bench_kms import make_key, raw_pair
    from bench.common import REPO_ROOT, Ctx, free_port, replay, sign_requests

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--root", type=Path, default=REPO_ROOT, help="the checkout whose server is profiled")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-cpu-"))
    out = tmp / "server.prof"
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-profiled", str(out), "serve", "--port", str(port),
           "--data-dir", str(tmp / "data"), "--nbd-port", "0", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(args.root.resolve()))
    proc = subprocess.Popen(cmd, cwd=args.root, stdout=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"the profiled server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/_ebscrypt/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        ctx = Ctx("ebscrypt", url)
        make_key(ctx)
        signed = [sign_requests(url, rc, args.pairs) for rc in raw_pair(ctx)]
        replay(url, [r for group in zip(*signed) for r in group], None, args.clients)
    finally:
        proc.send_signal(signal.SIGINT)  # a clean stop: the profile is written
        proc.wait(60)
    stats = pstats.Stats(str(out))
    stats.sort_stats("cumulative").print_stats("ebscrypt|uvicorn|json", args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-profiled":
        _serve_profiled(sys.argv[2], sys.argv[3:])
        raise SystemExit(0)
    raise SystemExit(main())
