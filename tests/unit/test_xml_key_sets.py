"""wire/codec/xml_writer.py specializes a structure's writer to the exact keys of the dicts
it writes (issue 15: views are dict literals; the general writer's ``get`` of each of a
large shape's ~40 members was most of an Image's XML). Whatever the keys — any order,
subsets, ``None`` values, lists always sent, more key sets than it specializes — the
bytes are those of the general writer (R-WIRE)."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.codec.ec2_always import ALWAYS_EMITTED
from ebscrypt.wire.codec.query import _SPECIAL, _escape
from ebscrypt.wire.codec.xml_writer import XmlWriters

T = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
IMAGE: dict[str, Any] = {
    "ImageId": "ami-1", "ImageLocation": "111111111111/n", "State": "available", "OwnerId": "111111111111",
    "CreationDate": "2026-01-02T03:04:05.000Z", "Public": False, "Architecture": "x86_64", "ImageType": "machine",
    "Name": "a & b", "Description": None, "RootDeviceType": "ebs", "RootDeviceName": "/dev/xvda",
    "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "VirtualName": None, "NoDevice": None,
                             "Ebs": {"SnapshotId": "snap-1", "VolumeSize": 8, "Encrypted": True}}],
    "EnaSupport": True, "Hypervisor": "xen", "Tags": [{"Key": "Name", "Value": "x<y"}], "SourceImageId": None,
    "VirtualizationType": "hvm", "PlatformDetails": "Linux/UNIX", "UsageOperation": "RunInstances",
    "StateReason": {"Code": "c", "Message": "m"}, "DeprecationTime": "2027-01-01T00:00:00.000Z",
}


def _writers(specialized: int) -> XmlWriters:
    writers = XmlWriters(lambda shape: ALWAYS_EMITTED.get(shape.name, frozenset()), _escape, needs_escape=_SPECIAL)
    writers.MAX_SPECIALIZED = specialized  # type: ignore[misc]
    return writers


@pytest.mark.parametrize("seed", range(3))
def test_key_set_writers_write_what_the_general_writer_writes(seed: int) -> None:
    shape = codec_for("ec2").service_model.shape_for("Image")
    rng = random.Random(seed)
    general, special = _writers(0).members(shape), _writers(XmlWriters.MAX_SPECIALIZED).members(shape)
    names = list(IMAGE)
    for _ in range(3 * XmlWriters.MAX_SPECIALIZED):  # more key sets than are specialized
        keys = rng.sample(names, rng.randrange(len(names) + 1))
        value = {k: IMAGE[k] for k in keys}
        value["NotAMember"] = "ignored"
        for _repeat in range(2):  # the second time through the specialized writer
            a: list[str] = []
            b: list[str] = []
            general(a, value)
            special(b, value)
            assert "".join(a) == "".join(b), keys
    full: list[str] = []
    special(full, IMAGE)
    text = "".join(full)
    assert "<name>a &amp; b</name>" in text and "<tagSet><item><key>Name</key><value>x&lt;y</value>" in text
    assert "<description>" not in text and "<sourceImageId>" not in text  # None: left out
    bare: list[str] = []
    special(bare, {k: v for k, v in IMAGE.items() if k != "BlockDeviceMappings"})
    assert "<blockDeviceMapping></blockDeviceMapping>" in "".join(bare)  # a list always sent


def test_dicts_of_one_view_share_one_specialized_writer() -> None:
    shape = codec_for("ec2").service_model.shape_for("Snapshot")
    writers = _writers(XmlWriters.MAX_SPECIALIZED)
    write = writers.members(shape)
    for i in range(5):
        write([], {"SnapshotId": f"snap-{i}", "StartTime": T, "Tags": None})
    special = write.__globals__["_special"]
    assert list(special) == [("SnapshotId", "StartTime", "Tags")]
