"""How each protocol names the errors the wire itself raises (auth, unknown op, validation).

Handlers raise :class:`ServiceError` with AWS's own code for their service; only the
three protocol-level error kinds below need a per-protocol translation, because the
same failure has a different code (and sometimes status) on each AWS wire.
"""

from __future__ import annotations

from ebscrypt.errors import AuthError, ServiceError, UnknownOperation, ValidationError

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."

# protocol -> AuthError.kind -> (code, status, message or None to keep the error's own)
_AUTH: dict[str, dict[str, tuple[str, int, str | None]]] = {
    "ec2": {
        "unknown_key": ("AuthFailure", 401, "AWS was not able to validate the provided access credentials"),
        "bad_signature": ("AuthFailure", 401, "AWS was not able to validate the provided access credentials"),
        "missing": ("AuthFailure", 401, "AWS was not able to validate the provided access credentials"),
        "expired": ("RequestExpired", 400, None),
        # EC2's common error for a signature that does not cover what it must.
        "incomplete": ("IncompleteSignature", 400, None),
    },
    "query": {
        "unknown_key": ("InvalidClientTokenId", 403, INVALID_TOKEN),
        "bad_signature": ("SignatureDoesNotMatch", 403, SIGNATURE_MISMATCH),
        "missing": ("MissingAuthenticationToken", 403, "Request is missing Authentication Token"),
        "expired": ("SignatureDoesNotMatch", 403, None),
        "incomplete": ("IncompleteSignature", 400, None),
    },
    "json": {
        "unknown_key": ("UnrecognizedClientException", 400, INVALID_TOKEN),
        "bad_signature": ("InvalidSignatureException", 400, SIGNATURE_MISMATCH),
        "missing": ("MissingAuthenticationTokenException", 400, "Missing Authentication Token"),
        "expired": ("InvalidSignatureException", 400, None),
        # What AWS's JSON services answer for an unsigned Host ("'Host' or ':authority'
        # must be a 'SignedHeader' in the AWS Authorization.").
        "incomplete": ("InvalidSignatureException", 400, None),
    },
    "rest-json": {
        "unknown_key": ("UnrecognizedClientException", 403, INVALID_TOKEN),
        "bad_signature": ("InvalidSignatureException", 403, SIGNATURE_MISMATCH),
        "missing": ("MissingAuthenticationTokenException", 403, "Missing Authentication Token"),
        "expired": ("InvalidSignatureException", 403, None),
        "incomplete": ("InvalidSignatureException", 403, None),
    },
}
_EXPIRED_DEFAULT = {"ec2": "Request has expired."}

# protocol -> (code, status) for an operation the service does not know
_UNKNOWN_OP = {
    "ec2": ("InvalidAction", 400),
    "query": ("InvalidAction", 400),
    "json": ("UnknownOperationException", 400),
    "rest-json": ("UnknownOperationException", 404),
}


def wire_error(protocol: str, error: ServiceError) -> tuple[str, int, str]:
    """(code, status, message) for ``error`` on ``protocol``'s wire."""
    if isinstance(error, AuthError):
        table = _AUTH[protocol]
        code, status, message = table.get(error.kind, table["unknown_key"])
        if message is None:
            message = error.message or _EXPIRED_DEFAULT.get(protocol, "Signature expired")
        return code, status, message
    if isinstance(error, UnknownOperation) and error.code == UnknownOperation.code:
        code, status = _UNKNOWN_OP[protocol]
        return code, status, error.message
    if isinstance(error, ValidationError) and error.code == ValidationError.code:
        if protocol == "ec2":
            return ("MissingParameter" if error.missing else "InvalidParameterValue"), 400, error.message
        if protocol == "query":
            return ("MissingParameter" if error.missing else "ValidationError"), 400, error.message
        return "ValidationException", 400, error.message
    return error.code, error.status, error.message
