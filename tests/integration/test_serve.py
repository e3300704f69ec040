"""``ebscrypt serve`` as a person runs it: what it prints, and a clean stop on a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import free_port, make_client
from tests.helpers import child_pids, new_key, pattern, read_blocks, upload_snapshot


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        # a free NBD port too: the default (10809) may be another suite's on a shared machine
        [sys.executable, "-m", "ebscrypt", "serve", "--port", str(port), "--nbd-port", str(free_port()),
         "--data-dir", str(tmp_path / "d"), *args],
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


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to see worker processes")
def test_block_workers_zero_reencrypts_in_the_server_process(server_factory: Callable[..., Any]) -> None:
    """``serve --block-workers 0``: a re-encrypting CopySnapshot (R-DATA-1: the copy reads
    back the same bytes) runs in the server process — no worker process is started, though
    the copy is larger than what the engine copies in-process by default (INLINE_BLOCKS)."""
    from ebscrypt.engines.blocks.reencrypt import CopyOperations

    srv = server_factory(["--block-workers", "0"])
    assert srv.proc is not None
    ebs, ec2, kms = srv.client("ebs"), srv.client("ec2"), srv.client("kms")
    blocks = {i: pattern("block-workers", i) for i in range(CopyOperations.INLINE_BLOCKS + 8)}
    source = upload_snapshot(ebs, blocks, Encrypted=True)
    key = new_key(kms)
    copy = ec2.copy_snapshot(SourceSnapshotId=source, SourceRegion="us-east-1", Encrypted=True, KmsKeyId=key)["SnapshotId"]
    deadline = time.monotonic() + 600  # (a bound on a hang, not a speed check: a loaded machine is slow)
    while (snap := ec2.describe_snapshots(SnapshotIds=[copy])["Snapshots"][0])["State"] == "pending":
        assert time.monotonic() < deadline, "the copy did not finish"
        time.sleep(0.2)
    assert snap["State"] == "completed" and snap["KmsKeyId"] == key
    assert child_pids(srv.proc.pid) == []
    assert read_blocks(ebs, copy) == blocks
