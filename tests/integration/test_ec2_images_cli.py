"""The same image and instance calls through the AWS CLI (``aws --endpoint-url``), R-WIRE."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Callable

from tests.helpers import empty_snapshot, new_account


def cli(endpoint: str, env: dict[str, str], account: str, *args: str) -> Any:
    env = dict(env, AWS_ACCESS_KEY_ID=account)
    out = subprocess.run(["aws", "--endpoint-url", endpoint, "--output", "json", "ec2", *args],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def test_register_describe_run_terminate_with_the_cli(endpoint: str, aws_cli_env: dict[str, str],
                                                      aws: Callable[..., Any]) -> None:
    account = new_account()
    snap = empty_snapshot(aws("ec2", account=account))
    image_id = cli(endpoint, aws_cli_env, account, "register-image", "--name", "cli-image",
                   "--root-device-name", "/dev/xvda", "--architecture", "x86_64",
                   "--block-device-mappings", json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])
                   )["ImageId"]
    cli(endpoint, aws_cli_env, account, "wait", "image-available", "--image-ids", image_id)
    images = cli(endpoint, aws_cli_env, account, "describe-images", "--owners", "self")["Images"]
    assert [i["ImageId"] for i in images] == [image_id] and images[0]["State"] == "available"

    res = cli(endpoint, aws_cli_env, account, "run-instances", "--image-id", image_id, "--count", "1",
              "--instance-type", "t3.micro", "--block-device-mappings",
              json.dumps([{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}}]))
    iid = res["Instances"][0]["InstanceId"]
    cli(endpoint, aws_cli_env, account, "wait", "instance-running", "--instance-ids", iid)
    described = cli(endpoint, aws_cli_env, account, "describe-instances", "--instance-ids", iid)
    inst = described["Reservations"][0]["Instances"][0]
    vol = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert cli(endpoint, aws_cli_env, account, "describe-volumes", "--volume-ids", vol)["Volumes"][0]["Encrypted"]

    cli(endpoint, aws_cli_env, account, "terminate-instances", "--instance-ids", iid)
    cli(endpoint, aws_cli_env, account, "wait", "instance-terminated", "--instance-ids", iid)
    cli(endpoint, aws_cli_env, account, "deregister-image", "--image-id", image_id)
    assert cli(endpoint, aws_cli_env, account, "describe-images", "--owners", "self")["Images"] == []
