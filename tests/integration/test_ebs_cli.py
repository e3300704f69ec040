"""``ebscrypt upload`` / ``ebscrypt download`` end to end against the session server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BLOCK = 524288


def run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ebscrypt", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_upload_then_download_same_bytes(endpoint: str, tmp_path: Path, aws) -> None:
    image = tmp_path / "disk.img"
    data = bytearray(os.urandom(BLOCK * 12 + 1000))  # a partial last block
    data[BLOCK * 2 : BLOCK * 6] = bytes(BLOCK * 4)  # all-zero blocks are skipped
    image.write_bytes(data)
    account = "555000099001"
    up = run("upload", str(image), "--endpoint-url", endpoint, "--account", account, "--encrypted", "--threads", "4")
    assert up["Status"] == "completed" and up["BlocksWritten"] == 13 - 4
    out = tmp_path / "out.img"
    down = run("download", up["SnapshotId"], str(out), "--endpoint-url", endpoint, "--account", account)
    assert down["Checksum"] == up["Checksum"] and down["BlocksRead"] == 9
    assert out.stat().st_size == 1024**3  # volume-sized
    assert out.stat().st_blocks * 512 < 64 * 1024 * 1024  # and sparse on disk
    with open(out, "rb") as f:
        assert f.read(len(data)) == bytes(data)
        assert f.read(BLOCK * 4).count(0) == BLOCK * 4
    # Incremental upload on a parent: a block zeroed in the new image reads as zeros.
    data2 = bytearray(data)
    data2[0:BLOCK] = bytes(BLOCK)
    image2 = tmp_path / "disk2.img"
    image2.write_bytes(data2)
    child = run("upload", str(image2), "--endpoint-url", endpoint, "--account", account, "--parent", up["SnapshotId"])
    out2 = tmp_path / "out2.img"
    run("download", child["SnapshotId"], str(out2), "--endpoint-url", endpoint, "--account", account)
    with open(out2, "rb") as f:
        assert f.read(len(data2)) == bytes(data2)
    # Truly incremental with the parent's image: only the changed blocks travel.
    data3 = bytearray(data2)
    data3[BLOCK * 7 : BLOCK * 7 + 10] = b"0123456789"
    image3 = tmp_path / "disk3.img"
    image3.write_bytes(data3)
    grand = run("upload", str(image3), "--endpoint-url", endpoint, "--account", account,
                "--parent", child["SnapshotId"], "--base-image", str(image2))
    assert grand["BlocksWritten"] == 1
    out3 = tmp_path / "out3.img"
    run("download", grand["SnapshotId"], str(out3), "--endpoint-url", endpoint, "--account", account)
    with open(out3, "rb") as f:
        assert f.read(len(data3)) == bytes(data3)


def test_upload_under_a_key_alias(endpoint: str, tmp_path: Path, aws) -> None:
    account = "555000099003"
    kms = aws("kms", account=account)
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/disks", TargetKeyId=key["KeyId"])
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK * 2))
    up = run("upload", str(image), "--endpoint-url", endpoint, "--account", account, "--kms-key-id", "alias/disks")
    assert up["KmsKeyArn"] == key["Arn"]


def test_upload_reports_errors_cleanly(endpoint: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(BLOCK))
    proc = subprocess.run(
        [sys.executable, "-m", "ebscrypt", "upload", str(image), "--endpoint-url", endpoint, "--account", "555000099002",
         "--parent", "snap-0123456789abcdef0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "ResourceNotFoundException" in proc.stderr and "Traceback" not in proc.stderr
