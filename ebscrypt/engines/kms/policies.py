"""Key policies: the parsed-policy cache, validation with AWS's lockout safety check,
GetKeyPolicy / ListKeyPolicies / PutKeyPolicy. Parsing and evaluation are the pure
rules of :mod:`ebscrypt.domain.policy`.

A mixin of :class:`ebscrypt.engines.kms.engine.KeyEngine`.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.context import Caller
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import api
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsLimitExceeded, KmsMalformedPolicy, KmsNotFound, KmsValidation

POLICY_NAME = "default"
MAX_POLICY_CHARS = 32768


def _check_policy_name(name: str) -> None:
    if name != POLICY_NAME:
        raise KmsNotFound(f"No such policy exists: {name}")


class PolicyOperations:
    """GetKeyPolicy, ListKeyPolicies, PutKeyPolicy; policy parsing for authorization."""

    def _policy(self, text: str) -> policy_rules.Policy:
        p = self._policies.get(text)
        if p is None:
            p = policy_rules.parse_policy(text)
            if len(self._policies) > 1024:
                self._policies.clear()
            self._policies[text] = p
        return p

    def _validate_policy(self, text: Any) -> policy_rules.Policy:
        if not isinstance(text, str) or not text:
            raise KmsValidation("Policy must be a non-empty string")
        if len(text) > MAX_POLICY_CHARS:
            raise KmsLimitExceeded(
                f"The key policy exceeds the maximum size of {MAX_POLICY_CHARS} characters."
            )
        try:
            return self._policy(text)
        except policy_rules.PolicyError as exc:
            raise KmsMalformedPolicy(str(exc)) from None

    def _lockout_check(self, caller: Caller, row: Any, text: str) -> None:
        req = policy_rules.Request(
            action="kms:PutKeyPolicy",
            principal_arn=caller.arn,
            principal_account=caller.account,
            resource=row.arn,
            context={"kms:CallerAccount": caller.account, "aws:PrincipalAccount": caller.account},
        )
        if policy_rules.evaluate(self._policy(text), req) is not policy_rules.Decision.ALLOW:
            raise KmsMalformedPolicy(
                "The new key policy will not allow you to update the key policy in the future."
            )

    def get_key_policy(self, caller: Caller, args: api.GetKeyPolicy) -> dict[str, Any]:
        row = self._resolve(caller, args.key_id, own_account=True)
        self._authorize(caller, row, "kms:GetKeyPolicy")
        _check_policy_name(args.policy_name if args.policy_name is not None else POLICY_NAME)
        return {"Policy": row.policy, "PolicyName": POLICY_NAME}

    def list_key_policies(self, caller: Caller, args: api.KeyPage) -> dict[str, Any]:
        row = self._resolve(caller, args.key_id, own_account=True)
        self._authorize(caller, row, "kms:ListKeyPolicies")
        items, out = page([POLICY_NAME], args.limit, args.marker, default=100, max_limit=1000)
        out["PolicyNames"] = items
        return out

    def put_key_policy(self, caller: Caller, args: api.PutKeyPolicy) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:PutKeyPolicy")
        _check_policy_name(args.policy_name if args.policy_name is not None else POLICY_NAME)
        text = args.policy
        self._validate_policy(text)
        if not args.bypass_policy_lockout_safety_check:
            self._lockout_check(caller, row, text)
        self._require_not_pending(row)
        self._update(row.key_id, policy=text)
        return {}
