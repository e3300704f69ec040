"""Helpers for the ec2core integration tests (no tests here; owned by ec2core)."""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Callable

from botocore.exceptions import ClientError

_counter = itertools.count(1)


def new_account(prefix: str = "31") -> str:
    """A fresh 12-digit account, so account settings (EBD) never leak between tests."""
    return f"{prefix}{os.getpid() % 1000:03d}{next(_counter):07d}"[:12]


def error_code(err: ClientError) -> str:
    return err.response["Error"]["Code"]


def shared_key_policy(owner: str, *others: str) -> str:
    """Default key policy plus the EBS actions for ``others`` (SPEC R-KEY-7, R-SHARE-4)."""
    statements = [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{owner}:root"}, "Action": "kms:*", "Resource": "*",
    }]
    if others:
        statements.append({
            "Sid": "Allow use by other accounts", "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam::{o}:root" for o in others]},
            "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:GenerateDataKey*",
                       "kms:ReEncrypt*"],
            "Resource": "*",
        })
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


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
