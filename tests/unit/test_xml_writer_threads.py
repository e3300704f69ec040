"""wire/codec/xml_writer.py under several worker threads (answers are serialized in the
worker that ran the handler, issue 15): a thread asking for a structure's writer while
another compiles it waits for the complete writer; it never gets one whose steps are not
all there yet (its answer would silently lack members)."""

from __future__ import annotations

import threading
from typing import Any

import botocore.session

from ebscrypt.wire.codec.xml_writer import XmlWriters


def _describe_volumes_output() -> Any:
    model = botocore.session.get_session().get_service_model("ec2")
    return model.operation_model("DescribeVolumes").output_shape


def test_a_writer_being_compiled_is_not_handed_out_half_built() -> None:
    shape = _describe_volumes_output()
    writers = XmlWriters(lambda _shape: frozenset(), str)
    compiling, release = threading.Event(), threading.Event()
    real_value = writers.value

    def slow_value(member: Any, tag: str) -> Any:  # the first thread stops mid-compile
        compiling.set()
        release.wait(10)
        return real_value(member, tag)

    writers.value = slow_value  # type: ignore[method-assign]
    first = threading.Thread(target=writers.members, args=(shape,))
    first.start()
    assert compiling.wait(10)
    got: list[Any] = []
    second = threading.Thread(target=lambda: got.append(writers.members(shape)))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a half-compiled writer was handed out"
    release.set()
    first.join(10)
    second.join(10)
    out: list[str] = []
    got[0](out, {"Volumes": [{"VolumeId": "vol-0123456789abcdef0", "Size": 8}], "NextToken": "t1"})
    xml = "".join(out)
    assert "<volumeId>vol-0123456789abcdef0</volumeId>" in xml and "<nextToken>t1</nextToken>" in xml
