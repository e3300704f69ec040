"""Remembered key-policy decisions (engines/kms/policy_cache.py, issue 15): a policy
without conditions decides by its text, the action, the principal and the resource
alone, so its decision is kept — and a changed policy (here or in another server process
on the same database) decides afresh at the next use (R-KEY policy, R-KMS-ACCESS)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import KeyEngine
from ebscrypt.engines.kms.policy_cache import KeyPolicies
from tests.helpers import kms_op
from tests.unit.test_kms_engine import A, B, CA, CB, VIA, cmk, code_of, make_engine

ARN = f"arn:aws:kms:us-east-1:{A}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


POLICIES = [
    _policy({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": "kms:*", "Resource": "*"}),
    _policy({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:Gen*"], "Resource": "*"},
            {"Effect": "Deny", "Principal": {"AWS": B}, "Action": "kms:Decrypt", "Resource": "*"}),
    _policy({"Effect": "Allow", "Principal": {"AWS": A}, "NotAction": "kms:Decrypt", "Resource": ARN}),
]


def test_remembered_decisions_are_the_evaluated_ones() -> None:
    policies = KeyPolicies()
    principals = [(f"arn:aws:iam::{A}:root", A), (f"arn:aws:iam::{B}:user/u", B), (f"arn:aws:iam::{A}:role/r", A)]
    actions = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [ARN, ARN.replace(A, B)]
    seen = set()
    for _round in range(2):  # the second round answers from memory
        for text, (arn, account), action, resource in itertools.product(POLICIES, principals, actions, resources):
            assert policies.traits(text) == (False, False)
            request = policy_rules.Request(action=action, principal_arn=arn, principal_account=account,
                                           resource=resource, context={})
            expected = policy_rules.evaluate(policies.parse(text), request)
            assert policies.unconditional_decision(text, action, arn, account, resource) is expected
            seen.add(expected)
    assert seen == set(policy_rules.Decision)  # the matrix reaches allow, deny and neither


def test_a_policy_with_conditions_is_not_remembered() -> None:
    text = _policy({"Effect": "Allow", "Principal": {"AWS": A}, "Action": "kms:*", "Resource": "*",
                    "Condition": {"StringEquals": {"kms:EncryptionContext:app": "x"}}})
    assert KeyPolicies().traits(text) == (True, False)


CONDITIONAL = _policy(
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*",
     "Condition": {"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com", "kms:CallerAccount": A}}},
    {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": ["secret*"]},
                   "Bool": {"aws:ViaAWSService": "true"}}},
)


def test_conditional_decisions_are_remembered_only_by_what_conditions_read() -> None:
    """A policy with conditions decides by the action, principal, resource and the values
    of the keys its conditions name: a remembered decision is the evaluated one for every
    request, and keys it does not read (the encryption context's values) do not split it."""
    policies = KeyPolicies()
    contexts = [
        {"kms:ViaService": "ec2.us-east-1.amazonaws.com", "kms:CallerAccount": A},
        {"kms:ViaService": "ec2.us-east-1.amazonaws.com", "kms:CallerAccount": B},
        {"kms:CallerAccount": A},
        {"kms:ViaService": "ec2.us-east-1.amazonaws.com", "kms:CallerAccount": A,
         "kms:EncryptionContextKeys": ["secret-1"], "aws:ViaAWSService": True},
        {"kms:ViaService": "ec2.us-east-1.amazonaws.com", "kms:CallerAccount": A,
         "kms:EncryptionContextKeys": ["secret-1"], "aws:ViaAWSService": 1},  # 1 is not "true"
        {"KMS:VIASERVICE": "ec2.us-east-1.amazonaws.com", "kms:calleraccount": A},  # keys in any case
    ]
    seen = set()
    for _round in range(2):
        for ctx, action in itertools.product(contexts, ["kms:Decrypt", "kms:Encrypt"]):
            request = policy_rules.Request(action=action, principal_arn=f"arn:aws:iam::{A}:role/r",
                                           principal_account=A, resource=ARN, context=ctx)
            expected = policy_rules.evaluate(policies.parse(CONDITIONAL), request)
            assert policies.conditional_decision(CONDITIONAL, request) is expected, (ctx, action)
            seen.add(expected)
    assert seen == set(policy_rules.Decision)
    keys = policy_rules.condition_keys(policies.parse(CONDITIONAL))
    one = policy_rules.Request("kms:Decrypt", "p", A, ARN, {**contexts[0], "kms:EncryptionContext:aws:ebs:id": "vol-1"})
    two = policy_rules.Request("kms:Decrypt", "p", A, ARN, {**contexts[0], "kms:EncryptionContext:aws:ebs:id": "vol-2"})
    assert policy_rules.decision_inputs(keys, one) == policy_rules.decision_inputs(keys, two)
    assert policy_rules.decision_inputs(keys, one) != policy_rules.decision_inputs(
        keys, policy_rules.Request("kms:Decrypt", "p", B, ARN, contexts[0]))


@pytest.fixture
def two_engines(tmp_path: Path) -> Iterator[tuple[KeyEngine, KeyEngine]]:
    """Two key engines on one database: two server processes of a scale-out."""
    one, two = make_engine(tmp_path / "data"), make_engine(tmp_path / "data")
    yield one, two
    for eng in (one, two):
        eng.close()
        eng.db.dispose()


def _deny_decrypt_to(engine: KeyEngine, key_id: str, account: str) -> None:
    policy = json.loads(kms_op(engine, "GetKeyPolicy", CA, {"KeyId": key_id})["Policy"])
    policy["Statement"].append({"Effect": "Deny", "Principal": {"AWS": account}, "Action": "kms:Decrypt",
                                "Resource": "*"})
    kms_op(engine, "PutKeyPolicy", CA, {"KeyId": key_id, "Policy": json.dumps(policy)})


@pytest.mark.parametrize("changed_by", ["same engine", "other engine"])
def test_a_changed_policy_decides_at_the_next_use(two_engines: tuple[KeyEngine, KeyEngine], changed_by: str) -> None:
    one, two = two_engines
    md = cmk(one)
    _arn, blob = one.generate_data_key_without_plaintext(CA, md["Arn"], encryption_context=None, via_service=VIA)
    for _ in range(3):  # decided, then remembered
        assert one.decrypt(CA, blob, encryption_context=None, via_service=VIA)[0] == md["Arn"]
    _deny_decrypt_to(one if changed_by == "same engine" else two, md["KeyId"], A)
    assert code_of(one.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "AccessDeniedException"
    assert code_of(two.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "AccessDeniedException"


def test_remembered_allow_still_checks_key_state(two_engines: tuple[KeyEngine, KeyEngine]) -> None:
    one, two = two_engines
    md = cmk(one)
    _arn, blob = one.generate_data_key_without_plaintext(CA, md["Arn"], encryption_context=None, via_service=VIA)
    assert one.decrypt(CA, blob, encryption_context=None, via_service=VIA)[0] == md["Arn"]
    kms_op(two, "DisableKey", CA, {"KeyId": md["KeyId"]})
    assert code_of(one.decrypt, CA, blob, encryption_context=None, via_service=VIA) == "DisabledException"
    # a caller the policy never allowed is refused by the same remembered policy
    assert code_of(one.decrypt, CB, blob, encryption_context=None, via_service=VIA) == "AccessDeniedException"
