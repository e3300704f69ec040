"""Server-side AWS protocol codecs, driven by botocore's service models.

The inverse of botocore's ``serialize.py``/``parsers.py``: a codec parses the HTTP
request an SDK sends into ``(OperationModel, params)`` and serializes a handler's
result (or a :class:`ServiceError`) into the HTTP response the SDK expects. Params and
results are plain Python values keyed by the model's member names; there are no
per-operation templates, so every operation in the model works the same way.

One class per protocol:

- :mod:`.query`    — ``query`` (STS, :class:`~.query.QueryCodec`) and its ``ec2`` variant
  (:class:`~.query.Ec2Codec`): form in, XML out
- :mod:`.jsonrpc`  — ``json`` 1.1 (KMS: ``X-Amz-Target`` in, JSON out)
- :mod:`.restjson` — ``rest-json`` (EBS direct APIs: routes, headers, raw payloads)
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import botocore.loaders
import botocore.model

from ebscrypt.errors import ServiceError
from ebscrypt.wire.http import HttpRequest, HttpResponse

from .errors import wire_error

__all__ = ["Codec", "codec_for", "HttpRequest", "HttpResponse"]


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

    def serialize_error(
        self,
        error: ServiceError,
        request_id: str,
        operation: botocore.model.OperationModel | None = None,
    ) -> HttpResponse:
        code, status, message = wire_error(self.protocol, error)
        return self.error_response(code, status, message, error, request_id)

    @abc.abstractmethod
    def error_response(
        self, code: str, status: int, message: str, error: ServiceError, request_id: str
    ) -> HttpResponse:
        """The protocol's error envelope (EC2 XML, KMS ``__type``, EBS ``x-amzn-ErrorType``)."""


_loader = botocore.loaders.Loader()


@functools.lru_cache(maxsize=None)
def service_model(service: str) -> botocore.model.ServiceModel:
    return botocore.model.ServiceModel(_loader.load_service_model(service, "service-2"), service_name=service)


@functools.lru_cache(maxsize=None)
def codec_for(service: str) -> Codec:
    """The codec for ``service`` ("ec2", "kms", "ebs", "sts", …), built once."""
    model = service_model(service)
    protocol = model.protocol
    if protocol == "ec2":
        from .query import Ec2Codec

        return Ec2Codec(model)
    if protocol == "query":
        from .query import QueryCodec

        return QueryCodec(model)
    if protocol == "json":
        from .jsonrpc import JsonRpcCodec

        return JsonRpcCodec(model)
    if protocol == "rest-json":
        from .restjson import RestJsonCodec

        return RestJsonCodec(model)
    raise ValueError(f"no codec for protocol {protocol!r} of service {service!r}")
