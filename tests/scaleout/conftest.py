"""Several ``ebscrypt serve`` processes behind HAProxy (Debian's), as on several hosts.

``cluster``: three servers, each with its own port and data dir, sharing only what
several hosts would share — one PostgreSQL database (``EBSCRYPT_TEST_PG_URL``), the block
objects (Ceph RGW when ``EBSCRYPT_TEST_S3_URL`` is set, else one directory) and the root
key file — behind one HAProxy frontend that balances round-robin with health checks on
``/_ebscrypt/health``. Tests talk to ``cluster.url`` (HAProxy) and may look at each
server directly (``cluster.servers``), kill one, and start it again.

HAProxy passes the client's Host header through (the frontend's address): when the
server has a Host check (``--allowed-host``), the servers are started allowing it.
Skipped with the reason without PostgreSQL or without haproxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ServerProcess, client_factory, free_port
from tests.postgres.conftest import PG_URL_ENV, PgDatabases, pg_skip_reason
from tests.s3.conftest import S3_URL_ENV, S3Target, s3_skip_reason

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_skip_reason() -> str | None:
    if not os.path.exists(HAPROXY):
        return "haproxy is not installed (apt-get install haproxy)"
    return None


def _server_has_option(option: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "ebscrypt", "serve", "--help"], capture_output=True, text=True)
    return option in out.stdout


class HAProxy:
    """One haproxy process in the foreground (-db), config in a temp file."""

    def __init__(self, workdir: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "haproxy.cfg"
        self.log = workdir / "haproxy.log"
        lines = [
            "global",
            "    maxconn 2000",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 300s",
            "    timeout server 300s",
            "    retries 3",
            "    option redispatch",  # a connection refused by a dead server goes to another
            "frontend ebscrypt",
            f"    bind 127.0.0.1:{self.port}",
            "    default_backend servers",
            "backend servers",
            "    balance roundrobin",
            "    option httpchk GET /_ebscrypt/ready",  # 503 while its database is unreachable
            "    default-server inter 500ms fall 2 rise 1",
        ]
        lines += [f"    server s{i} 127.0.0.1:{port} check" for i, port in enumerate(backends)]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "HAProxy":
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config check failed: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_ebscrypt/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"haproxy did not answer: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Cluster:
    """Three servers on one database, one block store, one root key, behind HAProxy."""

    def __init__(self, workdir: Path, db_url: str, blocks_args: list[str], env: dict[str, str] | None,
                 count: int = 3, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.root_key = workdir / "root.key"
        self.root_key.write_bytes(os.urandom(32))  # distributed to every host, like a TLS key
        self.root_key.chmod(0o600)
        self.env = dict(env or os.environ, **(extra_env or {}))
        ports = [free_port() for _ in range(count)]
        self.haproxy = HAProxy(workdir, ports)
        allowed = ["--allowed-host", f"127.0.0.1:{self.haproxy.port}"] if _server_has_option("--allowed-host") else []
        self.servers: list[ServerProcess] = []
        for i, port in enumerate(ports):
            srv = ServerProcess(workdir / f"host{i}", ["--db", db_url, "--root-key-file", str(self.root_key),
                                                       *blocks_args, *allowed], env=self.env)
            srv.port, srv.url = port, f"http://127.0.0.1:{port}"
            self.servers.append(srv)
        self.url = self.haproxy.url
        self.aws = client_factory(self.url)

    def start(self) -> "Cluster":
        for srv in self.servers:
            srv.start()
        self.haproxy.start()
        return self

    def stop(self) -> None:
        self.haproxy.stop()
        for srv in self.servers:
            srv.stop()

    def server_of_pid(self, pid: int) -> ServerProcess | None:
        return next((s for s in self.servers if s.proc is not None and s.proc.pid == pid), None)


def cluster_blocks(workdir: Path) -> tuple[list[str], dict[str, str] | None, str]:
    """The block store the servers share: RGW when given, else a directory."""
    if s3_skip_reason() is None:
        target = S3Target(os.environ[S3_URL_ENV].strip().rstrip("/"), workdir / "s3-credentials")
        return target.server_args(), target.env, "s3"
    shared = workdir / "shared-blocks"
    shared.mkdir()
    return ["--blocks", str(shared)], None, "dir"


def make_cluster(pg: PgDatabases, workdir: Path, extra_env: dict[str, str] | None = None) -> Cluster:
    blocks_args, env, _ = cluster_blocks(workdir)
    return Cluster(workdir, pg.create(), blocks_args, env, extra_env=extra_env)


@pytest.fixture(scope="session")
def scale_pg() -> Iterator[PgDatabases]:
    reason = pg_skip_reason() or haproxy_skip_reason()
    if reason:
        pytest.skip(reason)
    databases = PgDatabases(os.environ[PG_URL_ENV].strip())
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def cluster(scale_pg: PgDatabases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = make_cluster(scale_pg, tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="session")
def endpoint(cluster: Cluster) -> str:
    """HAProxy's URL: the suites re-run here (``test_haproxy_<tool>.py``) talk to the cluster."""
    return cluster.url


@pytest.fixture(scope="session")
def aws(endpoint: str) -> Callable[..., Any]:
    return client_factory(endpoint)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.scaleout)

