"""KMS errors the operations share, with AWS's codes and wording (the classes are in
:mod:`ebscrypt.errors`; these build the messages that need a key row)."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.errors import KmsAccessDenied, KmsDryRun, KmsInvalidKeyUsage, KmsUnsupported


def no_policy_allows(caller: Caller, row: Any, action: str) -> KmsAccessDenied:
    return KmsAccessDenied.no_policy_allows(caller.arn, row.arn, action)


def incompatible_algorithm(algorithm: str | None, row: Any) -> KmsInvalidKeyUsage:
    return KmsInvalidKeyUsage(f"Algorithm {algorithm} is incompatible with key spec {row.key_spec}.")


def stop_if_dry_run(dry_run: Any) -> None:
    """A DryRun request ends, once every check has passed, with this error (as in AWS)."""
    if dry_run:
        raise KmsDryRun()


def refuse_recipient(recipient: Any) -> None:
    if recipient is not None:
        raise KmsUnsupported("Recipient (Nitro Enclaves) is not supported by ebscrypt.")
