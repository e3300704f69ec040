"""Which AWS service a request is for.

The SigV4 credential scope names the service; requests without one (or signed for a
service name we do not serve) are routed by their protocol markers: ``X-Amz-Target``
(JSON protocols), the URL path (rest-json), the ``Action`` form field (query protocols).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from ebscrypt.wire.http import HttpRequest

SERVICES = ("ec2", "kms", "ebs", "sts")

# Query-protocol actions that belong to STS rather than EC2.
_STS_ACTIONS = frozenset(
    {
        "GetCallerIdentity",
        "AssumeRole",
        "GetSessionToken",
        "GetAccessKeyInfo",
        "DecodeAuthorizationMessage",
        "GetFederationToken",
        "AssumeRoleWithWebIdentity",
        "AssumeRoleWithSAML",
    }
)


def service_for(request: HttpRequest, scoped_service: str | None) -> str | None:
    """The service to dispatch to, or None when nothing identifies one."""
    if scoped_service in SERVICES:
        return scoped_service
    target = request.headers.get("x-amz-target", "")
    if target.startswith("TrentService."):
        return "kms"
    if request.path.startswith("/snapshots"):
        return "ebs"
    action = _action(request)
    if action is not None:
        return "sts" if action in _STS_ACTIONS else "ec2"
    return None


def _action(request: HttpRequest) -> str | None:
    fields = parse_qs(request.query)
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "x-www-form-urlencoded" in content_type:
        fields.update(parse_qs(request.body.decode("utf-8", "replace")))
    values = fields.get("Action")
    return values[0] if values else None
