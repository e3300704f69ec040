"""Key-state and key-usage checks on a key row, and the resources an audit record names.

Pure functions of the row (and the audit event in progress): every operation family
calls them, none owns them.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.engines.kms.audit import CURRENT_EVENT
from ebscrypt.engines.kms.errors import no_policy_allows
from ebscrypt.errors import KmsDisabled, KmsInvalidKeyUsage, KmsInvalidState, KmsUnsupported

__all__ = [
    "note_resource", "require_customer", "require_enabled", "require_not_pending", "require_rotatable",
    "require_symmetric", "require_usage",
]


def note_resource(arn: str) -> None:
    """Name ``arn`` among the resources of the audit record in progress (if any)."""
    ev = CURRENT_EVENT.get()
    if ev is not None:
        ev.resources.append(arn)


def require_enabled(row: Any) -> None:
    if row.state == "Disabled":
        raise KmsDisabled(f"{row.arn} is disabled.")
    if row.state == "PendingDeletion":
        raise KmsInvalidState(f"{row.arn} is pending deletion.")


def require_not_pending(row: Any) -> None:
    if row.state == "PendingDeletion":
        raise KmsInvalidState(f"{row.arn} is pending deletion.")


def require_usage(row: Any, usage: str, operation: str) -> None:
    if row.key_usage != usage:
        raise KmsInvalidKeyUsage(f"{row.arn} key usage is {row.key_usage} which is not valid for {operation}.")


def require_symmetric(row: Any, what: str) -> None:
    if row.key_spec != "SYMMETRIC_DEFAULT" or row.key_usage != "ENCRYPT_DECRYPT":
        raise KmsInvalidKeyUsage(
            f"{row.arn} key usage is {row.key_usage} and key spec is {row.key_spec}, "
            f"which is not valid for {what}."
        )


def require_customer(row: Any, caller: Caller, action: str) -> None:
    """AWS managed keys refuse every change by their owner (their policy does not allow it)."""
    if row.key_manager == "AWS":
        raise no_policy_allows(caller, row, action)


def require_rotatable(row: Any) -> None:
    if row.key_spec != "SYMMETRIC_DEFAULT":
        raise KmsUnsupported(
            f"{row.arn} key spec is {row.key_spec}: automatic and on-demand rotation are "
            "supported only for symmetric encryption KMS keys."
        )
