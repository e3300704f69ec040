"""Pure rules of ec2images: instance types (R-RUN-2), the instance state machine, image
states, and the per-device merge of block device mappings (R-RUN-1)."""

from __future__ import annotations

import pytest

from ebscrypt.domain import image_states as img
from ebscrypt.domain import instance_types as it
from ebscrypt.engines.ec2.instances import _merge_mappings, known_instance_types


@pytest.mark.parametrize("instance_type", [
    "t3.micro", "m5.large", "c7g.xlarge", "r6i.2xlarge", "t2.nano", "m4.large", "c4.large", "x1.16xlarge",
    "a1.medium", "c3.large", "g2.2xlarge", "i2.xlarge", "m3.medium", "r3.large", "cr1.8xlarge", "mac1.metal",
])
def test_supported_types(instance_type: str) -> None:
    assert it.supports_ebs_encryption(instance_type)
    assert it.encryption_refusal(instance_type, needs_encryption=True) is None


@pytest.mark.parametrize("instance_type", [
    "t1.micro", "m1.small", "m1.xlarge", "m2.4xlarge", "c1.medium", "cc1.4xlarge", "cc2.8xlarge",
    "cg1.4xlarge", "hi1.4xlarge", "hs1.8xlarge", "bogus",
])
def test_refused_types_only_when_encryption_is_needed(instance_type: str) -> None:
    assert not it.supports_ebs_encryption(instance_type)
    message = it.encryption_refusal(instance_type, needs_encryption=True)
    assert message and instance_type in message
    assert it.encryption_refusal(instance_type, needs_encryption=False) is None


def test_every_previous_generation_family_is_classified_and_known_to_the_model() -> None:
    known = known_instance_types()
    families = {t.split(".")[0] for t in known}
    assert it.PREVIOUS_GENERATION_FAMILIES <= families
    assert it.DEFAULT_INSTANCE_TYPE in known
    refused = {t for t in known if not it.supports_ebs_encryption(t)}
    assert {t.split(".")[0] for t in refused} == {"t1", "m1", "m2", "c1", "cc1", "cc2", "cg1", "hi1", "hs1"}


def test_instance_state_machine() -> None:
    assert it.start(it.STOPPED) == it.Transition(to=it.PENDING, then=it.RUNNING)
    assert it.start(it.RUNNING) == it.Transition()
    assert it.start(it.TERMINATED).error == "started"
    assert it.stop(it.RUNNING) == it.Transition(to=it.STOPPING, then=it.STOPPED)
    assert it.stop(it.STOPPED) == it.Transition()
    assert it.stop(it.SHUTTING_DOWN).error == "stopped"
    assert it.terminate(it.STOPPED) == it.Transition(to=it.SHUTTING_DOWN, then=it.TERMINATED)
    assert it.terminate(it.TERMINATED) == it.Transition()
    assert it.STATE_CODES == {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
                              "stopping": 64, "stopped": 80}
    assert it.incorrect_state_message("i-1", "started") == (
        "The instance 'i-1' is not in a state from which it can be started.")


def test_image_state_from_snapshots() -> None:
    assert img.image_state_after(["completed", "completed"]) == img.IMAGE_AVAILABLE
    assert img.image_state_after(["completed", "pending"]) == img.IMAGE_PENDING
    assert img.image_state_after(["pending", "error"]) == img.IMAGE_FAILED


def test_mapping_overrides_are_per_device() -> None:
    image = [
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8, "Encrypted": False}},
        {"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": "snap-2", "VolumeSize": 1, "Encrypted": True}},
        {"DeviceName": "/dev/sdc", "VirtualName": "ephemeral0"},
    ]
    merged = _merge_mappings(image, [
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": "k", "VolumeSize": 10}},
        {"DeviceName": "/dev/sdb", "NoDevice": ""},
        {"DeviceName": "/dev/sdd", "Ebs": {"VolumeSize": 4}},
    ])
    by = {m["DeviceName"]: m for m in merged}
    assert list(by) == ["/dev/xvda", "/dev/sdc", "/dev/sdd"]
    assert by["/dev/xvda"]["Ebs"] == {"SnapshotId": "snap-1", "VolumeSize": 10, "Encrypted": False}
    assert by["/dev/xvda"]["_request"] == {"Encrypted": True, "KmsKeyId": "k"}
    assert by["/dev/sdd"]["Ebs"] == {"VolumeSize": 4} and by["/dev/sdd"]["_request"] == {}
    assert image[0]["Ebs"]["VolumeSize"] == 8  # the image's own mappings are not modified
