"""Scale-out: mixed control-plane load from 16 clients against 1, 2 and 3 ``ebscrypt serve``
processes behind HAProxy (PostgreSQL metadata, blocks in Ceph RGW or a shared directory,
one root key file), and against the SQLite single-process default; then EBS upload and
download MiB/s with blocks in RGW against the local directory.

    EBSCRYPT_TEST_PG_URL="$(bash ci/postgres.sh start)" EBSCRYPT_TEST_S3_URL="$(bash ci/ceph.sh start)" \\
        python3 bench/bench_scaleout.py --seconds 10

Load: ``--clients`` threads spread over 4 client processes (one Python process would be
GIL-bound before the servers are), each repeating CreateVolume, DescribeVolumes,
CreateSnapshot, DescribeSnapshots, KMS GenerateDataKey and Decrypt, and a paged
DescribeVolumes. Reported per setup: calls/s, p50/p95 latency, errors, and the CPU seconds
each component used during the run (ebscrypt processes, HAProxy, PostgreSQL, Ceph, the
load generator) — on a 2-core machine the cores are the limit, so the CPU split is where
the time goes. After each run every created volume and snapshot must be visible, in the
same state, from every process directly ("nothing lost").

Short and bounded: every run stops by itself after ``--seconds``; only loopback traffic.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import free_port  # noqa: E402

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
ZONE = "us-east-1a"


def _client(endpoint: str, service: str, account: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=account,
                        aws_secret_access_key="x",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=60))


# ----------------------------------------------------------------------------- servers


class Proc:
    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _wait_http(url: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def start_setup(kind: str, n: int, work: Path, pg_admin: str | None, s3_url: str | None) -> tuple[str, list[Proc], list[str]]:
    """(endpoint, processes, the servers' own URLs) for 'sqlite' or n processes on PostgreSQL."""
    work.mkdir(parents=True)
    env = dict(os.environ)
    if kind == "sqlite":
        port = free_port()
        p = Proc([sys.executable, "-m", "ebscrypt", "serve", "--port", str(port), "--data-dir", str(work / "d")],
                 work / "server.log")
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/_ebscrypt/health", p)
        return url, [p], [url]
    from tests.postgres.conftest import PgDatabases

    db_url = PgDatabases(pg_admin or "").create()
    root = work / "root.key"
    root.write_bytes(os.urandom(32))
    blocks: list[str]
    if s3_url:
        creds = work / "credentials"
        creds.write_text("[bench]\naws_access_key_id = EBSCRYPTTEST\naws_secret_access_key = ebscrypttestsecret\n")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
        blocks = ["--blocks", f"s3://ebscrypt-bench/{uuid.uuid4().hex[:8]}", "--s3-endpoint-url", s3_url,
                  "--s3-profile", "bench"]
    else:
        (work / "blocks").mkdir()
        blocks = ["--blocks", str(work / "blocks")]
    ports = [free_port() for _ in range(n)]
    hport = free_port()
    procs, urls = [], []
    for i, port in enumerate(ports):
        p = Proc([sys.executable, "-m", "ebscrypt", "serve", "--port", str(port), "--data-dir", str(work / f"h{i}"),
                  "--db", db_url, "--root-key-file", str(root), *blocks], work / f"server{i}.log", env)
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}")
    for url, p in zip(urls, procs):
        _wait_http(f"{url}/_ebscrypt/health", p)
    cfg = work / "haproxy.cfg"
    cfg.write_text("\n".join([
        "global", "    maxconn 2000", "defaults", "    mode http", "    timeout connect 2s",
        "    timeout client 120s", "    timeout server 120s", "frontend f", f"    bind 127.0.0.1:{hport}",
        "    default_backend b", "backend b", "    balance roundrobin",
        *[f"    server s{i} 127.0.0.1:{port}" for i, port in enumerate(ports)],
    ]) + "\n")
    hp = Proc([HAPROXY, "-db", "-f", str(cfg)], work / "haproxy.log")
    endpoint = f"http://127.0.0.1:{hport}"
    _wait_http(f"{endpoint}/_ebscrypt/health", hp)
    return endpoint, [*procs, hp], urls


# ----------------------------------------------------------------------------- load


def _worker(endpoint: str, threads: int, seconds: float, seed: int, out: Any, barrier: Any) -> None:
    """One client process: ``threads`` clients, each its own account (own boto3 clients)."""

    def one(t: int) -> dict[str, Any]:
        account = f"{200000000000 + seed * 100 + t:012d}"
        ec2, kms = _client(endpoint, "ec2", account), _client(endpoint, "kms", account)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        barrier.wait()  # every client ready: the timed window starts for all at once
        lat: list[float] = []
        errors = 0
        vols: list[str] = []
        snaps: list[str] = []
        deadline = time.monotonic() + seconds

        codes: dict[str, int] = {}

        def timed(fn: Any) -> Any:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                return fn()
            except Exception as exc:
                errors += 1
                code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
                codes[code] = codes.get(code, 0) + 1
                return None
            finally:
                lat.append(time.perf_counter() - t0)

        while time.monotonic() < deadline:
            v = timed(lambda: ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"])
            if v:
                vols.append(v)
                timed(lambda: ec2.describe_volumes(VolumeIds=[v]))
                s = timed(lambda: ec2.create_snapshot(VolumeId=v)["SnapshotId"])
                if s:
                    snaps.append(s)
                    timed(lambda: ec2.describe_snapshots(SnapshotIds=[s]))
            dk = timed(lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"))
            if dk:
                timed(lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"]))
            timed(lambda: ec2.describe_volumes(MaxResults=5))
        return {"lat": lat, "errors": errors, "codes": codes, "vols": vols, "snaps": snaps, "account": account}

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, range(threads)))
    cpu = os.times()
    results[0]["cpu"] = cpu.user + cpu.system  # this process's CPU, set-up included
    out.put(results)


def _cpu_seconds(match: Any) -> float:
    """utime+stime of every process whose command line ``match`` accepts (and its children
    that were reaped, cutime+cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if match(cmd, int(pid)):
            total += sum(int(x) for x in stat[11:15]) / tick
    return total


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _ours(pg_url: str, s3_url: str | None) -> tuple[set[int], str | None]:
    """The postmaster pid of the PostgreSQL at ``pg_url`` (its backends are its children)
    and the ceph.conf of the RGW at ``s3_url``: other servers on this shared machine are
    not counted."""
    port = pg_url.rsplit(":", 1)[-1].split("/")[0] if pg_url else ""
    postmasters = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"/postgres") and port.encode() in cmd:
            postmasters.add(int(pid))
    conf = None
    if s3_url:
        for path in Path("/tmp").glob("ebscrypt-ceph-*/ceph.conf"):
            if f"endpoint={s3_url.split('://')[1]}" in path.read_text():
                conf = str(path)
    return postmasters, conf


def _components(server_pids: set[int], postmasters: set[int] = frozenset(), ceph_conf: str | None = None) -> dict[str, Any]:
    return {
        "ebscrypt": lambda cmd, pid: (pid in server_pids or _ppid(pid) in server_pids) and "haproxy" not in cmd,
        "haproxy": lambda cmd, pid: pid in server_pids and "haproxy" in cmd,
        "postgres": lambda cmd, pid: pid in postmasters or _ppid(pid) in postmasters,
        "ceph": lambda cmd, pid: bool(ceph_conf) and ceph_conf in cmd,
    }


def run_load(endpoint: str, clients: int, seconds: float, server_pids: set[int],
             ours: tuple[set[int], str | None] = (set(), None)) -> dict[str, Any]:
    procs = 4 if clients >= 4 else 1
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    comps = _components(server_pids, *ours)
    per = clients // procs
    barrier = ctx.Barrier(per * procs + 1)
    workers = [ctx.Process(target=_worker, args=(endpoint, per, seconds, i, queue, barrier)) for i in range(procs)]
    for w in workers:
        w.start()
    barrier.wait(timeout=120)
    before = {name: _cpu_seconds(m) for name, m in comps.items()}
    t0 = time.monotonic()
    results = [r for _ in workers for r in queue.get(timeout=seconds + 300)]
    elapsed = time.monotonic() - t0
    after = {name: _cpu_seconds(m) for name, m in comps.items()}
    for w in workers:
        w.join(60)
    lat = sorted(x for r in results for x in r["lat"])
    return {
        "calls": len(lat),
        "calls_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat) if lat else 0,
        "p95_ms": 1000 * lat[int(len(lat) * 0.95)] if lat else 0,
        "errors": sum(r["errors"] for r in results),
        "error_codes": _merge([r["codes"] for r in results]),
        "elapsed_s": elapsed,
        "cpu_s": {**{name: round(after[name] - before[name], 1) for name in comps},
                  "load generator (incl. set-up)": round(sum(r.get("cpu", 0) for r in results), 1)},
        "results": results,
    }


def check_consistent(urls: list[str], results: list[dict[str, Any]]) -> str:
    """Every created volume/snapshot visible from every process, in one state."""
    views = []
    for url in urls:
        view: dict[str, str] = {}
        for r in results:
            ec2 = _client(url, "ec2", r["account"])
            for i in range(0, len(r["vols"]), 200):
                for v in ec2.describe_volumes(VolumeIds=r["vols"][i:i + 200])["Volumes"]:
                    view[v["VolumeId"]] = v["State"]
            for i in range(0, len(r["snaps"]), 200):
                for s in ec2.describe_snapshots(SnapshotIds=r["snaps"][i:i + 200])["Snapshots"]:
                    view[s["SnapshotId"]] = s["State"]
        views.append(view)
    created = {x for r in results for x in r["vols"] + r["snaps"]}
    for view in views:
        if set(view) != created:
            return f"MISMATCH: {len(created - set(view))} created resources missing in a view"
        if view != views[0]:
            return "MISMATCH: processes disagree on states"
    states: dict[str, int] = {}
    for s in views[0].values():
        states[s] = states.get(s, 0) + 1
    return f"consistent in {len(urls)} view(s): {len(created)} resources {states}"


# ----------------------------------------------------------------------------- data path


def data_rate(endpoint: str, mib: int) -> tuple[float, float]:
    """(upload MiB/s, download MiB/s) through the EBS direct APIs, 8 threads."""
    import base64
    import hashlib

    ebs = _client(endpoint, "ebs", "111111111111")
    block = 524288
    n = mib * 2
    blobs = [os.urandom(block) for _ in range(8)]
    sums = [base64.b64encode(hashlib.sha256(b).digest()).decode() for b in blobs]
    sid = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i, BlockData=blobs[i % 8],
                                                       DataLength=block, Checksum=sums[i % 8],
                                                       ChecksumAlgorithm="SHA256"), range(n)))
    up = mib / (time.perf_counter() - t0)
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=n)
    tokens = {}
    token = None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=sid, **({"NextToken": token} if token else {}))
        tokens.update({b["BlockIndex"]: b["BlockToken"] for b in page["Blocks"]})
        token = page.get("NextToken")
        if not token:
            break
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=i, BlockToken=tokens[i])["BlockData"].read(),
                      range(n)))
    down = mib / (time.perf_counter() - t0)
    return up, down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--setups", default="sqlite,1,2,3", help="comma list of sqlite and process counts")
    ap.add_argument("--data-mib", type=int, default=32, help="MiB for the upload/download comparison (0: skip)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pg = os.environ.get("EBSCRYPT_TEST_PG_URL", "")
    s3 = os.environ.get("EBSCRYPT_TEST_S3_URL", "")
    s3 = s3 if s3.startswith("http") else None
    report: dict[str, Any] = {"setups": {}, "data": {}}
    with tempfile.TemporaryDirectory(prefix="ebscrypt-bench-scaleout-") as tmp:
        work = Path(tmp)
        for setup in args.setups.split(","):
            if setup != "sqlite" and not pg.startswith("postgresql"):
                print(f"{setup}: skipped (EBSCRYPT_TEST_PG_URL is not a PostgreSQL URL)")
                continue
            n = 1 if setup == "sqlite" else int(setup)
            endpoint, procs, urls = start_setup(setup if setup == "sqlite" else "pg", n, work / f"s-{setup}", pg, s3)
            try:
                pids = {p.proc.pid for p in procs}
                res = run_load(endpoint, args.clients, args.seconds, pids, _ours(pg, s3))
                res["consistency"] = check_consistent(urls, res.pop("results"))
            finally:
                for p in procs:
                    p.stop()
            label = "SQLite, 1 process (direct)" if setup == "sqlite" else f"PostgreSQL, {n} process(es) + HAProxy"
            if setup != "sqlite" and os.environ.get("EBSCRYPT_PG_GLOBAL_WRITE_LOCK") == "1":
                label += " [global write lock]"
            report["setups"][label] = res
            print(f"{label:40s} {res['calls_per_s']:7.1f} calls/s  p50 {res['p50_ms']:6.1f} ms  "
                  f"p95 {res['p95_ms']:6.1f} ms  errors {res['errors']} {res['error_codes'] or ''}  cpu-s {res['cpu_s']}  {res['consistency']}",
                  flush=True)
        if args.data_mib:
            for label, extra in [("local dir", None), ("Ceph RGW", s3)]:
                if label == "Ceph RGW" and not extra:
                    print("Ceph RGW data rate: skipped (EBSCRYPT_TEST_S3_URL not set)")
                    continue
                d = work / f"data-{label.replace(' ', '')}"
                d.mkdir()
                env = dict(os.environ)
                cmd = [sys.executable, "-m", "ebscrypt", "serve", "--port", str(port := free_port()),
                       "--data-dir", str(d / "data")]
                if extra:
                    creds = d / "credentials"
                    creds.write_text("[bench]\naws_access_key_id = EBSCRYPTTEST\naws_secret_access_key = ebscrypttestsecret\n")
                    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
                    cmd += ["--blocks", f"s3://ebscrypt-bench/{uuid.uuid4().hex[:8]}", "--s3-endpoint-url", extra,
                            "--s3-profile", "bench"]
                p = Proc(cmd, d / "server.log", env)
                try:
                    _wait_http(f"http://127.0.0.1:{port}/_ebscrypt/health", p)
                    up, down = data_rate(f"http://127.0.0.1:{port}", args.data_mib)
                finally:
                    p.stop()
                report["data"][label] = {"upload_mib_s": up, "download_mib_s": down}
                print(f"EBS direct, blocks in {label:10s}: upload {up:6.1f} MiB/s  download {down:6.1f} MiB/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
