"""Key policies as the engine evaluates them: parsed once per text, validated with AWS's
lockout safety check. Parsing and evaluation are the pure rules of
:mod:`ebscrypt.domain.policy`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.domain import policy as policy_rules
from ebscrypt.errors import KmsLimitExceeded, KmsMalformedPolicy, KmsValidation

__all__ = ["MAX_POLICY_CHARS", "KeyPolicies"]

MAX_POLICY_CHARS = 32768
_MAX_PARSED = 1024


class KeyPolicies:
    """Parsed policies by text (a policy is parsed once, not at every key use)."""

    def __init__(self) -> None:
        self._parsed: dict[str, policy_rules.Policy] = {}

    def parse(self, text: str) -> policy_rules.Policy:
        p = self._parsed.get(text)
        if p is None:
            p = policy_rules.parse_policy(text)
            if len(self._parsed) > _MAX_PARSED:
                self._parsed.clear()
            self._parsed[text] = p
        return p

    def validate(self, text: Any) -> policy_rules.Policy:
        if not isinstance(text, str) or not text:
            raise KmsValidation("Policy must be a non-empty string")
        if len(text) > MAX_POLICY_CHARS:
            raise KmsLimitExceeded(f"The key policy exceeds the maximum size of {MAX_POLICY_CHARS} characters.")
        try:
            return self.parse(text)
        except policy_rules.PolicyError as exc:
            raise KmsMalformedPolicy(str(exc)) from None

    def lockout_check(self, caller: Caller, row: Any, text: str) -> None:
        """Refuse a policy that would not let the caller change it again."""
        req = policy_rules.Request(
            action="kms:PutKeyPolicy",
            principal_arn=caller.arn,
            principal_account=caller.account,
            resource=row.arn,
            context={"kms:CallerAccount": caller.account, "aws:PrincipalAccount": caller.account},
        )
        if policy_rules.evaluate(self.parse(text), req) is not policy_rules.Decision.ALLOW:
            raise KmsMalformedPolicy("The new key policy will not allow you to update the key policy in the future.")
