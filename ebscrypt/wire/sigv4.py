"""AWS Signature Version 4: reading the credential scope, and verifying signatures.

The canonical request is built as botocore's own ``SigV4Auth`` builds it (the code that
signed the request on the client side: its path normalization and quoting, its query and
header canonicalization), restricted to the headers the client listed as signed, so the
server canonicalizes exactly as the SDKs do. It is written out here rather than run
through ``SigV4Auth`` on an ``AWSRequest``: that object model cost ~100 µs per call,
as much as a KMS data-key call's own work (issue 15); tests/unit/test_sigv4.py checks
the two give the same canonical request and signature over varied requests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta, timezone

from urllib.parse import quote, urlsplit

from botocore.utils import normalize_url_path

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


def canonical_request(request: HttpRequest, scope: Scope) -> str:
    """SigV4's canonical request, as botocore's ``SigV4Auth.canonical_request`` makes it
    for this request (its URL ``http://<host><path>?<query>``) and the headers the
    client signed: a signed header absent from the request is left out of both the
    header lines and the signed-header list, as botocore leaves it out."""
    parts = urlsplit(f"http://{request.headers.get('host', '')}{request.path}" + (f"?{request.query}" if request.query else ""))
    path = quote(normalize_url_path(parts.path), safe="/~")
    query = ""
    if parts.query:
        query = "&".join(f"{k}={v}" for k, v in sorted(pair.partition("=")[::2] for pair in parts.query.split("&")))
    # botocore's headers_to_sign holds one entry per signed name present (a name listed
    # twice: twice), looked up without regard to case; canonical_headers then joins the
    # values of each distinct name with commas.
    present = [name for name in scope.signed_headers if name.lower() in request.headers]
    lines = []
    for name in sorted(set(present)):
        times = sum(1 for other in present if other.lower() == name.lower())
        value = " ".join(request.headers[name.lower()].split())
        lines.append(f"{name}:{','.join([value] * times)}")
    signed = ";".join(sorted(name.lower().strip() for name in set(present)))
    checksum = request.headers.get("x-amz-content-sha256")
    if checksum is None:
        checksum = hashlib.sha256(request.body).hexdigest()
    return "\n".join([request.method.upper(), path, query, "\n".join(lines) + "\n", signed, checksum])


def string_to_sign(request: HttpRequest, scope: Scope, amz_date: str) -> str:
    digest = hashlib.sha256(canonical_request(request, scope).encode("utf-8")).hexdigest()
    return f"AWS4-HMAC-SHA256\n{amz_date}\n{amz_date[0:8]}/{scope.region}/{scope.service}/aws4_request\n{digest}"


@lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """SigV4's signing key: four HMACs that depend only on the secret and the credential
    scope (a day, a region, a service), so a client's requests of one day share it (AWS
    documents caching it). Bounded: keys of past days fall out as new ones come in."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


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

    key = signing_key(secret_key, amz_date[0:8], scope.region, scope.service)
    expected = hmac.new(key, string_to_sign(request, scope, amz_date).encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, scope.signature):
        raise AuthError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
            kind="bad_signature",
        )
