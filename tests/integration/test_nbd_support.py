"""Helpers for the attached-volume / NBD tests (named ``test_nbd_support`` to sit with them;
it holds no tests): an instance to attach to, attached volumes, and the real NBD clients
(qemu-io, qemu-img, nbdinfo, nbdcopy) run as subprocesses with a timeout."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from typing import Any

import pytest

from tests.helpers import empty_snapshot, register

ZONE = "us-east-1a"
_images = itertools.count(1)
BLOCK = 524288
MIB = 1024 * 1024


def need(*tools: str) -> None:
    """Skip (with the reason) unless every tool is installed (ci/install-nbd.sh installs them)."""
    missing = [t for t in tools if shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (bash ci/install-nbd.sh installs it)")


def tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def run(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def qemu_io(uri: str, *commands: str, timeout: float = 120) -> str:
    """Run qemu-io commands on an NBD export; a failed command or pattern check fails the test."""
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    out = run(*args, uri, timeout=timeout)
    text = out.stdout + out.stderr
    assert "fail" not in text.lower() and "error" not in text.lower(), text
    return text


def launch(ec2: Any) -> str:
    """A running instance in ZONE (root volume from an empty snapshot)."""
    image_id = register(ec2, f"nbd-{next(_images)}", empty_snapshot(ec2))
    iid = ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                            Placement={"AvailabilityZone": ZONE})["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return iid


def attach_new(ec2: Any, instance_id: str, device: str, **create: Any) -> str:
    """A new volume (``create``: CreateVolume arguments) attached at ``device``, in-use."""
    create.setdefault("Size", 1)
    vol = ec2.create_volume(AvailabilityZone=ZONE, **create)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    ec2.attach_volume(VolumeId=vol, InstanceId=instance_id, Device=device)
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return vol


def uri(srv: Any, volume_id: str) -> str:
    return f"nbd://127.0.0.1:{srv.nbd_port}/{volume_id}"


def snapshot_of(ec2: Any, volume_id: str) -> str:
    sid = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return sid
