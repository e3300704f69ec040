"""The metadata transaction's own cost (issue 15, section M7): an empty read transaction,
an empty write transaction, a write of one provenance-sized insert (through SQLAlchemy
Core and, where the tree has it, on the driver via ``storage.prepared.PreparedWrite``),
and a read of one row by key — in process, CPU per operation, this tree beside another
checkout, each in its own child process, rounds interleaved.

    python bench/bench_transactions.py --baseline /tmp/before7 [--ops 3000] [--rounds 5]

The write rows include the WAL's group-commit fdatasync (one per transaction when alone),
so they are dominated by the disk on a loaded machine; the empty rows are not (a write
transaction that changed nothing needs no sync).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
ops = int(sys.argv[2])
from datetime import datetime, timezone
from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, String, Table, bindparam, insert, select
from ebscrypt.storage.db import Database
try:
    from ebscrypt.storage.prepared import PreparedWrite
except ImportError:
    PreparedWrite = None
meta = MetaData()
t = Table("bench_tx", meta, Column("id", String, primary_key=True), Column("account", String),
          Column("flag", Boolean), Column("n", Integer), Column("at", DateTime), Column("note", String))
db = Database(f"sqlite:///{tempfile.mkdtemp()}/m.db")
meta.create_all(db.engine)
INSERT = insert(t)
BY_ID = select(t).where(t.c.id == bindparam("id"))
fast = PreparedWrite(INSERT) if PreparedWrite is not None else None
now = datetime.now(timezone.utc)
seq = [0]
def row():
    seq[0] += 1
    return dict(id=f"r{seq[0]}", account="123456789012", flag=True, n=seq[0], at=now, note=None)
def empty_read():
    with db.read():
        pass
def empty_write():
    with db.begin():
        pass
def read_one():
    with db.read() as conn:
        conn.execute(BY_ID, {"id": "r1"}).first()
def write_core():
    with db.begin() as conn:
        conn.execute(INSERT, row())
def write_fast():
    with db.begin() as conn:
        (fast.run(conn, row()) if fast is not None else conn.execute(INSERT, row()))
out = {}
for name, fn, n in (("empty read", empty_read, ops), ("empty write", empty_write, ops),
                    ("insert, Core", write_core, ops // 10), ("insert, prepared", write_fast, ops // 10),
                    ("read one row, Core", read_one, ops)):
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    out[name] = (time.process_time() - start) * 1e6 / n
print(json.dumps(out))
'''


def run(tree: Path, ops: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(ops)], capture_output=True, text=True,
                          check=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parent.parent
    got: dict[str, dict[str, list[float]]] = {"before": {}, "this": {}}
    for _ in range(args.rounds):
        for side, tree in (("before", args.baseline), ("this", here)):
            for name, us in run(tree, args.ops).items():
                got[side].setdefault(name, []).append(us)
    print(f"{'operation':22} {'before µs':>10} {'this µs':>9} {'before/this':>11}  rounds before | this")
    for name in got["this"]:
        b, t = statistics.median(got["before"][name]), statistics.median(got["this"][name])
        rounds = " ".join(f"{x:.0f}" for x in got["before"][name]) + " | " + " ".join(f"{x:.0f}" for x in got["this"][name])
        print(f"{name:22} {b:10.1f} {t:9.1f} {b / t:11.2f}  {rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
