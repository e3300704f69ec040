"""Packer (Debian's 1.6.x, amazon-ebs builder) builds an encrypted golden AMI against ebscrypt.

The template is tests/tools/packer/golden.json, unmodified but for its variables: endpoint
through ``custom_endpoint_ec2``, ``communicator: none``, ``encrypt_boot`` + ``kms_key_id``,
``skip_region_validation``. The source AMI is registered in ebscrypt over a snapshot whose
bytes were uploaded with the EBS direct APIs (R-DATA-1). Packer launches it, stops the
instance, CreateImage (unencrypted, R-IMG-2), CopyImage ``Encrypted=true, KmsKeyId`` (R-IMG-1,
R-OUT-2), deletes the intermediate image, and cleans its temporary key pair and group.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import OTHER_REGION, REGION, image, new_account, pattern, read_blocks
from tests.tools.support import TOOLS_DIR, require, root_snapshot, run, source_ami, tool_env, which

TEMPLATES = TOOLS_DIR / "packer"


@pytest.fixture(scope="module")
def packer() -> str:
    return require("packer (Debian package `packer`)", which("packer"))


def packer_build(packer: str, template: str | Path, endpoint: str, account: str, tmp_path: Any,
                 **variables: str) -> tuple[str, str]:
    """``packer build`` → (AMI id, full output)."""
    cmd = [packer, "build", "-color=false", "-machine-readable", f"-var=endpoint={endpoint}",
           f"-var=region={REGION}"]
    cmd += [f"-var={k}={v}" for k, v in variables.items()]
    cmd.append(str(template if isinstance(template, Path) else TEMPLATES / template))
    env = tool_env(account, PACKER_CACHE_DIR=str(tmp_path / "packer_cache"), HOME=str(tmp_path),
                   PACKER_CONFIG_DIR=str(tmp_path), PACKER_LOG="0", TMPDIR=str(tmp_path))
    t0 = time.monotonic()
    proc = run(cmd, env=env, cwd=tmp_path, timeout=240, check=False)
    out = proc.stdout + proc.stderr
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"packer build exited {proc.returncode} after {took:.1f}s:\n{out[-6000:]}"
    # machine-readable: "<ts>,amazon-ebs,artifact,0,id,us-east-1:ami-..."
    found = re.findall(r",artifact,0,id,([^,\n]+)", out)
    assert found, f"no artifact id in packer output:\n{out[-4000:]}"
    # "us-east-1:ami-1,eu-west-1:ami-2" (commas escaped as %!(PACKER_COMMA) in machine-readable output)
    artifacts = dict(part.strip().split(":", 1) for part in found[-1].replace("%!(PACKER_COMMA)", ",").split(","))
    return (artifacts if len(artifacts) > 1 else next(iter(artifacts.values()))), out


def build_inputs(aws: Callable[..., Any], account: str, tag: str) -> dict[str, Any]:
    ec2, kms, ebs = aws("ec2", account=account), aws("kms", account=account), aws("ebs", account=account)
    blocks = {0: pattern(tag, 0), 3: pattern(tag, 3), 7: pattern(tag, 7)}
    base, base_snap = source_ami(ec2, ebs, f"base-os-{tag}", blocks, volume_size=1)
    key = kms.create_key(Description=f"golden key {tag}")["KeyMetadata"]["Arn"]
    return {"ec2": ec2, "kms": kms, "ebs": ebs, "blocks": blocks, "base": base, "base_snap": base_snap, "key": key}


def assert_golden(ctx: dict[str, Any], ami: str, name: str) -> dict[str, Any]:
    ec2, ebs = ctx["ec2"], ctx["ebs"]
    img = image(ec2, ami)
    assert img["State"] == "available" and img["Name"] == name
    assert {t["Key"]: t["Value"] for t in img.get("Tags", [])} == {"Name": name, "BuiltBy": "packer"}
    snap = root_snapshot(ec2, ami)
    # encrypt_boot + kms_key_id: the root snapshot is encrypted under exactly that key (R-IMG-1, R-OUT-2)
    assert snap["Encrypted"] is True and snap["KmsKeyId"] == ctx["key"]
    assert snap["State"] == "completed"
    # the bytes uploaded into the source AMI survived launch → CreateImage → re-encrypting CopyImage
    assert read_blocks(ebs, snap["SnapshotId"]) == ctx["blocks"]
    # Packer's temporaries are gone: key pair, security group, instance, intermediate image
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("packer")] == []
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert instances and {i["State"]["Name"] for i in instances} == {"terminated"}
    owned = ec2.describe_images(Owners=["self"])["Images"]
    assert sorted(i["ImageId"] for i in owned) == sorted([ctx["base"], ami])
    # the source is untouched and still unencrypted (R-KEY-4)
    base_snap = root_snapshot(ec2, ctx["base"])
    assert base_snap["SnapshotId"] == ctx["base_snap"] and base_snap["Encrypted"] is False
    return img


def test_packer_builds_encrypted_golden_ami(packer: str, aws: Callable[..., Any], endpoint: str,
                                          tmp_path: Any) -> None:
    account = new_account()
    ctx = build_inputs(aws, account, "packer")
    name = f"golden-{account}"
    ami, out = packer_build(packer, "golden.json", endpoint, account, tmp_path,
                            source_ami=ctx["base"], kms_key_id=ctx["key"], ami_name=name)
    assert "Creating temporary keypair" in out and "Deleting temporary keypair" in out
    assert_golden(ctx, ami, name)
    # the volumes Packer's instance had are deleted with it (StepCleanupVolumes checks this)
    assert ctx["ec2"].describe_volumes()["Volumes"] == []


def test_packer_ami_users_shares_with_second_account(packer: str, aws: Callable[..., Any], endpoint: str,
                                                   tmp_path: Any) -> None:
    account, consumer = new_account(), new_account()
    ctx = build_inputs(aws, account, "packer-shared")
    name = f"golden-shared-{account}"
    ami, _ = packer_build(packer, "golden-shared.json", endpoint, account, tmp_path,
                          source_ami=ctx["base"], kms_key_id=ctx["key"], ami_name=name, share_with=consumer)
    assert_golden(ctx, ami, name)
    perms = ctx["ec2"].describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": consumer}]
    seen = aws("ec2", account=consumer).describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in seen] == [ami]


def test_packer_snapshot_users_shares_snapshots_with_second_account(packer: str, aws: Callable[..., Any],
                                                                  endpoint: str, tmp_path: Any) -> None:
    account, consumer = new_account(), new_account()
    ctx = build_inputs(aws, account, "packer-snapusers")
    name = f"golden-snapusers-{account}"
    ami, _ = packer_build(packer, "golden-snapshot-users.json", endpoint, account, tmp_path,
                          source_ami=ctx["base"], kms_key_id=ctx["key"], ami_name=name, share_with=consumer)
    assert_golden(ctx, ami, name)
    snap = root_snapshot(ctx["ec2"], ami)["SnapshotId"]
    perms = ctx["ec2"].describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": consumer}]
    seen = aws("ec2", account=consumer).describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]
    assert [s["SnapshotId"] for s in seen] == [snap]


def regions_template(tmp_path: Path, keys: dict[str, str]) -> Path:
    """golden-regions.json with region_kms_key_ids filled in (Packer 1.6 does not interpolate that map)."""
    template = json.loads((TEMPLATES / "golden-regions.json").read_text())
    template["builders"][0]["region_kms_key_ids"] = keys
    path = tmp_path / "golden-regions.json"
    path.write_text(json.dumps(template))
    return path


def regions_inputs(aws: Callable[..., Any], account: str, tag: str,
                   tmp_path: Path) -> tuple[dict[str, Any], Path, str, str]:
    ctx = build_inputs(aws, account, tag)
    second = aws("kms", account=account, region=OTHER_REGION).create_key(Description="eu key")["KeyMetadata"]["Arn"]
    data_key = ctx["kms"].create_key(Description="data volume key")["KeyMetadata"]["Arn"]
    return ctx, regions_template(tmp_path, {REGION: ctx["key"], OTHER_REGION: second}), second, data_key


def test_packer_two_regions_each_under_its_own_key(packer: str, aws: Callable[..., Any], endpoint: str,
                                                   tmp_path: Path) -> None:
    """ami_regions + region_kms_key_ids: CopyImage into each region under that region's key (R-IMG-1,
    R-OUT-2); the encrypted data volume added at launch (its own key) is re-encrypted with the root
    under the one key of each copy; tags on AMIs and snapshots; default VPC/subnet found by filters."""
    account = new_account()
    ctx, template, second_key, data_key = regions_inputs(aws, account, "packer-regions", tmp_path)
    name = f"golden-regions-{account}"
    amis, out = packer_build(packer, template, endpoint, account, tmp_path, source_ami=ctx["base"],
                             kms_key_id=ctx["key"], data_kms_key_id=data_key, ami_name=name)
    assert set(amis) == {REGION, OTHER_REGION}, amis
    assert "Found VPC ID: vpc-" in out and "Found Subnet ID: subnet-" in out
    for region, key in ((REGION, ctx["key"]), (OTHER_REGION, second_key)):
        ec2 = aws("ec2", account=account, region=region)
        img = image(ec2, amis[region])
        assert img["Name"] == name and img["State"] == "available"
        assert {t["Key"]: t["Value"] for t in img["Tags"]} == {"Name": name}
        snaps = {m["DeviceName"]: ec2.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"]])["Snapshots"][0]
                 for m in img["BlockDeviceMappings"]}
        assert set(snaps) == {"/dev/xvda", "/dev/sdf"}
        assert {(s["Encrypted"], s["KmsKeyId"]) for s in snaps.values()} == {(True, key)}
        assert snaps["/dev/sdf"]["VolumeSize"] == 2
        assert all({"Key": "Purpose", "Value": "golden"} in s["Tags"] for s in snaps.values())
        ebs = aws("ebs", account=account, region=region)
        assert read_blocks(ebs, snaps["/dev/xvda"]["SnapshotId"]) == ctx["blocks"]
    # only the two results and the source remain; Packer's intermediate image is gone
    assert sorted(i["ImageId"] for i in ctx["ec2"].describe_images(Owners=["self"])["Images"]) == sorted(
        [ctx["base"], amis[REGION]])
    assert ctx["ec2"].describe_volumes()["Volumes"] == []


def test_packer_ena_support(packer: str, aws: Callable[..., Any], endpoint: str, tmp_path: Path) -> None:
    account = new_account()
    ctx, template, _, data_key = regions_inputs(aws, account, "packer-ena", tmp_path)
    amis, _ = packer_build(packer, template, endpoint, account, tmp_path, source_ami=ctx["base"],
                           kms_key_id=ctx["key"], data_kms_key_id=data_key, ami_name=f"golden-ena-{account}",
                           ena_support="true")
    assert image(ctx["ec2"], amis[REGION])["EnaSupport"] is True
