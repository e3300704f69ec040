"""Bad input never crashes a codec: it parses, or raises a ServiceError that renders (R-WIRE).

"Never a 500 for bad input": requests are valid ones (botocore-serialized, drawn from
the models) with one part broken — a form field's value replaced or a stray field
added, a JSON member swapped for any JSON value, a header or path label garbled — or
plain junk. The codec must answer with a 4xx ServiceError, never another exception.
"""

from __future__ import annotations

import json
import os

import botocore.serialize
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebscrypt.errors import ServiceError
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.http import HttpRequest
from tests.unit.test_codec_roundtrip import _http_request, _ops, _strategies

EXAMPLES = int(os.environ.get("CODEC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))

JUNK_TEXT = st.text(max_size=30) | st.sampled_from(
    ["", "-1", "1e400", "nan", "0x10", "true", "TRUE", "9999-12-31T23:59:59-23:59", "0000-01-01", "===", "%zz",
     "[]", "{}", "2024-02-30T00:00:00Z", "99999999999999999999999"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _valid_request(data, service: str) -> HttpRequest:
    codec = codec_for(service)
    op = codec.service_model.operation_model(data.draw(st.sampled_from(_ops(service)), label="operation"))
    params = data.draw(_strategies(service, "input").top(op.input_shape), label="params") \
        if op.input_shape is not None else {}
    serializer = botocore.serialize.create_serializer(codec.service_model.protocol, include_validation=False)
    return _http_request(serializer.serialize_to_request(params, op))


def _must_not_crash(service: str, request: HttpRequest) -> None:
    codec = codec_for(service)
    try:
        codec.parse(request)
    except ServiceError as error:
        resp = codec.serialize_error(error, "rid")
        assert 400 <= resp.status < 500, (error, resp.status)


def _mutate_form(data, body: bytes) -> bytes:
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(body.decode(), keep_blank_values=True)
    if pairs and data.draw(st.booleans(), label="replace"):
        i = data.draw(st.integers(0, len(pairs) - 1), label="index")
        if pairs[i][0] != "Action":
            pairs[i] = (pairs[i][0], data.draw(JUNK_TEXT, label="value"))
    else:
        base = pairs[data.draw(st.integers(0, len(pairs) - 1))][0] if pairs else "X"
        suffix = data.draw(st.sampled_from(["", ".1", ".member.1", ".1.Name", ".entry.1.key", ".Foo"]))
        pairs.append((base + suffix, data.draw(JUNK_TEXT, label="value")))
    return urlencode(pairs).encode()


def _mutate_json(data, doc):
    """Replace one value somewhere in the document with any JSON value."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        return {**doc, key: _mutate_json(data, doc[key])}
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return doc[:i] + [_mutate_json(data, doc[i])] + doc[i + 1:]
    return data.draw(JSON_VALUES, label="replacement")


@pytest.mark.parametrize("service", ["ec2", "sts"])
@FUZZ
@given(data=st.data())
def test_query_codecs_survive_mutated_forms(service: str, data) -> None:
    req = _valid_request(data, service)
    req.body = _mutate_form(data, req.body)
    _must_not_crash(service, req)


@FUZZ
@given(data=st.data())
def test_json_codec_survives_mutated_bodies(data) -> None:
    req = _valid_request(data, "kms")
    doc = json.loads(req.body)
    mutated = _mutate_json(data, doc)
    req.body = json.dumps(mutated).encode() if data.draw(st.booleans()) else data.draw(st.binary(max_size=40))
    _must_not_crash("kms", req)


@FUZZ
@given(data=st.data())
def test_restjson_codec_survives_mutated_requests(data) -> None:
    req = _valid_request(data, "ebs")
    part = data.draw(st.sampled_from(["header", "path", "query", "body"]))
    if part == "header" and req.headers:
        name = data.draw(st.sampled_from(sorted(req.headers)))
        req.headers[name] = data.draw(JUNK_TEXT.filter(lambda s: s.isprintable()))
    elif part == "path":
        segments = req.path.split("/")
        i = data.draw(st.integers(0, len(segments) - 1))
        segments[i] = data.draw(st.sampled_from(["", "%", "%zz", "-1", "x" * 100, "..", "%2F", "1e3"]))
        req.path = "/".join(segments)
    elif part == "query":
        req.query = data.draw(st.sampled_from(["maxResults=x", "maxResults=", "pageToken=%%", "a=b&&c",
                                               "startingBlockIndex=-5", "firstSnapshotId=&maxResults=100"]))
    else:
        req.body = data.draw(st.binary(max_size=40) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
    _must_not_crash("ebs", req)


@pytest.mark.parametrize("service", ["ec2", "kms", "ebs", "sts"])
@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
       path=st.text(max_size=30).map(lambda s: "/" + s), query=st.text(max_size=30),
       target=st.text(max_size=30), body=st.binary(max_size=60))
def test_junk_requests_get_a_4xx(service: str, method: str, path: str, query: str, target: str, body: bytes) -> None:
    req = HttpRequest(method, path, query, {"x-amz-target": target, "content-type": "application/x-amz-json-1.1"}, body)
    _must_not_crash(service, req)


def test_deeply_nested_json_is_a_4xx() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    req = HttpRequest("POST", "/", "", {"x-amz-target": "TrentService.DescribeKey"}, body)
    with pytest.raises(ServiceError):
        codec_for("kms").parse(req)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "0000-01-01",
                                  "2024-02-30", "1e400", "nan", "-inf", "Tue, 99 Foo 2024", ""])
def test_out_of_range_timestamps_are_bad_values(text: str) -> None:
    from ebscrypt.wire.codec.values import BadValue, parse_timestamp

    with pytest.raises(BadValue):
        parse_timestamp(text)
