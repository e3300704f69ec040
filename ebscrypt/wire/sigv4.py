"""AWS Signature Version 4: reading the credential scope, and verifying signatures.

The canonical request is built by botocore's own ``SigV4Auth`` (the code that signed the
request on the client side), restricted to the headers the client listed as signed, so
the server canonicalizes exactly as the SDKs do.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from ebscrypt.errors import AuthError
from ebscrypt.wire.http import HttpRequest

MAX_SKEW = timedelta(minutes=15)

# Services whose JSON protocols select the operation partly by Content-Type (and whose
# SDKs all sign it), so an unsigned Content-Type could be swapped under a signature.
_JSON_SERVICES = ("kms", "ebs")

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-f]+)"
)


@dataclass(frozen=True)
class Scope:
    """What the ``Authorization`` header claims: who, when, where, for which service."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def read_scope(request: HttpRequest) -> Scope | None:
    """The SigV4 scope of a request, or None when it is not signed with SigV4 headers."""
    header = request.headers.get("authorization", "")
    match = _AUTH_RE.match(header.strip())
    if match is None:
        return None
    parts = match["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        return None
    access_key, date, region, service, _ = parts
    return Scope(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=tuple(match["signed"].split(";")),
        signature=match["sig"],
    )


def unsigned_headers(request: HttpRequest, scope: Scope) -> list[str]:
    """Headers that must be covered by the signature but are not, in AWS's wording.

    The signature must cover everything that selects what the request does: ``Host``,
    every ``X-Amz-*`` header present (``X-Amz-Target`` names the KMS operation,
    ``X-Amz-Date`` the time), and ``Content-Type`` for the JSON protocols. Otherwise a
    captured request signed over ``host;x-amz-date`` could be replayed as another
    operation (DescribeKey turned into DisableKey by rewriting X-Amz-Target).
    """
    signed = set(scope.signed_headers)
    missing: list[str] = []
    if "host" not in signed:
        missing.append("'Host' or ':authority'")
    names = sorted(n for n in request.headers if n.startswith("x-amz-") and n not in signed)
    json_protocol = scope.service in _JSON_SERVICES or "x-amz-target" in request.headers
    if json_protocol and "content-type" in request.headers and "content-type" not in signed:
        names.append("content-type")
    missing += [f"'{_title(n)}'" for n in names]
    return missing


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


class _Verifier(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
    """botocore's signer, told which headers the client signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: tuple[str, ...]) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                headers[name] = value
        return headers


def verify(request: HttpRequest, scope: Scope, secret_key: str, now: datetime) -> None:
    """Raise :class:`AuthError` unless the request carries a valid, fresh signature."""
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise AuthError("The request must contain a valid X-Amz-Date header.", kind="missing") from None
    if abs(now - signed_at) > MAX_SKEW:
        raise AuthError(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} "
            f"({now.strftime('%Y%m%dT%H%M%SZ')} - 15 min.)",
            kind="expired",
        )
    unsigned = unsigned_headers(request, scope)
    if unsigned:
        raise AuthError(f"{unsigned[0]} must be a 'SignedHeader' in the AWS Authorization.", kind="incomplete")
    if scope.date != amz_date[:8]:
        raise AuthError("The credential scope date does not match X-Amz-Date.", kind="bad_signature")

    claimed = request.headers.get("x-amz-content-sha256")
    if claimed and not claimed.startswith(("UNSIGNED-PAYLOAD", "STREAMING-")):
        # The body hash is what the signature covers: the body must match it.
        if not hmac.compare_digest(claimed, hashlib.sha256(request.body).hexdigest()):
            raise AuthError("The provided 'x-amz-content-sha256' header does not match what was computed.", kind="bad_signature")

    url = f"http://{request.headers.get('host', '')}{request.path}"
    if request.query:
        url += f"?{request.query}"
    aws_request = AWSRequest(method=request.method, url=url, data=request.body)
    for name, value in request.headers.items():
        aws_request.headers[name] = value
    aws_request.context["timestamp"] = amz_date
    verifier = _Verifier(Credentials(scope.access_key, secret_key), scope.service, scope.region, scope.signed_headers)
    canonical = verifier.canonical_request(aws_request)
    expected = verifier.signature(verifier.string_to_sign(aws_request, canonical), aws_request)
    if not hmac.compare_digest(expected, scope.signature):
        raise AuthError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
            kind="bad_signature",
        )
