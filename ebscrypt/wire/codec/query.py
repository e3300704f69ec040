"""The ``query`` protocol (STS) and its ``ec2`` variant.

Request: form fields (body, or the query string for GET) with ``Action`` and
``Version``; nested members flattened into dotted names. The two variants differ only
in naming, which is where botocore's ``EC2Serializer`` differs too:

- query: a member is named by its ``locationName`` (or member name); a list is
  ``Name.member.N`` (``member`` = the list member's ``locationName``), or ``Name.N`` when
  flattened; an empty list is sent as ``Name=``; maps are ``Name.entry.N.key/value``.
- ec2: a member is named by its ``queryName``, else its ``locationName`` with the first
  letter upper-cased, else the member name; every list is ``Name.N`` (never
  ``.member``), and an empty list is not sent at all.

ec2 refuses what its operation does not have: the first unrecognised name segment is an
``UnknownParameter`` ("The parameter X is not recognized"), checked before anything is
read, as AWS reports it before a missing or malformed one. Only the protocol's own fields
(``Action``, ``Version``, SigV4 query auth ``X-Amz-*``, SigV2's common parameters) pass.
The query variant (STS) stays lenient. Model min/max/enum are not checked here: EC2
validates those per operation with its own messages (handlers and engines do).

Response: XML. ec2 puts the members right under ``<OpResponse>`` beside
``<requestId>``; query wraps them in ``<OpResult>`` (the output shape's
``resultWrapper``) followed by ``<ResponseMetadata><RequestId>``. Lists are
``<name><item|member>…</…></name>``, booleans ``true``/``false``, timestamps ISO 8601
with milliseconds and ``Z``, blobs base64.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from ebscrypt.errors import ServiceError, UnknownOperation, UnknownParameter, ValidationError

from . import required
from .base import Codec
from . import values as V
from .ec2_always import ALWAYS_EMITTED
from .xml_writer import Collecting, XmlWriters
from ebscrypt.wire.http import HttpRequest, HttpResponse

_LEAF = None  # key under which a tree node keeps its own value
# A node of the tree of form fields: sub-fields by name segment, its own value under _LEAF.
Node = dict[str | None, Any]


_SPECIAL = re.compile("[&<>\r]").search  # one C scan: most values need no escaping


def _any_special(text: str) -> bool:
    """Whether ``text`` holds a character ``_escape`` replaces: four substring scans (C
    memchr-like), ~10x faster than ``_SPECIAL`` on an answer's worth of text (150 KB:
    0.2 vs 1.7 ms; the regex steps a character class through every character)."""
    return "&" in text or "<" in text or ">" in text or "\r" in text


def _escape(text: str) -> str:
    # \r would be normalised to \n by any XML parser, so it travels as a character reference.
    if _SPECIAL(text) is None:
        return text
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _field_tree(pairs: list[tuple[str, str]]) -> Node:
    """``[("Filter.1.Name", "x")]`` → ``{"Filter": {"1": {"Name": {None: "x"}}}}``."""
    root: Node = {}
    for key, value in pairs:
        node = root
        for part in key.split("."):
            node = node.setdefault(part, {})
        node[_LEAF] = value
    return root


# Fields every EC2 query request may carry besides the operation's members: the protocol's
# own (Action, Version) and the authentication parameters of SigV2 (AWS's "common query
# parameters"). SigV4 query auth adds X-Amz-Algorithm, X-Amz-Credential, … (any X-Amz-*).
_PROTOCOL_FIELDS = frozenset({
    "Action", "Version", "AWSAccessKeyId", "Signature", "SignatureMethod", "SignatureVersion",
    "Timestamp", "Expires", "SecurityToken",
})


def _is_protocol_field(name: str) -> bool:
    return name in _PROTOCOL_FIELDS or name.lower().startswith("x-amz-")


def _indexed(node: Node) -> list[tuple[int, Node]]:
    items = [(int(k), v) for k, v in node.items() if k is not None and k.isdigit()]
    items.sort(key=lambda kv: kv[0])
    return items


class QueryCodec(Codec):
    """The ``query`` protocol (STS): form in, ``<OpResult>`` XML out. Its ``ec2`` variant
    is :class:`Ec2Codec`, which overrides the hooks where EC2 differs (as botocore's
    ``EC2Serializer`` does the ``QuerySerializer``)."""

    protocol = "query"

    def __init__(self, service_model: Any) -> None:
        super().__init__(service_model)
        self.namespace = service_model.metadata.get("xmlNamespace", "")
        self._ops = set(service_model.operation_names)
        self._wire_maps: dict[str, dict[str, tuple[str, Any]]] = {}
        self._xml_writers = XmlWriters(self._always_emitted, _escape, needs_escape=_SPECIAL)  # compiled per shape
        # The same writers, checking the structures' strings once per answer (issue 15: one
        # regex call per string was ~10% of a DescribeSnapshots page's XML): serialize()
        # writes with these first and falls back to the escaping ones when a value needs it.
        self._xml_collecting = XmlWriters(self._always_emitted, _escape, needs_escape=_SPECIAL, collect=True)

    # -- request ------------------------------------------------------------------

    def parse(self, request: HttpRequest) -> tuple[Any, dict[str, Any]]:
        pairs: list[tuple[str, str]] = []
        if request.query:
            pairs.extend(parse_qsl(request.query, keep_blank_values=True))
        if request.body:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise self._invalid("(body)", "<binary>", "The request body must be UTF-8 form data.") from None
            pairs.extend(parse_qsl(text, keep_blank_values=True))
        fields = dict(pairs)
        action = fields.get("Action")
        if not action:
            raise UnknownOperation(
                "The request must contain the parameter Action", code="MissingAction", status=400
            )
        if action not in self._ops:
            raise UnknownOperation(f"The action {action} is not valid for this web service.")
        operation = self.operation(action)
        shape = operation.input_shape
        tree = _field_tree(pairs)
        self._check_fields(shape, tree)
        if shape is None:
            return operation, {}
        return operation, self._read_members(shape, tree, "")

    def _check_fields(self, shape: Any | None, tree: Node) -> None:
        """The query variant stays lenient about fields its operation does not have."""

    def _members_by_wire(self, shape: Any) -> dict[str, tuple[str, Any]]:
        """{wire name: (member name, member shape)} of a structure, in model order, built
        once per shape (both the unknown-field check and the reader look members up by it)."""
        found = self._wire_maps.get(shape.name)
        if found is None:
            found = {self._wire_name(m, n): (n, m) for n, m in shape.members.items()}
            self._wire_maps[shape.name] = found
        return found

    def _refuse_unknown(self, shape: Any | None, node: Node) -> None:
        """Raise UnknownParameter for the first field (in the order sent) ``shape`` lacks.

        AWS names the unrecognised segment alone, as sent ("The parameter VolumeType is
        not recognized" for ``BlockDeviceMapping.1.Ebs.VolumeType`` on an API without it).
        Where a list wants indexes, any other segment (``Filter.Item.1``) is unknown.
        """
        kind = shape.type_name if shape is not None else None
        if kind == "map":
            return  # no EC2 input has a map; the reader checks its entries
        if kind not in (None, "structure", "list") and _LEAF not in node:
            return  # a scalar sent as a structure: the reader's InvalidParameterValue says so
        for key, child in node.items():
            if key is None:
                continue
            member = self._child_shape(shape, kind, key)
            if member is None:
                raise UnknownParameter(key)
            self._refuse_unknown(member, child)

    def _child_shape(self, shape: Any | None, kind: str | None, key: str) -> Any | None:
        """The shape ``key`` names under ``shape``; None when it names nothing there."""
        if kind == "structure":
            found = self._members_by_wire(shape).get(key)
            return found[1] if found is not None else None
        if kind == "list" and shape is not None:
            return shape.member if key.isdigit() else None
        return None  # below a scalar, or an operation without input: nothing is known

    def _wire_name(self, member: Any, name: str) -> str:
        ser = member.serialization
        if member.type_name == "list" and ser.get("flattened") and member.member.serialization.get("name"):
            return str(member.member.serialization["name"])
        return str(ser.get("name", name))

    def _top_level_label(self, member: Any, name: str, wire: str) -> str:
        """How errors name a top-level member: by its wire name."""
        return wire

    def _missing(self, path: str) -> ValidationError:
        return ValidationError(f"The request must contain the parameter {path}", missing=True)

    def _invalid(self, path: str, text: str, reason: str) -> ValidationError:
        return ValidationError(f"Value ({text}) for parameter {path} is invalid. {reason}")

    def _read_members(self, shape: Any, node: Node, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for wire, (name, member) in self._members_by_wire(shape).items():
            child = node.get(wire)
            if child is None:
                continue
            full = f"{path}.{wire}" if path else self._top_level_label(member, name, wire)
            value = self._read(member, child, full)
            if value is not None:
                out[name] = value
        for name in required.missing(self.service, shape, out):
            wire = self._wire_name(shape.members[name], name)
            raise self._missing(f"{path}.{wire}" if path else wire)
        return out

    def _read(self, shape: Any, node: Node, path: str) -> Any:
        t = shape.type_name
        if t == "structure":
            return self._read_members(shape, node, path)
        if t == "list":
            return self._read_list(shape, node, path)
        if t == "map":
            return self._read_map(shape, node, path)
        text = node.get(_LEAF)
        if text is None:
            raise self._invalid(path, "", "Expected a single value, not a structure.")
        try:
            return V.parse_scalar(t, text)
        except V.BadValue as exc:
            raise self._invalid(path, text, f"It {exc}.") from None

    def _flat_list(self, shape: Any) -> bool:
        """Whether a list's items sit right under its name (``Name.1``), not under
        ``Name.member.1``."""
        return bool(shape.serialization.get("flattened"))

    def _read_list(self, shape: Any, node: Node, path: str) -> list[Any]:
        if self._flat_list(shape):
            container, item_path = node, path
        else:
            item_name = shape.member.serialization.get("name", "member")
            container = node.get(item_name, {})
            item_path = f"{path}.{item_name}"
        items = _indexed(container)
        if not items:
            leaf = node.get(_LEAF)
            if leaf is None or leaf == "":
                return []  # query protocol's explicit empty list: ``Name=``
            if shape.member.type_name not in ("structure", "list", "map"):
                return [self._read(shape.member, node, path)]  # lenient: ``Name=value``
            raise self._invalid(path, leaf, "Expected a list.")
        return [self._read(shape.member, child, f"{item_path}.{i}") for i, child in items]

    def _read_map(self, shape: Any, node: Node, path: str) -> dict[Any, Any]:
        if shape.serialization.get("flattened"):
            container, entry_path = node, path
        else:
            container, entry_path = node.get("entry", {}), f"{path}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        out = {}
        for i, entry in _indexed(container):
            if key_name not in entry:
                raise self._missing(f"{entry_path}.{i}.{key_name}")
            key = self._read(shape.key, entry[key_name], f"{entry_path}.{i}.{key_name}")
            if value_name in entry:
                out[key] = self._read(shape.value, entry[value_name], f"{entry_path}.{i}.{value_name}")
        return out

    # -- response -----------------------------------------------------------------

    def serialize(self, operation: Any, result: dict[str, Any], request_id: str) -> HttpResponse:
        name = operation.name
        shape = operation.output_shape
        result = result or {}
        head = f'<?xml version="1.0" encoding="UTF-8"?>\n<{name}Response xmlns="{self.namespace}">'
        collecting = Collecting(head)
        self._write_body(collecting, shape, result, request_id)
        out: list[str] = collecting
        if _any_special("".join(collecting.seen)):  # rare: written again, each value escaped
            out = [head]
            self._write_body(out, shape, result, request_id)
        out.append(f"</{name}Response>")
        return HttpResponse(200, self._headers(request_id), "".join(out).encode("utf-8"))

    def _write_body(self, out: list[str], shape: Any | None, result: dict[str, Any], request_id: str) -> None:
        """The members inside ``<OpResult>`` (the output's ``resultWrapper``), then
        ``<ResponseMetadata><RequestId>``."""
        if shape is not None:
            wrapper = shape.serialization.get("resultWrapper")
            if wrapper:
                out.append(f"<{wrapper}>")
            self._write_members(out, shape, result)
            if wrapper:
                out.append(f"</{wrapper}>")
        out.append(f"<ResponseMetadata><RequestId>{_escape(request_id)}</RequestId></ResponseMetadata>")

    def _always_emitted(self, shape: Any) -> frozenset[str]:
        """Members written even when the result has no value for them."""
        return frozenset()

    def _write_members(self, out: list[str], shape: Any, value: dict[str, Any]) -> None:
        """The members of ``value`` (a dict keyed by ``shape``'s member names; ``None``
        members left out) through the shape's compiled writer (.xml_writer)."""
        writers = self._xml_collecting if out.__class__ is Collecting else self._xml_writers
        writers.members(shape)(out, value)

    # -- errors -------------------------------------------------------------------

    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        code_x, msg_x, rid_x = _escape(code), _escape(message), _escape(request_id)
        kind = "Receiver" if status >= 500 else "Sender"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<ErrorResponse xmlns="{self.namespace}"><Error><Type>{kind}</Type>'
            f"<Code>{code_x}</Code><Message>{msg_x}</Message></Error>"
            f"<RequestId>{rid_x}</RequestId></ErrorResponse>"
        )
        return HttpResponse(status, self._headers(request_id), body.encode("utf-8"))

    @staticmethod
    def _headers(request_id: str) -> list[tuple[str, str]]:
        return [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", request_id)]


class Ec2Codec(QueryCodec):
    """The ``ec2`` protocol: the query form with EC2's own names and checks, and XML whose
    members sit right under ``<OpResponse>`` beside ``<requestId>``."""

    protocol = "ec2"

    def __init__(self, service_model: Any) -> None:
        super().__init__(service_model)
        if self.namespace and not self.namespace.endswith("/"):
            self.namespace += "/"  # EC2 answers with the trailing slash its model omits

    def _check_fields(self, shape: Any | None, tree: Node) -> None:
        """EC2 refuses a field its operation does not have (``UnknownParameter``)."""
        self._refuse_unknown(shape, {k: v for k, v in tree.items() if not (k is not None and _is_protocol_field(k))})

    def _wire_name(self, member: Any, name: str) -> str:
        ser = member.serialization
        if "queryName" in ser:
            return str(ser["queryName"])
        if "name" in ser:
            return str(ser["name"][:1].upper() + ser["name"][1:])
        return name

    def _top_level_label(self, member: Any, name: str, wire: str) -> str:
        """EC2's messages name a top-level scalar by its API's lowerCamel name.

        "Value (x) for parameter maxResults is invalid", "… parameter volumeId …": the
        model's ``locationName``, else the member name with a lower-case first letter. A
        list's or structure's items keep their wire path.
        """
        if member.type_name in ("structure", "list", "map"):
            return wire
        return str(member.serialization.get("name") or name[:1].lower() + name[1:])

    def _flat_list(self, shape: Any) -> bool:
        return True  # EC2 lists are always ``Name.N``

    def _write_body(self, out: list[str], shape: Any | None, result: dict[str, Any], request_id: str) -> None:
        out.append(f"<requestId>{_escape(request_id)}</requestId>")
        if shape is not None:
            self._write_members(out, shape, result)
        else:
            # Operations the model gives no output (DeleteVolume, …) answer <return>true</return>.
            out.append("<return>true</return>")

    def _always_emitted(self, shape: Any) -> frozenset[str]:
        return ALWAYS_EMITTED.get(shape.name, frozenset())  # lists AWS sends even when empty

    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        code_x, msg_x, rid_x = _escape(code), _escape(message), _escape(request_id)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code_x}</Code><Message>{msg_x}</Message></Error>"
            f"</Errors><RequestID>{rid_x}</RequestID></Response>"
        )
        return HttpResponse(status, self._headers(request_id), body.encode("utf-8"))
