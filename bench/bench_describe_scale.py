"""Describe at scale: the server's cost of DescribeSnapshots over 1,000 / 10,000 / 100,000
snapshots (raw replay, bench/README.md "Server cost"), ebscrypt alone.

    python bench/bench_describe_scale.py [--sizes 1000,10000,100000] [--calls 5]

The snapshots are written straight into the metadata database of a stopped server (an
API-made 100,000 would take an hour here), one account, 1% under a second KMS key and
tagged Name=one-percent; then the server is started and, per size, replays:
- DescribeSnapshots(OwnerIds=self, MaxResults=1000) page by page, as the CLI pages: ms per
  1,000 items;
- DescribeSnapshots(OwnerIds=self, Filters kms-key-id=<the 1% key>): p50 ms;
- DescribeSnapshots(OwnerIds=self, Filters tag:Name=one-percent): p50 ms.
moto cannot be filled this way; its Describe figures are in bench/bench_ec2.py's run.
"""

from __future__ import annotations

import argparse
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
    from sqlalchemy import insert

    from ebscrypt.storage.db import Database
    from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_tags

    db = Database(f"sqlite:///{data_dir / 'metadata.db'}")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-describe-scale-"))
    data = work / "data"
    have = 0
    print(f"{'snapshots':>10} {'pages':>6} {'ms/1000 items':>14} {'p50 kms filter':>15} {'p50 tag filter':>15}")
    try:
        for size in sizes:
            if size > have:
                start_ebscrypt(data).stop()  # the schema exists (and the server is stopped)
                fill(data, have, size)
                have = size
            srv = start_ebscrypt(data)
            try:
                timed(srv.url, RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], MaxResults=5), ACCOUNT), 2)
                page_ms, items = 0.0, 0
                token = None
                while True:
                    params = dict(OwnerIds=["self"], MaxResults=1000, **({"NextToken": token} if token else {}))
                    rc = RawCall("ec2", "describe_snapshots", params, ACCOUNT)
                    reqs = sign_requests(srv.url, rc, 1)
                    import http.client
                    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
                    method, path, body, headers = reqs[0]
                    t0 = time.perf_counter()
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    text = resp.read()
                    page_ms += (time.perf_counter() - t0) * 1000
                    conn.close()
                    assert resp.status == 200, text[:300]
                    items += text.count(b"<snapshotId>")
                    if b"<nextToken>" not in text:
                        break
                    token = text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode()
                assert items == size, (items, size)
                kms = RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], Filters=[
                    {"Name": "kms-key-id", "Values": [KEY_B]}]), ACCOUNT,
                    ok=lambda b, n=size // 100: b.count(b"<snapshotId>") == n)
                tag = RawCall("ec2", "describe_snapshots", dict(OwnerIds=["self"], Filters=[
                    {"Name": "tag:Name", "Values": ["one-percent"]}]), ACCOUNT,
                    ok=lambda b, n=size // 100: b.count(b"<snapshotId>") == n)
                p50k = statistics.median(timed(srv.url, kms, args.calls))
                p50t = statistics.median(timed(srv.url, tag, args.calls))
                print(f"{size:>10} {size // 1000:>6} {page_ms / (items / 1000):>14.1f} {p50k:>15.1f} {p50t:>15.1f}",
                      flush=True)
            finally:
                srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
