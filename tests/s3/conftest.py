"""Fixtures that put the tests of this directory on a real S3 server (Ceph's RADOS Gateway).

``EBSCRYPT_TEST_S3_URL`` names the S3 endpoint (``http://127.0.0.1:PORT``, as
``bash ci/ceph.sh start`` prints); its keys are ``EBSCRYPT_TEST_S3_ACCESS_KEY`` /
``EBSCRYPT_TEST_S3_SECRET_KEY`` (default: ci/ceph.sh's test user). Without the variable —
or when ci/ceph.sh could not start a cluster and put its reason in the variable instead of
a URL — every test that needs the server is skipped with the reason.

Servers started here run with ``--blocks s3://BUCKET/<new prefix>`` and ``--s3-profile``:
the keys reach them through a shared credentials file in their environment, never on
their command line. The modules re-run existing tests (``from tests.integration.test_x
import *``) with ``server``/``endpoint``/``aws``/``advance_clock``/``server_factory``
overridden here (as tests/postgres/ does for the database).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ServerProcess, server_bound_fixtures

S3_URL_ENV = "EBSCRYPT_TEST_S3_URL"
BUCKET = "ebscrypt-test"
PROFILE = "ebscrypt-test-s3"


def s3_skip_reason() -> str | None:
    """Why the S3 tests cannot run here, or None when they can."""
    url = os.environ.get(S3_URL_ENV, "").strip()
    if not url:
        return f"{S3_URL_ENV} is not set (export {S3_URL_ENV}=\"$(bash ci/ceph.sh start)\" to run them)"
    if not url.startswith("http"):
        return f"S3 (Ceph RGW) not available: {url}"  # ci/ceph.sh's 'unavailable: <why>'
    return None


def s3_keys() -> tuple[str, str]:
    return (
        os.environ.get("EBSCRYPT_TEST_S3_ACCESS_KEY", "EBSCRYPTTEST"),
        os.environ.get("EBSCRYPT_TEST_S3_SECRET_KEY", "ebscrypttestsecret"),
    )


class S3Target:
    """The S3 server of the tests: its URL, the environment that gives a process its
    keys (a credentials file with profile ``PROFILE``), and fresh prefixes."""

    def __init__(self, url: str, credentials_file: Path) -> None:
        self.url = url
        access, secret = s3_keys()
        credentials_file.write_text(f"[{PROFILE}]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
        credentials_file.chmod(0o600)
        self.env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(credentials_file))

    def new_blocks_url(self) -> str:
        return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"

    def server_args(self, blocks_url: str | None = None) -> list[str]:
        return ["--blocks", blocks_url or self.new_blocks_url(), "--s3-endpoint-url", self.url, "--s3-profile", PROFILE]

    def store(self, prefix: str | None = None, **kwargs: Any) -> Any:
        """An S3Store on a fresh prefix (keys given directly: this process's env is left alone)."""
        from ebscrypt.engines.blocks.s3store import S3Store

        access, secret = s3_keys()
        store = S3Store(BUCKET, prefix or f"t-{uuid.uuid4().hex[:12]}", endpoint_url=self.url, **kwargs)
        import boto3
        from botocore.config import Config

        store._client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3},
                          request_checksum_calculation="when_required", max_pool_connections=32),
        )
        store.ensure_bucket()
        return store


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> S3Target:
    reason = s3_skip_reason()
    if reason:
        pytest.skip(reason)
    return S3Target(os.environ[S3_URL_ENV].strip().rstrip("/"), tmp_path_factory.mktemp("s3") / "credentials")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.s3)


# -- the fixtures of tests/conftest.py, with blocks in S3 -------------------------------------


@pytest.fixture(scope="session")
def server(s3: S3Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("ebscrypt-s3") / "data", s3.server_args(), env=s3.env).start()
    yield srv
    srv.stop()


endpoint, aws, advance_clock = server_bound_fixtures()


@pytest.fixture
def server_factory(s3: S3Target, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Extra servers, each with blocks under a prefix of its own (kept across restarts)."""
    started: list[ServerProcess] = []
    prefixes: dict[Path, str] = {}

    def factory(extra_args: list[str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        data_dir = data_dir or tmp_path / f"srv{len(started)}"
        if data_dir not in prefixes:
            prefixes[data_dir] = s3.new_blocks_url()
        srv = ServerProcess(data_dir, [*s3.server_args(prefixes[data_dir]), *(extra_args or [])], env=s3.env)
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.stop()
