"""PostgreSQL restarted under a running ebscrypt: requests fail cleanly while it is down
(an error answer, no hang), ``/_ebscrypt/ready`` says 503, and the service recovers by
itself once PostgreSQL is back — no restart of ebscrypt. Needs the server that
``bash ci/postgres.sh start`` of this checkout started (it stops and starts it again:
``ci/postgres.sh down`` / ``up``); skipped otherwise."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

REPO = Path(__file__).resolve().parent.parent.parent


def _state_dir() -> Path:
    default = f"/tmp/ebscrypt-pg-{hashlib.md5(str(REPO).encode()).hexdigest()[:10]}"
    return Path(os.environ.get("EBSCRYPT_PG_DIR", default))


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/_ebscrypt/ready", timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_service_recovers_from_a_postgres_restart(server_factory: Callable[..., Any]) -> None:
    url_file = _state_dir() / "url"
    if not (_state_dir() / "options").exists() or not url_file.exists() or url_file.read_text().strip() != os.environ.get("EBSCRYPT_TEST_PG_URL", "").strip():
        pytest.skip("the PostgreSQL server was not started by this checkout's ci/postgres.sh (not restarting it)")
    srv = server_factory()
    kms = srv.client("kms")
    key = kms.create_key(Description="before the restart")["KeyMetadata"]["KeyId"]
    assert _ready(srv.url) == 200
    script = str(REPO / "ci" / "postgres.sh")
    subprocess.run(["bash", script, "down"], check=True, capture_output=True, timeout=90)
    try:
        started = time.monotonic()
        with pytest.raises((ClientError, EndpointConnectionError)) as info:
            kms.describe_key(KeyId=key)  # down: an error answer (5xx), not a hang
        assert time.monotonic() - started < 60
        if isinstance(info.value, ClientError):
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
        assert _ready(srv.url) == 503
    finally:
        subprocess.run(["bash", script, "up"], check=True, capture_output=True, timeout=90)
    deadline = time.monotonic() + 30
    while _ready(srv.url) != 200:  # the pool reconnects by itself
        assert time.monotonic() < deadline, "ebscrypt did not recover after PostgreSQL came back"
        time.sleep(0.2)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "before the restart"
    kms.create_key(Description="after the restart")  # writes work again too
