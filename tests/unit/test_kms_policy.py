"""Key policy parsing and evaluation (ebscrypt.domain.policy), pure: SPEC R-KEY-3, R-KEY-7."""

from __future__ import annotations

import json

import pytest

from ebscrypt.domain.policy import (
    Decision,
    PolicyError,
    Request,
    aws_managed_policy,
    default_key_policy,
    evaluate,
    parse_policy,
)

A, B = "111111111111", "222222222222"
KEY = f"arn:aws:kms:us-east-1:{A}:key/11111111-2222-3333-4444-555555555555"


def req(action: str, account: str = A, arn: str | None = None, **ctx: object) -> Request:
    context = {"kms:CallerAccount": account, "aws:PrincipalAccount": account}
    context.update({k.replace("__", ":"): v for k, v in ctx.items()})
    return Request(
        action=action,
        principal_arn=arn or f"arn:aws:iam::{account}:root",
        principal_account=account,
        resource=KEY,
        context=context,
    )


def pol(*statements: dict) -> object:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))


def allow(principal: object, action: object, **extra: object) -> dict:
    if isinstance(principal, str) and principal != "*":
        principal = {"AWS": principal}
    return {"Effect": "Allow", "Principal": principal, "Action": action, "Resource": "*", **extra}


# ---------------------------------------------------------------- default policies


def test_default_policy_gives_own_account_everything() -> None:
    p = parse_policy(default_key_policy(A))
    for action in ("kms:Decrypt", "kms:PutKeyPolicy", "kms:CreateGrant", "kms:ScheduleKeyDeletion"):
        assert evaluate(p, req(action)) is Decision.ALLOW


def test_default_policy_applies_to_every_principal_of_the_account() -> None:
    p = parse_policy(default_key_policy(A))
    assert evaluate(p, req("kms:Decrypt", arn=f"arn:aws:iam::{A}:user/alice")) is Decision.ALLOW


def test_default_policy_does_not_name_other_accounts() -> None:
    p = parse_policy(default_key_policy(A))
    assert evaluate(p, req("kms:Decrypt", account=B)) is Decision.NONE


def test_aws_managed_policy_requires_ec2_and_own_account() -> None:
    p = parse_policy(aws_managed_policy(A, "us-east-1"))
    via = {"kms__ViaService": "ec2.us-east-1.amazonaws.com"}
    assert evaluate(p, req("kms:Decrypt", **via)) is Decision.ALLOW
    assert evaluate(p, req("kms:GenerateDataKeyWithoutPlaintext", **via)) is Decision.ALLOW
    assert evaluate(p, req("kms:ReEncryptFrom", **via)) is Decision.ALLOW
    # directly (no service), another region's EC2, or another account: refused
    assert evaluate(p, req("kms:Decrypt")) is Decision.NONE
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="ec2.eu-west-1.amazonaws.com")) is Decision.NONE
    assert evaluate(p, req("kms:Decrypt", account=B, **via)) is Decision.NONE
    # metadata directly, but no management
    assert evaluate(p, req("kms:DescribeKey")) is Decision.ALLOW
    assert evaluate(p, req("kms:GetKeyPolicy")) is Decision.ALLOW
    for action in ("kms:DisableKey", "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:EnableKeyRotation"):
        assert evaluate(p, req(action)) is Decision.NONE


# ----------------------------------------------------------------------- principals


@pytest.mark.parametrize(
    "principal,account,expected",
    [
        ({"AWS": f"arn:aws:iam::{B}:root"}, B, Decision.ALLOW),
        ({"AWS": B}, B, Decision.ALLOW),
        ({"AWS": [A, f"arn:aws:iam::{B}:root"]}, B, Decision.ALLOW),
        ("*", B, Decision.ALLOW),
        ({"AWS": "*"}, "333333333333", Decision.ALLOW),
        ({"AWS": f"arn:aws:iam::{B}:root"}, "333333333333", Decision.NONE),
        ({"AWS": f"arn:aws:iam::{B}:user/bob"}, B, Decision.NONE),  # root caller is not bob
        ({"Service": "ec2.amazonaws.com"}, B, Decision.NONE),
    ],
)
def test_principal_forms(principal: object, account: str, expected: Decision) -> None:
    assert evaluate(pol(allow(principal, "kms:Decrypt")), req("kms:Decrypt", account=account)) is expected


def test_specific_user_principal_matches_only_that_user() -> None:
    p = pol(allow({"AWS": f"arn:aws:iam::{B}:user/bob"}, "kms:Decrypt"))
    assert evaluate(p, req("kms:Decrypt", account=B, arn=f"arn:aws:iam::{B}:user/bob")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", account=B, arn=f"arn:aws:iam::{B}:user/eve")) is Decision.NONE


def test_not_principal() -> None:
    p = pol({"Effect": "Deny", "NotPrincipal": {"AWS": A}, "Action": "kms:*", "Resource": "*"},
            allow("*", "kms:Decrypt"))
    assert evaluate(p, req("kms:Decrypt")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", account=B)) is Decision.DENY


# -------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    "pattern,action,match",
    [
        ("kms:*", "kms:Decrypt", True),
        ("kms:ReEncrypt*", "kms:ReEncryptFrom", True),
        ("kms:ReEncrypt*", "kms:ReEncryptTo", True),
        ("kms:Generate*", "kms:GenerateDataKeyWithoutPlaintext", True),
        ("kms:GenerateDataKey*", "kms:GenerateRandom", False),
        ("kms:decrypt", "kms:Decrypt", True),  # actions are case-insensitive
        ("kms:Describe?ey", "kms:DescribeKey", True),
        ("kms:Encrypt", "kms:Decrypt", False),
        ("*", "kms:Sign", True),
    ],
)
def test_action_wildcards(pattern: str, action: str, match: bool) -> None:
    expected = Decision.ALLOW if match else Decision.NONE
    assert evaluate(pol(allow(A, pattern)), req(action)) is expected


def test_not_action() -> None:
    p = pol({"Effect": "Allow", "Principal": {"AWS": A}, "NotAction": ["kms:Decrypt"], "Resource": "*"})
    assert evaluate(p, req("kms:Encrypt")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt")) is Decision.NONE


def test_resource_must_match() -> None:
    assert evaluate(pol(allow(A, "kms:Decrypt", Resource=KEY)), req("kms:Decrypt")) is Decision.ALLOW
    assert evaluate(pol(allow(A, "kms:Decrypt", Resource="arn:aws:kms:*:*:key/*")), req("kms:Decrypt")) is Decision.ALLOW
    other = "arn:aws:kms:us-east-1:111111111111:key/other"
    assert evaluate(pol(allow(A, "kms:Decrypt", Resource=other)), req("kms:Decrypt")) is Decision.NONE


# -------------------------------------------------------------------- explicit deny


def test_explicit_deny_beats_allow() -> None:
    p = pol(
        allow(A, "kms:*"),
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
    )
    assert evaluate(p, req("kms:Decrypt")) is Decision.DENY
    assert evaluate(p, req("kms:Encrypt")) is Decision.ALLOW


def test_statement_order_does_not_matter_for_deny() -> None:
    p = pol(
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
        allow(A, "kms:*"),
    )
    assert evaluate(p, req("kms:Decrypt")) is Decision.DENY


# ----------------------------------------------------------------------- conditions


def cond(c: dict) -> object:
    return pol(allow("*", "kms:*", Condition=c))


def test_string_equals_caller_account_and_via_service() -> None:
    p = cond({"StringEquals": {"kms:CallerAccount": A, "kms:ViaService": "ec2.us-east-1.amazonaws.com"}})
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="ec2.us-east-1.amazonaws.com")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt")) is Decision.NONE  # ViaService absent
    assert evaluate(p, req("kms:Decrypt", account=B, kms__ViaService="ec2.us-east-1.amazonaws.com")) is Decision.NONE


def test_string_equals_list_is_or() -> None:
    p = cond({"StringEquals": {"kms:CallerAccount": [A, B]}})
    assert evaluate(p, req("kms:Decrypt", account=B)) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", account="333333333333")) is Decision.NONE


def test_string_like_via_service_any_region() -> None:
    p = cond({"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}})
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="ec2.eu-west-1.amazonaws.com")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="s3.eu-west-1.amazonaws.com")) is Decision.NONE


def test_string_not_equals_holds_when_key_absent() -> None:
    p = pol(
        allow(A, "kms:*"),
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}},
    )
    assert evaluate(p, req("kms:Decrypt")) is Decision.DENY
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="ec2.us-east-1.amazonaws.com")) is Decision.ALLOW


def test_bool_grant_is_for_aws_resource() -> None:
    p = cond({"Bool": {"kms:GrantIsForAWSResource": "true"}})
    assert evaluate(p, req("kms:CreateGrant", kms__GrantIsForAWSResource=True)) is Decision.ALLOW
    assert evaluate(p, req("kms:CreateGrant", kms__GrantIsForAWSResource=False)) is Decision.NONE
    assert evaluate(p, req("kms:CreateGrant")) is Decision.NONE
    assert evaluate(cond({"Bool": {"kms:GrantIsForAWSResource": True}}),
                    req("kms:CreateGrant", kms__GrantIsForAWSResource=True)) is Decision.ALLOW


def test_encryption_context_condition() -> None:
    p = cond({"StringEquals": {"kms:EncryptionContext:Department": "IT"}})
    ok = {"kms:EncryptionContext:Department": "IT"}
    assert evaluate(p, Request("kms:Decrypt", f"arn:aws:iam::{A}:root", A, KEY, ok)) is Decision.ALLOW
    bad = {"kms:EncryptionContext:Department": "HR"}
    assert evaluate(p, Request("kms:Decrypt", f"arn:aws:iam::{A}:root", A, KEY, bad)) is Decision.NONE


def test_arn_like_principal_arn() -> None:
    p = cond({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{A}:user/*"}})
    r = Request("kms:Decrypt", f"arn:aws:iam::{A}:user/x", A, KEY, {"aws:PrincipalArn": f"arn:aws:iam::{A}:user/x"})
    assert evaluate(p, r) is Decision.ALLOW
    r2 = Request("kms:Decrypt", f"arn:aws:iam::{A}:root", A, KEY, {"aws:PrincipalArn": f"arn:aws:iam::{A}:root"})
    assert evaluate(p, r2) is Decision.NONE


def test_principal_account_condition() -> None:
    p = cond({"StringEquals": {"aws:PrincipalAccount": B}})
    assert evaluate(p, req("kms:Decrypt", account=B)) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", account=A)) is Decision.NONE


def test_grant_operations_for_all_and_any_values() -> None:
    all_p = cond({"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "Encrypt"]}})
    assert evaluate(all_p, req("kms:CreateGrant", kms__GrantOperations=["Decrypt"])) is Decision.ALLOW
    assert evaluate(all_p, req("kms:CreateGrant", kms__GrantOperations=["Decrypt", "Sign"])) is Decision.NONE
    any_p = cond({"ForAnyValue:StringEquals": {"kms:GrantOperations": ["Sign"]}})
    assert evaluate(any_p, req("kms:CreateGrant", kms__GrantOperations=["Decrypt", "Sign"])) is Decision.ALLOW
    assert evaluate(any_p, req("kms:CreateGrant", kms__GrantOperations=["Decrypt"])) is Decision.NONE


def test_if_exists_and_null() -> None:
    p = cond({"StringEqualsIfExists": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}})
    assert evaluate(p, req("kms:Decrypt")) is Decision.ALLOW
    assert evaluate(p, req("kms:Decrypt", kms__ViaService="s3.us-east-1.amazonaws.com")) is Decision.NONE
    n = cond({"Null": {"kms:ViaService": "false"}})
    assert evaluate(n, req("kms:Decrypt")) is Decision.NONE
    assert evaluate(n, req("kms:Decrypt", kms__ViaService="ec2.us-east-1.amazonaws.com")) is Decision.ALLOW


def test_all_conditions_must_hold() -> None:
    p = cond({"StringEquals": {"kms:CallerAccount": A}, "Bool": {"kms:GrantIsForAWSResource": "true"}})
    assert evaluate(p, req("kms:CreateGrant", kms__GrantIsForAWSResource=True)) is Decision.ALLOW
    assert evaluate(p, req("kms:CreateGrant", account=B, kms__GrantIsForAWSResource=True)) is Decision.NONE


def test_condition_keys_are_case_insensitive() -> None:
    p = cond({"StringEquals": {"KMS:callerAccount": A}})
    assert evaluate(p, req("kms:Decrypt")) is Decision.ALLOW


# -------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"Version": "2012-10-17"}),  # no Statement
        json.dumps({"Version": "2012-10-17", "Statement": []}),
        json.dumps({"Version": "1999-01-01", "Statement": [allow(A, "kms:*")]}),
        json.dumps({"Version": "2012-10-17", "Bogus": 1, "Statement": [allow(A, "kms:*")]}),
        json.dumps({"Statement": [{**allow(A, "kms:*"), "Effect": "Maybe"}]}),
        json.dumps({"Statement": [{**allow(A, "kms:*"), "Unknown": "x"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}),  # no principal
        json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}),  # no action
        json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}),  # no resource
        json.dumps({"Statement": [allow({"AWS": "not-an-account"}, "kms:*")]}),
        json.dumps({"Statement": [allow({"Robot": "x"}, "kms:*")]}),
        json.dumps({"Statement": [allow(A, "Decrypt")]}),  # action without service prefix
        json.dumps({"Statement": [allow(A, "kms:*", Condition={"StringEqualz": {"kms:CallerAccount": A}})]}),
        json.dumps({"Statement": [allow(A, "kms:*", Condition={"StringEquals": {"nocolon": A}})]}),
        json.dumps({"Statement": [allow(A, "kms:*", Condition={"StringEquals": "x"})]}),
        json.dumps({"Statement": [allow(A, [])]}),
        json.dumps({"Statement": [{**allow(A, "kms:*"), "Principal": A}]}),  # bare account string
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_single_statement_object_is_accepted() -> None:
    p = parse_policy(json.dumps({"Version": "2012-10-17", "Statement": allow(A, "kms:*")}))
    assert evaluate(p, req("kms:Decrypt")) is Decision.ALLOW


def test_no_matching_statement_is_implicit_deny() -> None:
    assert evaluate(pol(allow(A, "kms:Encrypt")), req("kms:Decrypt")) is Decision.NONE
