"""Errors that reach the caller as AWS error responses.

Every layer below the wire raises :class:`ServiceError` (or a subclass) carrying the AWS
error code, an actionable message and the HTTP status. The wire codec renders it in the
protocol's own envelope (EC2 XML, KMS ``__type``, EBS ``x-amzn-ErrorType`` + ``Reason``),
so no layer below the wire knows about XML or JSON.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the caller caused (4xx) or a fault of ours (5xx), with AWS's code."""

    code: str = "InternalFailure"
    status: int = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        # Extra members of the error shape (EBS ``Reason``, …), serialized where the
        # protocol carries them.
        self.fields: dict[str, Any] = fields

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InternalFailure(ServiceError):
    code = "InternalFailure"
    status = 500


class ServiceUnavailable(ServiceError):
    """A backend this server depends on (the block object store) did not answer or failed:
    retryable (HTTP 503, which the SDKs retry). The wire layer gives each protocol its own
    code for it; the message names the cause."""

    code = "ServiceUnavailable"
    status = 503


class UnknownOperation(ServiceError):
    """No handler for the operation: each protocol renders its own code for it."""

    code = "InvalidAction"
    status = 400


class ValidationError(ServiceError):
    """Input that does not match the operation's model (type, required member, range).

    The codec maps it to the protocol's code: EC2 ``MissingParameter`` /
    ``InvalidParameterValue``, KMS/EBS ``ValidationException``.
    """

    code = "ValidationException"
    status = 400

    def __init__(self, message: str, *, missing: bool = False, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.missing = missing


class AuthError(ServiceError):
    """Authentication failed; ``kind`` says why so each protocol can name it its way."""

    status = 403

    def __init__(self, message: str, *, kind: str) -> None:
        # kind: "unknown_key" | "bad_signature" | "expired" | "missing"
        super().__init__(message)
        self.kind = kind


class PayloadTooLarge(ServiceError):
    code = "RequestEntityTooLarge"
    status = 413
