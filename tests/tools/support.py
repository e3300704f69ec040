"""Helpers for the tool integration tests (tests/integration/test_tools_*.py).

Where the tools live (ci/install-tools.sh puts them there), an AMI over a snapshot holding
real bytes, and a subprocess runner that never lets a tool reach
anything but the loopback server (no metadata service, no update checks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REGION, image, upload_snapshot

TOOLS_DIR = Path(__file__).resolve().parent
REPO = TOOLS_DIR.parent.parent
SECRET = "ebscrypt-dev-secret"
ANSIBLE_VERSION = "12.3.0"

# ------------------------------------------------------------------ where the tools are

def tools_home() -> Path:
    env = os.environ.get("EBSCRYPT_TOOLS_HOME")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ebscrypt-tools"


def ansible_playbook() -> Path | None:
    """ansible-playbook of the venv ci/install-tools.sh makes (EBSCRYPT_ANSIBLE_PLAYBOOK overrides)."""
    env = os.environ.get("EBSCRYPT_ANSIBLE_PLAYBOOK")
    path = Path(env) if env else tools_home() / f"ansible-{ANSIBLE_VERSION}" / "bin" / "ansible-playbook"
    return path if path.exists() else None


def require(tool: str, found: Any) -> Any:
    if not found:
        pytest.skip(f"{tool} is not installed: run `bash ci/install-tools.sh` (needs the Debian/PyPI/npm registries)")
    return found


def tool_env(account: str, **extra: str) -> dict[str, str]:
    """Environment for a tool subprocess acting as ``account``; nothing but loopback reachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=account,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_PAGER="",
        AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata credential probing
        AWS_MAX_ATTEMPTS="3",
        CHECKPOINT_DISABLE="1",  # Packer: no update check
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def run(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 180,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def which(name: str) -> str | None:
    return shutil.which(name)


# ------------------------------------------------------------------ data

def source_ami(ec2: Any, ebs: Any, name: str, blocks: dict[int, bytes], **start: Any) -> tuple[str, str]:
    """RegisterImage over an uploaded root snapshot; returns (image id, snapshot id)."""
    snap = upload_snapshot(ebs, blocks, **start)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}]
    image_id = ec2.register_image(Name=name, RootDeviceName="/dev/xvda", Architecture="x86_64",
                                  VirtualizationType="hvm", EnaSupport=True, BlockDeviceMappings=mappings)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image_id], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return image_id, snap


def root_snapshot(ec2: Any, image_id: str) -> dict[str, Any]:
    img = image(ec2, image_id)
    root = next(m for m in img["BlockDeviceMappings"] if m["DeviceName"] == img["RootDeviceName"])
    return ec2.describe_snapshots(SnapshotIds=[root["Ebs"]["SnapshotId"]])["Snapshots"][0]
