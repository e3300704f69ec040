"""The EC2 lists AWS sends even when empty (wire/codec/ec2_always.py; issue 10 item 9)."""

from __future__ import annotations

import datetime as dt

import botocore.parsers

from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.codec.ec2_always import ALWAYS_EMITTED
from tests.unit.test_codec_roundtrip import _response_dict


def test_every_entry_is_a_list_member_of_an_installed_output_shape() -> None:
    model = codec_for("ec2").service_model
    outputs = set()
    for name in model.operation_names:
        stack = [model.operation_model(name).output_shape]
        while stack:
            shape = stack.pop()
            if shape is None or shape.name in outputs:
                continue
            if shape.type_name == "structure":
                outputs.add(shape.name)
                stack.extend(shape.members.values())
            elif shape.type_name == "list":
                stack.append(shape.member)
    wrong = [(s, m) for s, members in ALWAYS_EMITTED.items() for m in members
             if s not in outputs or model.shape_for(s).members.get(m) is None
             or model.shape_for(s).members[m].type_name != "list"]
    assert wrong == []


def test_create_snapshot_without_tags_answers_an_empty_tag_set() -> None:
    codec = codec_for("ec2")
    op = codec.service_model.operation_model("CreateSnapshot")
    result = {"SnapshotId": "snap-0123456789abcdef0", "State": "pending",
              "StartTime": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    resp = codec.serialize(op, result, "rid")
    assert b"<tagSet></tagSet>" in resp.body
    parsed = botocore.parsers.create_parser("ec2").parse(_response_dict(resp, False), op.output_shape)
    assert parsed["Tags"] == []
    # a list the handler gives is written as given, and other members stay left out
    resp = codec.serialize(op, {**result, "Tags": [{"Key": "k", "Value": "v"}]}, "rid")
    assert b"<tagSet><item><key>k</key><value>v</value></item></tagSet>" in resp.body
    assert b"<kmsKeyId>" not in resp.body
