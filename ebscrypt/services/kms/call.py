"""The audit event every KMS handler runs in."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ebscrypt.context import RequestContext
from ebscrypt.engines.kms.engine import KeyEngine


@contextmanager
def audited(ctx: RequestContext, operation: str, params: dict[str, Any]) -> Iterator[KeyEngine]:
    """The key engine, inside the audit event of ``operation`` (its CloudTrail record
    carries ``params`` as the request's ``requestParameters``)."""
    engine: KeyEngine = ctx.runtime.kms
    with engine.audited(ctx.caller, operation, params, request_id=ctx.request_id):
        yield engine
