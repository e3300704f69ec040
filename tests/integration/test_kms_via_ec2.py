"""KMS use by EC2 on a caller's behalf (SPEC R-KEY-1, R-KEY-3): every use is checked with
``kms:ViaService`` and lands in the audit trail with ``invokedBy``.

Only KMS-side facts are asserted here (audit records, policy decisions); the EC2 resource
behaviour itself is tested by the EC2 members.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

A = "111111111111"
REGION = "us-east-1"
VIA = f"ec2.{REGION}.amazonaws.com"


def audit_events(srv: Any) -> list[dict[str, Any]]:
    path = Path(srv.data_dir) / "audit" / "kms-audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for(srv: Any, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in audit_events(srv):
            if pred(e):
                return e
        time.sleep(0.2)
    raise AssertionError(f"no matching audit record; have {[e['eventName'] for e in audit_events(srv)]}")


def test_encrypted_volume_uses_kms_via_ec2_and_is_audited(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    ec2 = srv.client("ec2", account=A)
    key = kms.create_key(Description="ebs")["KeyMetadata"]
    vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1, Encrypted=True, KmsKeyId=key["KeyId"])
    assert vol["Encrypted"] is True and vol["KmsKeyId"] == key["Arn"]
    gen = wait_for(srv, lambda e: e["eventName"] == "GenerateDataKeyWithoutPlaintext"
                   and e["resources"] and e["resources"][0]["ARN"] == key["Arn"])
    assert gen["userIdentity"]["invokedBy"] == "ec2.amazonaws.com"
    assert gen["userIdentity"]["accountId"] == A
    assert "errorCode" not in gen
    ctx = gen["requestParameters"]["encryptionContext"]
    assert vol["VolumeId"] in ctx.values()


def test_policy_refusing_ec2_is_enforced_for_ec2_use(server_factory: Callable[..., Any]) -> None:
    srv = server_factory()
    kms = srv.client("kms", account=A)
    ec2 = srv.client("ec2", account=A)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{A}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "never through EC2", "Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
             "Condition": {"StringEquals": {"kms:ViaService": VIA}}},
        ],
    }
    key = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]
    # The same principal may still use the key directly…
    kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256")
    # …but not through EC2: the call is refused (at once or by the resource ending in error).
    try:
        vol = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1, Encrypted=True, KmsKeyId=key["KeyId"])
    except Exception:
        vol = None
    refused = wait_for(srv, lambda e: e.get("errorCode") == "AccessDeniedException"
                       and e["userIdentity"].get("invokedBy") == "ec2.amazonaws.com")
    assert key["Arn"] in refused["errorMessage"] and "explicit deny" in refused["errorMessage"]
    if vol is not None:
        deadline = time.monotonic() + 20
        state = vol["State"]
        while state not in ("error", "available") and time.monotonic() < deadline:
            time.sleep(0.2)
            state = ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"][0]["State"]
        assert state == "error"  # R-KEY-6: never encrypted under some other key


def test_deleting_the_key_shreds_ebs_data(server_factory: Callable[..., Any]) -> None:
    """R-KEY-8: once the key's waiting period is over, data under it cannot be read."""
    import base64
    import hashlib

    import pytest
    from botocore.exceptions import ClientError

    srv = server_factory()
    kms = srv.client("kms", account=A)
    ebs = srv.client("ebs", account=A)
    ec2 = srv.client("ec2", account=A)
    key = kms.create_key()["KeyMetadata"]
    snap = ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=key["Arn"])["SnapshotId"]
    data = bytes(range(256)) * 2048  # one 512 KiB block
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=0, BlockData=data, DataLength=len(data),
                           Checksum=checksum, ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=1)
    deadline = time.monotonic() + 20
    while ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["State"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    def read() -> bytes:
        token = ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"][0]["BlockToken"]
        return ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=0, BlockToken=token)["BlockData"].read()

    assert read() == data
    wait_for(srv, lambda e: e["eventName"] == "Decrypt" and "errorCode" not in e
             and e["resources"] and e["resources"][0]["ARN"] == key["Arn"])
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    srv.advance_clock(120)  # past the EBS side's short-lived data-key cache
    with pytest.raises(ClientError):
        read()  # pending deletion: unusable, still recoverable
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    kms.enable_key(KeyId=key["KeyId"])
    assert read() == data
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    srv.advance_clock(7 * 86400 + 60)
    with pytest.raises(ClientError) as exc:
        read()
    assert key["Arn"] in exc.value.response["Error"]["Message"] or "KMS" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        kms.describe_key(KeyId=key["KeyId"])
    assert exc.value.response["Error"]["Code"] == "NotFoundException"
