"""HTTP layer A/B: the same raw requests replayed against ebscrypt on h11/asyncio, on
httptools/uvloop, and a null server (bench/null_server.py), interleaved in one run.

    python bench/bench_http.py [--fast-path DIR] [--rounds 3] [--seconds 1]

``--fast-path DIR``: where httptools and uvloop are importable from for the second server
(``pip install --target DIR httptools uvloop``); they are dependencies of the package
now (the default of ``serve``), so this is only for an environment without them.
Workloads: PutSnapshotBlock of 512 KiB over 1 and 8 connections (MiB/s), and a KMS
GenerateDataKey+Decrypt pair over 1 connection (ms per pair). Figures are medians of the
rounds; ratios are to the null server of the same run (the client + HTTP ceiling).
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

from bench.bench_ebs import BLOCK, raw_put, start  # noqa: E402
from bench.bench_kms import make_key, raw_pair  # noqa: E402
from bench.common import Ctx, Workload, start_ebscrypt, start_null, time_raw_round  # noqa: E402

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast-path", action="append", default=[])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    servers = []
    try:
        servers.append(start_ebscrypt(tmp / "a", extra_args=["--http", "h11", "--loop", "asyncio"], name="h11"))
        servers.append(start_ebscrypt(tmp / "b", extra_args=["--http", "httptools", "--loop", "uvloop"],
                                      extra_path=args.fast_path, name="httptools"))
        servers.append(start_null())
        ctxs = {s.name: Ctx("ebscrypt", s.url) for s in servers}
        for name in ("h11", "httptools"):
            start(ctxs[name])
            make_key(ctxs[name])
            raw_pair(ctxs[name])
        # the null server is signed the same requests (it reads them whole and drops them)
        ctxs["null"].state.update(ctxs["h11"].state)
        put = Workload("put", lambda c: None, raw=raw_put)
        pair = Workload("pair", lambda c: None, raw=raw_pair)
        cases = [("PutSnapshotBlock 512 KiB, 1 conn (MiB/s)", put, 1),
                 ("PutSnapshotBlock 512 KiB, 8 conns (MiB/s)", put, 8),
                 ("KMS GenerateDataKey+Decrypt, 1 conn (pairs/s)", pair, 1)]
        names = [s.name for s in servers]
        print(f"{'workload':48} " + " ".join(f"{n:>10}" for n in names) + "  httptools/h11  /null(h11, httptools)")
        for label, wl, conns in cases:
            rounds: dict[str, list[float]] = {n: [] for n in names}
            for i in range(args.rounds):
                for n in (names if i % 2 == 0 else names[::-1]):
                    rate = time_raw_round(ctxs[n], wl, args.seconds, 16, conns)
                    rounds[n].append(rate * BLOCK / MIB if wl is put else rate)
            med = {n: statistics.median(v) for n, v in rounds.items()}
            print(f"{label:48} " + " ".join(f"{med[n]:10.1f}" for n in names)
                  + f"  {med['httptools'] / med['h11']:13.2f}  {med['h11'] / med['null']:.2f}, "
                  f"{med['httptools'] / med['null']:.2f}", flush=True)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
