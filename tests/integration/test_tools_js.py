"""The AWS SDK for JavaScript v3 (client-ec2/kms/ebs, pinned in tests/tools/js/package.json) runs
the golden path against ebscrypt with its own waiters: tests/tools/js/golden.mjs.

Encrypted volume + snapshot (waitUntilVolumeAvailable / waitUntilSnapshotCompleted), a root
snapshot uploaded with StartSnapshot/PutSnapshotBlock/CompleteSnapshot, RegisterImage,
CopyImage re-encrypted to a key named by alias (waitUntilImageAvailable), then
ListSnapshotBlocks / GetSnapshotBlock / ListChangedBlocks read the bytes back. The script
asserts as it goes; here we check what it reports, including the JSON types on the wire
(R-WIRE: BlockIndex, VolumeSize, BlockSize are JSON numbers; timestamps epoch seconds).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import REGION, new_account, pattern, read_blocks
from tests.tools.support import TOOLS_DIR, require, run, tool_env, which

JS_DIR = TOOLS_DIR / "js"


@pytest.fixture(scope="module")
def node() -> str:
    exe = require("node", which("node"))
    check = subprocess.run([exe, "check-installed.mjs"], cwd=JS_DIR, capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"AWS SDK for JavaScript v3 not installed in tests/tools/js/node_modules "
                    f"({check.stderr.strip()}): run `bash ci/install-tools.sh`")
    return exe


def test_js_sdk_golden_path(node: str, endpoint: str, aws: Callable[..., Any], tmp_path: Path) -> None:
    account = new_account()
    env = tool_env(account, EBSCRYPT_ENDPOINT=endpoint, EBSCRYPT_TAG=f"js-{account}", HOME=str(tmp_path))
    proc = run([node, "--no-warnings", "golden.mjs"], env=env, cwd=JS_DIR, timeout=180)
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # numbers are numbers, on the wire and once parsed; timestamps parse as Dates
    types = out["types"]
    for wire in ("wireBlockIndex", "wireVolumeSize", "wireBlockSize", "wireChangedBlockIndex",
                 "wireStartVolumeSize", "wireStartBlockSize"):
        assert types[wire] == "number", (wire, types)
    assert types["wireExpiryTime"] == "number" and types["wireStartTime"] == "number"   # epoch seconds
    for parsed in ("blockIndex", "listVolumeSize", "listBlockSize", "dataLength", "changedBlockIndex",
                   "volumeSize", "startVolumeSize", "snapshotVolumeSize"):
        assert types[parsed] == "number", (parsed, types)
    assert types["expiryTime"] == "Date" and types["startTime"] == "Date"

    # errors surface as the SDK's typed exceptions, as AWS's would
    errors = {k: (v["name"], v["status"], v["fault"]) for k, v in out["errors"].items()}
    assert errors == {
        "describeVolumes": ("InvalidVolume.NotFound", 400, "client"),
        "copyImageKeyWithoutEncrypted": ("InvalidParameterDependency", 400, "client"),   # R-OUT-1
        "describeKey": ("NotFoundException", 400, "client"),
        "getSnapshotBlock": ("ResourceNotFoundException", 404, "client"),
    }
    assert out["errors"]["getSnapshotBlock"]["reason"] == "SNAPSHOT_NOT_FOUND"

    # cross-check with boto3: keys, and the bytes (R-IMG-1, R-DATA-1)
    ec2, ebs = aws("ec2", account=account, region=REGION), aws("ebs", account=account, region=REGION)
    golden = ec2.describe_images(ImageIds=[out["golden"]])["Images"][0]
    assert golden["State"] == "available"
    snaps = ec2.describe_snapshots(SnapshotIds=list(out["goldenSnapshots"].values()))["Snapshots"]
    assert {s["KmsKeyId"] for s in snaps} == {out["goldenKey"]}
    assert ec2.describe_snapshots(SnapshotIds=[out["rootSnapshot"]])["Snapshots"][0]["KmsKeyId"] == out["buildKey"]
    expected = {i: pattern(f"js-{account}", i) for i in (0, 4, 11)}
    assert read_blocks(ebs, out["goldenSnapshots"]["/dev/xvda"]) == expected
    assert out["readBack"] == {str(i): hashlib.sha256(b).hexdigest() for i, b in expected.items()}
