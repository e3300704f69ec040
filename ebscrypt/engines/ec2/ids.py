"""Resource ids (``vol-``/``snap-`` + 17 hex) and a request-like context for jobs."""

from __future__ import annotations

import re
import secrets

from ebscrypt.context import Caller, RequestContext, Runtime
from ebscrypt.errors import Malformed

_ID = re.compile(r"^[0-9a-f]{8}([0-9a-f]{9})?$")


def new_id(prefix: str) -> str:
    """``new_id("vol")`` -> ``vol-0123456789abcdef0`` (17 lowercase hex digits, as AWS)."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def is_well_formed(resource_id: str, prefix: str) -> bool:
    head, sep, tail = resource_id.partition("-")
    return head == prefix and sep == "-" and bool(_ID.match(tail))


def check_id(resource_id: str, prefix: str, code: str) -> None:
    """Raise ``code`` (e.g. ``InvalidVolumeID.Malformed``) for an id that is not ``prefix-hex``."""
    if not is_well_formed(resource_id, prefix):
        raise Malformed(code.removesuffix(".Malformed"), resource_id, prefix=prefix)


def job_ctx(runtime: Runtime, account: str, region: str, operation: str = "job") -> RequestContext:
    """A context for work done on a caller's behalf outside a request (jobs)."""
    return RequestContext(caller=Caller(account=account, region=region), runtime=runtime,
                          request_id="job", service="ec2", operation=operation)


def via_ec2(region: str) -> str:
    """The KMS ``via_service`` value for EC2 in ``region`` (kms:ViaService)."""
    return f"ec2.{region}.amazonaws.com"
