"""Compiled JSON readers and writers (ebscrypt/wire/codec/jsonplan.py, issue 15) against
the model walkers they stand in for (R-WIRE): a compiled reader accepts only documents
``JsonReader`` accepts, and returns the same params for them; it gives up on anything
else, so the errors stay ``JsonReader``'s. A compiled writer writes what
``jsonshape.write_members`` writes."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import botocore.serialize
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebscrypt.errors import SerializationError, ServiceError
from ebscrypt.wire.codec import codec_for, jsonshape
from ebscrypt.wire.codec.jsonplan import Doubt, JsonPlans
from tests.unit.test_codec_fuzz import JSON_VALUES
from tests.unit.test_codec_roundtrip import _http_request, _ops, _strategies

EXAMPLES = int(os.environ.get("CODEC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
PLANS = JsonPlans("kms")
_GAVE_UP = object()


def _both(shape: Any, doc: Any) -> tuple[Any, Any]:
    """(compiled reader's params or _GAVE_UP, JsonReader's params or its error)."""
    try:
        fast = PLANS.reader(shape)(doc)
    except Doubt:
        fast = _GAVE_UP
    reader = jsonshape.JsonReader("kms", constraints=True, type_error=SerializationError)
    try:
        slow: Any = reader.read_members(shape, doc, "")
        reader.finish()
    except ServiceError as error:
        slow = error
    return fast, slow


def _doc(data: Any) -> tuple[Any, dict[str, Any]]:
    codec = codec_for("kms")
    op = codec.service_model.operation_model(data.draw(st.sampled_from(_ops("kms")), label="operation"))
    params = data.draw(_strategies("kms", "input").top(op.input_shape), label="params") \
        if op.input_shape is not None else {}
    serializer = botocore.serialize.create_serializer("json", include_validation=False)
    body = _http_request(serializer.serialize_to_request(params, op)).body
    return op, json.loads(body) if body.strip() else {}


def _mutate(data: Any, value: Any, depth: int = 0) -> Any:
    """One member somewhere in ``value`` swapped for any JSON value (or dropped)."""
    if isinstance(value, dict) and value and depth < 4:
        key = data.draw(st.sampled_from(sorted(value)), label="member")
        out = dict(value)
        if data.draw(st.booleans(), label="deeper"):
            out[key] = _mutate(data, value[key], depth + 1)
        elif data.draw(st.booleans(), label="drop"):
            del out[key]
        else:
            out[key] = data.draw(JSON_VALUES, label="value")
        return out
    if isinstance(value, list) and value and depth < 4:
        i = data.draw(st.integers(0, len(value) - 1), label="index")
        return [*value[:i], data.draw(JSON_VALUES, label="item"), *value[i + 1:]]
    return data.draw(JSON_VALUES | st.sampled_from(["", "x" * 9000, "%%%", 1.5, 2**40, -1, True]), label="leaf")


@FUZZ
@given(st.data())
def test_compiled_reader_accepts_only_what_json_reader_accepts(data: Any) -> None:
    op, doc = _doc(data)
    if op.input_shape is None:
        return
    if data.draw(st.booleans(), label="mutate"):
        doc = _mutate(data, doc)
        if not isinstance(doc, dict):
            return
    fast, slow = _both(op.input_shape, doc)
    if fast is not _GAVE_UP:
        assert not isinstance(slow, ServiceError), (op.name, doc, slow)
        assert fast == slow, op.name


@FUZZ
@given(st.data())
def test_compiled_writer_writes_what_write_members_writes(data: Any) -> None:
    codec = codec_for("kms")
    op = codec.service_model.operation_model(data.draw(st.sampled_from(_ops("kms")), label="operation"))
    if op.output_shape is None:
        return
    result = data.draw(_strategies("kms", "output").top(op.output_shape), label="result")
    assert PLANS.writer(op.output_shape)(result) == jsonshape.write_members(op.output_shape, result)


KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"
BLOB = base64.b64encode(b"\x01" * 100).decode()


@pytest.mark.parametrize("operation, doc", [
    ("GenerateDataKey", {"KeyId": KEY, "KeySpec": "AES_256", "EncryptionContext": {"purpose": "test"}}),
    ("GenerateDataKey", {"KeyId": "alias/aws/ebs", "NumberOfBytes": 64, "GrantTokens": ["t"]}),
    ("Decrypt", {"CiphertextBlob": BLOB, "EncryptionContext": {"a": "b"}}),
    ("Encrypt", {"KeyId": KEY, "Plaintext": BLOB}),
    ("CreateGrant", {"KeyId": KEY, "GranteePrincipal": "arn:aws:iam::111122223333:root",
                     "Operations": ["Decrypt", "Encrypt"], "Constraints": {"EncryptionContextSubset": {"a": "b"}}}),
])
def test_common_requests_take_the_compiled_reader(operation: str, doc: dict[str, Any]) -> None:
    shape = codec_for("kms").operation(operation).input_shape
    fast, slow = _both(shape, doc)
    assert fast is not _GAVE_UP and fast == slow


@pytest.mark.parametrize("operation, doc, words", [
    ("GenerateDataKey", {"KeyId": KEY, "KeySpec": "AES_512"}, "Member must satisfy enum value set"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": 2048}, "less than or equal to 1024"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": 3.5}, "Member must be an integer"),
    ("GenerateDataKey", {"KeySpec": "AES_256"}, "Value null at 'keyId'"),
    ("GenerateDataKey", {"KeyId": ""}, "length greater than or equal to 1"),
    ("GenerateDataKey", {"KeyId": KEY, "GrantTokens": [None]}, "Value null at 'grantTokens.1.member'"),
    ("Decrypt", {"CiphertextBlob": "not base64!"}, "base64-encoded binary data"),
    ("Decrypt", {"CiphertextBlob": BLOB, "EncryptionContext": {"a": 1}}, "Member must be a string"),
])
def test_bad_documents_get_json_readers_errors(operation: str, doc: dict[str, Any], words: str) -> None:
    shape = codec_for("kms").operation(operation).input_shape
    fast, slow = _both(shape, doc)
    assert fast is _GAVE_UP
    assert isinstance(slow, ServiceError) and words in slow.message, slow
