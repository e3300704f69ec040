"""Key policies: the parsed-policy cache, validation with AWS's lockout safety check,
GetKeyPolicy / ListKeyPolicies / PutKeyPolicy. Parsing and evaluation are the pure
rules of :mod:`ebscrypt.domain.policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api, checks
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsNotFound

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.lifecycle import KeyLifecycle
    from ebscrypt.engines.kms.policy_cache import KeyPolicies

POLICY_NAME = "default"


def _check_policy_name(name: str) -> None:
    if name != POLICY_NAME:
        raise KmsNotFound(f"No such policy exists: {name}")


class PolicyOperations:
    """GetKeyPolicy, ListKeyPolicies, PutKeyPolicy (parsing and validation: :mod:`.policy_cache`)."""

    def __init__(self, access: KeyAccess, lifecycle: KeyLifecycle, policies: KeyPolicies) -> None:
        self.access = access
        self.lifecycle = lifecycle
        self.policies = policies

    def get_key_policy(self, caller: Caller, args: api.GetKeyPolicy) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id, own_account=True)
        self.access.authorize(caller, row, "kms:GetKeyPolicy")
        _check_policy_name(args.policy_name if args.policy_name is not None else POLICY_NAME)
        return {"Policy": row.policy, "PolicyName": POLICY_NAME}

    def list_key_policies(self, caller: Caller, args: api.KeyPage) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id, own_account=True)
        self.access.authorize(caller, row, "kms:ListKeyPolicies")
        items, out = page([POLICY_NAME], args.limit, args.marker, default=100, max_limit=1000)
        out["PolicyNames"] = items
        return out

    def put_key_policy(self, caller: Caller, args: api.PutKeyPolicy) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:PutKeyPolicy")
        _check_policy_name(args.policy_name if args.policy_name is not None else POLICY_NAME)
        text = args.policy
        self.policies.validate(text)
        if not args.bypass_policy_lockout_safety_check:
            self.policies.lockout_check(caller, row, text)
        checks.require_not_pending(row)
        self.lifecycle.update(row.key_id, policy=text)
        return {}
