"""Grant validation and evaluation (ebscrypt.domain.grants), pure: SPEC R-KEY-3."""

from __future__ import annotations

import pytest

from ebscrypt.domain.grants import (
    Grant,
    GrantError,
    constraints_satisfied,
    grant_allows,
    may_retire,
    validate_grant,
)

A, B = "111111111111", "222222222222"
B_ROOT = f"arn:aws:iam::{B}:root"


def grant(**kw: object) -> Grant:
    base = dict(grant_id="g", key_id="k", grantee=B_ROOT, operations=frozenset({"Decrypt"}), issuing_account=A)
    base.update(kw)
    return Grant(**base)  # type: ignore[arg-type]


def allows(g: Grant, op: str = "Decrypt", account: str = B, ec: dict | None = None, via: str | None = None) -> bool:
    return grant_allows(
        g,
        operation=op,
        principal_arn=f"arn:aws:iam::{account}:root",
        principal_account=account,
        encryption_context=ec,
        via_service=via,
    )


def test_grantee_may_perform_granted_operations_only() -> None:
    g = grant()
    assert allows(g)
    assert not allows(g, op="Encrypt")
    assert not allows(g, account="333333333333")


def test_account_grantee_covers_its_principals() -> None:
    g = grant(grantee=B)
    assert grant_allows(g, operation="Decrypt", principal_arn=f"arn:aws:iam::{B}:user/u",
                        principal_account=B, encryption_context=None)


def test_user_grantee_is_exact() -> None:
    g = grant(grantee=f"arn:aws:iam::{B}:user/bob")
    assert grant_allows(g, operation="Decrypt", principal_arn=f"arn:aws:iam::{B}:user/bob",
                        principal_account=B, encryption_context=None)
    assert not grant_allows(g, operation="Decrypt", principal_arn=f"arn:aws:iam::{B}:user/eve",
                            principal_account=B, encryption_context=None)


def test_encryption_context_equals() -> None:
    g = grant(constraints={"EncryptionContextEquals": {"vol": "v-1"}})
    assert allows(g, ec={"vol": "v-1"})
    assert not allows(g, ec={"vol": "v-1", "x": "y"})
    assert not allows(g, ec={"vol": "v-2"})
    assert not allows(g, ec=None)


def test_encryption_context_subset() -> None:
    g = grant(constraints={"EncryptionContextSubset": {"vol": "v-1"}})
    assert allows(g, ec={"vol": "v-1"})
    assert allows(g, ec={"vol": "v-1", "x": "y"})
    assert not allows(g, ec={"x": "y"})
    assert constraints_satisfied(None, {"a": "b"})


def test_service_grant_applies_to_service_acting_for_issuing_account() -> None:
    g = grant(grantee="ec2.us-east-1.amazonaws.com", issuing_account=A, for_aws_resource=True)
    assert allows(g, account=A, via="ec2.us-east-1.amazonaws.com")
    assert not allows(g, account=A)  # not through the service
    assert not allows(g, account=B, via="ec2.us-east-1.amazonaws.com")  # other account
    assert not allows(g, account=A, via="s3.us-east-1.amazonaws.com")


def test_retire_rules() -> None:
    g = grant(retiring=f"arn:aws:iam::{A}:root")
    assert may_retire(g, f"arn:aws:iam::{A}:root", A)
    assert not may_retire(g, B_ROOT, B)  # grantee without RetireGrant
    g2 = grant(operations=frozenset({"Decrypt", "RetireGrant"}))
    assert may_retire(g2, B_ROOT, B)


@pytest.mark.parametrize(
    "ops,constraints,grantee",
    [
        ([], None, B_ROOT),
        (["Dance"], None, B_ROOT),
        (["Decrypt"], None, "not a principal"),
        (["DescribeKey"], {"EncryptionContextSubset": {"a": "b"}}, B_ROOT),
        (["Decrypt"], {"EncryptionContextSubset": {"a": "b"}, "EncryptionContextEquals": {"a": "b"}}, B_ROOT),
        (["Decrypt"], {"Other": {}}, B_ROOT),
    ],
)
def test_invalid_grant_requests(ops: list, constraints: dict | None, grantee: str) -> None:
    with pytest.raises(GrantError):
        validate_grant(ops, constraints, grantee, None)


def test_valid_grant_requests() -> None:
    validate_grant(["Decrypt", "GenerateDataKeyWithoutPlaintext"], {"EncryptionContextSubset": {"a": "b"}}, B_ROOT, None)
    validate_grant(["Decrypt", "CreateGrant"], None, "ec2.us-east-1.amazonaws.com", f"arn:aws:iam::{A}:root")
