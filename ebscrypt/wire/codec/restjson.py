"""The ``rest-json`` protocol, as the EBS direct APIs speak it.

Request: the operation is found from the HTTP method and the ``requestUri`` template
(``/snapshots/{snapshotId}/blocks/{blockIndex}``); members come from URI labels, the
query string, headers (``x-amz-Checksum`` …) and the body — a JSON object, or the raw
bytes when the input names a blob ``payload`` (PutSnapshotBlock's BlockData).

Response: status from the operation's ``http.responseCode`` (PutSnapshotBlock 201),
header members as headers, then a JSON body or the raw payload. Errors carry
``x-amzn-ErrorType: Code`` and ``{"Message": …, "Reason": …}``, with the status of the
model's error shape when the code names one.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from ebscrypt.errors import ServiceError, UnknownOperation

from . import jsonshape, required
from .base import Codec
from . import values as V
from .jsonrpc import decode_json_object
from ebscrypt.wire.http import HttpRequest, HttpResponse

_LABEL_RE = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class _Route:
    operation: str
    method: str
    pattern: re.Pattern[str]
    labels: dict[str, str]  # regex group -> label name
    fixed_query: tuple[tuple[str, str], ...]
    literal: int  # literal characters in the template: more literal wins a tie


def _compile(name: str, method: str, uri: str) -> _Route:
    path, _, fixed = uri.partition("?")
    regex, labels, pos, literal = ["^"], {}, 0, 0
    for i, m in enumerate(_LABEL_RE.finditer(path)):
        regex.append(re.escape(path[pos : m.start()]))
        literal += m.start() - pos
        label = m.group(1)
        group = f"g{i}"
        if label.endswith("+"):
            labels[group] = label[:-1]
            regex.append(f"(?P<{group}>.+)")
        else:
            labels[group] = label
            regex.append(f"(?P<{group}>[^/]+)")
        pos = m.end()
    regex.append(re.escape(path[pos:]))
    literal += len(path) - pos
    regex.append("$")
    fixed_query = tuple(
        (k, v[0] if v else "") for k, v in parse_qs(fixed, keep_blank_values=True).items()
    )
    return _Route(name, method.upper(), re.compile("".join(regex)), labels, fixed_query, literal)


@dataclass(frozen=True)
class _Located:
    """One input member sent outside the body: where (``uri``, ``querystring``,
    ``header``, ``headers``), under which wire name, and its validation path."""

    name: str
    location: str
    wire: str  # the label, query key or header name (lower-cased for a header)
    path: str  # lowerCamel, as validation messages name it
    member: Any


@dataclass(frozen=True)
class _InputPlan:
    """What parsing an operation's input needs of its shape, read from the model once
    per shape instead of per request (the event loop's largest own cost per EBS direct
    request: bench/README.md section E8)."""

    located: tuple[_Located, ...]
    claimed: frozenset[str]  # query keys named by a non-map querystring member


def _input_plan(shape: Any) -> _InputPlan:
    located = []
    claimed = set()
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        if loc is None:
            continue
        wire = member.serialization.get("name", name)
        if loc == "querystring" and member.type_name != "map":
            claimed.add(wire)
        located.append(_Located(name, loc, wire.lower() if loc in ("header", "headers") else wire,
                                jsonshape.camel(name), member))
    return _InputPlan(tuple(located), frozenset(claimed))


class RestJsonCodec(Codec):
    protocol = "rest-json"

    def __init__(self, service_model: Any) -> None:
        super().__init__(service_model)
        routes = []
        for name in service_model.operation_names:
            http = service_model.operation_model(name).http
            routes.append(_compile(name, http.get("method", "POST"), http.get("requestUri", "/")))
        routes.sort(key=lambda r: (-r.literal, -len(r.fixed_query)))
        self._routes = routes
        self._plans: dict[str, _InputPlan] = {}  # by input shape name
        self._error_status: dict[str, int] = {}
        for shape in service_model.error_shapes:
            err = shape.metadata.get("error", {})
            status = err.get("httpStatusCode")
            if status:
                self._error_status[shape.name] = status
                if err.get("code"):
                    self._error_status[err["code"]] = status

    # -- request ------------------------------------------------------------------

    def _route(self, request: HttpRequest, query: dict[str, list[str]]) -> tuple[_Route, dict[str, str]]:
        method = request.method.upper()
        paths = [request.path or "/"]
        if len(paths[0]) > 1 and paths[0].endswith("/"):
            paths.append(paths[0].rstrip("/"))
        for path in paths:
            for route in self._routes:
                if route.method != method:
                    continue
                m = route.pattern.match(path)
                if not m:
                    continue
                if any(query.get(k, [None])[0] != v for k, v in route.fixed_query):
                    continue
                return route, {route.labels[g]: unquote(v) for g, v in m.groupdict().items()}
        raise UnknownOperation(f"No operation matches {method} {request.path}")

    def parse(self, request: HttpRequest) -> tuple[Any, dict[str, Any]]:
        # (the query parsed once, for the route and the members; none sent: nothing parsed)
        query = parse_qs(request.query, keep_blank_values=True) if request.query else {}
        route, labels = self._route(request, query)
        operation = self.operation(route.operation)
        shape = operation.input_shape
        if shape is None:
            return operation, {}
        reader = jsonshape.JsonReader(self.service, constraints=True)
        params = self._located_members(reader, shape, request, labels, query)
        self._body_members(reader, shape, request, params)
        reader.required(shape, params, "")
        reader.finish()
        return operation, params

    def _plan(self, shape: Any) -> _InputPlan:
        plan = self._plans.get(shape.name)
        if plan is None:
            plan = self._plans[shape.name] = _input_plan(shape)
        return plan

    def _located_members(
        self, reader: jsonshape.JsonReader, shape: Any, request: HttpRequest, labels: dict[str, str],
        query: dict[str, list[str]],
    ) -> dict[str, Any]:
        """The members sent in the URI, the query string and the headers."""
        params: dict[str, Any] = {}
        plan = self._plan(shape)
        for m in plan.located:
            loc, wire, member, name, path = m.location, m.wire, m.member, m.name, m.path
            if loc == "uri":
                if wire in labels:
                    params[name] = self._text(reader, member, labels[wire], path)
            elif loc == "header":
                raw = request.headers.get(wire)
                if raw is not None:
                    params[name] = self._header(reader, member, raw, path)
            elif loc == "querystring":
                if member.type_name == "map":
                    extra = {k: v for k, v in query.items() if k not in plan.claimed}
                    if extra:
                        many = member.value.type_name == "list"
                        params[name] = {k: (v if many else v[0]) for k, v in extra.items()}
                elif wire in query:
                    values = query[wire]
                    if member.type_name == "list":
                        params[name] = [
                            self._text(reader, member.member, v, f"{path}.{i}.member")
                            for i, v in enumerate(values, 1)
                        ]
                        reader.check(member, params[name], path)
                    else:
                        params[name] = self._text(reader, member, values[0], path)
            elif loc == "headers":
                found = {k[len(wire) :]: v for k, v in request.headers.items() if k.startswith(wire)}
                if found:
                    params[name] = found
        return params

    def _body_members(
        self, reader: jsonshape.JsonReader, shape: Any, request: HttpRequest, params: dict[str, Any]
    ) -> None:
        """Add to ``params`` the members sent in the body: the payload member (raw bytes,
        text or a JSON document), or the unlocated members of a JSON body."""
        payload = shape.serialization.get("payload")
        if payload is not None:
            member = shape.members[payload]
            if member.type_name in ("blob", "string"):
                body = request.body
                if body or required.is_required(self.service, shape, payload):
                    if member.type_name == "string":
                        try:
                            params[payload] = body.decode("utf-8")
                        except UnicodeDecodeError:
                            raise jsonshape.validation_error(
                                [("Value", jsonshape.camel(payload), "Member must be UTF-8 text")]
                            ) from None
                    else:
                        params[payload] = bytes(body)
                    reader.check(member, params[payload], jsonshape.camel(payload))
            elif request.body.strip():
                doc = decode_json_object(request.body)
                params[payload] = reader.read(member, doc, jsonshape.camel(payload))
        elif any("location" not in m.serialization for m in shape.members.values()):
            doc = decode_json_object(request.body)
            params.update(reader.read_members(shape, doc, "", skip_located=True, required=False))

    def _text(self, reader: jsonshape.JsonReader, shape: Any, text: str, path: str) -> Any:
        """A URI label / query / header string → Python, per the member's type."""
        try:
            value = V.parse_scalar(shape.type_name, text)
        except V.BadValue as exc:
            raise jsonshape.validation_error([(f"Value '{text}'", path, f"Member {exc}")]) from None
        reader.check(shape, value, path)
        return value

    def _header(self, reader: jsonshape.JsonReader, shape: Any, raw: str, path: str) -> Any:
        if shape.type_name == "list":
            items = [p.strip() for p in raw.split(",")] if raw.strip() else []
            value = [self._text(reader, shape.member, p, f"{path}.{i}.member") for i, p in enumerate(items, 1)]
            reader.check(shape, value, path)
            return value
        if shape.type_name == "string" and shape.serialization.get("jsonvalue"):
            try:
                return json.loads(base64.b64decode(raw))
            except ValueError:
                raise jsonshape.validation_error([("Value", path, "Member must be base64-encoded JSON")]) from None
        return self._text(reader, shape, raw, path)

    # -- response -----------------------------------------------------------------

    def serialize(self, operation: Any, result: dict[str, Any], request_id: str) -> HttpResponse:
        status = operation.http.get("responseCode", 200)
        headers: list[tuple[str, str]] = []
        shape = operation.output_shape
        result = result or {}
        body = b"{}"
        content_type = "application/json"
        if shape is not None:
            for name, member in shape.members.items():
                value = result.get(name)
                loc = member.serialization.get("location")
                if value is None or loc is None:
                    continue
                wire = member.serialization.get("name", name)
                if loc == "header":
                    headers.append((wire, self._header_text(member, value)))
                elif loc == "headers":
                    headers.extend((wire + str(k), str(v)) for k, v in value.items())
                elif loc == "statusCode":
                    status = int(value)
            payload = shape.serialization.get("payload")
            if payload is not None:
                member = shape.members[payload]
                value = result.get(payload)
                if member.type_name in ("blob", "string"):
                    content_type = "application/octet-stream"
                    if value is None:
                        body = b""
                    else:
                        body = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                else:
                    body = json.dumps(jsonshape.write(member, value) if value is not None else {}).encode()
            else:
                doc = jsonshape.write_members(shape, result, skip_located=True)
                body = json.dumps(doc, separators=(",", ":")).encode()
        headers[:0] = [("Content-Type", content_type), ("x-amzn-RequestId", request_id)]
        return HttpResponse(status, headers, body)

    @staticmethod
    def _header_text(shape: Any, value: Any) -> str:
        t = shape.type_name
        if t == "list":
            return ",".join(RestJsonCodec._header_text(shape.member, v) for v in value if v is not None)
        if t == "string" and shape.serialization.get("jsonvalue"):
            return V.b64(json.dumps(value, separators=(",", ":")))
        return V.scalar_text(shape, value, "rfc822")

    # -- errors -------------------------------------------------------------------

    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        status = self._error_status.get(code, status)
        doc: dict[str, Any] = {"Message": message}
        for key, value in error.fields.items():
            if value is not None and key not in doc:
                doc[key] = value
        headers = [
            ("Content-Type", "application/json"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", code),
        ]
        return HttpResponse(status, headers, json.dumps(doc, separators=(",", ":"), default=str).encode())
