"""The codec base class: one instance per service, built once from its service model."""

from __future__ import annotations

import abc
from typing import Any

import botocore.model

from ebscrypt.errors import ServiceError
from ebscrypt.wire.codec.errors import wire_error
from ebscrypt.wire.http import HttpRequest, HttpResponse


class Codec(abc.ABC):
    """Base class: one instance per service, built once from the service model. Each
    protocol class implements ``parse``, ``serialize`` and ``error_response``."""

    protocol: str = ""

    def __init__(self, service_model: botocore.model.ServiceModel) -> None:
        self.service_model = service_model
        self.service = service_model.service_name

    def operation(self, name: str) -> botocore.model.OperationModel:
        return self.service_model.operation_model(name)

    @abc.abstractmethod
    def parse(self, request: HttpRequest) -> tuple[botocore.model.OperationModel, dict[str, Any]]:
        """The operation an SDK request calls and its params (model member names)."""

    @abc.abstractmethod
    def serialize(
        self, operation: botocore.model.OperationModel, result: dict[str, Any], request_id: str
    ) -> HttpResponse:
        """The HTTP response carrying a handler's result, as the SDK parses it."""

    def serialize_error(self, error: ServiceError, request_id: str) -> HttpResponse:
        """The protocol's error response for ``error`` (the same for every operation)."""
        code, status, message = wire_error(self.protocol, error)
        return self.error_response(code, status, message, error, request_id)

    @abc.abstractmethod
    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        """The protocol's error envelope (EC2 XML, KMS ``__type``, EBS ``x-amzn-ErrorType``)."""
