"""What a group commit of several calls' transactions could save (issue 15, section M8):
SQLite CPU per call when k CopySnapshot-sized writes (a snapshot row with its eleven
indexes, and its provenance row) share one transaction, k = 1, 4, 8, 16.

    python bench/bench_commit_batch.py [--calls 1600] [--rounds 3]

A database is made by this tree's runtime (one encrypted volume, a snapshot of it and a
copy: the real schema and rows), then copied fresh for each (round, k) and written with
the driver alone (``sqlite3``, WAL, ``synchronous=NORMAL`` as the server's group commit
runs it; no fsync): process CPU per call of the statements and of the COMMIT (which
appends every page the transaction dirtied to the WAL), medians of the rounds. The
server's own figures are ``bench_mutating.py``'s; this is the ceiling of the database
part of one lever.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCHES = (1, 4, 8, 16)


def _seed(data_dir: Path) -> Path:
    """A metadata database holding a snapshot and its provenance, made through the engines."""
    from ebscrypt.context import Settings
    from ebscrypt.engines.ec2 import snapshots, volumes
    from ebscrypt.engines.ec2.ids import job_ctx
    from ebscrypt.runtime import build_runtime, close_runtime

    rt = build_runtime(Settings(data_dir=data_dir), start_jobs=False)
    try:
        ctx = job_ctx(rt, "111111111111", "us-east-1", "CreateVolume")
        vol = volumes.create_volume(ctx, availability_zone="us-east-1a", size=1, encrypted=True)
        snap = snapshots.create_snapshot(ctx, vol.id, None, [])
        snapshots.finish_snapshot(rt, snap.id)
        snapshots.copy_snapshot(ctx, snap.id, "us-east-1")
    finally:
        close_runtime(rt)
    return data_dir / "metadata.db"


def _fresh(seed: Path, path: Path) -> sqlite3.Connection:
    shutil.copy(seed, path)
    for ext in ("-wal", "-shm"):
        Path(str(path) + ext).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _insert_of(conn: sqlite3.Connection, table: str) -> tuple[str, list[str], tuple[object, ...]]:
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    row = conn.execute(f"SELECT * FROM {table} LIMIT 1").fetchone()
    return f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", cols, row


def one_round(seed: Path, work: Path, k: int, calls: int) -> tuple[float, float]:
    """(statements µs, commit µs) of process CPU per call, ``k`` calls per transaction."""
    conn = _fresh(seed, work)
    try:
        snap_sql, snap_cols, snap_row = _insert_of(conn, "ec2_snapshots")
        prov_sql, _cols, prov_row = _insert_of(conn, "ec2_provenance")
        token = snap_cols.index("client_token")
        statements = commit = 0.0
        for _ in range(calls // k):
            conn.execute("BEGIN IMMEDIATE")
            t0 = time.process_time()
            for _ in range(k):
                sid = f"snap-{os.urandom(8).hex()}"
                row = list(snap_row)
                row[0], row[token] = sid, None
                conn.execute(snap_sql, row)
                conn.execute(prov_sql, [sid, *prov_row[1:]])
            t1 = time.process_time()
            conn.execute("COMMIT")
            commit += time.process_time() - t1
            statements += t1 - t0
        done = (calls // k) * k
        return statements * 1e6 / done, commit * 1e6 / done
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1600)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-commit-batch-"))
    try:
        seed = _seed(tmp / "seed")
        results: dict[int, list[tuple[float, float]]] = {k: [] for k in BATCHES}
        for _ in range(args.rounds):
            for k in BATCHES:
                results[k].append(one_round(seed, tmp / "work.db", k, args.calls))
        print("calls per transaction   statements µs/call   commit µs/call   total µs/call")
        for k, rows in results.items():
            stmt = statistics.median(r[0] for r in rows)
            com = statistics.median(r[1] for r in rows)
            print(f"{k:>21}   {stmt:>18.1f}   {com:>14.1f}   {stmt + com:>13.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
