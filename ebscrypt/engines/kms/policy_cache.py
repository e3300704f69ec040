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
_MAX_DECISIONS = 8192


class KeyPolicies:
    """Parsed policies by text (a policy is parsed once, not at every key use)."""

    def __init__(self) -> None:
        self._parsed: dict[str, policy_rules.Policy] = {}
        # Per policy text: whether any statement has a condition, whether the text names
        # kms:ResourceAliases (a condition key that costs a query to fill in).
        self._traits: dict[str, tuple[bool, bool]] = {}
        # Decisions of policies without conditions (they depend on nothing but the text,
        # the action, the principal and the resource): by (text, action, principal arn,
        # principal account, resource). A changed policy is another text, so nothing here
        # can go stale; key state and grants are checked afresh by the caller (issue 15).
        self._decisions: dict[tuple[str, str, str, str, str], policy_rules.Decision] = {}
        # Decisions of policies with conditions, by (text, what evaluation reads of the
        # request: policy_rules.decision_inputs). The AWS managed key of EBS has conditions
        # (kms:ViaService, kms:CallerAccount): its four uses per encrypted CreateVolume were
        # evaluated in full each time (~5% of that call's server CPU, bench/README.md K6).
        self._conditional: dict[tuple[str, tuple[Any, ...]], policy_rules.Decision] = {}
        self._condition_keys: dict[str, tuple[str, ...]] = {}

    def parse(self, text: str) -> policy_rules.Policy:
        p = self._parsed.get(text)
        if p is None:
            p = policy_rules.parse_policy(text)
            if len(self._parsed) > _MAX_PARSED:
                self._parsed.clear()
            self._parsed[text] = p
        return p

    def traits(self, text: str) -> tuple[bool, bool]:
        """(the policy has conditions, it names kms:ResourceAliases), computed once a text."""
        found = self._traits.get(text)
        if found is None:
            conditional = any(st.conditions for st in self.parse(text).statements)
            found = (conditional, "kms:resourcealiases" in text.lower())
            if len(self._traits) > _MAX_PARSED:
                self._traits.clear()
            self._traits[text] = found
        return found

    def unconditional_decision(
        self, text: str, action: str, principal_arn: str, principal_account: str, resource: str
    ) -> policy_rules.Decision:
        """The decision of a policy without conditions (:meth:`traits`), remembered."""
        key = (text, action, principal_arn, principal_account, resource)
        decision = self._decisions.get(key)
        if decision is None:
            request = policy_rules.Request(
                action=action, principal_arn=principal_arn, principal_account=principal_account,
                resource=resource, context={},
            )
            decision = policy_rules.evaluate(self.parse(text), request)
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def conditional_decision(self, text: str, request: policy_rules.Request) -> policy_rules.Decision:
        """The decision of any policy on ``request``, remembered by what evaluation reads
        of it (:func:`ebscrypt.domain.policy.decision_inputs`); the caller builds the
        request's condition context as for a full evaluation."""
        keys = self._condition_keys.get(text)
        if keys is None:
            keys = policy_rules.condition_keys(self.parse(text))
            if len(self._condition_keys) > _MAX_PARSED:
                self._condition_keys.clear()
            self._condition_keys[text] = keys
        key = (text, policy_rules.decision_inputs(keys, request))
        decision = self._conditional.get(key)
        if decision is None:
            decision = policy_rules.evaluate(self.parse(text), request)
            if len(self._conditional) >= _MAX_DECISIONS:
                self._conditional.clear()
            self._conditional[key] = decision
        return decision

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
