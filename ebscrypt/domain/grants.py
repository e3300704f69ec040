"""KMS grants: validation of a CreateGrant request and evaluation of a grant (pure).

A grant lets its grantee principal perform its operations on one key, optionally only
when the request's encryption context equals (``EncryptionContextEquals``) or contains
(``EncryptionContextSubset``) the grant's. A grant whose grantee is a service principal
(``ec2.REGION.amazonaws.com``, created by EC2 for an EBS resource) applies to calls that
service makes on behalf of a principal of the grant's issuing account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from ebscrypt.domain.policy import principal_matches

GRANT_OPERATIONS = (
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
)
# Operations that take an encryption context (constraints only make sense for these).
CRYPTO_OPERATIONS = frozenset(
    {
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncryptFrom",
        "ReEncryptTo",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)

_SERVICE_RE = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*\.amazonaws\.com$")
_PRINCIPAL_RE = re.compile(r"^(\d{12}|arn:aws[a-z-]*:(iam|sts)::\d{12}:.+)$")


class GrantError(ValueError):
    """The grant request is invalid; ``code`` is the KMS error code."""

    def __init__(self, message: str, code: str = "ValidationException") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Grant:
    grant_id: str
    key_id: str
    grantee: str
    operations: frozenset[str]
    issuing_account: str
    retiring: str | None = None
    constraints: Mapping[str, Mapping[str, str]] | None = None
    for_aws_resource: bool = False
    name: str | None = None


def is_service_principal(principal: str) -> bool:
    return bool(_SERVICE_RE.match(principal))


def validate_principal(principal: str, what: str) -> None:
    if not isinstance(principal, str) or not (
        _PRINCIPAL_RE.match(principal) or is_service_principal(principal)
    ):
        raise GrantError(f"{what} {principal!r} is not a valid principal ARN or service principal.")


def validate_grant(
    operations: Sequence[str],
    constraints: Mapping[str, Mapping[str, str]] | None,
    grantee: str,
    retiring: str | None,
) -> None:
    """Raise :class:`GrantError` unless this is a well-formed CreateGrant request."""
    validate_principal(grantee, "GranteePrincipal")
    if retiring is not None:
        validate_principal(retiring, "RetiringPrincipal")
    if not operations:
        raise GrantError("Operations must contain at least one grant operation.")
    for op in operations:
        if op not in GRANT_OPERATIONS:
            raise GrantError(
                f"1 validation error detected: Value '[{op}]' at 'operations' failed to satisfy "
                f"constraint: Member must satisfy constraint: [Member must satisfy enum value set: "
                f"[{', '.join(GRANT_OPERATIONS)}]]"
            )
    if constraints:
        unknown = set(constraints) - {"EncryptionContextEquals", "EncryptionContextSubset"}
        if unknown:
            raise GrantError(f"Unknown grant constraint: {sorted(unknown)[0]}")
        if "EncryptionContextEquals" in constraints and "EncryptionContextSubset" in constraints:
            raise GrantError(
                "A grant constraint can include EncryptionContextEquals or "
                "EncryptionContextSubset, but not both."
            )
        if any(op not in CRYPTO_OPERATIONS for op in operations):
            raise GrantError(
                "Grant constraints are not supported for grants that include operations "
                "that do not take an encryption context."
            )


def constraints_satisfied(
    constraints: Mapping[str, Mapping[str, str]] | None, context: Mapping[str, str] | None
) -> bool:
    if not constraints:
        return True
    ctx = dict(context or {})
    equals = constraints.get("EncryptionContextEquals")
    if equals is not None:
        return ctx == dict(equals)
    subset = constraints.get("EncryptionContextSubset")
    if subset is not None:
        return all(ctx.get(k) == v for k, v in subset.items())
    return True


def grantee_matches(grant: Grant, principal_arn: str, principal_account: str, via_service: str | None) -> bool:
    """Is this caller (possibly acting through a service) the grant's grantee?"""
    if is_service_principal(grant.grantee):
        # A grant to a service: the service acting for a principal of the issuing account.
        if via_service is None or principal_account != grant.issuing_account:
            return False
        return via_service == grant.grantee or (
            grant.grantee.count(".") == 2 and via_service.split(".")[0] == grant.grantee.split(".")[0]
        )
    return principal_matches(grant.grantee, principal_arn, principal_account)


def grant_allows(
    grant: Grant,
    *,
    operation: str,
    principal_arn: str,
    principal_account: str,
    encryption_context: Mapping[str, str] | None,
    via_service: str | None = None,
) -> bool:
    """Does ``grant`` authorize ``operation`` (grant spelling, e.g. ``ReEncryptFrom``)?"""
    if operation not in grant.operations:
        return False
    if not grantee_matches(grant, principal_arn, principal_account, via_service):
        return False
    if operation in CRYPTO_OPERATIONS:
        return constraints_satisfied(grant.constraints, encryption_context)
    return True


def may_retire(grant: Grant, principal_arn: str, principal_account: str) -> bool:
    """RetireGrant: the retiring principal, or the grantee if the grant includes RetireGrant."""
    if grant.retiring and principal_matches(grant.retiring, principal_arn, principal_account):
        return True
    return "RetireGrant" in grant.operations and principal_matches(
        grant.grantee, principal_arn, principal_account
    )
