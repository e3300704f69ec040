"""The AWS CLI golden path against ebscrypt, once with ``--endpoint-url`` and once with ``AWS_ENDPOINT_URL``.

kms create-key → ec2 create-volume (encrypted, key) → create-snapshot → ``wait
snapshot-completed`` → ebs start-snapshot / put-snapshot-block / complete-snapshot (real bytes)
→ register-image over both snapshots → ``wait image-available`` → copy-image re-encrypted to a
second key → ``wait image-available`` → ebs get-snapshot-block of the golden root snapshot reads
the uploaded bytes back byte for byte (R-DATA-1, R-IMG-1, R-IMG-3, R-OUT-2, R-SNAP-1, R-LIFE-1).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import BLOCK, REGION, new_account, pattern
from tests.tools.support import require, run, tool_env, which


class Cli:
    def __init__(self, endpoint: str, account: str, mode: str, cwd: Path) -> None:
        self.exe = require("aws (awscli)", which("aws"))
        self.mode, self.endpoint, self.cwd = mode, endpoint, cwd
        self.env = tool_env(account, HOME=str(cwd))
        if mode == "env":
            self.env["AWS_ENDPOINT_URL"] = endpoint
        self.calls = 0

    def __call__(self, *args: str) -> Any:
        cmd = [self.exe, "--output", "json", "--region", REGION]
        if self.mode == "flag":
            cmd += ["--endpoint-url", self.endpoint]
        self.calls += 1
        out = run(cmd + list(args), env=self.env, cwd=self.cwd, timeout=120).stdout
        return json.loads(out) if out.strip() else None


def sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("mode", ["flag", "env"], ids=["endpoint-url", "AWS_ENDPOINT_URL"])
def test_awscli_golden_path(mode: str, endpoint: str, aws: Callable[..., Any], tmp_path: Path) -> None:
    account = new_account()
    aws_ = Cli(endpoint, account, mode, tmp_path)

    build_key = aws_("kms", "create-key", "--description", "build key")["KeyMetadata"]["Arn"]
    golden_key = aws_("kms", "create-key", "--description", "golden key")["KeyMetadata"]["Arn"]
    alias = aws_("kms", "create-alias", "--alias-name", "alias/golden", "--target-key-id", golden_key)
    assert alias is None

    # a data volume under the build key and its snapshot (R-OUT-2, R-SNAP-1)
    vol = aws_("ec2", "create-volume", "--availability-zone", f"{REGION}a", "--size", "2", "--volume-type", "gp3",
               "--encrypted", "--kms-key-id", build_key,
               "--tag-specifications", "ResourceType=volume,Tags=[{Key=Name,Value=data}]")
    assert vol["Encrypted"] is True and vol["KmsKeyId"] == build_key and vol["Size"] == 2
    aws_("ec2", "wait", "volume-available", "--volume-ids", vol["VolumeId"])
    data_snap = aws_("ec2", "create-snapshot", "--volume-id", vol["VolumeId"], "--description", "data disk")
    assert data_snap["Encrypted"] is True and data_snap["KmsKeyId"] == build_key

    # a root snapshot holding real bytes, uploaded with the EBS direct APIs (R-DATA-1)
    blocks = {0: pattern(f"cli-{mode}", 0), 9: pattern(f"cli-{mode}", 9)}
    root = aws_("ebs", "start-snapshot", "--volume-size", "1", "--encrypted", "--kms-key-arn", build_key,
                "--description", "root disk", "--timeout", "60")
    assert root["Status"] == "pending" and root["VolumeSize"] == 1 and root["KmsKeyArn"] == build_key
    h = hashlib.sha256()
    for index, data in blocks.items():
        path = tmp_path / f"block{index}.bin"
        path.write_bytes(data)
        # --block-data is a streaming blob: the CLI takes a plain file path (no fileb://)
        put = aws_("ebs", "put-snapshot-block", "--snapshot-id", root["SnapshotId"], "--block-index", str(index),
                   "--block-data", str(path), "--data-length", str(BLOCK),
                   "--checksum", sha_b64(data), "--checksum-algorithm", "SHA256")
        assert put == {"Checksum": sha_b64(data), "ChecksumAlgorithm": "SHA256"}
        h.update(hashlib.sha256(data).digest())
    done = aws_("ebs", "complete-snapshot", "--snapshot-id", root["SnapshotId"], "--changed-blocks-count", "2",
                "--checksum", base64.b64encode(h.digest()).decode(), "--checksum-algorithm", "SHA256",
                "--checksum-aggregation-method", "LINEAR")
    assert done["Status"] in ("pending", "completed")
    aws_("ec2", "wait", "snapshot-completed", "--snapshot-ids", data_snap["SnapshotId"], root["SnapshotId"])

    base = aws_("ec2", "register-image", "--name", "base-os", "--architecture", "x86_64",
                "--virtualization-type", "hvm", "--ena-support", "--root-device-name", "/dev/xvda",
                "--block-device-mappings",
                json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root["SnapshotId"]}},
                            {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": data_snap["SnapshotId"]}}]))["ImageId"]
    aws_("ec2", "wait", "image-available", "--image-ids", base)

    # copy re-encrypted to the golden key, named by its alias (R-IMG-1, R-KEY-6)
    golden = aws_("ec2", "copy-image", "--source-image-id", base, "--source-region", REGION, "--name", "golden",
                  "--description", "golden AMI", "--encrypted", "--kms-key-id", "alias/golden")["ImageId"]
    aws_("ec2", "wait", "image-available", "--image-ids", golden)
    img = aws_("ec2", "describe-images", "--image-ids", golden)["Images"][0]
    assert img["State"] == "available" and img["Name"] == "golden" and img["OwnerId"] == account
    snap_ids = {m["DeviceName"]: m["Ebs"]["SnapshotId"] for m in img["BlockDeviceMappings"]}
    assert set(snap_ids) == {"/dev/xvda", "/dev/sdf"}
    snaps = {s["SnapshotId"]: s for s in
             aws_("ec2", "describe-snapshots", "--snapshot-ids", *snap_ids.values())["Snapshots"]}
    assert {s["KmsKeyId"] for s in snaps.values()} == {golden_key}
    assert all(s["Encrypted"] and s["State"] == "completed" for s in snaps.values())
    assert snaps[snap_ids["/dev/sdf"]]["VolumeSize"] == 2
    # the source image is untouched (R-KEY-4)
    src = aws_("ec2", "describe-snapshots", "--snapshot-ids", root["SnapshotId"])["Snapshots"][0]
    assert src["KmsKeyId"] == build_key

    # the golden root snapshot holds the uploaded bytes, read back byte for byte
    golden_root = snap_ids["/dev/xvda"]
    listed = aws_("ebs", "list-snapshot-blocks", "--snapshot-id", golden_root)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == sorted(blocks)
    assert listed["BlockSize"] == BLOCK and listed["VolumeSize"] == 1
    for blk in listed["Blocks"]:
        out = tmp_path / f"read{blk['BlockIndex']}.bin"
        got = aws_("ebs", "get-snapshot-block", "--snapshot-id", golden_root, "--block-index", str(blk["BlockIndex"]),
                   "--block-token", blk["BlockToken"], str(out))
        assert out.read_bytes() == blocks[blk["BlockIndex"]]
        assert got["DataLength"] == BLOCK and got["ChecksumAlgorithm"] == "SHA256"
        assert got["Checksum"] == sha_b64(blocks[blk["BlockIndex"]])
    # and the same through boto3, for the record
    assert aws("ec2", account=account).describe_images(ImageIds=[golden])["Images"][0]["State"] == "available"


def test_awscli_describe_snapshots_default_paging(endpoint: str, aws: Callable[..., Any], tmp_path: Path) -> None:
    """``aws ec2 describe-snapshots --owner-ids self`` auto-paginates with MaxResults=1000 (the CLI's
    EC2PageSizeInjector); AWS allows 5..1000 for DescribeSnapshots."""
    account = new_account()
    ec2 = aws("ec2", account=account)
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    out = Cli(endpoint, account, "flag", tmp_path)("ec2", "describe-snapshots", "--owner-ids", "self")
    assert [s["SnapshotId"] for s in out["Snapshots"]] == [snap]


def test_awscli_describe_volumes_default_paging(endpoint: str, aws: Callable[..., Any], tmp_path: Path) -> None:
    account = new_account()
    vol = aws("ec2", account=account).create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    out = Cli(endpoint, account, "flag", tmp_path)("ec2", "describe-volumes")
    assert [v["VolumeId"] for v in out["Volumes"]] == [vol]
