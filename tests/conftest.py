"""Shared fixtures: real ebscrypt servers on free loopback ports, and boto3 clients for them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
from botocore.config import Config

DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One ``ebscrypt serve`` process with its own data dir; can be killed and restarted."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env  # the server's environment (None: this process's)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        # Every test server gets its own free NBD port (never the default 10809).
        self.nbd_port = (int(self.extra_args[self.extra_args.index("--nbd-port") + 1])
                         if "--nbd-port" in self.extra_args else free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def db_url(self) -> str | None:
        """The ``--db`` URL this server runs on; None: the SQLite file in its data dir."""
        args = self.extra_args
        return args[args.index("--db") + 1] if "--db" in args else None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        cmd = [sys.executable, "-m", "ebscrypt", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--log-level", "warning", *self.extra_args]
        if "--nbd-port" not in self.extra_args:
            cmd += ["--nbd-port", str(self.nbd_port)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ebscrypt exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_ebscrypt/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"ebscrypt did not start:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, service: str, account: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> Any:
        return make_client(self.url, service, account, region)

    def advance_clock(self, seconds: float) -> None:
        req = urllib.request.Request(f"{self.url}/_ebscrypt/clock/advance?seconds={seconds}", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


def make_client(endpoint: str, service: str, account: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> Any:
    """A boto3 client whose 12-digit access key makes it act as ``account`` (dev auth)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=account,
        aws_secret_access_key="ebscrypt-dev-secret",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10, read_timeout=120),
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("ebscrypt") / "data").start()
    yield srv
    srv.stop()


def client_factory(endpoint: str) -> Callable[..., Any]:
    """``factory(service, account=..., region=...)`` → a cached boto3 client against ``endpoint``."""
    cache: dict[tuple[str, str, str], Any] = {}

    def factory(service: str, account: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION) -> Any:
        key = (service, account, region)
        if key not in cache:
            cache[key] = make_client(endpoint, service, account, region)
        return cache[key]

    return factory


def server_bound_fixtures() -> tuple[Any, Any, Any]:
    """``endpoint``, ``aws`` and ``advance_clock`` over whatever ``server`` fixture the
    directory defines. A directory that overrides ``server`` (tests/postgres, tests/s3)
    binds these again (``endpoint, aws, advance_clock = server_bound_fixtures()``): a
    session fixture of this file would otherwise keep what it made for the SQLite server."""

    @pytest.fixture(scope="session")
    def endpoint(server: ServerProcess) -> str:
        return server.url

    @pytest.fixture(scope="session")
    def aws(endpoint: str) -> Callable[..., Any]:
        """``aws(service, account=..., region=...)`` → a boto3 client against the session server."""
        return client_factory(endpoint)

    @pytest.fixture
    def advance_clock(server: ServerProcess) -> Callable[[float], None]:
        return server.advance_clock

    return endpoint, aws, advance_clock


endpoint, aws, advance_clock = server_bound_fixtures()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers (own data dirs) that a test may kill -9 and restart."""
    started: list[ServerProcess] = []

    def factory(extra_args: list[str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / f"srv{len(started)}", extra_args)
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture
def aws_cli_env(endpoint: str) -> dict[str, str]:
    """Environment for ``aws --endpoint-url`` subprocess calls as the default account."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=DEFAULT_ACCOUNT,
        AWS_SECRET_ACCESS_KEY="ebscrypt-dev-secret",
        AWS_DEFAULT_REGION=DEFAULT_REGION,
        AWS_PAGER="",
    )
    return env
