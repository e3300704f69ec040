"""A full data directory is a clear, retryable error (issue 10, item 7).

The server runs with its data dir on a 32 MiB tmpfs, which a filler file then fills.
Writes that cannot be stored and KMS operations that cannot be audited (fail closed)
answer 503 ``ServiceUnavailable`` with the cause in the message; the server logs one
line for the condition (no traceback per request) and one when it clears; nothing
stored before is damaged; the service resumes by itself once space is freed.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import ServerProcess

ACCOUNT = "555000777001"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot mount a small filesystem: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _client(url: str, service: str) -> Any:
    # One attempt: the test looks at the answer the SDK would retry.
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id=ACCOUNT,
                        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def _fill(path: Path) -> None:
    # Whatever room is left, taken; the server's own files (SQLite's WAL grows in steps)
    # may already have taken the last of it, and then even the open fails: full either way.
    try:
        f = open(path, "wb")
    except OSError:
        return
    with f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _refused(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as err:
        call()
    resp = err.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 503, resp
    assert resp["Error"]["Code"] == "ServiceUnavailable", resp
    assert "out of space" in resp["Error"]["Message"], resp
    return err.value


def test_disk_full_is_a_clear_retryable_error_and_clears_by_itself(small_fs: Path, tmp_path: Path) -> None:
    srv = ServerProcess(small_fs / "data")
    srv.log_path = tmp_path / "server.log"  # the log must not live on the full filesystem
    srv.start()
    try:
        kms, ec2 = _client(srv.url, "kms"), _client(srv.url, "ec2")
        key_id = kms.create_key(Description="before")["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"written before")["CiphertextBlob"]
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]

        filler = small_fs / f"filler-{uuid.uuid4().hex}"
        _fill(filler)
        _refused(lambda: kms.encrypt(KeyId=key_id, Plaintext=b"x"))  # a write (its audit record)
        _refused(lambda: kms.decrypt(CiphertextBlob=blob))  # a read that cannot be audited: fail closed
        _refused(lambda: kms.describe_key(KeyId=key_id))
        _refused(lambda: kms.create_key(Description="during"))
        _refused(lambda: ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True))
        # Writes with no KMS in them: the metadata database itself is full.
        _refused(lambda: ec2.create_volume(AvailabilityZone="us-east-1a", Size=1))
        _refused(lambda: _client(srv.url, "ebs").start_snapshot(VolumeSize=1))
        # Reads that need no KMS keep working.
        assert [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]] == [volume]

        filler.unlink()
        # Resumed by itself: no restart, no flag to reset.
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"written before"
        assert kms.encrypt(KeyId=key_id, Plaintext=b"after")["KeyId"].endswith(key_id)
        keys = [k["KeyId"] for k in kms.list_keys()["Keys"]]
        assert keys == [key_id]  # the refused CreateKey changed nothing
        assert len(ec2.describe_volumes()["Volumes"]) == 1
    finally:
        srv.stop()

    log = srv.log_path.read_text()
    assert "Traceback" not in log, log
    full_lines = [line for line in log.splitlines() if "is full" in line]
    assert len(full_lines) == 1, log
    assert "No space left on device" in full_lines[0] or "bytes free" in full_lines[0]
    assert sum("available again" in line for line in log.splitlines()) == 1, log

    # The audit trail is intact: every line a whole record, the earlier ones still there.
    lines = (small_fs / "data" / "audit" / "kms-audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    names = [r["eventName"] for r in records]
    assert names[:2] == ["CreateKey", "Encrypt"]
    assert names[2:] == ["Decrypt", "Encrypt", "ListKeys"]  # the refused ones could not be recorded
