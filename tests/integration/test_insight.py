"""`ebscrypt explain` and `ebscrypt report` on scenarios built through boto3 (issue 16).

The commands read the session server's metadata database directly (read-only) while it
runs. Every report finding is shown to appear, then to disappear once its cause is fixed.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any, Callable

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ServerProcess
from tests.console.scenario import key_shared_with
from tests.helpers import new_account

ZONE = "us-east-1a"


def run(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The command against the server's metadata (its SQLite file, or its --db URL)."""
    where = ["--db", server.db_url] if server.db_url else ["--data-dir", str(server.data_dir)]
    return subprocess.run([sys.executable, "-m", "ebscrypt", *args, *where],
                          capture_output=True, text=True, timeout=120)


def explain(server: ServerProcess, resource_id: str) -> dict[str, Any]:
    out = run(server, "explain", resource_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def findings(server: ServerProcess, account: str) -> list[dict[str, Any]]:
    out = run(server, "report", "--account", account, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["findings"]


def codes(server: ServerProcess, account: str, resource: str | None = None) -> set[str]:
    return {f["code"] for f in findings(server, account) if resource is None or f["resource"] == resource}


def volume(ec2: Any, **kw: Any) -> str:
    vid = ec2.create_volume(AvailabilityZone=ZONE, Size=1, **kw)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    return vid


def snapshot(ec2: Any, volume_id: str) -> str:
    sid = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1})
    return sid


@pytest.fixture
def acct2() -> str:
    return new_account()


# ----------------------------------------------------------------------------- explain


def test_explain_records_the_settings_seen_at_creation(server: ServerProcess, ec2: Any) -> None:
    """R-OUT-5 under EBD: the record keeps EBD on and the default key even after EBD is
    switched off (R-ACC: EBD changes no existing resource)."""
    ec2.enable_ebs_encryption_by_default()
    vid = volume(ec2)
    ec2.disable_ebs_encryption_by_default()
    e = explain(server, vid)
    assert e["type"] == "volume" and e["encrypted"] is True
    assert e["decision"]["rule"] == "R-OUT-5"
    assert e["decision"]["ebd"] is True and e["decision"]["default_key"] == "alias/aws/ebs"
    assert e["decision"]["requested_encrypted"] is None and e["decision"]["requested_kms_key_id"] is None
    assert e["key"]["aliases"] == ["alias/aws/ebs"] and e["key"]["manager"] == "AWS"
    assert [link["type"] for link in e["chain"]] == ["volume", "empty"]
    plain = volume(ec2)
    assert explain(server, plain)["decision"]["rule"] == "R-OUT-6"


def test_explain_chain_and_shared_data_key(server: ServerProcess, ec2: Any, kms: Any) -> None:
    """R-SNAP-1 and R-OUT-3 reuse the data key (R-KEY-2); R-OUT-2 to another key does not."""
    key1 = kms.create_key()["KeyMetadata"]
    key2 = kms.create_key()["KeyMetadata"]
    vid = volume(ec2, Encrypted=True, KmsKeyId=key1["KeyId"])
    sid = snapshot(ec2, vid)
    same = ec2.copy_snapshot(SourceSnapshotId=sid, SourceRegion="us-east-1")["SnapshotId"]
    other = ec2.copy_snapshot(SourceSnapshotId=same, SourceRegion="us-east-1", Encrypted=True,
                              KmsKeyId=key2["Arn"])["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[same, other], WaiterConfig={"Delay": 1})

    e_snap = explain(server, sid)
    assert e_snap["decision"]["rule"] == "R-SNAP-1" and e_snap["data_key_shared_with_parent"] is True
    e_same = explain(server, same)
    assert e_same["decision"]["rule"] == "R-OUT-3" and e_same["data_key_shared_with_parent"] is True
    assert e_same["decision"]["operation"] == "CopySnapshot"
    e_other = explain(server, other)
    assert e_other["decision"]["rule"] == "R-OUT-2"
    assert e_other["decision"]["requested_kms_key_id"] == key2["Arn"]
    assert e_other["key"]["arn"] == key2["Arn"] and e_other["data_key_shared_with_parent"] is False
    assert [link["id"] for link in e_other["chain"]] == [other, same, sid, vid, "(empty volume)"]
    assert [link["kms_key_arn"] for link in e_other["chain"][:4]] == [key2["Arn"], key1["Arn"], key1["Arn"],
                                                                       key1["Arn"]]
    text = run(server, "explain", other)
    assert text.returncode == 0 and "R-OUT-2" in text.stdout and f"copied from {same}" in text.stdout


def test_explain_cross_account_copy_image_and_instance(server: ServerProcess, aws: Callable[..., Any],
                                                        ec2: Any, kms: Any, acct: str, acct2: str) -> None:
    key_a = kms.create_key()["KeyMetadata"]
    key_shared_with(kms, key_a["KeyId"], acct2)
    sid = snapshot(ec2, volume(ec2, Encrypted=True, KmsKeyId=key_a["KeyId"]))
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[acct2])
    ec2b = aws("ec2", account=acct2)
    copy = ec2b.copy_snapshot(SourceSnapshotId=sid, SourceRegion="us-east-1", Encrypted=True)["SnapshotId"]
    ec2b.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig={"Delay": 1})
    e = explain(server, copy)
    assert e["account"] == acct2 and e["decision"]["rule"] == "R-OUT-4"  # shared: B's default key
    assert e["key"]["account"] == acct2 and e["chain"][1]["account"] == acct
    assert e["chain"][1]["kms_key_arn"] == key_a["Arn"] and e["data_key_shared_with_parent"] is False

    image = ec2.register_image(Name=f"img-{acct}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig={"Delay": 1})
    e_img = explain(server, image)
    assert e_img["type"] == "image" and [p["id"] for p in e_img["parts"]] == [sid]
    inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    ec2.get_waiter("instance_running").wait(InstanceIds=[inst["InstanceId"]], WaiterConfig={"Delay": 1})
    e_inst = explain(server, inst["InstanceId"])
    assert e_inst["image_id"] == image and len(e_inst["parts"]) == 1
    root = e_inst["parts"][0]
    assert root["decision"]["rule"] == "R-OUT-3" and root["decision"]["operation"] == "RunInstances"
    assert root["chain"][1]["id"] == sid and root["data_key_shared_with_parent"] is True


def test_explain_unknown_provenance_and_missing(server: ServerProcess, ec2: Any) -> None:
    """A resource made before provenance was recorded (its row removed, as an old database
    has none) is explained without a rule; an unknown id fails with status 1."""
    vid = volume(ec2, Encrypted=True)
    engine = create_engine(server.db_url or f"sqlite:///{server.data_dir / 'metadata.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM ec2_provenance WHERE resource_id = :id"), {"id": vid})
    finally:
        engine.dispose()
    e = explain(server, vid)
    assert e["decision"] is None
    assert e["decision_note"] == "unknown (created before provenance was recorded)"
    assert e["key"]["aliases"] == ["alias/aws/ebs"]
    missing = run(server, "explain", "vol-0123456789abcdef0")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


# ----------------------------------------------------------------------------- report


def test_report_unencrypted_volume_and_ebd(server: ServerProcess, ec2: Any, acct: str) -> None:
    vid = volume(ec2)
    assert {"UNENCRYPTED_VOLUME", "EBD_OFF"} <= codes(server, acct)
    out = run(server, "report", "--account", acct, "--fail-on", "medium")
    assert out.returncode == 1 and vid in out.stdout and "UNENCRYPTED_VOLUME" in out.stdout
    ec2.delete_volume(VolumeId=vid)
    ec2.enable_ebs_encryption_by_default()
    assert codes(server, acct) == set()
    assert run(server, "report", "--account", acct, "--fail-on", "info").returncode == 0


def test_report_sharing_and_unencrypted_snapshot_and_image(server: ServerProcess, ec2: Any, acct: str,
                                                           acct2: str) -> None:
    ec2.enable_ebs_encryption_by_default()
    vid = volume(ec2, Encrypted=False)  # R-OUT-7: Encrypted=false cannot switch EBD off
    assert "UNENCRYPTED_VOLUME" not in codes(server, acct)
    ec2.disable_ebs_encryption_by_default()
    plain_vid = volume(ec2)
    plain_sid = snapshot(ec2, plain_vid)
    ec2.enable_ebs_encryption_by_default()
    assert "UNENCRYPTED_SNAPSHOT" in codes(server, acct, plain_sid)
    ec2.modify_snapshot_attribute(SnapshotId=plain_sid, Attribute="createVolumePermission", OperationType="add",
                                  GroupNames=["all"])
    public = [f for f in findings(server, acct) if f["code"] == "SNAPSHOT_SHARED"]
    assert public and public[0]["severity"] == "high" and public[0]["details"] == ["all"]
    ec2.modify_snapshot_attribute(SnapshotId=plain_sid, Attribute="createVolumePermission", OperationType="remove",
                                  GroupNames=["all"])
    ec2.modify_snapshot_attribute(SnapshotId=plain_sid, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[acct2])
    shared = [f for f in findings(server, acct) if f["code"] == "SNAPSHOT_SHARED"]
    assert shared[0]["severity"] == "low" and shared[0]["details"] == [acct2]
    image = ec2.register_image(Name=f"plain-{acct}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": plain_sid}}]
                               )["ImageId"]
    ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": acct2}]})
    assert {"UNENCRYPTED_IMAGE", "IMAGE_SHARED"} <= codes(server, acct, image)
    csv_out = run(server, "report", "--account", acct, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert {r["code"] for r in rows} >= {"UNENCRYPTED_IMAGE", "IMAGE_SHARED", "SNAPSHOT_SHARED"}

    ec2.deregister_image(ImageId=image)
    ec2.modify_snapshot_attribute(SnapshotId=plain_sid, Attribute="createVolumePermission", OperationType="remove",
                                  UserIds=[acct2])
    ec2.delete_snapshot(SnapshotId=plain_sid)
    ec2.delete_volume(VolumeId=plain_vid)
    assert codes(server, acct) == set()
    assert explain(server, vid)["encrypted"] is True


def test_report_keys_pending_deletion_disabled_and_open(server: ServerProcess, ec2: Any, kms: Any,
                                                        acct: str, acct2: str) -> None:
    ec2.enable_ebs_encryption_by_default()
    key = kms.create_key()["KeyMetadata"]
    vid = volume(ec2, Encrypted=True, KmsKeyId=key["KeyId"])
    sid = snapshot(ec2, vid)
    image = ec2.register_image(Name=f"img-{acct}", RootDeviceName="/dev/xvda",
                               BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])["ImageId"]
    assert codes(server, acct) == set()

    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    [pending] = [f for f in findings(server, acct) if f["code"] == "KEY_PENDING_DELETION"]
    assert pending["severity"] == "critical" and pending["resource"] == key["Arn"]
    assert any(vid in d for d in pending["details"]) and f"{image} (image)" in pending["details"]
    assert run(server, "report", "--account", acct, "--fail-on", "critical").returncode == 1
    kms.cancel_key_deletion(KeyId=key["KeyId"])  # leaves the key Disabled, as AWS does
    [disabled] = [f for f in findings(server, acct) if f["code"] == "KEY_DISABLED"]
    assert disabled["severity"] == "high"
    assert run(server, "report", "--account", acct, "--fail-on", "critical").returncode == 0
    kms.enable_key(KeyId=key["KeyId"])
    assert codes(server, acct) == set()

    original = kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"]
    key_shared_with(kms, key["KeyId"], acct2)
    [opened] = [f for f in findings(server, acct) if f["code"] == "KEY_OPEN_TO_ACCOUNTS"]
    assert opened["severity"] == "medium" and acct2 in opened["message"]
    policy = json.loads(original)
    policy["Statement"].append({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"})
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
    [anyone] = [f for f in findings(server, acct) if f["code"] == "KEY_OPEN_TO_ANY_ACCOUNT"]
    assert anyone["severity"] == "high"
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=original)
    assert codes(server, acct) == set()

    grant = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=f"arn:aws:iam::{acct2}:root",
                             Operations=["Decrypt"])
    assert "KEY_GRANTED_TO_ACCOUNTS" in codes(server, acct, key["Arn"])
    kms.revoke_grant(KeyId=key["KeyId"], GrantId=grant["GrantId"])
    assert codes(server, acct) == set()


def test_report_image_with_several_keys(server: ServerProcess, ec2: Any, kms: Any, acct: str) -> None:
    ec2.enable_ebs_encryption_by_default()
    k1, k2 = kms.create_key()["KeyMetadata"], kms.create_key()["KeyMetadata"]
    s1 = snapshot(ec2, volume(ec2, Encrypted=True, KmsKeyId=k1["KeyId"]))
    s2 = snapshot(ec2, volume(ec2, Encrypted=True, KmsKeyId=k2["KeyId"]))
    image = ec2.register_image(Name=f"two-keys-{acct}", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": s1}}, {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": s2}}
    ])["ImageId"]
    [multi] = [f for f in findings(server, acct) if f["code"] == "IMAGE_MULTIPLE_KEYS"]
    assert multi["resource"] == image and sorted(multi["details"]) == sorted([k1["Arn"], k2["Arn"]])
    table = run(server, "report", "--account", acct)
    assert table.returncode == 0 and "IMAGE_MULTIPLE_KEYS" in table.stdout
    ec2.deregister_image(ImageId=image)
    assert codes(server, acct) == set()
