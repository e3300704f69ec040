"""The KMS-using calls of issue 15 without the HTTP path: this tree beside another
checkout, in process, rounds interleaved, process CPU per call.

    python bench/bench_kms_uses.py --baseline /tmp/before6 [--calls 300] [--rounds 5]

Each tree runs in a child process of its own (``PYTHONPATH`` = that checkout) holding a
runtime without job workers (as ``bench_group_commit.py --engine``): the EC2 engine's
encrypted ``create_volume`` (DescribeKey, GenerateDataKeyWithoutPlaintext, CreateGrant,
Decrypt on the caller's behalf, each authorized and audited, and the one durable
transaction), ``copy_snapshot`` of an encrypted snapshot under the same key (DescribeKey,
CreateGrant, Decrypt, one transaction), and a GenerateDataKey+Decrypt pair through the
KMS handlers (``ebscrypt.services.kms``, the code the gateway runs inline). What is
measured is the handler's own CPU (``time.process_time``: every thread of the child, so
the group-sync thread's fsync bookkeeping too), the part the KMS work of these calls is
in; the server's figures (``bench_mutating.py``, ``bench_kms_server.py``) add the HTTP
path. On a loaded machine the process CPU is far steadier than wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# Not WORKLOADS: run.py and profile.py collect that name from every bench module.
CALLS = ("CreateVolume(encrypted)", "CopySnapshot(same key)", "KMS pair")


def _child(data_dir: str) -> None:
    """Child mode: read ``<workload> <n>`` lines, answer ``<cpu ms/call> <wall ms/call>``."""
    from ebscrypt.context import RequestContext, Settings
    from ebscrypt.engines.ec2 import snapshots, volumes
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime
    from ebscrypt.services import registry

    rt = build_runtime(Settings(data_dir=Path(data_dir)), start_jobs=False)
    account, region = "111111111111", "us-east-1"
    ctx = job_ctx(rt, account, region, "CreateVolume")
    vol = volumes.create_volume(ctx, availability_zone="us-east-1a", size=1, encrypted=True)
    snap = snapshots.create_snapshot(ctx, vol.id, None, [])
    snapshots.finish_snapshot(rt, snap.id)  # completed: the copy is metadata only
    registry.load_all()
    gen, dec = registry.handler_for("kms", "GenerateDataKey"), registry.handler_for("kms", "Decrypt")
    assert gen is not None and dec is not None
    kctx = RequestContext(ctx.caller, rt, "r", "kms", "CreateKey")
    key = registry.handler_for("kms", "CreateKey")(kctx, {})["KeyMetadata"]["KeyId"]  # type: ignore[misc]
    context = {"aws:ebs:id": "vol-0123456789abcdef0"}
    blob = gen(kctx, {"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": context})["CiphertextBlob"]

    def pair() -> None:
        gen(kctx, {"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": context})
        dec(kctx, {"CiphertextBlob": blob, "EncryptionContext": context})

    calls: dict[str, Callable[[], Any]] = {
        "CreateVolume(encrypted)": lambda: volumes.create_volume(ctx, availability_zone="us-east-1a", size=1,
                                                                 encrypted=True),
        "CopySnapshot(same key)": lambda: snapshots.copy_snapshot(ctx, snap.id, region),
        "KMS pair": pair,
    }
    for call in calls.values():
        for _ in range(20):
            call()  # warm: the EBS key, its grant, pooled connections, key material
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            name, n = line.rsplit(" ", 1)
            call = calls[name]
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(int(n)):
                call()
            k = int(n)
            print(f"{(time.process_time() - cpu) * 1000 / k:.4f} {(time.perf_counter() - wall) * 1000 / k:.4f}",
                  flush=True)
    finally:
        close_runtime(rt)


class Tree:
    """A child process running one checkout's engines."""

    def __init__(self, name: str, root: Path, data_dir: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(root))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{name}: the child did not start ({line!r})")

    def run(self, workload: str, n: int) -> tuple[float, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{workload} {n}\n")
        self.proc.stdin.flush()
        cpu, wall = self.proc.stdout.readline().split()
        return float(cpu), float(wall)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True, help="the checkout to compare with")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", action="append", default=[])
    args = p.parse_args(argv)
    wls = [w for w in CALLS if not args.only or any(o.lower() in w.lower() for o in args.only)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-kms-uses-"))
    here = Path(__file__).resolve().parent.parent
    trees: list[Tree] = []
    try:
        trees = [Tree("before", args.baseline.resolve(), tmp / "before"), Tree("this", here, tmp / "this")]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for i in range(args.rounds):
            for wl in wls:
                n = args.calls * (3 if wl == "KMS pair" else 1)
                for t in (trees if i % 2 == 0 else trees[::-1]):
                    results.setdefault((wl, t.name), []).append(t.run(wl, n))
        print(f"{'workload':24} {'before CPU ms':>13} {'this CPU ms':>11} {'before/this':>11}  rounds (CPU ms) before | this")
        for wl in wls:
            b = [r[0] for r in results[(wl, "before")]]
            a = [r[0] for r in results[(wl, "this")]]
            print(f"{wl:24} {statistics.median(b):13.3f} {statistics.median(a):11.3f} "
                  f"{statistics.median(b) / statistics.median(a):11.2f}  "
                  + " ".join(f"{v:.3f}" for v in b) + " | " + " ".join(f"{v:.3f}" for v in a), flush=True)
    finally:
        for t in trees:
            t.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        raise SystemExit(0)
    raise SystemExit(main())
