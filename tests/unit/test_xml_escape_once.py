"""The query/ec2 XML checks its structures' strings once per answer (issue 15, Describe at
scale): an answer whose values need no escaping is written once, unescaped; one value
that needs it (``& < > \\r``, anywhere: a tag, a nested structure, the last item) makes
the whole answer written again with every value escaped — the same bytes as escaping each
value, and botocore reads back the original text (R-WIRE)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import botocore.parsers
import pytest
from botocore.awsrequest import HeadersDict

from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.codec.xml_writer import Collecting

T = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


def _snapshot(i: int, description: str = "plain", tag: str = "t") -> dict[str, Any]:
    return {"SnapshotId": f"snap-{i:017x}", "VolumeId": "vol-ffffffff", "State": "completed", "StartTime": T,
            "Progress": "100%", "OwnerId": "111111111111", "Description": description, "VolumeSize": 8,
            "Encrypted": True, "KmsKeyId": "arn:aws:kms:us-east-1:111111111111:key/k", "StorageTier": "standard",
            "Tags": [{"Key": "Name", "Value": tag}]}


def _escaping_each(codec: Any, operation: Any, result: dict[str, Any]) -> bytes:
    """The answer written by the escaping writers only (a plain list: no collecting)."""
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{operation.name}Response xmlns="{codec.namespace}">']
    codec._write_body(out, operation.output_shape, result, "rid")
    out.append(f"</{operation.name}Response>")
    return "".join(out).encode("utf-8")


@pytest.mark.parametrize("special", [None, ("description", "a <b> & c"), ("description", "line\r\nnext"),
                                     ("tag", "x>y"), ("tag", "&amp;")])
def test_one_check_per_answer_writes_what_escaping_each_value_writes(special: tuple[str, str] | None) -> None:
    codec = codec_for("ec2")
    operation = codec.service_model.operation_model("DescribeSnapshots")
    items = [_snapshot(i) for i in range(50)]
    if special is not None:
        items[-1] = _snapshot(49, **{special[0]: special[1]})
    result = {"Snapshots": items, "NextToken": "n"}
    body = codec.serialize(operation, result, "rid").body
    assert body == _escaping_each(codec, operation, result)
    headers = HeadersDict({"Content-Type": "text/xml"})
    parsed = botocore.parsers.create_parser("ec2").parse(
        {"status_code": 200, "headers": headers, "body": body}, operation.output_shape)
    last = parsed["Snapshots"][-1]
    assert (last["Description"], last["Tags"][0]["Value"]) == (
        (special[1], "t") if special and special[0] == "description" else ("plain", special[1] if special else "t"))
    if special is None:
        assert b"&" not in body


def test_collecting_writers_record_the_strings_they_write_unescaped() -> None:
    codec = codec_for("ec2")
    operation = codec.service_model.operation_model("DescribeSnapshots")
    out = Collecting("head")
    codec._write_body(out, operation.output_shape, {"Snapshots": [_snapshot(1, "a<b")]}, "rid")
    assert "a<b" in out.seen and "Name" in out.seen and "<description>a<b</description>" in "".join(out)
