"""The random 4 KiB read path of an attached volume, in process (issue 12, bench/README.md
section R7): CPU µs and Python calls per read, first of ``OpenVolume.try_read`` alone, then
of the whole NBD connection thread serving fio.

    python bench/bench_nbd_readpath.py [--span-mib 256] [--reads 20000] [--rounds 3] [--fio-seconds 3]
                                       [--before DIR] [--floor] [--profile]

A volume (encrypted and plain) is written whole over ``--span-mib`` with 1 MiB writes and
flushed, reopened (cache empty, 16 blocks: nearly every read misses it) and its objects
learnt; then ``--reads`` random 4 KiB reads go through ``try_read`` in a loop (the objects
are in the page cache: just written): CPU µs per read (thread CPU time) and Python calls
per read (``sys.setprofile``). Then the volume is exported by an ``NbdServer`` in the same
process and fio's nbd engine reads it at random (4 KiB, iodepth 16, one connection,
``--fio-seconds``, two runs): IOPS, the connection thread's CPU µs per read (schedstat),
the process's, and Python calls per request on the connection thread. ``--floor`` adds a
run with the volume's read replaced by nothing (the loop, parsing, replies and the
kernel's socket alone). ``--before DIR``: that checkout measured the same way, in a child
process of its own (trees one after the other: compare CPU and calls, not IOPS).
``--profile``: cProfile of ``try_read``'s loop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == HERE / "bench":
    sys.path.pop(0)  # (bench/profile.py would shadow the standard library's, which cProfile imports)
BLOCK = 512 * 1024


def _thread_cpu_ns(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])


def _serve_fio(vol: Any, seconds: float, span_mib: int, floor: bool = False) -> dict[str, Any]:
    """The volume exported by an NbdServer in this process, fio's random 4 KiB reads
    against it (iodepth 16, one connection): IOPS, the connection thread's CPU µs per
    read (schedstat), the process's, and Python calls per request on that thread.
    ``floor``: the volume's read replaced by nothing (the reply carries whatever its
    buffer held): what the connection's loop, parsing, replies and the kernel's socket
    cost alone."""
    import asyncio
    import socket
    import threading

    from ebscrypt.wire.nbd_server import NbdServer

    class Attach:
        def export(self, name: str) -> Any:
            return vol if name == vol.volume_id else None

    if floor:
        vol.try_read_into = lambda offset, dest: True
        vol.try_read_batch_into = lambda reads: len(reads)  # (a tree with batched hot reads: R8)
        vol.try_read = lambda offset, length: bytes(length)

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = NbdServer(Attach())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", port), loop).result()
    uri = f"nbd://127.0.0.1:{port}/{vol.volume_id}"

    def fio(secs: float) -> float:
        cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
               f"--size={span_mib}M", "--iodepth=16", f"--runtime={secs}", "--time_based",
               "--output-format=json", "--randrepeat=0"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]["read"]
        return float(job["total_ios"])

    def conn_threads() -> list[int]:
        return [t.native_id for t in threading.enumerate() if t.name.startswith("ebscrypt-nbd-vol") and t.native_id]

    result: dict[str, Any] = {}
    try:
        fio(1.0)  # warm
        calls = [0]
        result["fio_iops"] = []
        result["conn_us"] = []
        result["proc_us"] = []
        for _ in range(2):
            found: dict[int, int] = {}
            stop = threading.Event()

            def watch() -> None:  # the connection thread's CPU, last seen before it ends
                while not stop.is_set():
                    for t in conn_threads():
                        try:
                            found[t] = _thread_cpu_ns(t)
                        except OSError:
                            pass
                    time.sleep(0.05)
            w = threading.Thread(target=watch, daemon=True)
            w.start()
            p0 = time.process_time()
            ios = fio(seconds)
            p1 = time.process_time()
            stop.set()
            w.join()
            result["fio_iops"].append(ios / seconds)
            result["conn_us"].append(sum(found.values()) / 1e3 / ios)
            result["proc_us"].append((p1 - p0) * 1e6 / ios)

        def count(_frame: Any, event: str, _arg: Any) -> None:
            if event in ("call", "c_call"):
                calls[0] += 1
        threading.setprofile(count)
        try:
            ios = fio(1.0)
        finally:
            threading.setprofile(None)  # (threads started meanwhile keep it: the connection's)
        result["loop_calls"] = calls[0] / ios
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
    return result


def _child(root: Path, span_mib: int, reads: int, rounds: int, profile: bool,
           fio_seconds: float = 0.0) -> dict[str, Any]:
    """Runs in a child whose sys.path starts with the tree measured."""
    import cProfile
    import pstats

    from ebscrypt.engines.attach.volume_io import OpenVolume
    from ebscrypt.engines.blocks.crypto import DataKey
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.blocks.store import LocalDirStore
    from ebscrypt.storage.db import Database

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        db = Database(f"sqlite:///{tmp}/meta.db")
        blocks = BlockEngine(db, LocalDirStore(Path(tmp) / "blocks"), processes=0, gc_grace_seconds=0)
        try:
            for label, key in (("enc", DataKey("dk-bench", os.urandom(32))), ("plain", None)):
                vid = f"vol-{label:0>17}"
                vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=16,
                                 journal_path=Path(tmp) / f"{label}.journal")
                chunk = os.urandom(1 << 20)
                for mib in range(span_mib):
                    vol.write(mib << 20, chunk)
                vol.flush()
                vol.close()
                vol = OpenVolume(blocks, vid, 1, key, account="1", instance_id="i-1", cache_blocks=16,
                                 journal_path=Path(tmp) / f"{label}.journal")
                rng = random.Random(5)
                offsets = [rng.randrange(span_mib * 256) * 4096 for _ in range(reads)]
                for off in offsets[:4096]:  # (the objects' headers learnt, as in a steady state)
                    vol.read(off, 4096)
                served = [vol.try_read(off, 4096) for off in offsets[:2000]]
                misses = sum(1 for s in served if s is None)
                calls = [0]

                def count(_frame: Any, event: str, _arg: Any) -> None:
                    if event in ("call", "c_call"):
                        calls[0] += 1
                sys.setprofile(count)
                for off in offsets[:1000]:
                    vol.try_read(off, 4096)
                sys.setprofile(None)
                us = []
                for _ in range(rounds):
                    t0 = time.thread_time()
                    for off in offsets:
                        vol.try_read(off, 4096)
                    us.append((time.thread_time() - t0) / len(offsets) * 1e6)
                prof = ""
                if profile:
                    pr = cProfile.Profile()
                    pr.enable()
                    for off in offsets:
                        vol.try_read(off, 4096)
                    pr.disable()
                    import io
                    s = io.StringIO()
                    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
                    prof = s.getvalue()
                served_ = _serve_fio(vol, fio_seconds, span_mib) if fio_seconds else {}
                out[label] = {"us": us, "calls": calls[0] / 1000, "misses": misses, "profile": prof, **served_}
                if fio_seconds and label == "plain" and os.environ.get("READPATH_FLOOR"):
                    out["floor"] = _serve_fio(vol, fio_seconds, span_mib, floor=True)
                vol.close()
        finally:
            blocks.close()
            db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--span-mib", type=int, default=256)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fio-seconds", type=float, default=3.0, help="fio against an in-process server (0: not)")
    ap.add_argument("--floor", action="store_true", help="also the server without the volume's read (see _serve_fio)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        sys.path.insert(0, str(args.child))
        print(json.dumps(_child(args.child, args.span_mib, args.reads, args.rounds, args.profile, args.fio_seconds)))
        return
    trees = [("after", HERE)] + ([("before", args.before.resolve())] if args.before else [])
    results: dict[str, dict[str, Any]] = {}
    for name, root in trees:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(root), "--span-mib", str(args.span_mib),
               "--reads", str(args.reads), "--rounds", str(args.rounds), "--fio-seconds", str(args.fio_seconds)] + (["--profile"] if args.profile else [])
        env = dict(os.environ, PYTHONPATH=str(root), READPATH_FLOOR="1" if args.floor else "")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(root))
        if res.returncode:
            sys.exit(res.stderr)
        results[name] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{'tree':8} {'volume':6} {'µs/read (rounds)':30} {'median':>7} {'calls/read':>10} {'not inline':>10}")
    for name, res in results.items():
        for label, r in res.items():
            if "us" not in r:
                continue
            rounds = " ".join(f"{u:.1f}" for u in r["us"])
            print(f"{name:8} {label:6} {rounds:30} {statistics.median(r['us']):7.1f} {r['calls']:10.1f} {r['misses']:10}")
    print(f"\n{'tree':8} {'volume':6} {'fio IOPS':>16} {'conn thread µs/read':>22} {'process µs/read':>18} {'calls/request':>14}")
    for name, res in results.items():
        for label, r in res.items():
            if "fio_iops" in r and "us" not in r:  # (the floor: no volume read)
                iops = "/".join(f"{v:.0f}" for v in r["fio_iops"])
                conn = "/".join(f"{v:.1f}" for v in r["conn_us"])
                print(f"{name:8} {'floor':6} {iops:>16} {conn:>22} {'':>18} {r['loop_calls']:14.1f}")
            elif "fio_iops" in r:
                iops = "/".join(f"{v:.0f}" for v in r["fio_iops"])
                conn = "/".join(f"{v:.1f}" for v in r["conn_us"])
                proc = "/".join(f"{v:.1f}" for v in r["proc_us"])
                print(f"{name:8} {label:6} {iops:>16} {conn:>22} {proc:>18} {r['loop_calls']:14.1f}")
    if args.profile:
        for name, res in results.items():
            for label, r in res.items():
                print(f"--- {name} {label}\n{r['profile']}")


if __name__ == "__main__":
    main()
