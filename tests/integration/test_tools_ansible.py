"""Ansible 12.3.0 (amazon.aws 10.x, community.aws 10.x) runs the golden-AMI playbook against ebscrypt.

tests/tools/ansible/golden.yml, with ``module_defaults: group/aws: endpoint_url``: kms_key ×3,
ec2_vol (encrypted, kms_key_id), ec2_snapshot, ec2_snapshot_copy (encrypted, kms_key_id),
ec2_ami (register), ec2_ami_copy (encrypted, kms_key_id, wait), ec2_ami_info,
ec2_snapshot_info, and assert tasks on encryption and keys (R-OUT-2, R-SNAP-1/2, R-IMG-1/3).
The second run must succeed and report no change where the modules promise idempotency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import new_account, pattern, upload_snapshot
from tests.tools.support import TOOLS_DIR, ansible_playbook, require, run, source_ami, tool_env

PLAYBOOK = TOOLS_DIR / "ansible" / "golden.yml"


@pytest.fixture(scope="module")
def playbook_cmd() -> Callable[..., Any]:
    exe = require("ansible 12.3.0 (venv made by ci/install-tools.sh)", ansible_playbook())

    def play(endpoint: str, account: str, prefix: str, home: Path, *, second_run: bool = False,
             playbook: Path = PLAYBOOK, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        env = tool_env(account, ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
                       ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="false",
                       ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_RETRY_FILES_ENABLED="false",
                       ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
        args = [str(exe), str(playbook), "-e", f"endpoint={endpoint}", "-e", f"account={account}",
                "-e", f"prefix={prefix}", "-e", f"second_run={str(second_run).lower()}"]
        for e in extra:
            args += ["-e", e]
        proc = run(args, env=env, cwd=home, timeout=240)
        recap = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout)
        assert recap, proc.stdout[-3000:]
        ids = re.findall(r'"msg": "(\{\\".*\})"', proc.stdout)
        assert ids, proc.stdout[-3000:]
        out = json.loads(json.loads(f'"{ids[-1]}"'))
        out["recap"] = {k: int(v) for k, v in zip(("ok", "changed", "unreachable", "failed"), recap.groups())}
        out["stdout"] = proc.stdout
        return out

    return play


@pytest.fixture(scope="module")
def first_run(playbook_cmd: Callable[..., Any], endpoint: str,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    account = new_account()
    home = tmp_path_factory.mktemp("ansible")
    result = playbook_cmd(endpoint, account, "golden", home)
    result.update(account=account, home=home)
    return result


def test_ansible_playbook_builds_encrypted_golden_ami(first_run: dict[str, Any], aws: Callable[..., Any]) -> None:
    # the playbook's own assert tasks passed (run() checks the exit code); cross-check with boto3
    assert first_run["recap"]["failed"] == 0
    assert "All assertions passed" in first_run["stdout"]
    ec2 = aws("ec2", account=first_run["account"])
    keys = first_run["keys"]
    assert len(set(keys.values())) == 3
    listed = aws("kms", account=first_run["account"]).list_aliases()["Aliases"]
    aliases = {a["AliasName"]: a["TargetKeyId"] for a in listed if a["AliasName"].startswith("alias/golden-")}
    assert {name: keys[name.split("-")[-1]].split("/")[-1] for name in aliases} == aliases
    vol = ec2.describe_volumes(VolumeIds=[first_run["volume"]])["Volumes"][0]
    assert vol["Encrypted"] and vol["KmsKeyId"] == keys["build"] and vol["Size"] == 1
    assert {t["Key"]: t["Value"] for t in vol["Tags"]} == {"Name": "golden-root"}
    snaps = {s["SnapshotId"]: s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert snaps[first_run["snapshot"]]["KmsKeyId"] == keys["build"]          # R-SNAP-1
    assert snaps[first_run["copy"]]["KmsKeyId"] == keys["base"]               # R-SNAP-2 / R-OUT-2
    base = ec2.describe_images(ImageIds=[first_run["base"]])["Images"][0]
    assert base["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == first_run["copy"]   # R-IMG-3
    golden = ec2.describe_images(ImageIds=[first_run["golden"]])["Images"][0]
    assert golden["State"] == "available" and golden["Name"] == "golden-golden"
    golden_snap = snaps[golden["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]]
    assert golden_snap["Encrypted"] and golden_snap["KmsKeyId"] == keys["golden"]    # R-IMG-1
    assert golden_snap["SnapshotId"] not in (first_run["snapshot"], first_run["copy"])


def test_ansible_second_run_is_idempotent(first_run: dict[str, Any], playbook_cmd: Callable[..., Any],
                                          endpoint: str, aws: Callable[..., Any]) -> None:
    second = playbook_cmd(endpoint, first_run["account"], "golden", first_run["home"], second_run=True)
    # the playbook asserts per task: kms_key, ec2_vol, ec2_snapshot (last_snapshot_min_age),
    # ec2_ami (by image_id) and ec2_ami_copy (tag_equality) unchanged; ec2_snapshot_copy copies again
    assert second["recap"]["failed"] == 0 and second["recap"]["changed"] == 1
    for name in ("golden", "base", "volume", "snapshot", "keys"):
        assert second[name] == first_run[name], name
    assert second["copy"] != first_run["copy"]
    ec2 = aws("ec2", account=first_run["account"])
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == 2
    assert len(ec2.describe_volumes()["Volumes"]) == 1


def test_ansible_ec2_vol_attaches_encrypted_volume(playbook_cmd: Callable[..., Any], endpoint: str,
                                                   aws: Callable[..., Any], tmp_path: Path) -> None:
    account = new_account()
    ec2, kms, ebs = aws("ec2", account=account), aws("kms", account=account), aws("ebs", account=account)
    ami, _ = source_ami(ec2, ebs, "attach-base", {0: pattern("attach", 0)})
    iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    key = kms.create_key(Description="data volume key")["KeyMetadata"]["Arn"]
    out = playbook_cmd(endpoint, account, "attach", tmp_path, playbook=TOOLS_DIR / "ansible" / "attach.yml",
                       extra=(f"instance_id={iid}", f"kms_key_id={key}"))
    vol = ec2.describe_volumes(VolumeIds=[out["volume"]])["Volumes"][0]
    assert vol["Encrypted"] and vol["KmsKeyId"] == key
    assert vol["Attachments"][0]["InstanceId"] == iid and vol["Attachments"][0]["DeleteOnTermination"] is True
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    sdh = next(m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdh")
    assert sdh["Ebs"]["DeleteOnTermination"] is True
    # deleted with the instance, as promised
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [out["volume"]]}])["Volumes"] == []


def test_ansible_ec2_ami_launch_permissions_and_description(playbook_cmd: Callable[..., Any], endpoint: str,
                                                            aws: Callable[..., Any], tmp_path: Path) -> None:
    account, consumer = new_account(), new_account()
    kms, ebs = aws("kms", account=account), aws("ebs", account=account)
    key = kms.create_key(Description="share key")["KeyMetadata"]["Arn"]   # R-SHARE-3: not alias/aws/ebs
    snap = upload_snapshot(ebs, {0: pattern("ami-attrs", 0)}, Encrypted=True, KmsKeyArn=key)
    aws("ec2", account=account).get_waiter("snapshot_completed").wait(
        SnapshotIds=[snap], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    out = playbook_cmd(endpoint, account, "attrs", tmp_path, playbook=TOOLS_DIR / "ansible" / "ami_attributes.yml",
                       extra=(f"snapshot_id={snap}", f"consumer={consumer}"))
    seen = aws("ec2", account=consumer).describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in seen] == [out["image"]] and seen[0]["Description"] == "second"
