"""STS: GetCallerIdentity, so SDKs and tools can ask who they are."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.services.registry import operation


@operation("sts", "GetCallerIdentity")
def get_caller_identity(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    caller = ctx.caller
    return {"UserId": caller.user_id, "Account": caller.account, "Arn": caller.arn}
