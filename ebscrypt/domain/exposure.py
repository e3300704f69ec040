"""Who outside its own account may use a KMS key (pure; for the posture report).

A key is *open* to another account when its key policy allows that account a use of the
key for EBS (R-KEY-7: here, kms:Decrypt — without it nothing encrypted under the key can
be read), or when a grant names a principal of another account. Decided with the same
evaluator KMS uses (domain/policy.py), so the report and the service never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ebscrypt.domain.policy import Decision, Policy, PolicyError, Request, evaluate, parse_policy

_ACCOUNT_IN_ARN = re.compile(r"^arn:aws[a-z-]*:(?:iam|sts)::(\d{12}):")
_ACCOUNT = re.compile(r"^\d{12}$")
# Stands for "an account nobody named": a '*' principal that lets it in lets in everyone.
ANY_ACCOUNT = "000000000001"
USE_ACTION = "kms:Decrypt"


@dataclass(frozen=True)
class Opening:
    """One way into a key from outside its account."""

    who: str  # a 12-digit account, or "*" (any account)
    how: str  # "key policy" | "key policy (through EC2)" | "grant <id>"


def account_of(principal: str) -> str | None:
    if _ACCOUNT.match(principal):
        return principal
    m = _ACCOUNT_IN_ARN.match(principal)
    return m.group(1) if m else None


def policy_openings(policy_text: str, owner: str, key_arn: str) -> list[Opening]:
    """The accounts other than ``owner`` the policy lets decrypt with the key."""
    try:
        policy = parse_policy(policy_text)
    except PolicyError:
        return []
    named: set[str] = set()
    wildcard = False
    for st in policy.statements:
        if st.effect != "Allow" or not st.principals:
            continue
        for ptype, value in st.principals:
            if ptype != "AWS":
                continue
            if value == "*":
                wildcard = True
            else:
                account = account_of(value)
                if account and account != owner:
                    named.add(account)
    out: list[Opening] = []
    if wildcard:
        # '*' is open when an unnamed account gets in, directly or through EC2 (the AWS
        # managed key's '*' is fenced by kms:CallerAccount and is not open).
        how = _allowed(policy, ANY_ACCOUNT, key_arn)
        if how:
            out.append(Opening("*", how))
    for account in sorted(named):
        how = _allowed(policy, account, key_arn)
        if how:
            out.append(Opening(account, how))
    return out


def _allowed(policy: Policy, account: str, key_arn: str) -> str | None:
    """How ``account`` may decrypt with the key: directly, only via EC2, or not (None)."""
    principal = f"arn:aws:iam::{account}:root"
    direct = {"kms:CallerAccount": account}
    if evaluate(policy, Request(USE_ACTION, principal, account, key_arn, direct)) is Decision.ALLOW:
        return "key policy"
    region = key_arn.split(":")[3] if key_arn.count(":") >= 5 else ""
    via = dict(direct, **{"kms:ViaService": f"ec2.{region}.amazonaws.com"})
    if evaluate(policy, Request(USE_ACTION, principal, account, key_arn, via)) is Decision.ALLOW:
        return "key policy (through EC2)"
    return None


def grant_openings(grants: list[tuple[str, str]], owner: str) -> list[Opening]:
    """``grants``: (grant id, grantee principal). Grants whose grantee is of another account."""
    out = []
    for grant_id, grantee in grants:
        account = account_of(grantee)
        if account and account != owner:
            out.append(Opening(account, f"grant {grant_id}"))
    return out
