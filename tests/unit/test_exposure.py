"""domain/exposure.py: which accounts a key policy or grant opens a key to (report findings)."""

from __future__ import annotations

import json

from ebscrypt.domain.exposure import grant_openings, policy_openings
from ebscrypt.domain.policy import aws_managed_policy, default_key_policy

OWNER, OTHER = "111111111111", "222222222222"
ARN = f"arn:aws:kms:us-east-1:{OWNER}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _with(statement: dict) -> str:
    policy = json.loads(default_key_policy(OWNER))
    policy["Statement"].append(statement)
    return json.dumps(policy)


def test_default_and_aws_managed_policies_are_closed() -> None:
    assert policy_openings(default_key_policy(OWNER), OWNER, ARN) == []
    # '*' fenced by kms:CallerAccount = the owner (R-KEY-7): not open
    assert policy_openings(aws_managed_policy(OWNER, "us-east-1"), OWNER, ARN) == []


def test_named_account_and_wildcard() -> None:
    named = _with({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
                   "Action": "kms:*", "Resource": "*"})
    assert [(o.who, o.how) for o in policy_openings(named, OWNER, ARN)] == [(OTHER, "key policy")]
    star = _with({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"})
    assert [o.who for o in policy_openings(star, OWNER, ARN)] == ["*"]


def test_via_ec2_only_and_denied() -> None:
    via = _with({"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}})
    assert [(o.who, o.how) for o in policy_openings(via, OWNER, ARN)] == [(OTHER, "key policy (through EC2)")]
    # allowed, then explicitly denied: closed
    policy = json.loads(_with({"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:*", "Resource": "*"}))
    policy["Statement"].append({"Effect": "Deny", "Principal": {"AWS": OTHER}, "Action": "kms:Decrypt",
                                "Resource": "*"})
    assert policy_openings(json.dumps(policy), OWNER, ARN) == []
    # a statement that allows only metadata calls does not open the key
    meta = _with({"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:DescribeKey", "Resource": "*"})
    assert policy_openings(meta, OWNER, ARN) == []


def test_grants_to_other_accounts() -> None:
    grants = [("g1", f"arn:aws:iam::{OWNER}:user/ci"), ("g2", f"arn:aws:iam::{OTHER}:root"),
              ("g3", "ec2.amazonaws.com")]
    assert [(o.who, o.how) for o in grant_openings(grants, OWNER)] == [(OTHER, "grant g2")]
