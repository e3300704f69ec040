"""``ebscrypt serve`` as a person runs it: what it prints, and a clean stop on a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, make_client


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebscrypt", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_ebscrypt/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stdout.read() if proc.stdout else "no output")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_the_endpoint_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, url = _start(tmp_path)
    assert make_client(url, "sts").get_caller_identity()["Account"] == "111111111111"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving on {url}" in out
    assert f"aws --endpoint-url {url} ec2 describe-regions" in out
    assert (tmp_path / "d" / "metadata.db").exists()
    assert (tmp_path / "d").stat().st_mode & 0o077 == 0  # the data dir is private


def test_state_survives_a_restart(tmp_path: Path) -> None:
    proc, url = _start(tmp_path)
    kms = make_client(url, "kms")
    key_id = kms.create_key(Description="survives")["KeyMetadata"]["KeyId"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc, url = _start(tmp_path)
    try:
        assert make_client(url, "kms").describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "survives"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
