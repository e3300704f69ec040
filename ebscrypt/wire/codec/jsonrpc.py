"""The ``json`` protocol (1.0/1.1), as KMS speaks it.

Request: ``POST /`` with ``X-Amz-Target: <targetPrefix>.<Operation>`` and a JSON object
body (members by name, blobs base64, timestamps epoch seconds). Bodies that do not deserialize (bad JSON, wrong JSON types,
bad base64) are ``SerializationException``; constraint failures (required, min/max,
enum) ``ValidationException``. Response: the output structure as JSON; errors ``{"__type": code, "message": msg}``. The request id travels
in the ``x-amzn-RequestId`` header.
"""

from __future__ import annotations

import json
from typing import Any

from ebscrypt.errors import SerializationError, ServiceError, UnknownOperation, ValidationError

from . import jsonshape
from .base import Codec
from .jsonplan import Doubt, JsonPlans
from ebscrypt.jsonenc import compact_encoder
from ebscrypt.wire.http import HttpRequest, HttpResponse


# The response body's encoder, its C encoder made once (ebscrypt/jsonenc.py).
_encode = compact_encoder()


def decode_json_object(body: bytes, error: type[ValidationError] = ValidationError) -> dict[str, Any]:
    """A request body as a JSON object ({} when empty); ``error`` otherwise (JSON 1.1
    services answer a body that does not deserialize with :class:`SerializationError`)."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise error("Request body is not valid JSON (expected a JSON object)") from None
    if isinstance(doc, dict):
        return doc
    raise error("Request body must be a JSON object")


class JsonRpcCodec(Codec):
    protocol = "json"

    def __init__(self, service_model: Any) -> None:
        super().__init__(service_model)
        self.target_prefix = service_model.metadata.get("targetPrefix", "")
        self.content_type = f"application/x-amz-json-{service_model.metadata.get('jsonVersion', '1.0')}"
        self._ops = {name: name for name in service_model.operation_names}
        self._plans = JsonPlans(self.service)  # compiled readers/writers (issue 15)

    def parse(self, request: HttpRequest) -> tuple[Any, dict[str, Any]]:
        target = request.headers.get("x-amz-target", "")
        prefix, _, name = target.rpartition(".")
        if not target or prefix != self.target_prefix or name not in self._ops:
            shown = name or target or "(none)"
            raise UnknownOperation(f"Operation {shown} is not supported by this service.")
        operation = self.operation(name)
        doc = decode_json_object(request.body, SerializationError)
        shape = operation.input_shape
        if shape is None:
            return operation, {}
        try:
            return operation, self._plans.reader(shape)(doc)
        except Doubt:  # not a document the compiled reader accepts: JsonReader says why
            pass
        reader = jsonshape.JsonReader(self.service, constraints=True, type_error=SerializationError)
        params = reader.read_members(shape, doc, "")
        reader.finish()
        return operation, params

    def serialize(self, operation: Any, result: dict[str, Any], request_id: str) -> HttpResponse:
        shape = operation.output_shape
        doc = self._plans.writer(shape)(result or {}) if shape is not None else {}
        return HttpResponse(200, self._headers(request_id), _encode(doc).encode())

    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        doc: dict[str, Any] = {"__type": code, "message": message}
        for key, value in error.fields.items():
            if value is not None and key not in doc:
                doc[key] = value
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        return HttpResponse(status, self._headers(request_id), body)

    def _headers(self, request_id: str) -> list[tuple[str, str]]:
        return [("Content-Type", self.content_type), ("x-amzn-RequestId", request_id)]
