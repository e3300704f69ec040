"""The audit event every KMS handler runs in."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.kms.audit import AuditedEvent
from ebscrypt.engines.kms.engine import KeyEngine


class audited:  # noqa: N801 (used as ``with audited(ctx, ...) as kms``, as the function it was)
    """The key engine, inside the audit event of ``operation`` (its CloudTrail record
    carries ``params`` as the request's ``requestParameters``). A class, not a generator:
    it wraps every KMS call (issue 15)."""

    __slots__ = ("_engine", "_event")

    def __init__(self, ctx: RequestContext, operation: str, params: dict[str, Any]) -> None:
        self._engine: KeyEngine = ctx.runtime.kms
        self._event: AuditedEvent = self._engine.audited(ctx.caller, operation, params, request_id=ctx.request_id)

    def __enter__(self) -> KeyEngine:
        self._event.__enter__()
        return self._engine

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._event.__exit__(exc_type, exc, tb)
