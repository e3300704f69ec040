"""Helpers the integration, console and tool tests share: fresh accounts, key policies,
EBS direct-API uploads, and small describe/wait wrappers over boto3 clients.

One module for what three grew separately (the images, volumes and tools helpers).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import ClientError

BLOCK = 524288
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"

_counter = itertools.count(1)
_run = os.getpid() % 1000


def new_account(prefix: str = "77") -> str:
    """A 12-digit account id no other test (or member) uses: the run's pid and a counter
    (``prefix`` only tells the tests' accounts apart in a log)."""
    return f"{prefix}{_run:03d}{next(_counter):07d}"[:12]


# The actions a key policy grants other accounts: all the EBS and image tests need
# (``key_policy``), or only what using an encrypted volume or snapshot needs
# (``shared_key_policy``, SPEC R-KEY-7, R-SHARE-4).
_USE_ACTIONS = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                "kms:DescribeKey", "kms:CreateGrant"]
_EBS_ACTIONS = ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:GenerateDataKey*",
                "kms:ReEncrypt*"]


def key_policy(owner: str, *others: str, actions: list[str] | None = None,
               sid: str = "Allow use of the key by other accounts") -> str:
    """The default key policy plus, for ``others``, a statement that lets them use the key."""
    statements: list[dict[str, Any]] = [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{owner}:root"}, "Action": "kms:*", "Resource": "*",
    }]
    if others:
        statements.append({
            "Sid": sid, "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam::{o}:root" for o in others]},
            "Action": list(actions or _USE_ACTIONS),
            "Resource": "*",
        })
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def shared_key_policy(owner: str, *others: str) -> str:
    """Default key policy plus the EBS actions for ``others`` (SPEC R-KEY-7, R-SHARE-4)."""
    return key_policy(owner, *others, actions=_EBS_ACTIONS, sid="Allow use by other accounts")


def error_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response["Error"]
    return err["Code"], err.get("Message", "")


def until(check: Callable[[], Any], timeout: float = 30) -> bool:
    """Whether ``check()`` became true within ``timeout`` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def child_pids(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux: /proc/PID/task/*/children); a thread
    that ended since the listing has none."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_snapshot(ebs: Any, blocks: dict[int, bytes], *, volume_size: int = 1, **start: Any) -> str:
    """A completed snapshot holding ``blocks`` (EBS direct APIs)."""
    snap = ebs.start_snapshot(VolumeSize=volume_size, **start)
    sid = snap["SnapshotId"]
    for index, data in blocks.items():
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                               Checksum=sha(data), ChecksumAlgorithm="SHA256")
    h = hashlib.sha256()
    for index in sorted(blocks):
        h.update(hashlib.sha256(blocks[index]).digest())
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks),
                          Checksum=base64.b64encode(h.digest()).decode(),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    return sid


def read_blocks(ebs: Any, snapshot_id: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    token = None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **({"NextToken": token} if token else {}))
        for block in page["Blocks"]:
            got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"],
                                         BlockToken=block["BlockToken"])
            out[block["BlockIndex"]] = got["BlockData"].read()
        token = page.get("NextToken")
        if not token:
            return out


def pattern(tag: str, index: int = 0) -> bytes:
    seed = hashlib.sha256(f"{tag}:{index}".encode()).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


def empty_snapshot(ec2: Any, *, size: int = 1, encrypted: bool | None = None, kms_key_id: str | None = None,
                   zone: str | None = None) -> str:
    """A completed snapshot of a new (empty) volume, through CreateVolume + CreateSnapshot."""
    region = ec2.meta.region_name
    kw: dict[str, Any] = {"AvailabilityZone": zone or f"{region}a", "Size": size}
    if encrypted is not None:
        kw["Encrypted"] = encrypted
    if kms_key_id:
        kw["KmsKeyId"] = kms_key_id
    vol = ec2.create_volume(**kw)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol])
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    ec2.delete_volume(VolumeId=vol)
    return snap


def register(ec2: Any, name: str, root_snapshot: str, *data: tuple[str, str], wait: bool = True) -> str:
    """RegisterImage over a root snapshot (/dev/xvda) and data snapshots ((device, snap))."""
    mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root_snapshot}}]
    mappings += [{"DeviceName": device, "Ebs": {"SnapshotId": snap}} for device, snap in data]
    image_id = ec2.register_image(Name=name, RootDeviceName="/dev/xvda", Architecture="x86_64",
                                  VirtualizationType="hvm", EnaSupport=True,
                                  BlockDeviceMappings=mappings)["ImageId"]
    if wait:
        ec2.get_waiter("image_available").wait(ImageIds=[image_id])
    return image_id


def image(ec2: Any, image_id: str) -> dict[str, Any]:
    return ec2.describe_images(ImageIds=[image_id])["Images"][0]


def snapshots_of(ec2: Any, image_id: str) -> dict[str, dict[str, Any]]:
    """device → the DescribeSnapshots record of that mapping's snapshot."""
    img = image(ec2, image_id)
    out = {}
    for m in img["BlockDeviceMappings"]:
        snap_id = m.get("Ebs", {}).get("SnapshotId")
        if snap_id:
            out[m["DeviceName"]] = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
    return out


def new_key(kms: Any, description: str = "ebscrypt test key") -> str:
    """A symmetric customer managed key; returns its ARN."""
    return kms.create_key(Description=description)["KeyMetadata"]["Arn"]


def volumes_of(ec2: Any, instance_id: str) -> dict[str, dict[str, Any]]:
    """device → DescribeVolumes record of each volume attached to the instance."""
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    out = {}
    for m in inst["BlockDeviceMappings"]:
        out[m["DeviceName"]] = ec2.describe_volumes(VolumeIds=[m["Ebs"]["VolumeId"]])["Volumes"][0]
    return out


def instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def managed_ebs_key(kms: Any) -> str:
    return kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]


def error_code(err: ClientError) -> str:
    return err.response["Error"]["Code"]


def create_key(kms: Any, owner: str, *others: str, **kw: Any) -> str:
    return kms.create_key(Policy=shared_key_policy(owner, *others), **kw)["KeyMetadata"]["Arn"]


def wait_state(describe: Callable[[], dict[str, Any]], states: set[str], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        item = describe()
        if item["State"] in states or time.monotonic() > deadline:
            return item
        time.sleep(0.05)


def snapshot(ec2: Any, sid: str) -> dict[str, Any]:
    return ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]


def volume(ec2: Any, vid: str) -> dict[str, Any]:
    return ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]


def final_snapshot(ec2: Any, sid: str) -> dict[str, Any]:
    return wait_state(lambda: snapshot(ec2, sid), {"completed", "error"})


def final_volume(ec2: Any, vid: str) -> dict[str, Any]:
    return wait_state(lambda: volume(ec2, vid), {"available", "in-use", "error"})


def make_snapshot(ec2: Any, *, size: int = 1, zone: str | None = None, **volume_kw: Any) -> dict[str, Any]:
    """A completed snapshot of a new volume (encryption per ``volume_kw``)."""
    region = ec2.meta.region_name
    vol = ec2.create_volume(AvailabilityZone=zone or f"{region}a", Size=size, **volume_kw)
    final_volume(ec2, vol["VolumeId"])
    snap = ec2.create_snapshot(VolumeId=vol["VolumeId"])
    return final_snapshot(ec2, snap["SnapshotId"])


# --------------------------------------------------------------------------- the KMS engine

# Operation -> (typed arguments, KeyEngine method): unit tests call the engine directly,
# outside a request (and its audit event), as a handler of ebscrypt/services/kms would.
def _kms_operations() -> dict[str, tuple[Any, str]]:
    from ebscrypt.engines.kms import api

    return {
        "CreateKey": (api.CreateKey, "create_key"),
        "DescribeKey": (api.KeyWithGrantTokens, "describe_key_metadata"),
        "EnableKey": (api.KeyRef, "enable_key"),
        "DisableKey": (api.KeyRef, "disable_key"),
        "ScheduleKeyDeletion": (api.ScheduleKeyDeletion, "schedule_key_deletion"),
        "GetKeyPolicy": (api.GetKeyPolicy, "get_key_policy"),
        "PutKeyPolicy": (api.PutKeyPolicy, "put_key_policy"),
        "CreateAlias": (api.AliasTarget, "create_alias"),
        "UpdateAlias": (api.AliasTarget, "update_alias"),
        "DeleteAlias": (api.DeleteAlias, "delete_alias"),
        "CreateGrant": (api.CreateGrant, "create_grant"),
        "ListGrants": (api.ListGrants, "list_grants"),
        "RetireGrant": (api.RetireGrant, "retire_grant"),
        "RevokeGrant": (api.RevokeGrant, "revoke_grant"),
        "Encrypt": (api.Encrypt, "encrypt"),
        "Decrypt": (api.Decrypt, "decrypt_ciphertext"),
        "GenerateDataKey": (api.GenerateDataKey, "generate_data_key"),
    }


def kms_op(engine: Any, operation: str, caller: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``operation`` on the key engine with the typed arguments ``params`` (member names) give."""
    from ebscrypt.engines.kms import api

    args_type, method = _kms_operations()[operation]
    return getattr(engine, method)(caller, api.from_members(args_type, params))


def kms_op_of(engine: Any, operation: str) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """``kms_op`` bound to an engine and an operation: ``(caller, params) -> result``."""
    return functools.partial(kms_op, engine, operation)


@contextmanager
def local_block_engine(tmp_path: Path, **options: Any) -> Iterator[Any]:
    """A BlockEngine on a SQLite file and a local block directory under ``tmp_path``, run in
    process (no worker processes, no grace period before collection); closed after."""
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.blocks.store import LocalDirStore
    from ebscrypt.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = BlockEngine(db, LocalDirStore(tmp_path / "blocks"), processes=0, gc_grace_seconds=0, **options)
    try:
        yield engine
    finally:
        engine.close()
        db.dispose()
