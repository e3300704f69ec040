"""Who outside its own account may use a KMS key (pure; for the posture report).

A key is *open* to another account when its key policy allows that account a use of the
key for EBS (R-KEY-7: here, kms:Decrypt — without it nothing encrypted under the key can
be read), or when a grant names a principal of another account. Decided with the same
evaluator KMS uses (domain/policy.py), so the report and the service never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ebscrypt.domain.policy import Decision, PolicyError, Request, evaluate, parse_policy

_ACCOUNT_IN_ARN = re.compile(r"^arn:aws[a-z-]*:(?:iam|sts)::(\d{12}):")
_ACCOUNT = re.compile(r"^\d{12}$")
# Stands for "an account nobody named": a '*' principal that lets it in lets in everyone.
ANY_ACCOUNT = "000000000001"
USE_ACTION = "kms:Decrypt"


@dataclass(frozen=True)
class Opening:
    """One way into a key from outside its account."""

    who: str  # a 12-digit account, or "*" (any account)
    how: str  # "key policy" | "key policy (with conditions)" | "grant <id>"


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
        decision = evaluate(policy, Request(USE_ACTION, f"arn:aws:iam::{ANY_ACCOUNT}:root", ANY_ACCOUNT, key_arn))
        out.append(Opening("*", "key policy" if decision is Decision.ALLOW else "key policy (with conditions)"))
    for account in sorted(named):
        decision = evaluate(policy, Request(USE_ACTION, f"arn:aws:iam::{account}:root", account, key_arn))
        if decision is Decision.ALLOW:
            out.append(Opening(account, "key policy"))
        elif decision is Decision.NONE:
            out.append(Opening(account, "key policy (with conditions)"))
    return out


def grant_openings(grants: list[tuple[str, str]], owner: str) -> list[Opening]:
    """``grants``: (grant id, grantee principal). Grants whose grantee is of another account."""
    out = []
    for grant_id, grantee in grants:
        account = account_of(grantee)
        if account and account != owner:
            out.append(Opening(account, f"grant {grant_id}"))
    return out
