"""Attached-volume benchmark: NBD exports of an encrypted and an unencrypted volume on one
ebscrypt server, against nbdkit's ``file`` plugin serving a file on the same disk (the
ceiling of the protocol stack), driven by fio's ``nbd`` engine (libnbd).

    python bench/bench_nbd.py [--span-mib 96] [--seconds 4] [--rounds 2] [--cache-mib 128] [--before DIR]

Workloads (each ``--seconds`` long, time-based, over the first ``--span-mib`` of the export,
iodepth 16, ``end_fsync``): sequential 1 MiB writes and reads, random 4 KiB writes and
reads. The span is written whole first (one pass, not time-based) so reads read data. Rounds interleave the three targets
(encrypted, unencrypted, nbdkit) so machine drift hits them alike; the table shows the
median MiB/s and IOPS and the ratios encrypted/unencrypted (goal ≥ 0.9, R-ATTACH-3) and
unencrypted/nbdkit (goal ≥ 0.5). The server's RSS before and after shows memory staying
flat in the volume's size (the write-back cache is bounded).

The default span (96 MiB) fits the server's per-volume cache (``--nbd-cache-mib``, 128):
that is the working set an attached volume serves at memory speed. A span beyond the
cache (``--span-mib 512``) measures the block engine instead: a random miss reads and
authenticates the sectors it covers, a sequential one whole blocks; each eviction seals
and stores a block. ``--before DIR`` runs a second server from another checkout (e.g.
``git archive 0650d1b``) beside this one, interleaved: after/before ratios of one run.
Each target's server CPU time per I/O (from /proc; nbdkit's too) is shown: it is much
less disturbed by other load on the machine than the rates.

``--merge`` measures instead what a full write journal costs the I/O while it is merged:
random 4 KiB writes over the span, not time-based, ``--merge-mib`` of them (default
640: more than the server's 512 MiB journal, so at least one merge falls inside), and
fio's completion latency — median, p99, p99.9 and max — with the IOPS and server CPU per
write; rounds interleave the targets as above.

``--profile DIR`` samples the serving process of the ``--profile-target`` targets (default:
this tree's unencrypted volume) during each of their jobs: py-spy (busy threads, or with ``--gil``
the thread holding the GIL; collapsed stacks ``DIR/<target>-<job>-<round>.txt``, summarized as bench/profile.py does) and, with
``--perf``, ``perf record -g`` (kernel time included: ``DIR/….perf``, read with ``perf report``).

This module has no ``WORKLOADS``: ``bench/run.py`` skips it; run it directly. Needs fio
with the nbd engine (Debian's) and nbdkit; bash ci/install-nbd.sh installs nbdkit.
"""

from __future__ import annotations

import argparse
import json
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

from bench.common import cpu_seconds, free_port, make_client, start_ebscrypt  # noqa: E402

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
    return side["bw_bytes"] / 2 ** 20, side["iops"]


def fio_latency(uri: str, span_mib: int, io_mib: int) -> dict[str, float]:
    """Random 4 KiB writes over the span, ``io_mib`` of them: IOPS and completion latency
    (ms: median, p99, p99.9, max) of one fio job."""
    cmd = ["fio", "--name=m", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
           f"--size={span_mib}M", f"--io_size={io_mib}M", "--iodepth=16", "--end_fsync=1",
           "--output-format=json", "--randrepeat=0", "--percentile_list=50:99:99.9"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=io_mib * 4 + 600)
    if out.returncode != 0:
        raise RuntimeError(f"fio failed: {out.stderr[-2000:]}")
    side = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["write"]
    clat, pct = side["clat_ns"], side["clat_ns"].get("percentile", {})
    ms = lambda ns: ns / 1e6  # noqa: E731
    return {"iops": side["iops"], "p50_ms": ms(pct.get("50.000000", 0)), "p99_ms": ms(pct.get("99.000000", 0)),
            "p99.9_ms": ms(pct.get("99.900000", 0)), "max_ms": ms(clat["max"]),
            "seconds": side["runtime"] / 1000}


class Sampler:
    """py-spy (and perf) recording one process while a job runs (``--profile``)."""

    def __init__(self, out: Path, stem: str, pid: int, seconds: float, perf: bool, gil: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.collapsed = out / f"{stem}.txt"
        dur = str(int(seconds) + 1)
        self.procs = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", dur, "-r", "200", "-f", "raw",
                                        "--threads", "--nonblocking", *(["--gil"] if gil else []),
                                        "-o", str(self.collapsed)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        if perf:
            self.procs.append(subprocess.Popen(["perf", "record", "-g", "-q", "-p", str(pid), "-o",
                                                str(out / f"{stem}.perf"), "--", "sleep", dur],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def finish(self) -> None:
        for proc in self.procs:
            proc.wait(120)


def print_profiles(out: Path, top: int = 30) -> None:
    """Busy-sample shares per (target, job), all rounds together (bench/profile.py's summary;
    thread names dropped so the pool threads add up)."""
    from bench.profile import summarize
    groups: dict[str, list[Path]] = {}
    for f in sorted(out.glob("*.txt")):
        groups.setdefault(f.stem.rsplit("-", 1)[0], []).append(f)
    for stem, files in groups.items():
        merged = out / f"{stem}.all"
        lines = []
        for f in files:
            for line in f.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                frames = stack.split(";")
                if frames and frames[0].startswith(("thread ", "process ")):
                    frames = [fr for fr in frames if not fr.startswith(("thread ", "process "))]
                lines.append(";".join(frames) + " " + count)
        merged.write_text("\n".join(lines) + "\n")
        total, incl, self_ = summarize(merged, top)
        print(f"\n=== profile {stem}: {total} busy samples ({len(files)} rounds) -> {merged}")
        for name, n in incl:
            print(f"   {100 * n / max(total, 1):5.1f}%  {name}")
        print("  self:")
        for name, n in self_[:15]:
            print(f"   {100 * n / max(total, 1):5.1f}%  {name}")


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


def fill(uri: str, span_mib: int) -> None:
    """Write the whole span once (not time-based), so every read reads stored data."""
    cmd = ["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M",
           f"--size={span_mib}M", "--iodepth=16", "--end_fsync=1", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=span_mib + 300)
    if out.returncode != 0:
        raise RuntimeError(f"fio fill failed: {out.stderr[-2000:]}")


def merge_rounds(args: Any, targets: dict[str, str], pids: dict[str, int], owner: dict[str, str]) -> int:
    """--merge: write latency while a full journal is merged (see the module docstring)."""
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    for rnd in range(args.rounds):
        for name in (list(targets) if rnd % 2 == 0 else list(reversed(targets))):
            pid = pids.get(owner.get(name, "-"))
            c0 = cpu_seconds(pid) if pid else 0.0
            r = fio_latency(targets[name], args.span_mib, args.merge_mib)
            if pid:
                r["cpu_us"] = (cpu_seconds(pid) - c0) / (r["iops"] * r["seconds"]) * 1e6
            runs[name].append(r)
            log(f"round {rnd + 1} {name:18s} " + " ".join(f"{k} {v:.1f}" for k, v in r.items()))
    print(f"random 4 KiB writes, {args.merge_mib} MiB over a {args.span_mib} MiB span (medians of {args.rounds} rounds)")
    print(f"{'target':20s} {'IOPS':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99.9 ms':>9s} {'max ms':>9s} {'CPU us/io':>9s}")
    for name, rs in runs.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{name:20s} {m['iops']:8.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['p99.9_ms']:9.2f} "
              f"{m['max_ms']:9.1f} {m.get('cpu_us', float('nan')):9.1f}")
    for tag, pid in pids.items():
        print(f"server {tag or 'after'} RSS after: {rss_mib(pid):.0f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--span-mib", type=int, default=96)
    ap.add_argument("--cache-mib", type=int, default=128, help="the server's --nbd-cache-mib")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", action="append", default=[], help="workloads whose name contains this (repeatable)")
    ap.add_argument("--before", type=Path, default=None,
                    help="another checkout's root (git archive of a base commit): a second server of it "
                         "with its own two volumes, interleaved with the others (after/before ratios)")
    ap.add_argument("--merge", action="store_true",
                    help="write latency while the journal is merged (random 4 KiB writes, --merge-mib of them)")
    ap.add_argument("--merge-mib", type=int, default=640)
    ap.add_argument("--profile", type=Path, default=None, help="sample the servers during the jobs (see above)")
    ap.add_argument("--profile-target", action="append", default=[], help="targets --profile samples (repeatable)")
    ap.add_argument("--idle-rss", type=float, default=0.0,
                    help="also the servers' RSS this many seconds after the last job (memory kept when idle)")
    ap.add_argument("--gil", action="store_true",
                    help="with --profile: py-spy samples only the thread holding the GIL (Python's CPU, no waits)")
    ap.add_argument("--perf", action="store_true", help="with --profile: perf record -g as well")
    ap.add_argument("--warmup", action="store_true",
                    help="one unmeasured job per target and workload after the fills (steady state: "
                         "the first pass over a filled span writes fresh files)")
    ap.add_argument("--loop", default="asyncio", help="the servers' --loop (asyncio: the same for both trees)")
    args = ap.parse_args(argv)
    jobs = [j for j in JOBS if not args.only or any(o in j[0] for o in args.only)]
    for exe in ("fio", "nbdkit"):
        if shutil.which(exe) is None:
            log(f"{exe} is not installed (bash ci/install-nbd.sh): cannot run")
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-nbd-"))
    server_args = ["--nbd-cache-mib", str(args.cache_mib), "--loop", args.loop]
    servers: dict[str, Any] = {}
    nbd_ports: dict[str, int] = {}
    kit_port = free_port()
    disk = work / "nbdkit-disk.img"
    with open(disk, "wb") as f:
        f.truncate(1024 ** 3)
    kit = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(kit_port), "file", f"file={disk}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets: dict[str, str] = {}
    owner: dict[str, str] = {}  # target -> the server serving it (CPU time per I/O)
    try:
        for tag, tree in (("", None), ("before ", args.before)):
            if tag and tree is None:
                continue
            nbd_ports[tag] = free_port()
            servers[tag] = start_ebscrypt(work / f"data{len(servers)}", nbd_port=nbd_ports[tag], extra_args=server_args,
                                          tree=tree, name=f"ebscrypt {tag}".strip())
            enc, plain = setup_volumes(servers[tag].url)
            targets[f"{tag}encrypted"] = f"nbd://127.0.0.1:{nbd_ports[tag]}/{enc}"
            targets[f"{tag}unencrypted"] = f"nbd://127.0.0.1:{nbd_ports[tag]}/{plain}"
            owner[f"{tag}encrypted"] = owner[f"{tag}unencrypted"] = tag
        targets["nbdkit-file"] = f"nbd://127.0.0.1:{kit_port}/"
        time.sleep(0.5)
        pids = {tag: srv.proc.pid for tag, srv in servers.items()}
        pids["nbdkit"], owner["nbdkit-file"] = kit.pid, "nbdkit"  # (its CPU per I/O too: the floor)
        rss_before = {tag: rss_mib(pid) for tag, pid in pids.items()}
        rss_idle: dict[str, float] = {}
        for name, uri in targets.items():  # fill the span so reads read data
            fill(uri, args.span_mib)
        if args.merge:
            return merge_rounds(args, targets, pids, owner)
        for _label, rw, bs in jobs if args.warmup else []:
            # (unmeasured) A server's first pass over a filled span writes fresh files: its
            # superseded objects are recycled only once published (bench/README.md W8), so
            # whichever of its targets runs first pays for both (round 1: the encrypted one).
            for name in targets:
                fio(targets[name], rw, bs, args.span_mib, args.seconds)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {t: {j[0]: [] for j in jobs} for t in targets}
        cpu: dict[str, dict[str, list[float]]] = {t: {j[0]: [] for j in jobs} for t in targets}
        for rnd in range(args.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
            for label, rw, bs in jobs:
                for name in order:
                    pid = pids.get(owner.get(name, "-"))
                    c0 = cpu_seconds(pid) if pid else 0.0
                    sampler = None
                    if args.profile is not None and pid and name in (args.profile_target or ["unencrypted"]):
                        stem = f"{name}-{label}-{rnd + 1}".replace(" ", "_")
                        sampler = Sampler(args.profile, stem, pid, args.seconds, args.perf, args.gil)
                    r = fio(targets[name], rw, bs, args.span_mib, args.seconds)
                    if sampler is not None:
                        sampler.finish()
                    results[name][label].append(r)
                    if pid and r[1]:
                        cpu[name][label].append((cpu_seconds(pid) - c0) / (r[1] * args.seconds) * 1e6)
                    round_cpu = f" {cpu[name][label][-1]:8.0f} µs CPU/IO" if pid and r[1] else ""
                    log(f"round {rnd + 1} {label:14s} {name:18s} {r[0]:8.1f} MiB/s {r[1]:8.0f} IOPS{round_cpu}")
        rss_after = {tag: rss_mib(pid) for tag, pid in pids.items()}
        if args.idle_rss:
            time.sleep(args.idle_rss)  # what stays held once the clients are gone
            rss_idle = {tag: rss_mib(pid) for tag, pid in pids.items()}
    finally:
        kit.terminate()
        kit.wait(10)
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, label: str) -> tuple[float, float]:
        runs = results[name][label]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    names = list(targets)
    print(f"{'workload':16s} " + " ".join(f"{n:>18s}" for n in names))
    summary: dict[str, Any] = {}
    for label, _rw, _bs in jobs:
        cell = lambda v: f"{v[0]:7.1f}MiB/s {v[1]:6.0f}io"  # noqa: E731
        print(f"{label:16s} " + " ".join(f"{cell(med(n, label)):>18s}" for n in names))
        e, u, k = med("encrypted", label), med("unencrypted", label), med("nbdkit-file", label)
        row: dict[str, Any] = {n: med(n, label) for n in names}
        row.update(enc_over_unenc=ratio(e[0], u[0]), unenc_over_nbdkit=ratio(u[0], k[0]),
                   enc_over_nbdkit=ratio(e[0], k[0]))
        line = f"  enc/unenc {row['enc_over_unenc']:.2f}  unenc/kit {row['unenc_over_nbdkit']:.2f}"
        if args.before is not None:
            be, bu = med("before encrypted", label), med("before unencrypted", label)
            row.update(before_unenc_over_nbdkit=ratio(bu[0], k[0]), after_over_before_enc=ratio(e[0], be[0]),
                       after_over_before_unenc=ratio(u[0], bu[0]))
            line += (f"  | before: unenc/kit {row['before_unenc_over_nbdkit']:.2f}  after/before enc "
                     f"{row['after_over_before_enc']:.2f} unenc {row['after_over_before_unenc']:.2f}")
        cpus = {n: statistics.median(cpu[n][label]) for n in names if cpu[n][label]}
        row["server_cpu_us_per_io"] = cpus
        line += "  | server CPU µs/IO: " + ", ".join(f"{n} {v:.0f}" for n, v in cpus.items())
        print(line)
        summary[label] = row
    for tag in servers:
        print(f"server {tag or 'after'} RSS: {rss_before[tag]:.0f} MiB before, {rss_after[tag]:.0f} MiB after "
              f"({args.span_mib} MiB span written per export, cache {args.cache_mib} MiB per volume)"
              + (f", {rss_idle[tag]:.0f} MiB {args.idle_rss:.0f} s later" if tag in rss_idle else ""))
    if args.profile is not None:
        print_profiles(args.profile)
    if args.json:
        args.json.write_text(json.dumps({"results": summary, "rss_mib": {t: [rss_before[t], rss_after[t]] for t in servers}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
