"""The SQLite group commit alone (storage/db.py ``WalGroupSync``): write transactions of
one insert each, from 1 and from N threads, in process; transactions/s, process CPU per
transaction and WAL syncs per transaction (bench/README.md, section B).

    python bench/bench_group_commit.py [--transactions 1600] [--threads 16] [--rounds 2]
    python bench/bench_group_commit.py --engine [--transactions 480]     # CreateVolume, plain and encrypted

``--engine``: the EC2 engine's ``create_volume`` (plain, then encrypted: its KMS uses,
audit records and its one durable transaction) called from 1 and N threads in process,
on a runtime without job workers — the engine and the group commit without the HTTP path.

Not a WORKLOADS module (run.py skips it): no server, no HTTP — what the database layer
(and the create engine) gives when writers add up, against which the servers' figures can
be read.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from ebscrypt.storage.db import Database  # noqa: E402
from ebscrypt.storage.tables.provenance import ec2_provenance  # noqa: E402

_INSERT = insert(ec2_provenance)


def one_round(db: Database, transactions: int, threads: int, tag: str) -> tuple[float, float, float]:
    """(transactions/s, CPU ms per transaction, syncs per transaction)."""
    assert db.group_sync is not None
    each = transactions // threads

    def work(k: int) -> None:
        for i in range(each):
            with db.begin() as conn:
                conn.execute(_INSERT, dict(
                    resource_id=f"{tag}-{k}-{i}", account="1", region="r", operation="bench", rule="R-OUT-6",
                    source_type="empty", source_region="r", data_key_shared=False,
                    created_at=datetime.now(timezone.utc)))

    syncs, cpu, start = db.group_sync.fsyncs, time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    n = each * threads
    return (n / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / n,
            (db.group_sync.fsyncs - syncs) / n)


def engine_rounds(transactions: int, threads_n: int, rounds: int) -> None:
    from ebscrypt.context import Settings
    from ebscrypt.engines.ec2 import volumes
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime

    tmp = Path(tempfile.mkdtemp(prefix="bench-group-commit-engine-"))
    rt = build_runtime(Settings(data_dir=tmp / "data"), start_jobs=False)
    try:
        sync = rt.db.group_sync
        assert sync is not None
        ctx = job_ctx(rt, "111111111111", "us-east-1", "CreateVolume")
        for encrypted in (None, True):
            def call() -> None:
                volumes.create_volume(ctx, availability_zone="us-east-1a", size=1, encrypted=encrypted)

            for _ in range(20):
                call()  # warm: the EBS key, its grant, pooled connections
            for _r in range(rounds):
                for threads in (1, threads_n):
                    each = transactions // threads
                    syncs, cpu, start = sync.fsyncs, time.process_time(), time.perf_counter()
                    workers = [threading.Thread(target=lambda: [call() for _ in range(each)]) for _ in range(threads)]
                    for t in workers:
                        t.start()
                    for t in workers:
                        t.join()
                    n = each * threads
                    print(f"CreateVolume{'(encrypted)' if encrypted else ''} {threads:3d} thread(s): "
                          f"{n / (time.perf_counter() - start):6.0f} calls/s  CPU "
                          f"{(time.process_time() - cpu) * 1000 / n:.2f} ms/call  "
                          f"{(sync.fsyncs - syncs) / n:.2f} syncs/call", flush=True)
    finally:
        close_runtime(rt)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transactions", type=int, default=1600)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--engine", action="store_true", help="CreateVolume through the EC2 engine instead")
    args = p.parse_args(argv)
    if args.engine:
        engine_rounds(args.transactions, args.threads, args.rounds)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-group-commit-"))
    db = Database(f"sqlite:///{tmp / 'meta.db'}")
    try:
        for r in range(args.rounds):
            for threads in (1, args.threads):
                rate, cpu, syncs = one_round(db, args.transactions, threads, f"{r}-{threads}")
                print(f"{threads:3d} thread(s): {rate:7.0f} tx/s  CPU {cpu:.3f} ms/tx  {syncs:.2f} syncs/tx", flush=True)
    finally:
        db.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
