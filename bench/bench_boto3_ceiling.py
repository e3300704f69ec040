"""The ceiling the boto3 client itself puts on the mutating calls of issue 15 (and on KMS
pairs): the same workloads through boto3 against ebscrypt, moto's server and a null
server that answers each operation with a canned copy of ebscrypt's own answer, in one
run, rounds interleaved.

    python bench/bench_boto3_ceiling.py [--rounds 3] [--seconds 2] [--clients 16] [--only CreateVolume]

Issue 15 asks "through one boto3 client >= 3x moto" and "with 16 clients >= 5x one
client's". Through boto3 the client is part of every figure: serializing, signing and
parsing one call costs its own CPU. The null server (``bench/null_server.py --canned``)
does nothing but frame the request and send back bytes recorded once from ebscrypt's
answer to the same call (``before-parse`` hook: the exact XML/JSON botocore parses), so
its calls/s is what one boto3 client reaches against a server of zero cost: if it is
below 3x moto's, no server can meet the target through one boto3 client on this
machine. ``--clients N``: N boto3 clients (threads spread over up to 4 processes, each
its own clients, as bench_scaleout drives them) against each of the three, for the
"16 clients >= 5x one client's" ceiling. Not a WORKLOADS module (run.py skips it).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_ec2, bench_kms  # noqa: E402
from bench.bench_mutating import NAMES  # noqa: E402
from bench.common import Ctx, Server, Workload, selected, start_ebscrypt, start_moto, start_null, time_round  # noqa: E402

SIDES = ("ebscrypt", "moto", "null")
PAIRS = "KMS GenerateDataKey+Decrypt pairs"


def workloads() -> list[Workload]:
    by_name = {w.name: w for w in [*bench_ec2.WORKLOADS, *bench_kms.WORKLOADS]}
    return [by_name[n] for n in (*NAMES, PAIRS)]


def record_answers(ctx: Ctx, wl: Workload) -> dict[str, dict[str, Any]]:
    """The raw answers (status, content type, body) of one ``wl.call`` on ``ctx``, by
    operation name, as botocore received them (before parsing)."""
    wl.call(ctx)  # its clients exist now
    got: dict[str, dict[str, Any]] = {}

    def grab(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
        headers = response_dict["headers"]
        got[operation_model.name] = {
            "status": response_dict["status_code"],
            "content_type": headers.get("content-type") or headers.get("Content-Type") or "application/json",
            "body": bytes(response_dict["body"]).decode(),
        }

    clients = list(ctx._clients.values())
    for c in clients:
        c.meta.events.register("before-parse", grab, unique_id="bench-ceiling-grab")
    try:
        wl.call(ctx)
    finally:
        for c in clients:
            c.meta.events.unregister("before-parse", unique_id="bench-ceiling-grab")
    return got


def put_canned(null: Server, answers: dict[str, dict[str, Any]]) -> None:
    req = urllib.request.Request(null.url + "/_null/canned", data=json.dumps(answers).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=10):
        pass


def _client_process(wl_name: str, side: str, endpoint: str, state: dict[str, Any], threads: int, seconds: float,
                    ready: Any, start: Any, results: Any) -> None:
    """One load process: ``threads`` boto3 clients, each its own Ctx, calls counted."""
    wl = {w.name: w for w in workloads()}[wl_name]
    ctxs = [Ctx(side, endpoint, state=copy.deepcopy(state)) for _ in range(threads)]
    for c in ctxs:
        wl.call(c)  # clients made, connections open: untimed
    counts = [0] * threads
    ready.put(1)
    start.wait()
    deadline = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < deadline:
            wl.call(ctxs[i])
            counts[i] += wl.calls_per_iteration

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    results.put((sum(counts), time.perf_counter() - t0))


def many_clients_round(wl: Workload, side: str, endpoint: str, state: dict[str, Any], clients: int,
                       seconds: float) -> float:
    """calls/s of ``clients`` boto3 clients (threads over up to 4 processes)."""
    mpc = mp.get_context("fork")
    procs_n = min(4, clients)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    ready, results, start = mpc.Queue(), mpc.Queue(), mpc.Event()
    procs = [mpc.Process(target=_client_process, args=(wl.name, side, endpoint, state, n, seconds, ready, start,
                                                       results)) for n in per]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        start.set()
        got = [results.get(timeout=seconds + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    return sum(n for n, _ in got) / max(t for _, t in got)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per round (one client)")
    p.add_argument("--min-calls", type=int, default=20)
    p.add_argument("--clients", type=int, default=16, help="also N boto3 clients (0: skip)")
    p.add_argument("--only", action="append", default=[])
    args = p.parse_args(argv)
    wls = selected(workloads(), args.only)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    servers: dict[str, Server] = {}
    try:
        servers["ebscrypt"] = start_ebscrypt(tmp / "data")
        servers["moto"] = start_moto()
        servers["null"] = start_null(canned=True)
        ctxs = {s: Ctx(s, servers[s].url) for s in SIDES}
        print(f"rounds={args.rounds} x >= {args.seconds}s, one boto3 client; {args.clients} clients; median shown",
              flush=True)
        print(f"{'workload':26} {'ebscrypt/s':>10} {'moto/s':>8} {'null/s':>8} {'eb/mo':>6} {'null/mo':>7}  "
              f"{'N eb/s':>7} {'N mo/s':>7} {'N null/s':>8} {'Nnull/1eb':>9}  rounds eb | mo | null")
        for wl in wls:
            for s in ("ebscrypt", "moto"):
                if wl.setup is not None:
                    wl.setup(ctxs[s])
            answers = record_answers(ctxs["ebscrypt"], wl)
            put_canned(servers["null"], answers)
            ctxs["null"].state.update(copy.deepcopy(ctxs["ebscrypt"].state))  # ids only: nothing is looked up
            for s in SIDES:
                for _ in range(5):
                    wl.call(ctxs[s])  # warm up
            one: dict[str, list[float]] = {s: [] for s in SIDES}
            many: dict[str, list[float]] = {s: [] for s in SIDES}
            for i in range(args.rounds):
                order = SIDES if i % 2 == 0 else SIDES[::-1]
                for s in order:
                    one[s].append(time_round(ctxs[s], wl, args.seconds, args.min_calls))
                if args.clients > 1:
                    for s in order:
                        many[s].append(many_clients_round(wl, s, servers[s].url, ctxs[s].state, args.clients,
                                                          args.seconds))
            med = {s: statistics.median(one[s]) for s in SIDES}
            mmed = {s: statistics.median(many[s]) if many[s] else 0.0 for s in SIDES}
            print(f"{wl.name:26} {med['ebscrypt']:10.1f} {med['moto']:8.1f} {med['null']:8.1f} "
                  f"{med['ebscrypt'] / med['moto']:6.2f} {med['null'] / med['moto']:7.2f}  "
                  f"{mmed['ebscrypt']:7.0f} {mmed['moto']:7.0f} {mmed['null']:8.0f} "
                  f"{mmed['null'] / med['ebscrypt']:9.2f}  "
                  + " | ".join(" ".join(f"{v:.0f}" for v in one[s]) for s in SIDES)
                  + ("   N: " + " | ".join(" ".join(f"{v:.0f}" for v in many[s]) for s in SIDES) if many["null"] else ""),
                  flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
