"""Describe at scale: the server's cost of DescribeSnapshots, DescribeVolumes and
DescribeImages over 1,000 / 10,000 / 100,000 resources (raw replay, bench/README.md
"Server cost"), ebscrypt alone.

    python bench/bench_describe_scale.py [--sizes 1000,10000,100000] [--calls 5] [--rounds 3]
                                         [--kinds snapshots,volumes,images]
    python bench/bench_describe_scale.py --base /tmp/base-tree   # before/after, interleaved

The resources are written straight into the metadata database of a stopped server (an
API-made 100,000 would take an hour here), one account, 1% under a second KMS key (images:
named ``one-percent-N``) and tagged Name=one-percent; then the server is started and, per
kind and size, replays:
- Describe*(owner self, MaxResults=1000) page by page, as the CLI pages (DescribeVolumes
  clamps to 500 a page): ms per 1,000 items, wall and the server's CPU (utime + stime
  from /proc: much less disturbed by other load on the machine than wall time);
- Describe*(owner self, Filters kms-key-id=<the 1% key>; images: name=one-percent-*): p50 ms;
- Describe*(owner self, Filters tag:Name=one-percent): p50 ms; and the server's mean CPU
  per filtered call (both filters);
- the server's RSS after these (issue 15: <= 300 MiB after 100,000 resources).
``--base DIR`` runs another checkout (``git archive <commit> | tar -x -C DIR``) on its own
copy of the same rows, interleaved round by round: before and after in one run.
moto cannot be filled this way; its Describe figures are in bench/run.py's run (DescribeVolumes).
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RawCall, cpu_seconds, replay, sign_requests, start_ebscrypt  # noqa: E402

ACCOUNT, REGION = "111111111111", "us-east-1"
KEY_A = "arn:aws:kms:us-east-1:111111111111:key/aaaaaaaa-0000-0000-0000-000000000000"
KEY_B = "arn:aws:kms:us-east-1:111111111111:key/bbbbbbbb-0000-0000-0000-000000000000"


def fill(data_dir: Path, kind: str, start: int, stop: int) -> None:
    import json

    from sqlalchemy import create_engine, insert

    from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_tags, ec2_volumes
    from ebscrypt.storage.tables.ec2_images import ec2_images

    # A bare engine, not storage.db.Database: that would upgrade the schema, and a base
    # tree's server (--base) must find the database at its own version.
    db = create_engine(f"sqlite:///{data_dir / 'metadata.db'}")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    table: Any = {"snapshots": ec2_snapshots, "volumes": ec2_volumes, "images": ec2_images}[kind]
    try:
        rows, tags = [], []
        for i in range(start, stop):
            one = i % 100 == 0
            start_time = now + timedelta(seconds=i, microseconds=i % 997 * 1000)  # distinct times, as real ones
            if kind == "snapshots":
                rid = f"snap-{i:017x}"
                rows.append(dict(id=rid, account=ACCOUNT, region=REGION, state="completed", state_message=None,
                                 progress=100, volume_size=8, encrypted=True, kms_key_arn=KEY_B if one else KEY_A,
                                 data_key_id=f"dk-{i}", data_key_blob=b"x", data_key_context="{}",
                                 volume_id="vol-ffffffff", parent_id=None, source_snapshot_id=None,
                                 source_region=None, description="bench", origin="direct", client_token=None,
                                 start_time=start_time, completion_time=start_time + timedelta(seconds=30)))
            elif kind == "volumes":
                rid = f"vol-{i:017x}"
                rows.append(dict(id=rid, account=ACCOUNT, region=REGION, availability_zone="us-east-1a", size=8,
                                 volume_type="gp3", iops=3000, throughput=125, multi_attach=False, state="available",
                                 state_message=None, encrypted=True, kms_key_arn=KEY_B if one else KEY_A,
                                 data_key_id=f"dk-{i}", data_key_blob=b"x", data_key_context="{}", snapshot_id=None,
                                 client_token=None, auto_enable_io=False, create_time=start_time))
            else:
                rid = f"ami-{i:017x}"
                mapping = {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": f"snap-{i:017x}", "VolumeSize": 8,
                                                              "DeleteOnTermination": True, "VolumeType": "gp3",
                                                              "Encrypted": True}}
                rows.append(dict(image_id=rid, account=ACCOUNT, region=REGION,
                                 name=f"one-percent-{i}" if one else f"image-{i}", description="bench",
                                 state="available", state_reason_code=None, state_reason_message=None,
                                 architecture="x86_64", virtualization_type="hvm", root_device_name="/dev/xvda",
                                 root_device_type="ebs", ena_support=True, sriov_net_support=None, boot_mode=None,
                                 tpm_support=None, imds_support=None, image_location=None, kernel_id=None,
                                 ramdisk_id=None, platform=None, public=False, mappings=json.dumps([mapping]),
                                 source_image_id=None, source_region=None, source_instance_id=None,
                                 client_token=None, created_at=start_time))
            if one:
                tags.append(dict(resource_id=rid, key="Name", value="one-percent", resource_type=kind[:-1],
                                 account=ACCOUNT, region=REGION))
        with db.begin() as conn:
            for k in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[k:k + 5000])
            if tags:
                conn.execute(insert(ec2_tags), tags)
    finally:
        db.dispose()


# Per kind: (client method, item tag, owner-self params, the second filter).
KINDS: dict[str, tuple[str, bytes, dict[str, Any], dict[str, Any]]] = {
    "snapshots": ("describe_snapshots", b"<snapshotId>", {"OwnerIds": ["self"]},
                  {"Name": "kms-key-id", "Values": [KEY_B]}),
    "volumes": ("describe_volumes", b"<volumeId>", {}, {"Name": "kms-key-id", "Values": [KEY_B]}),
    "images": ("describe_images", b"<imageId>", {"Owners": ["self"]},
               {"Name": "name", "Values": ["one-percent-*"]}),
}


def timed(url: str, rc: RawCall, calls: int) -> list[float]:
    return [replay(url, sign_requests(url, rc, 1), rc.ok) * 1000 for _ in range(calls)]


def listing_ms(srv: Any, kind: str, size: int) -> tuple[float, float]:
    """Describe*(owner self) paged by 1,000 as the CLI pages, listed whole once or more:
    (wall ms, server CPU ms) per 1,000 items (each page on one kept-alive connection,
    signed untimed)."""
    method_name, item_tag, owner, _ = KINDS[kind]
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    page_ms, cpu_ms, items, token = 0.0, 0.0, 0, None
    listings = max(1, 10_000 // size)  # /proc's CPU times tick by 10 ms: list >= 10,000 items
    try:
        while True:
            if token is None and items >= listings * size:
                break
            params = dict(owner, MaxResults=1000, **({"NextToken": token} if token else {}))
            method, path, body, headers = sign_requests(srv.url, RawCall("ec2", method_name, params, ACCOUNT), 1)[0]
            c0, t0 = cpu_seconds(srv.proc.pid), time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            page_ms += (time.perf_counter() - t0) * 1000
            cpu_ms += (cpu_seconds(srv.proc.pid) - c0) * 1000
            assert resp.status == 200, text[:300]
            items += text.count(item_tag)
            token = (text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode()
                     if b"<nextToken>" in text else None)
    finally:
        conn.close()
    assert items == listings * size, (items, size)
    return page_ms / (items / 1000), cpu_ms / (items / 1000)


def rss_mib(pid: int) -> float:
    """The resident set of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Figures = tuple[float, float, float, float, float, float]


def measure(data: Path, kind: str, size: int, calls: int, tree: Path | None) -> Figures:
    """(wall ms and server CPU ms per 1,000 items of the listing, p50 ms of the second
    filter, p50 ms of the tag:Name filter, the server's mean CPU ms per filtered call, the
    server's RSS in MiB after them) of one server run on ``data``."""
    method_name, item_tag, owner, second = KINDS[kind]
    srv = start_ebscrypt(data, tree=tree)
    try:
        assert srv.proc is not None
        timed(srv.url, RawCall("ec2", method_name, dict(owner, MaxResults=5), ACCOUNT), 2)
        per_1000, cpu_1000 = listing_ms(srv, kind, size)
        ok = (lambda b, n=size // 100: b.count(item_tag) == n)
        filtered = RawCall("ec2", method_name, dict(owner, Filters=[second]), ACCOUNT, ok=ok)
        tag = RawCall("ec2", method_name, dict(owner, Filters=[{"Name": "tag:Name", "Values": ["one-percent"]}]),
                      ACCOUNT, ok=ok)
        c0 = cpu_seconds(srv.proc.pid)
        p50k, p50t = statistics.median(timed(srv.url, filtered, calls)), statistics.median(timed(srv.url, tag, calls))
        cpu_filtered = (cpu_seconds(srv.proc.pid) - c0) * 1000 / (2 * calls)
        return per_1000, cpu_1000, p50k, p50t, cpu_filtered, rss_mib(srv.proc.pid)
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--kinds", default="snapshots,volumes,images")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="server runs per side and size (medians shown)")
    p.add_argument("--base", type=Path, help="another checkout (e.g. `git archive` of a base commit) run on the "
                   "same data, interleaved: before/after in one run")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-describe-scale-"))
    sides: list[tuple[str, Path | None]] = [("this", None)] + ([("base", args.base)] if args.base else [])
    print(f"{'kind':>9} {'n':>7} {'side':>5} {'ms/1000 items':>14} {'cpu ms/1000':>12} {'p50 filter':>11} "
          f"{'p50 tag':>8} {'cpu ms/filtered':>16} {'RSS MiB':>8}")
    try:
        for kind in args.kinds.split(","):
            have = 0
            for size in sizes:
                if size > have:
                    for name, tree in sides:  # each side's own schema (a base may be older), same rows
                        if have == 0:
                            start_ebscrypt(work / kind / name, tree=tree).stop()  # the schema (server stopped)
                        fill(work / kind / name, kind, have, size)
                    have = size
                runs: dict[str, list[Figures]] = {name: [] for name, _ in sides}
                for r in range(args.rounds):
                    order = sides if r % 2 == 0 else list(reversed(sides))  # interleaved: drift hits both
                    for name, tree in order:
                        runs[name].append(measure(work / kind / name, kind, size, args.calls, tree))
                for name, _ in sides:
                    med = [statistics.median(x[i] for x in runs[name]) for i in range(6)]
                    print(f"{kind:>9} {size:>7} {name:>5} {med[0]:>14.1f} {med[1]:>12.1f} {med[2]:>11.1f} "
                          f"{med[3]:>8.1f} {med[4]:>16.1f} {med[5]:>8.0f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
