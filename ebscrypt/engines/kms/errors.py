"""KMS errors the operations share, with AWS's codes and wording."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.errors import ServiceError


def kms_error(code: str, message: str, status: int = 400) -> ServiceError:
    return ServiceError(message, code=code, status=status)


def out_of_range(value: Any, member: str, low: int, high: int) -> ServiceError:
    """The ValidationException AWS gives for a number outside its member's range."""
    return kms_error(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
        f"constraint: Member must have value between {low} and {high}",
    )


def no_policy_allows(caller: Caller, row: Any, action: str) -> ServiceError:
    return kms_error(
        "AccessDeniedException",
        f"User: {caller.arn} is not authorized to perform: {action} on resource: "
        f"{row.arn} because no resource-based policy allows the {action} action.",
    )


def incompatible_algorithm(algorithm: str, row: Any) -> ServiceError:
    return kms_error("InvalidKeyUsageException", f"Algorithm {algorithm} is incompatible with key spec {row.key_spec}.")


def stop_if_dry_run(dry_run: Any) -> None:
    """A DryRun request ends, once every check has passed, with this error (as in AWS)."""
    if dry_run:
        raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")


def refuse_recipient(p: dict[str, Any]) -> None:
    if "Recipient" in p:
        raise kms_error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported by ebscrypt.")
