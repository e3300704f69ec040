"""Shared benchmark harness: ebscrypt and moto's server side by side, in one run.

A benchmark module (``bench/bench_<area>.py``) declares ``WORKLOADS``, a list of
:class:`Workload`, and ends with::

    if __name__ == "__main__":
        raise SystemExit(main(WORKLOADS))

Each workload is one AWS call (``call(ctx)``), optionally prepared once per side by
``setup(ctx)``. The harness starts ``python -m ebscrypt serve`` (temporary data dir) and
moto's server on free loopback ports, waits until both answer, then times the workload
in interleaved rounds — ebscrypt, moto, ebscrypt, moto, … — so that machine drift (CPU
frequency, other load) hits both sides alike. It prints calls/s per side (median over
rounds) and the ratio ebscrypt/moto (> 1 means ebscrypt is faster).

``ctx.client(service, account=..., region=...)`` gives one cached boto3 client per
(side, service, account, region); ``ctx.state`` is a dict for what ``setup`` prepares
(ids of created resources…), one per side, kept for the whole run (later workloads see
what earlier setups stored); ``ctx.side`` is ``"ebscrypt"`` or ``"moto"``.

Nothing here names a tool outside this repository except moto, the comparison target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"
SIDES = ("ebscrypt", "moto")


# ----------------------------------------------------------------------------- servers


def _stat_cpu(stat: Path) -> float:
    """utime + stime (seconds) of a /proc ``stat`` file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc: the server's own cost,
    far less disturbed by other load on the machine than wall time."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime (seconds) of each thread of a process, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _stat_cpu(Path(f"/proc/{pid}/task/{tid}/stat"))
        except OSError:  # a thread that ended meanwhile
            continue
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A child server process on a loopback port; ``stop()`` ends only this process."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str,
                 env: dict[str, str] | None = None, workdir: Path | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, timeout: float = 60.0) -> "Server":
        log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-log-"))
        self.log_path = log_dir / "server.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # it answered HTTP: it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class External:
    """An already running endpoint given with ``--ebscrypt-url`` / ``--moto-url``."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url.rstrip("/")

    def stop(self) -> None:
        pass


def start_ebscrypt(data_dir: Path, port: int | None = None, extra_args: Sequence[str] = (),
                   extra_path: Sequence[str] = (), name: str = "ebscrypt", nbd_port: int = 0,
                   tree: Path | None = None) -> Server:
    """``extra_args`` go to ``ebscrypt serve`` (``--http h11``…); ``extra_path`` is put on the
    server's PYTHONPATH after the repository (e.g. a ``pip install --target`` directory
    holding httptools/uvloop, to compare without installing them for everyone).
    ``nbd_port``: 0 (default) runs no NBD server, so benchmarks never take port 10809.
    ``tree``: another checkout's root (e.g. ``git archive`` of a base commit) to run instead
    of this repository's code, for before/after figures in one run."""
    port = port or free_port()
    root = tree or REPO_ROOT
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *extra_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "ebscrypt", "serve", "--port", str(port),
           "--data-dir", str(data_dir), "--log-level", "warning", "--nbd-port", str(nbd_port), *extra_args]
    return Server(name, cmd, port, "/_ebscrypt/health", env=env, workdir=root).start()


def start_null(port: int | None = None, get_bytes: int = 0, ebs: bool = False, canned: bool = False) -> Server:
    """bench/null_server.py: accepts and drops requests (the client + HTTP ceiling);
    ``ebs``: answers the EBS direct APIs well enough for the upload/download CLI;
    ``canned``: answers AWS operations with the answers set by ``PUT /_null/canned``."""
    port = port or free_port()
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "null_server.py"), "--port", str(port),
           "--get-bytes", str(get_bytes), *(["--ebs"] if ebs else []), *(["--canned"] if canned else [])]
    return Server("null", cmd, port, "/", workdir=REPO_ROOT).start()


def moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def start_moto(port: int | None = None) -> Server:
    port = port or free_port()
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    cmd += ["-H", "127.0.0.1", "-p", str(port)]
    return Server("moto", cmd, port, "/moto-api/").start()


# ----------------------------------------------------------------------------- clients


def make_client(endpoint: str, service: str, account: str = DEFAULT_ACCOUNT,
                region: str = DEFAULT_REGION) -> Any:
    """A boto3 client; its 12-digit access key acts as ``account`` on ebscrypt (dev auth)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=account,
        aws_secret_access_key="bench-secret",
        config=Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=300),
    )


@dataclass
class Ctx:
    """What a workload sees of one side."""

    side: str
    endpoint: str
    state: dict[str, Any] = field(default_factory=dict)
    _clients: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def client(self, service: str, account: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> Any:
        key = (service, account, region)
        if key not in self._clients:
            self._clients[key] = make_client(self.endpoint, service, account, region)
        return self._clients[key]


@dataclass
class Workload:
    name: str
    call: Callable[[Ctx], Any]
    setup: Callable[[Ctx], Any] | None = None
    # Sides this workload can run on (e.g. an EBS direct API moto lacks: ("ebscrypt",)).
    sides: tuple[str, ...] = SIDES
    # Count of AWS calls one ``call`` makes, so the figure stays calls/s.
    calls_per_iteration: int = 1
    # The same call as a raw request for the replay mode: ``raw(ctx) -> RawCall``. botocore
    # serializes and signs it (untimed), a pooled raw HTTP client replays it: the server's
    # own cost per call, without botocore's serializing and parsing (see ``replay``).
    # A list of RawCalls is one iteration of several calls (a GenerateDataKey+Decrypt pair).
    raw: "Callable[[Ctx], RawCall | list[RawCall]] | None" = None
    # Also replay over --clients connections (mutating calls, KMS: group commit, scaling).
    many_clients: bool = False


@dataclass
class RawCall:
    """One AWS call for the replay mode: ``client(service, account).<method>(**params)``."""

    service: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    account: str = DEFAULT_ACCOUNT
    # A check of the replayed answer (status 200 is always checked): ``ok(body) -> bool``.
    ok: Callable[[bytes], bool] | None = None


# ----------------------------------------------------------------------------- raw replay


class _Captured(Exception):
    """Raised from botocore's before-send hook: the request is signed, not sent."""


def sign_requests(endpoint: str, rc: RawCall, n: int) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """``n`` requests (method, path?query, body, headers) as botocore would send them.

    Each is serialized and signed separately, so an idempotency token botocore fills in
    (CreateVolume's ClientToken…) differs from one to the next: a replay makes a new
    resource, as a new call would.
    """
    from urllib.parse import urlsplit

    client = make_client(endpoint, rc.service, rc.account)
    out: list[tuple[str, str, bytes, dict[str, str]]] = []

    def grab(request: Any, **_: Any) -> None:
        body = request.body
        if body is None:
            body = b""
        elif hasattr(body, "read"):
            body = body.read()
        elif isinstance(body, str):
            body = body.encode()
        u = urlsplit(request.url)
        out.append((request.method, u.path + (f"?{u.query}" if u.query else ""), bytes(body),
                    {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}))
        raise _Captured

    client.meta.events.register_first("before-send", grab)
    for _ in range(n):
        try:
            getattr(client, rc.method)(**rc.params)
        except _Captured:
            pass
    client.close()
    return out


def replay(endpoint: str, requests: Sequence[tuple[str, str, bytes, dict[str, str]]],
           ok: Callable[[bytes], bool] | None = None, clients: int = 1) -> float:
    """Seconds spent replaying ``requests`` over ``clients`` keep-alive connections
    (``http.client``; each thread sends its share in turn). Raises on any answer but a
    2xx (or one ``ok`` refuses): a replay that failed must not read as fast."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    u = urlsplit(endpoint)
    shares = [list(requests[i::clients]) for i in range(clients)]
    conns = [http.client.HTTPConnection(u.hostname, u.port, timeout=300) for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def run(conn: Any, share: list[tuple[str, str, bytes, dict[str, str]]]) -> None:
        barrier.wait()
        for method, path, body, headers in share:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if not 200 <= resp.status < 300 or (ok is not None and not ok(data)):
                errors.append(f"{resp.status}: {data[:300]!r}")
                return

    threads = [threading.Thread(target=run, args=(c, s)) for c, s in zip(conns, shares)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    if errors:
        raise RuntimeError(f"replay failed: {errors[0]}")
    return elapsed


def time_raw_round(ctx: Ctx, wl: Workload, seconds: float, min_calls: int, clients: int = 1) -> float:
    """Server calls/s of the replay of ``wl.raw`` for at least ``seconds`` of replay and
    ``min_calls`` calls; signing happens in untimed batches between replays."""
    assert wl.raw is not None
    got = wl.raw(ctx)
    rcs = got if isinstance(got, list) else [got]
    batch = max(min_calls, 4 * clients)
    n, spent = 0, 0.0
    while spent < seconds or n < min_calls:
        # Every RawCall of the iteration in turn, so a pair's two calls interleave.
        signed = [sign_requests(ctx.endpoint, rc, batch) for rc in rcs]
        reqs = [r for group in zip(*signed) for r in group]
        oks = [rc.ok for rc in rcs if rc.ok is not None]
        spent += replay(ctx.endpoint, reqs, (lambda b: all(ok(b) for ok in oks)) if oks and len(rcs) == 1
                        else None, clients)
        n += batch
        # Grow batches toward ~0.5 s of replay so the connection set-up weighs little.
        batch = min(2000, max(batch, int(n / spent * 0.5)))
    return n / spent  # iterations/s (pairs/s for a pair)


# ----------------------------------------------------------------------------- timing


def time_round(ctx: Ctx, wl: Workload, seconds: float, min_calls: int) -> float:
    """Run ``wl.call`` for at least ``seconds`` and ``min_calls`` iterations; calls/s."""
    n = 0
    start = time.perf_counter()
    while True:
        wl.call(ctx)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= min_calls:
            return n * wl.calls_per_iteration / elapsed


@dataclass
class Result:
    workload: str
    rounds: dict[str, list[float]]
    # Replay mode: server calls/s per round, per side (one connection), and with --clients.
    raw_rounds: dict[str, list[float]] = field(default_factory=dict)
    raw_many_rounds: dict[str, list[float]] = field(default_factory=dict)
    clients: int = 1

    def median(self, side: str) -> float | None:
        r = self.rounds.get(side)
        return statistics.median(r) if r else None

    @property
    def ratio(self) -> float | None:
        a, b = self.median("ebscrypt"), self.median("moto")
        return a / b if a and b else None

    def raw_ms(self, side: str) -> float | None:
        """The server's cost per call in ms (median round of the one-connection replay)."""
        r = self.raw_rounds.get(side)
        return 1000.0 / statistics.median(r) if r else None

    def raw_many(self, side: str) -> float | None:
        r = self.raw_many_rounds.get(side)
        return statistics.median(r) if r else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "ebscrypt_calls_per_s": self.median("ebscrypt"),
            "moto_calls_per_s": self.median("moto"),
            "ratio_ebscrypt_over_moto": self.ratio,
            "rounds": self.rounds,
            "ebscrypt_server_ms_per_call": self.raw_ms("ebscrypt"),
            "moto_server_ms_per_call": self.raw_ms("moto"),
            "raw_rounds": self.raw_rounds,
            "clients": self.clients,
            "ebscrypt_raw_calls_per_s_clients": self.raw_many("ebscrypt"),
            "moto_raw_calls_per_s_clients": self.raw_many("moto"),
            "raw_many_rounds": self.raw_many_rounds,
        }


class SideError(Exception):
    """A workload failed on one side; says which."""


def run_workload(wl: Workload, endpoints: dict[str, str], rounds: int, seconds: float,
                 min_calls: int, warmup: int, ctxs: dict[str, Ctx] | None = None, *,
                 raw: bool = True, clients: int = 1, boto: bool = True) -> Result:
    """Time ``wl``. ``ctxs`` (one per side) may be shared by the workloads of a run, so
    that ``ctx.state`` and the cached clients carry over from one workload to the next."""
    sides = [s for s in SIDES if s in wl.sides and s in endpoints]
    ctxs = ctxs if ctxs is not None else {s: Ctx(s, endpoints[s]) for s in sides}
    for s in sides:
        try:
            if wl.setup is not None:
                wl.setup(ctxs[s])
            for _ in range(warmup):
                wl.call(ctxs[s])
        except Exception as exc:
            raise SideError(f"on {s}: {type(exc).__name__}: {exc}") from exc
    out: dict[str, list[float]] = {s: [] for s in sides}
    raw_out: dict[str, list[float]] = {s: [] for s in sides} if raw and wl.raw else {}
    many_out: dict[str, list[float]] = ({s: [] for s in sides} if raw and wl.raw and wl.many_clients and clients > 1
                                        else {})
    for i in range(rounds):
        # Alternate which side goes first, so neither always runs right after the other.
        order = sides if i % 2 == 0 else list(reversed(sides))
        for s in order:
            try:
                if boto:
                    out[s].append(time_round(ctxs[s], wl, seconds, min_calls))
                if raw_out:  # a few calls suffice: each is timed without the client's parsing
                    raw_out[s].append(time_raw_round(ctxs[s], wl, seconds, min(min_calls, 5)))
                if many_out:
                    many_out[s].append(time_raw_round(ctxs[s], wl, seconds, min_calls, clients))
            except Exception as exc:
                raise SideError(f"on {s}: {type(exc).__name__}: {exc}") from exc
    return Result(wl.name, out, raw_out, many_out, clients)


def print_rate_rounds(results: dict[tuple[str, str, int], list[tuple[float, float]]], note: str = "") -> None:
    """The table of a server-side rate bench: per (workload, server, connections) the median
    rate and server CPU ms per iteration of its rounds, then every round's pair."""
    print(f"{'workload':12} {'server':10} {'conns':>5} {'it/s':>7} {'srv CPU ms/it':>14} {'it per srv CPU-s':>17}"
          + note)
    for (wl, name, conns), rounds in results.items():
        rate = statistics.median(r[0] for r in rounds)
        cpu = statistics.median(r[1] for r in rounds)
        print(f"{wl:12} {name:10} {conns:5d} {rate:7.0f} {cpu:14.3f} {1000 / cpu:17.0f}   "
              + " ".join(f"{r[0]:.0f}/{r[1]:.2f}" for r in rounds), flush=True)


def _fmt(v: float | None, spec: str = "10.1f") -> str:
    return format(v, spec) if v is not None else f"{'n/a':>10}"


def print_header(width: int = 34) -> None:
    print(f"{'workload':<{width}} {'ebscrypt/s':>10} {'moto/s':>10} {'ratio':>7}  "
          f"{'srv ms eb':>9} {'srv ms mo':>9} {'mo/eb':>6}  {'N-cl eb/s':>9} {'N-cl mo/s':>9}  "
          "rounds(ebscrypt | moto)")


def print_result(r: Result, width: int = 34) -> None:
    ratio = f"{r.ratio:7.2f}" if r.ratio is not None else f"{'n/a':>7}"
    detail = " | ".join(
        " ".join(f"{v:.0f}" for v in r.rounds.get(s, [])) or "-" for s in SIDES
    )
    ms_e, ms_m = r.raw_ms("ebscrypt"), r.raw_ms("moto")
    raw_ratio = f"{ms_m / ms_e:6.2f}" if ms_e and ms_m else f"{'n/a':>6}"

    def cell(v: float | None, spec: str) -> str:
        return format(v, spec) if v else f"{'-':>{spec.split('.')[0]}}"

    print(f"{r.workload:<{width}} {_fmt(r.median('ebscrypt'))} {_fmt(r.median('moto'))} {ratio}  "
          f"{cell(ms_e, '9.2f')} {cell(ms_m, '9.2f')} {raw_ratio}  "
          f"{cell(r.raw_many('ebscrypt'), '9.0f')} {cell(r.raw_many('moto'), '9.0f')}  {detail}",
          flush=True)


# ----------------------------------------------------------------------------- CLI


def parser(description: str = "ebscrypt vs moto benchmark") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per round (default 1)")
    p.add_argument("--min-calls", type=int, default=20, help="minimum calls per round (default 20)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per side first (default 10)")
    p.add_argument("--only", action="append", default=[], help="run workloads whose name contains this")
    p.add_argument("--no-moto", action="store_true", help="time ebscrypt alone")
    p.add_argument("--ebscrypt-url", help="use this running ebscrypt instead of starting one")
    p.add_argument("--moto-url", help="use this running moto server instead of starting one")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the raw-HTTP replay (server ms/call) of workloads that define one")
    p.add_argument("--raw-only", action="store_true", help="only the raw-HTTP replay, not the boto3 timing")
    p.add_argument("--clients", type=int, default=1,
                   help="also replay over this many concurrent connections (server calls/s)")
    return p


class Servers:
    """Start (or attach to) both sides; a context manager that stops what it started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started: list[Any] = []
        self.endpoints: dict[str, str] = {}
        self.tmp: str | None = None

    def __enter__(self) -> "Servers":
        a = self.args
        try:
            if a.ebscrypt_url:
                srv: Any = External("ebscrypt", a.ebscrypt_url)
            else:
                self.tmp = tempfile.mkdtemp(prefix="bench-ebscrypt-")
                srv = start_ebscrypt(Path(self.tmp) / "data")
                self.started.append(srv)
            self.endpoints["ebscrypt"] = srv.url
            if not a.no_moto:
                if a.moto_url:
                    self.endpoints["moto"] = External("moto", a.moto_url).url
                elif moto_available():
                    m = start_moto()
                    self.started.append(m)
                    self.endpoints["moto"] = m.url
                else:
                    print("moto is not installed (pip install 'moto[server]'): timing ebscrypt alone",
                          file=sys.stderr)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for srv in reversed(self.started):
            srv.stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def selected(workloads: Iterable[Workload], only: Sequence[str]) -> list[Workload]:
    wls = list(workloads)
    return [w for w in wls if not only or any(o.lower() in w.name.lower() for o in only)]


def run_all(workloads: Sequence[Workload], args: argparse.Namespace) -> list[Result]:
    wls = selected(workloads, args.only)
    results: list[Result] = []
    with Servers(args) as servers:
        print(f"ebscrypt: {servers.endpoints.get('ebscrypt')}   moto: {servers.endpoints.get('moto', 'not run')}"
              f"   rounds={args.rounds} x >= {args.seconds}s, median shown", flush=True)
        width = max([34, *(len(w.name) for w in wls)])
        print_header(width)
        # One context per side for the whole run: ctx.state and clients carry over.
        ctxs = {side: Ctx(side, url) for side, url in servers.endpoints.items()}
        for wl in wls:
            try:
                r = run_workload(wl, servers.endpoints, args.rounds, args.seconds, args.min_calls, args.warmup,
                                 ctxs, raw=not args.no_raw, clients=args.clients, boto=not args.raw_only)
            except Exception as exc:  # one failing workload does not hide the others
                msg = str(exc) if isinstance(exc, SideError) else f"{type(exc).__name__}: {exc}"
                print(f"{wl.name:<{width}} FAILED {msg}"[:400], flush=True)
                continue
            print_result(r, width)
            results.append(r)
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2))
    return results


def main(workloads: Sequence[Workload], argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results = run_all(workloads, args)
    return 0 if len(results) == len(selected(workloads, args.only)) else 1
