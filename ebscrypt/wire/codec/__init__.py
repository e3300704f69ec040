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

import functools

import botocore.loaders
import botocore.model

from ebscrypt.wire.http import HttpRequest, HttpResponse

from .base import Codec
from .jsonrpc import JsonRpcCodec
from .query import Ec2Codec, QueryCodec
from .restjson import RestJsonCodec

__all__ = ["Codec", "codec_for", "HttpRequest", "HttpResponse"]


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
        return Ec2Codec(model)
    if protocol == "query":
        return QueryCodec(model)
    if protocol == "json":
        return JsonRpcCodec(model)
    if protocol == "rest-json":
        return RestJsonCodec(model)
    raise ValueError(f"no codec for protocol {protocol!r} of service {service!r}")
