"""Attached-volume benchmark: NBD exports of an encrypted and an unencrypted volume on one
ebscrypt server, against nbdkit's ``file`` plugin serving a file on the same disk (the
ceiling of the protocol stack), driven by fio's ``nbd`` engine (libnbd).

    python bench/bench_nbd.py [--span-mib 96] [--seconds 4] [--rounds 2] [--cache-mib 128] [--before DIR]

Workloads (each ``--seconds`` long, time-based, over the first ``--span-mib`` of the export,
iodepth 16, ``end_fsync``): sequential 1 MiB writes and reads, random 4 KiB writes and
reads. The span is written first so reads read data. Rounds interleave the three targets
(encrypted, unencrypted, nbdkit) so machine drift hits them alike; the table shows the
median MiB/s and IOPS and the ratios encrypted/unencrypted (goal ≥ 0.9, R-ATTACH-3) and
unencrypted/nbdkit (goal ≥ 0.5). The server's RSS before and after shows memory staying
flat in the volume's size (the write-back cache is bounded).

The default span (96 MiB) fits the server's per-volume cache (``--nbd-cache-mib``, 128):
that is the working set an attached volume serves at memory speed. A span beyond the
cache (``--span-mib 512``) measures the block engine instead: each miss reads and
authenticates a whole 512 KiB block, each eviction seals and stores one.

``--before DIR`` runs a second server from another tree (e.g. ``git archive`` of a base
commit) beside this one, its two volumes interleaved with the others: before/after
figures from one run (columns ``before-enc``/``before-unenc``, ratio ``after/before`` of
the unencrypted volumes).

This module has no ``WORKLOADS``: ``bench/run.py`` skips it; run it directly. Needs fio
with the nbd engine (Debian's) and nbdkit; bash ci/install-nbd.sh installs nbdkit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, make_client, start_ebscrypt  # noqa: E402

ACCOUNT = "111111111111"
ZONE = "us-east-1a"
WORKLOADS = []  # run directly, not from bench/run.py
JOBS = [("seq write 1M", "write", "1M"), ("seq read 1M", "read", "1M"),
        ("rand write 4K", "randwrite", "4k"), ("rand read 4K", "randread", "4k")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc: the server's own cost,
    far less disturbed by other load on the machine than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio(uri: str, rw: str, bs: str, span_mib: int, seconds: float) -> tuple[float, float]:
    """(MiB/s, IOPS) of one fio job on ``uri``."""
    cmd = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--size={span_mib}M", "--iodepth=16", f"--runtime={seconds}", "--time_based",
           "--end_fsync=1", "--output-format=json", "--randrepeat=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"fio failed: {out.stderr[-2000:]}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    fio.last_ios = side["total_ios"]  # type: ignore[attr-defined]
    return side["bw_bytes"] / 2 ** 20, side["iops"]


def setup_volumes(url: str) -> tuple[str, str]:
    """An instance with an encrypted (sdf) and an unencrypted (sdg) 1 GiB volume attached."""
    ec2 = make_client(url, "ec2", ACCOUNT)
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1})
    image = ec2.register_image(Name="bench-nbd", RootDeviceName="/dev/xvda", Architecture="x86_64",
                               VirtualizationType="hvm",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig={"Delay": 1})
    iid = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": ZONE})["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    out = []
    for device, encrypted in (("/dev/sdf", True), ("/dev/sdg", False)):
        v = ec2.create_volume(AvailabilityZone=ZONE, Size=1, Encrypted=encrypted)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[v], WaiterConfig={"Delay": 1})
        ec2.attach_volume(VolumeId=v, InstanceId=iid, Device=device)
        ec2.get_waiter("volume_in_use").wait(VolumeIds=[v], WaiterConfig={"Delay": 1})
        out.append(v)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--span-mib", type=int, default=96)
    ap.add_argument("--cache-mib", type=int, default=128, help="the server's --nbd-cache-mib")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", action="append", default=[], help="workloads whose name contains this (repeatable)")
    ap.add_argument("--before", type=Path, default=None, help="another tree's root: its server runs beside, for before/after")
    args = ap.parse_args(argv)
    jobs = [j for j in JOBS if not args.only or any(o in j[0] for o in args.only)]
    for exe in ("fio", "nbdkit"):
        if shutil.which(exe) is None:
            log(f"{exe} is not installed (bash ci/install-nbd.sh): cannot run")
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-nbd-"))
    nbd_port, kit_port = free_port(), free_port()
    server = start_ebscrypt(work / "data", nbd_port=nbd_port, extra_args=["--nbd-cache-mib", str(args.cache_mib)])
    before = None
    if args.before is not None:
        before_port = free_port()
        before = start_ebscrypt(work / "data-before", nbd_port=before_port, name="ebscrypt-before",
                                extra_args=["--nbd-cache-mib", str(args.cache_mib)], tree=args.before.resolve())
    disk = work / "nbdkit-disk.img"
    with open(disk, "wb") as f:
        f.truncate(1024 ** 3)
    kit = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(kit_port), "file", f"file={disk}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        enc, plain = setup_volumes(server.url)
        time.sleep(0.5)
        targets = {"encrypted": f"nbd://127.0.0.1:{nbd_port}/{enc}",
                   "unencrypted": f"nbd://127.0.0.1:{nbd_port}/{plain}",
                   "nbdkit-file": f"nbd://127.0.0.1:{kit_port}/"}
        if before is not None:
            benc, bplain = setup_volumes(before.url)
            targets["before-enc"] = f"nbd://127.0.0.1:{before_port}/{benc}"
            targets["before-unenc"] = f"nbd://127.0.0.1:{before_port}/{bplain}"
        assert server.proc is not None
        rss_before = rss_mib(server.proc.pid)
        for name, uri in targets.items():  # fill the span so reads read data
            fio(uri, "write", "1M", args.span_mib, 1)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {t: {j[0]: [] for j in jobs} for t in targets}
        # CPU time per I/O of the process serving each target (its whole run: end_fsync included)
        pids = {"encrypted": server.proc.pid, "unencrypted": server.proc.pid, "nbdkit-file": kit.pid}
        if before is not None and before.proc is not None:
            pids["before-enc"] = pids["before-unenc"] = before.proc.pid
        cpu: dict[str, dict[str, list[float]]] = {t: {j[0]: [] for j in jobs} for t in targets}
        for rnd in range(args.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
            for label, rw, bs in jobs:
                for name in order:
                    used = cpu_seconds(pids[name])
                    results[name][label].append(fio(targets[name], rw, bs, args.span_mib, args.seconds))
                    used = cpu_seconds(pids[name]) - used
                    cpu[name][label].append(used * 1e6 / max(1, fio.last_ios))  # type: ignore[attr-defined]
                    log(f"round {rnd + 1} {label:14s} {name:12s} {results[name][label][-1][0]:8.1f} MiB/s "
                        f"{cpu[name][label][-1]:8.1f} CPU-us/io")
        rss_after = rss_mib(server.proc.pid)
        rss_before_tree = rss_mib(before.proc.pid) if before is not None and before.proc is not None else None
    finally:
        kit.terminate()
        kit.wait(10)
        server.stop()
        if before is not None:
            before.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, label: str) -> tuple[float, float]:
        runs = results[name][label]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    print(f"{'workload':16s} {'encrypted':>18s} {'unencrypted':>18s} {'nbdkit file':>18s} {'enc/unenc':>10s} {'unenc/kit':>10s}")
    summary: dict[str, Any] = {}
    for label, _rw, _bs in jobs:
        e, u, k = med("encrypted", label), med("unencrypted", label), med("nbdkit-file", label)
        r1, r2 = e[0] / u[0] if u[0] else float("nan"), u[0] / k[0] if k[0] else float("nan")
        cell = lambda v: f"{v[0]:7.1f}MiB/s {v[1]:6.0f}io"  # noqa: E731
        print(f"{label:16s} {cell(e):>18s} {cell(u):>18s} {cell(k):>18s} {r1:10.2f} {r2:10.2f}")
        summary[label] = {"encrypted": e, "unencrypted": u, "nbdkit": k, "enc_over_unenc": r1, "unenc_over_nbdkit": r2}
        if before is not None:
            be, bu = med("before-enc", label), med("before-unenc", label)
            r3 = u[0] / bu[0] if bu[0] else float("nan")
            print(f"{'  before':16s} {cell(be):>18s} {cell(bu):>18s} {'':>18s} "
                  f"{be[0] / bu[0] if bu[0] else float('nan'):10.2f} {bu[0] / k[0] if k[0] else float('nan'):10.2f}"
                  f"   after/before (unenc) {r3:.2f}")
            summary[label].update({"before_encrypted": be, "before_unencrypted": bu, "after_over_before": r3})
    print("server CPU time per I/O (µs, median; the serving process, all threads):")
    for label, _rw, _bs in jobs:
        print(f"  {label:16s} " + "  ".join(f"{name} {statistics.median(cpu[name][label]):.1f}" for name in targets))
        summary[label]["cpu_us_per_io"] = {name: statistics.median(cpu[name][label]) for name in targets}
    print(f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
          f"({args.span_mib} MiB span written per export, cache {args.cache_mib} MiB per volume)")
    if rss_before_tree is not None:
        print(f"before-tree server RSS after: {rss_before_tree:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"results": summary, "rss_mib": [rss_before, rss_after]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
