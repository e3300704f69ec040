"""Codec generality against botocore itself, for every operation of ec2, kms, ebs and sts (R-WIRE).

For each operation of each model:

- input:  hypothesis draws valid params from the input shape (required members, min/max,
  enums respected), botocore's own request serializer turns them into an HTTP request
  exactly as an SDK client would, our codec parses it → must equal the params;
- output: hypothesis draws a result from the output shape, our codec serializes it,
  botocore's response parser reads it → must equal the result (plus request id, status);
- errors: our error envelope for a drawn code/message, parsed by botocore.

Budget: a few examples per operation (EC2 has ~770), scaled by CODEC_EXAMPLES=N.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import string
from typing import Any
from urllib.parse import urlsplit

import botocore.parsers
import botocore.serialize
import pytest
from botocore.awsrequest import HeadersDict, create_request_object, prepare_request_dict
from botocore.response import StreamingBody
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebscrypt.errors import ServiceError, ValidationError
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.codec.ec2_always import ALWAYS_EMITTED
from ebscrypt.wire.codec.required import missing as required_missing, required_groups
from ebscrypt.wire.http import HttpRequest

SERVICES = ["ec2", "kms", "ebs", "sts"]
SCALE = int(os.environ.get("CODEC_EXAMPLES", "1"))
EXAMPLES = {"ec2": 4 * SCALE, "kms": 25 * SCALE, "ebs": 50 * SCALE, "sts": 20 * SCALE}
UTC = dt.timezone.utc

# Text an AWS response can carry in XML 1.0: no C0 controls other than \t \n \r, no
# surrogates, no U+FFFE/U+FFFF. Inputs use the same alphabet (form/JSON carry more,
# but this already covers escaping: & < > " ' % + = . and non-ASCII).
TEXT = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="\ufffe\uffff",
    min_codepoint=0x09,
).filter(lambda c: c >= " " or c in "\t\n\r")
# Header values and URI labels: what a real HTTP stack passes through untouched.
SAFE = st.sampled_from(string.ascii_letters + string.digits + "-_.=+/")
URI_LABEL = st.sampled_from(string.ascii_letters + string.digits + "-_. %/:@")

MAX_DEPTH = 4


def _ops(service: str) -> list[str]:
    return sorted(codec_for(service).service_model.operation_names)


class ShapeStrategies:
    """Hypothesis strategies for botocore shapes (plain Python values, member names)."""

    def __init__(self, protocol: str, direction: str, service: str = "") -> None:
        self.protocol = protocol
        self.service = service  # names ebscrypt's own table of required input members
        self.direction = direction  # "input" | "output"
        self._cache: dict[tuple, st.SearchStrategy] = {}

    def top(self, shape: Any) -> st.SearchStrategy:
        return self.structure(shape, 0, top=True)

    def of(self, shape: Any, depth: int, location: str | None = None) -> st.SearchStrategy:
        key = (shape.name, depth, location)
        if key not in self._cache:
            self._cache[key] = self._build(shape, depth, location)
        return self._cache[key]

    def _build(self, shape: Any, depth: int, location: str | None) -> st.SearchStrategy:
        t, meta = shape.type_name, shape.metadata
        if t == "structure":
            return self.structure(shape, depth)
        if t == "list":
            lo = meta.get("min", 0)
            hi = max(lo, min(meta.get("max", 2), 2))
            if depth >= MAX_DEPTH:
                hi = lo
            return st.lists(self.of(shape.member, depth + 1, location), min_size=lo, max_size=hi)
        if t == "map":
            lo = meta.get("min", 0)
            hi = max(lo, min(meta.get("max", 2), 2))
            return st.dictionaries(self.of(shape.key, depth + 1), self.of(shape.value, depth + 1),
                                   min_size=lo, max_size=hi)
        if t == "string":
            if meta.get("enum"):
                return st.sampled_from(meta["enum"])
            lo = meta.get("min", 0)
            if "pattern" in meta and self.direction == "input" and self.protocol in ("json", "rest-json"):
                # KMS/EBS enforce patterns: draw matching strings (within the length bounds).
                hi = meta.get("max", 64)
                # re.ASCII: \d, \w are ASCII classes in the models' (Java) regex dialect.
                return st.from_regex(re.compile(meta["pattern"], re.ASCII), fullmatch=True).filter(
                    lambda s, lo=max(lo, 1 if location == "uri" else 0), hi=hi: lo <= len(s) <= hi)
            if location == "uri":
                lo = max(lo, 1)  # an empty label cannot be routed (botocore would send '//')
            hi = max(lo, min(meta.get("max", 10), lo + 10))
            alphabet = TEXT if location is None else (URI_LABEL if location == "uri" else SAFE)
            return st.text(alphabet, min_size=lo, max_size=hi)
        if t in ("integer", "long"):
            bound = 2**31 - 1 if t == "integer" else 2**53
            return st.integers(meta.get("min", -bound), meta.get("max", bound))
        if t in ("float", "double"):
            return st.floats(meta.get("min"), meta.get("max"), allow_nan=False, allow_infinity=False)
        if t == "boolean":
            return st.booleans()
        if t == "blob":
            lo = meta.get("min", 0)
            return st.binary(min_size=lo, max_size=max(lo, min(meta.get("max", 16), 16)))
        if t == "timestamp":
            if self.direction == "input":
                # The json serializer sends epoch *seconds* (botocore's default precision), so
                # request timestamps are drawn to the second.
                return st.integers(0, 4_102_444_800).map(lambda s: dt.datetime.fromtimestamp(s, UTC))
            # Responses carry milliseconds (ISO 8601 …sss Z / epoch with 3 decimals).
            return st.integers(0, 4_102_444_800_000).map(
                lambda ms: dt.datetime.fromtimestamp(ms // 1000, UTC) + dt.timedelta(milliseconds=ms % 1000))
        raise AssertionError(f"unexpected shape type {t}")

    def _required(self, shape: Any) -> set[str]:
        """Members a valid value holds: in a request, one of each group the server needs
        (wire/codec/required.py, model flags included); in a response, the model's."""
        if self.direction == "input":
            return {g[0] for g in required_groups(self.service, shape)}
        return set(shape.required_members)

    def structure(self, shape: Any, depth: int, top: bool = False) -> st.SearchStrategy:
        required, optional = {}, {}
        for name, member in shape.members.items():
            loc = member.serialization.get("location")
            if loc in ("headers", "statusCode"):
                continue  # none in these models; out of scope
            if self.protocol == "rest-json" and top and shape.serialization.get("payload") == name:
                loc = None
            strat = self.of(member, depth + 1, loc)
            if name in self._required(shape):
                required[name] = strat
            elif depth < MAX_DEPTH:
                optional[name] = strat
        return st.fixed_dictionaries(required, optional=optional)


def _http_request(serialized: dict) -> HttpRequest:
    """botocore's request dict → the HTTP request our server would receive."""
    prepare_request_dict(serialized, "https://ebscrypt.test")
    prepared = create_request_object(serialized).prepare()
    url = urlsplit(prepared.url)
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in prepared.headers.items()}
    return HttpRequest(prepared.method, url.path or "/", url.query, headers, body)


_GONE = object()


def _drop_empty(value: Any, shape: Any, *, empty_lists: bool) -> Any:
    """What of ``value`` can reach the server through botocore's query serializers.

    Quirks (botocore QuerySerializer/EC2Serializer): an empty structure produces no
    fields at all, and EC2 (``empty_lists=True``) does not send an empty list either
    (plain query sends ``Name=``). A list or structure left empty by that vanishes too.
    """
    t = shape.type_name
    if t == "structure":
        out = {}
        for k, v in value.items():
            v = _drop_empty(v, shape.members[k], empty_lists=empty_lists)
            if v is not _GONE:
                out[k] = v
        return out if out else _GONE
    if t == "list":
        if not value:
            return _GONE if empty_lists else []
        items = [_drop_empty(v, shape.member, empty_lists=empty_lists) for v in value]
        items = [v for v in items if v is not _GONE]
        return items if items else _GONE
    return value


def _lost_required(value: Any, shape: Any, service: str) -> bool:
    """After the EC2 empty-drop above, is a member the server requires gone somewhere?"""
    t = shape.type_name
    if t == "structure":
        if required_missing(service, shape, value):
            return True
        return any(_lost_required(v, shape.members[k], service) for k, v in value.items())
    if t == "list":
        return any(_lost_required(v, shape.member, service) for v in value)
    return False


def _always_emitted(value: Any, shape: Any) -> Any:
    """``value`` as an SDK reads EC2's answer: the lists AWS always sends (.ec2_always)
    read as [] where the handler left them out."""
    t = shape.type_name
    if t == "structure" and isinstance(value, dict):
        out = {k: _always_emitted(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
        for name in ALWAYS_EMITTED.get(shape.name, ()):
            out.setdefault(name, [])
        return out
    if t == "list" and isinstance(value, list):
        return [_always_emitted(v, shape.member) for v in value]
    return value


def _response_dict(resp, streaming: bool) -> dict:
    headers = HeadersDict()
    for k, v in resp.headers:
        headers[k] = v
    body: Any = resp.body
    if streaming:
        body = StreamingBody(io.BytesIO(resp.body), len(resp.body))
    return {"status_code": resp.status, "headers": headers, "body": body}


def _strategies(service: str, direction: str) -> ShapeStrategies:
    key = (service, direction)
    if key not in _STRATS:
        _STRATS[key] = ShapeStrategies(codec_for(service).service_model.protocol, direction, service)
    return _STRATS[key]


_STRATS: dict[tuple[str, str], ShapeStrategies] = {}

CASES = [(svc, op) for svc in SERVICES for op in _ops(svc)]


def _settings(service: str):
    return settings(
        max_examples=EXAMPLES[service],
        deadline=None,
        database=None,
        derandomize=os.environ.get("CODEC_RANDOM") is None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize("service,op_name", CASES, ids=[f"{s}.{o}" for s, o in CASES])
def test_operation_roundtrips_with_botocore(service: str, op_name: str) -> None:
    codec = codec_for(service)
    model = codec.service_model
    operation = model.operation_model(op_name)
    protocol = model.protocol
    serializer = botocore.serialize.create_serializer(protocol, include_validation=False)
    parser = botocore.parsers.create_parser(protocol)
    in_shape, out_shape = operation.input_shape, operation.output_shape
    in_strat = _strategies(service, "input").top(in_shape) if in_shape is not None else st.just({})
    out_strat = _strategies(service, "output").top(out_shape) if out_shape is not None else st.just({})

    @_settings(service)
    @given(params=in_strat, result=out_strat, rid=st.uuids().map(str))
    def check(params: dict, result: dict, rid: str) -> None:
        # -- request: botocore serializes, we parse --------------------------------
        request = _http_request(serializer.serialize_to_request(params, operation))
        expected = params
        if protocol in ("ec2", "query") and in_shape is not None:
            expected = _drop_empty(params, in_shape, empty_lists=protocol == "ec2")
            if expected is _GONE:
                expected = {}
            if _lost_required(expected, in_shape, service):
                # A required member that was empty never reached the wire: MissingParameter,
                # as EC2 itself answers.
                with pytest.raises(ValidationError) as info:
                    codec.parse(request)
                assert info.value.missing and "must contain the parameter" in info.value.message
                expected = None
        if expected is not None:
            parsed_op, parsed = codec.parse(request)
            assert parsed_op.name == op_name
            assert parsed == expected

        # -- response: we serialize (with an unknown extra key), botocore parses -----
        resp = codec.serialize(operation, {**result, "NotInTheModel__": object()}, rid)
        assert 200 <= resp.status < 300
        streaming = operation.has_streaming_output
        got = parser.parse(_response_dict(resp, streaming), out_shape)
        meta = got.pop("ResponseMetadata")
        assert meta["RequestId"] == rid
        assert meta["HTTPStatusCode"] == operation.http.get("responseCode", 200)
        if streaming:
            payload = out_shape.serialization["payload"]
            if payload in got:
                got[payload] = got[payload].read()
            if result.get(payload) is None and got.get(payload) == b"":
                del got[payload]  # an absent streaming payload reads as an empty body
        assert got == (_always_emitted(result, out_shape) if protocol == "ec2" and out_shape else result)

    check()


# -- errors -------------------------------------------------------------------------------

def _error_codes(service: str) -> list[str]:
    model = codec_for(service).service_model
    return sorted(s.name for s in model.error_shapes) or ["InvalidVolume.NotFound", "InvalidParameterValue"]


ERROR_CASES = [(svc, code) for svc in SERVICES for code in _error_codes(svc)]


@pytest.mark.parametrize("service,code", ERROR_CASES, ids=[f"{s}.{c}" for s, c in ERROR_CASES])
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# min_size=1: botocore's XML error parser reads an empty <Message/> as None (AWS never sends one).
@given(message=st.text(TEXT, min_size=1, max_size=40), rid=st.uuids().map(str), status=st.sampled_from([400, 403, 404, 409, 500]),
       reason=st.text(SAFE, min_size=1, max_size=10))
def test_errors_parse_with_botocore(service: str, code: str, message: str, rid: str, status: int, reason: str) -> None:
    codec = codec_for(service)
    model = codec.service_model
    protocol = model.protocol
    parser = botocore.parsers.create_parser(protocol)
    operation = model.operation_model(_ops(service)[0])
    error = ServiceError(message, code=code, status=status, Reason=reason)
    resp = codec.serialize_error(error, rid)
    got = parser.parse(_response_dict(resp, False), operation.output_shape)
    assert got["Error"]["Code"] == code
    assert got["Error"]["Message"] == message
    assert got["ResponseMetadata"]["RequestId"] == rid
    error_shape = next((s for s in model.error_shapes if s.name == code), None)
    model_status = error_shape.metadata.get("error", {}).get("httpStatusCode") if error_shape is not None else None
    if protocol == "rest-json" and model_status:
        assert resp.status == model_status  # the model's status wins on rest-json
    else:
        assert resp.status == status
    if error_shape is not None and protocol in ("json", "rest-json"):
        # The modeled fields, as botocore's client reads them for a modeled exception.
        modeled = parser.parse(_response_dict(resp, False), error_shape)
        if "Reason" in error_shape.members:
            assert modeled["Reason"] == reason
        msg_member = next((m for m in error_shape.members if m.lower() == "message"), None)
        if msg_member:
            assert modeled[msg_member] == message
