"""Attachments (R-ATTACH-1) and their key lifecycle (R-ATTACH-2), seen through the EC2 API,
the KMS audit trail and the NBD server's exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import error_of, new_key
from tests.integration.test_nbd_support import ZONE, attach_new, launch, need, qemu_io, run, uri


def exported(srv: Any, volume_id: str) -> bool:
    proc = run("nbdinfo", "--size", uri(srv, volume_id), timeout=30, check=False)
    return proc.returncode == 0


def test_attach_detach_states_and_errors(server: Any, ec2: Any) -> None:
    """R-ATTACH-1: attaching → attached / in-use, detaching → available; AWS's errors."""
    need("nbdinfo")
    iid = launch(ec2)
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    assert error_of(lambda: ec2.attach_volume(VolumeId=vol, InstanceId="i-0123456789abcdef0",
                                              Device="/dev/sdf"))[0] == "InvalidInstanceID.NotFound"
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert not exported(server, vol)  # not attached: refused at negotiation
    assert error_of(lambda: ec2.attach_volume(VolumeId="vol-0123456789abcdef0", InstanceId=iid,
                                              Device="/dev/sdf"))[0] == "InvalidVolume.NotFound"
    att = ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf")
    assert att["State"] == "attaching" and att["Device"] == "/dev/sdf"
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    desc = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]
    assert desc["State"] == "in-use"
    assert [(a["InstanceId"], a["Device"], a["State"]) for a in desc["Attachments"]] == [(iid, "/dev/sdf", "attached")]
    assert exported(server, vol)
    # the same volume again, and another volume at a device name already taken
    assert error_of(lambda: ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdg"))[0] == "VolumeInUse"
    other = ec2.create_volume(AvailabilityZone=ZONE, Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[other], WaiterConfig={"Delay": 1})
    code, message = error_of(lambda: ec2.attach_volume(VolumeId=other, InstanceId=iid, Device="/dev/sdf"))
    assert code == "InvalidParameterValue" and "Attachment point /dev/sdf is already in use" in message
    # a volume in another Availability Zone
    far = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[far], WaiterConfig={"Delay": 1})
    assert error_of(lambda: ec2.attach_volume(VolumeId=far, InstanceId=iid,
                                              Device="/dev/sdh"))[0] == "InvalidVolume.ZoneMismatch"
    assert ec2.detach_volume(VolumeId=vol)["State"] == "detaching"
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"] == []
    assert not exported(server, vol)  # detached: the export is gone with the key
    assert error_of(lambda: ec2.detach_volume(VolumeId=vol))[0] == "IncorrectState"
    # terminated instances take no volumes
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    assert error_of(lambda: ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf"))[0] == "IncorrectState"


def test_run_instances_attaches_and_delete_on_termination(server: Any, ec2: Any) -> None:
    """R-ATTACH-1: RunInstances' block device mappings are attachments (exported while the
    instance runs); DeleteOnTermination decides what terminate leaves behind."""
    need("nbdinfo", "qemu-io")
    iid = launch(ec2)
    kept = attach_new(ec2, iid, "/dev/sdk")
    root = [v for v in ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
            if v["Attachments"][0]["Device"] == "/dev/xvda"][0]
    assert root["Attachments"][0]["DeleteOnTermination"] is True
    assert exported(server, root["VolumeId"])
    qemu_io(uri(server, kept), "write -P 0x5a 0 4096", "flush")
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    assert error_of(lambda: ec2.describe_volumes(VolumeIds=[root["VolumeId"]]))[0] == "InvalidVolume.NotFound"
    assert ec2.describe_volumes(VolumeIds=[kept])["Volumes"][0]["State"] == "available"
    assert not exported(server, kept)
    # the data written before terminate is in the volume: attach it elsewhere and read it
    other = launch(ec2)
    ec2.attach_volume(VolumeId=kept, InstanceId=other, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[kept], WaiterConfig={"Delay": 1})
    qemu_io(uri(server, kept), "read -P 0x5a 0 4096", "read -P 0 4096 4096")


def _audit(server: Any) -> list[dict[str, Any]]:
    path = Path(server.data_dir) / "audit" / "kms-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def test_key_lifecycle_disabled_key_keeps_attached_io(server: Any, ec2: Any, kms: Any) -> None:
    """R-ATTACH-2: the data key is decrypted once at attach (audited, via EC2); disabling the
    KMS key afterwards does not interrupt I/O; a later attach or start with it fails."""
    need("qemu-io", "nbdinfo")
    key = new_key(kms, "attach lifecycle")
    iid = launch(ec2)
    before = len(_audit(server))
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True, KmsKeyId=key)
    decrypts = [e for e in _audit(server)[before:] if e["eventName"] == "Decrypt"
                and e["userIdentity"].get("invokedBy") == "ec2.amazonaws.com"
                and any(vol in str(v) for v in e["requestParameters"].get("encryptionContext", {}).values())]
    assert decrypts, "the attach decrypted the data key through EC2 (audited)"
    qemu_io(uri(server, vol), "write -P 0x11 0 65536", "flush")
    kms.disable_key(KeyId=key)
    after_disable = len(_audit(server))
    # I/O goes on with the key held in memory: no KMS call is made for it
    qemu_io(uri(server, vol), "read -P 0x11 0 65536", "write -P 0x22 1048576 65536", "flush",
            "read -P 0x22 1048576 65536")
    assert not [e for e in _audit(server)[after_disable:] if e["eventName"] == "Decrypt"]
    # CreateSnapshot of the in-use volume still works (same data key, no KMS needed)
    sid = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1})
    # a new attach with that key fails, as does starting the instance again
    ec2.detach_volume(VolumeId=vol)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert not exported(server, vol)
    code, _message = error_of(lambda: ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf"))
    assert code == "IncorrectState"
    kms.enable_key(KeyId=key)
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf")
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    qemu_io(uri(server, vol), "read -P 0x22 1048576 65536")
    ec2.stop_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    assert not exported(server, vol)  # stopped: the host let go of the key
    kms.disable_key(KeyId=key)
    ec2.start_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "stopped"
    assert inst["StateReason"]["Code"] == "Client.InvalidKMSKey.InvalidState"
    assert not exported(server, vol)


def test_pending_deletion_key_keeps_attached_io(server: Any, ec2: Any, kms: Any) -> None:
    """R-ATTACH-2: a key scheduled for deletion after attach does not interrupt I/O."""
    need("qemu-io")
    key = new_key(kms, "pending deletion")
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True, KmsKeyId=key)
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    qemu_io(uri(server, vol), "write -P 0x33 4096 8192", "flush", "read -P 0x33 4096 8192")


CREDS = """
[alice]
aws_access_key_id = "AKIAALICENBD00000001"
aws_secret_access_key = "alice-secret"
account_id = "333333333301"

[bob]
aws_access_key_id = "AKIABOBNBD0000000002"
aws_secret_access_key = "bob-secret"
account_id = "444444444401"
"""


def test_strict_auth_exports_need_the_owners_export_secret(server_factory: Any, tmp_path: Path) -> None:
    """Under strict auth an export is served only with its per-attachment secret, which
    DescribeVolumes shows to the volume's account alone; a new attachment has a new one."""
    import boto3
    from botocore.config import Config

    need("nbdinfo")
    creds = tmp_path / "creds.toml"
    creds.write_text(CREDS)
    srv = server_factory(["--auth", "strict", "--credentials", str(creds)])

    def client(service: str, key: str, secret: str) -> Any:
        return boto3.client(service, endpoint_url=srv.url, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))

    alice = client("ec2", "AKIAALICENBD00000001", "alice-secret")
    bob = client("ec2", "AKIABOBNBD0000000002", "bob-secret")
    iid = launch(alice)
    vol = attach_new(alice, iid, "/dev/sdf", Encrypted=True)
    tags = {t["Key"]: t["Value"] for t in alice.describe_volumes(VolumeIds=[vol])["Volumes"][0].get("Tags", [])}
    name = tags["ebscrypt:nbd-export"]
    assert name.startswith(f"{vol}:") and len(name) == len(vol) + 33
    assert error_of(lambda: bob.describe_volumes(VolumeIds=[vol]))[0] == "InvalidVolume.NotFound"
    assert exported(srv, name)
    assert not exported(srv, vol)  # the bare volume id is not enough under strict auth
    assert not exported(srv, f"{vol}:{'0' * 32}")
    alice.detach_volume(VolumeId=vol)
    alice.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    assert not exported(srv, name)
    alice.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/sdf")
    alice.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1})
    tags = {t["Key"]: t["Value"] for t in alice.describe_volumes(VolumeIds=[vol])["Volumes"][0].get("Tags", [])}
    assert tags["ebscrypt:nbd-export"] != name and exported(srv, tags["ebscrypt:nbd-export"])
    assert not exported(srv, name)  # the old attachment's secret opens nothing


def test_aws_cli_attach_wait_and_nbdinfo(server: Any, endpoint: str, aws_cli_env: dict[str, str], ec2: Any,
                                         acct: str) -> None:
    """The README's walk-through with the AWS CLI: attach-volume, wait volume-in-use, nbdinfo,
    detach-volume, wait volume-available (R-ATTACH-1)."""
    import shutil
    import subprocess

    need("nbdinfo")
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed (it comes with the test extras)")
    iid = launch(ec2)
    vol = ec2.create_volume(AvailabilityZone=ZONE, Size=2, Encrypted=True)["VolumeId"]
    env = dict(aws_cli_env, AWS_ACCESS_KEY_ID=acct)

    def cli(*args: str) -> str:
        out = subprocess.run(["aws", "--endpoint-url", endpoint, "--output", "json", "ec2", *args],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    cli("wait", "volume-available", "--volume-ids", vol)
    assert json.loads(cli("attach-volume", "--volume-id", vol, "--instance-id", iid, "--device", "/dev/sdf"))[
        "State"] == "attaching"
    cli("wait", "volume-in-use", "--volume-ids", vol)
    assert "export-size: 2147483648" in run("nbdinfo", uri(server, vol)).stdout
    cli("detach-volume", "--volume-id", vol)
    cli("wait", "volume-available", "--volume-ids", vol)
    assert not exported(server, vol)


def test_attach_to_stopped_instance_exports_at_start(server: Any, ec2: Any) -> None:
    """AWS attaches to running or stopped instances; a stopped one has no host: its volumes
    are exported (their keys decrypted) when it starts (R-ATTACH-1/2)."""
    need("nbdinfo")
    iid = launch(ec2)
    ec2.stop_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True)
    assert not exported(server, vol)
    ec2.start_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1})
    assert exported(server, vol)
