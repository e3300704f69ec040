"""Describe at scale: the server's cost of DescribeSnapshots over 1,000 / 10,000 / 100,000
snapshots (raw replay, bench/README.md "Server cost"), ebscrypt alone.

    python bench/bench_describe_scale.py [--sizes 1000,10000,100000] [--calls 5] [--rounds 3]
    python bench/bench_describe_scale.py --base /tmp/base-tree   # before/after, interleaved

The snapshots are written straight into the metadata database of a stopped server (an
API-made 100,000 would take an hour here), one account, 1% under a second KMS key and
tagged Name=one-percent; then the server is started and, per size, replays:
- DescribeSnapshots(OwnerIds=self, MaxResults=1000) page by page, as the CLI pages: ms per
  1,000 items;
- DescribeSnapshots(OwnerIds=self, Filters kms-key-id=<the 1% key>): p50 ms;
- DescribeSnapshots(OwnerIds=self, Filters tag:Name=one-percent): p50 ms;
- the server's RSS after these (issue 15: <= 300 MiB after 100,000 resources).
``--base DIR`` runs another checkout (``git archive <commit> | tar -x -C DIR``) on its own
copy of the same rows, interleaved round by round: before and after in one run.
moto cannot be filled this way; its Describe figures are in bench/bench_ec2.py's run.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RawCall, replay, sign_requests, start_ebscrypt  # noqa: E402

ACCOUNT, REGION = "111111111111", "us-east-1"
KEY_A = "arn:aws:kms:us-east-1:111111111111:key/aaaaaaaa-0000-0000-0000-000000000000"
KEY_B = "arn:aws:kms:us-east-1:111111111111:key/bbbbbbbb-0000-0000-0000-000000000000"


def fill(data_dir: Path, start: int, stop: int) -> None:
    from sqlalchemy import create_engine, insert

    from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_tags

    # A bare engine, not storage.db.Database: that would upgrade the schema, and a base
    # tree's server (--base) must find the database at its own version.
    db = create_engine(f"sqlite:///{data_dir / 'metadata.db'}")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    try:
        rows, tags = [], []
        for i in range(start, stop):
            sid = f"snap-{i:017x}"
            rows.append(dict(id=sid, account=ACCOUNT, region=REGION, state="completed", state_message=None,
                             progress=100, volume_size=8, encrypted=True, kms_key_arn=KEY_B if i % 100 == 0 else KEY_A,
                             data_key_id=f"dk-{i}", data_key_blob=b"x", data_key_context="{}", volume_id="vol-ffffffff",
                             parent_id=None, source_snapshot_id=None, source_region=None, description="bench",
                             origin="direct", client_token=None, start_time=now, completion_time=now))
            if i % 100 == 0:
                tags.append(dict(resource_id=sid, key="Name", value="one-percent", resource_type="snapshot",
                                 account=ACCOUNT, region=REGION))
        with db.begin() as conn:
            for k in range(0, len(rows), 5000):
                conn.execute(insert(ec2_snapshots), rows[k:k + 5000])
            if tags:
                conn.execute(insert(ec2_tags), tags)
    finally:
        db.dispose()


def timed(url: str, rc: RawCall, calls: int) -> list[float]:
    return [replay(url, sign_requests(url, rc, 1), rc.ok) * 1000 for _ in range(calls)]


def listing_ms(port: int, url: str, size: int) -> float:
    """DescribeSnapshots(OwnerIds=self) paged by 1,000 as the CLI pages: ms per 1,000 items
    (each page on one kept-alive connection, signed untimed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    page_ms, items, token = 0.0, 0, None
    try:
        while True:
            params = dict(OwnerIds=["self"], MaxResults=1000, **({"NextToken": token} if token else {}))
            method, path, body, headers = sign_requests(url, RawCall("ec2", "describe_snapshots", params, ACCOUNT), 1)[0]
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            page_ms += (time.perf_counter() - t0) * 1000
            assert resp.status == 200, text[:300]
            items += text.count(b"<snapshotId>")
            if b"<nextToken>" not in text:
                break
            token = text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode()
    finally:
        conn.close()
    assert items == size, (items, size)
    return page_ms / (items / 1000)


def rss_mib(pid: int) -> float:
    """The resident set of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(data: Path, size: int, calls: int, tree: Path | None) -> tuple[float, float, float, float]:
    """(ms per 1,000 items of the listing, p50 ms of the kms-key-id filter, p50 ms of the
    tag:Name filter, the server's RSS in MiB after them) of one server run on ``data``."""
    srv = start_ebscrypt(data, tree=tree)
    try:
        timed(srv.url, RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], MaxResults=5), ACCOUNT), 2)
        per_1000 = listing_ms(srv.port, srv.url, size)
        kms = RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], Filters=[
            {"Name": "kms-key-id", "Values": [KEY_B]}]), ACCOUNT,
            ok=lambda b, n=size // 100: b.count(b"<snapshotId>") == n)
        tag = RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], Filters=[
            {"Name": "tag:Name", "Values": ["one-percent"]}]), ACCOUNT,
            ok=lambda b, n=size // 100: b.count(b"<snapshotId>") == n)
        p50k, p50t = statistics.median(timed(srv.url, kms, calls)), statistics.median(timed(srv.url, tag, calls))
        assert srv.proc is not None
        return per_1000, p50k, p50t, rss_mib(srv.proc.pid)
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="server runs per side and size (medians shown)")
    p.add_argument("--base", type=Path, help="another checkout (e.g. `git archive` of a base commit) run on the "
                   "same data, interleaved: before/after in one run")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-describe-scale-"))
    sides: list[tuple[str, Path | None]] = [("this", None)] + ([("base", args.base)] if args.base else [])
    have = 0
    print(f"{'snapshots':>10} {'side':>5} {'ms/1000 items':>14} {'p50 kms filter':>15} {'p50 tag filter':>15} "
          f"{'RSS MiB':>8}")
    try:
        for size in sizes:
            if size > have:
                for name, tree in sides:  # each side's own schema (a base may be older), same rows
                    start_ebscrypt(work / name, tree=tree).stop()  # the schema exists (server stopped)
                    fill(work / name, have, size)
                have = size
            runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _ in sides}
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else list(reversed(sides))  # interleaved: drift hits both
                for name, tree in order:
                    runs[name].append(measure(work / name, size, args.calls, tree))
            for name, _ in sides:
                med = [statistics.median(x[i] for x in runs[name]) for i in range(4)]
                print(f"{size:>10} {name:>5} {med[0]:>14.1f} {med[1]:>15.1f} {med[2]:>15.1f} {med[3]:>8.0f}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
