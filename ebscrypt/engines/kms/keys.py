"""Keys: CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, Enable/DisableKey,
Schedule/CancelKeyDeletion. Key rows are inserted, changed and crypto-shredded by
:mod:`.lifecycle`; resolution and authorization are :mod:`.access`'s.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from ebscrypt.context import Caller
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import api, asym, checks
from ebscrypt.engines.kms.metadata import key_metadata
from ebscrypt.engines.kms.paging import page
from ebscrypt.engines.kms.tags import validate_tags
from ebscrypt.errors import KmsInvalidState, KmsUnsupported, KmsValidation
from ebscrypt.storage.tables.kms import kms_keys, kms_tags

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.clock import Clock
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.lifecycle import KeyLifecycle
    from ebscrypt.engines.kms.materials import KeyMaterials
    from ebscrypt.engines.kms.policy_cache import KeyPolicies
    from ebscrypt.storage.db import Database

MAX_DESCRIPTION_CHARS = 8192


def _description(description: str | None) -> str:
    desc = description if description is not None else ""
    if len(desc) > MAX_DESCRIPTION_CHARS:
        raise KmsValidation(f"Description must be at most {MAX_DESCRIPTION_CHARS} characters")
    return desc


_INSERT_TAG = insert(kms_tags)


class KeyOperations:
    """CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey, DisableKey,
    ScheduleKeyDeletion, CancelKeyDeletion."""

    def __init__(
        self, db: Database, clock: Clock, access: KeyAccess, lifecycle: KeyLifecycle, materials: KeyMaterials,
        policies: KeyPolicies,
    ) -> None:
        self.db = db
        self.clock = clock
        self.access = access
        self.lifecycle = lifecycle
        self.materials = materials
        self.policies = policies

    def create_key(self, caller: Caller, args: api.CreateKey) -> dict[str, Any]:
        key_spec = args.key_spec or args.customer_master_key_spec or "SYMMETRIC_DEFAULT"
        if args.key_spec is not None and args.customer_master_key_spec is not None:
            raise KmsValidation("You cannot specify KeySpec and CustomerMasterKeySpec in the same request.")
        key_usage = args.key_usage or (
            "SIGN_VERIFY" if key_spec.startswith("ECC_")
            else "GENERATE_VERIFY_MAC" if key_spec.startswith("HMAC_") else "ENCRYPT_DECRYPT"
        )
        if key_spec not in asym.SUPPORTED_SPECS:
            raise KmsUnsupported(f"KeySpec {key_spec} is not supported by ebscrypt.")
        if key_usage not in asym.USAGES[key_spec]:
            raise KmsValidation(f"KeyUsage {key_usage} is not compatible with KeySpec {key_spec}")
        origin = args.origin if args.origin is not None else "AWS_KMS"
        if origin != "AWS_KMS":
            raise KmsUnsupported(f"Origin {origin} is not supported by ebscrypt.")
        if args.multi_region:
            raise KmsUnsupported("Multi-Region keys are not supported by ebscrypt.")
        description = _description(args.description)
        tags = validate_tags(args.tags or [])
        if args.policy is not None:
            policy_text = args.policy
            self.policies.validate(policy_text)
        else:
            policy_text = policy_rules.default_key_policy(caller.account)
        with self.db.begin() as conn:
            # The lockout check needs the ARN, known only once the key row exists.
            row = self.lifecycle.insert_key(
                conn,
                account=caller.account,
                region=caller.region,
                key_spec=key_spec,
                key_usage=key_usage,
                key_manager="CUSTOMER",
                policy=policy_text,
                description=description,
            )
            if args.policy is not None and not args.bypass_policy_lockout_safety_check:
                self.policies.lockout_check(caller, row, policy_text)
            if tags:
                conn.execute(_INSERT_TAG, [{"key_id": row.key_id, "tag_key": k, "tag_value": v} for k, v in tags.items()])
        checks.note_resource(row.arn)
        return {"KeyMetadata": key_metadata(row)}

    # --------------------------------------------------------- reading keys

    def describe_key_metadata(self, caller: Caller, args: api.KeyWithGrantTokens) -> dict[str, Any]:
        """DescribeKey (``describe_key`` is the via-service form, :mod:`.via_service`)."""
        row = self.access.resolve(caller, args.key_id)
        self.access.authorize(caller, row, "kms:DescribeKey", grant_tokens=args.grant_tokens)
        return {"KeyMetadata": key_metadata(row)}

    def list_keys(self, caller: Caller, args: api.Page) -> dict[str, Any]:
        self.lifecycle.sweep_deletions()
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_keys.c.key_id, kms_keys.c.arn)
                .where(kms_keys.c.account == caller.account, kms_keys.c.region == caller.region)
                .order_by(kms_keys.c.creation_date, kms_keys.c.key_id)
            ).all()
        items, out = page(rows, args.limit, args.marker, default=100, max_limit=1000)
        out["Keys"] = [{"KeyId": r.key_id, "KeyArn": r.arn} for r in items]
        return out

    # --------------------------------------------------------- changing keys

    def update_key_description(self, caller: Caller, args: api.UpdateKeyDescription) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:UpdateKeyDescription")
        checks.require_not_pending(row)
        desc = _description(args.description)
        self.lifecycle.update(row.key_id, description=desc)
        return {}

    def _set_state(self, caller: Caller, key_ref: str, action: str, state: str) -> dict[str, Any]:
        row = self.access.key_to_change(caller, key_ref, action)
        checks.require_not_pending(row)
        self.lifecycle.update(row.key_id, state=state)
        if state != "Enabled":
            self.materials.forget(row.key_id)  # material stays in memory only while usable
        return {}

    def enable_key(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        return self._set_state(caller, args.key_id, "kms:EnableKey", "Enabled")

    def disable_key(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        return self._set_state(caller, args.key_id, "kms:DisableKey", "Disabled")

    # --------------------------------------------------------------- deletion

    def schedule_key_deletion(self, caller: Caller, args: api.ScheduleKeyDeletion) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:ScheduleKeyDeletion")
        days = args.pending_window_in_days if args.pending_window_in_days is not None else 30
        if not isinstance(days, int) or not 7 <= days <= 30:
            raise KmsValidation.out_of_range(days, "pendingWindowInDays", 7, 30)
        checks.require_not_pending(row)
        when = self.clock.now() + timedelta(days=days)
        self.lifecycle.update(row.key_id, state="PendingDeletion", deletion_date=when)
        self.materials.forget(row.key_id)
        return {"KeyId": row.arn, "DeletionDate": when, "KeyState": "PendingDeletion", "PendingWindowInDays": days}

    def cancel_key_deletion(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:CancelKeyDeletion")
        if row.state != "PendingDeletion":
            raise KmsInvalidState(f"{row.arn} is not pending deletion.")
        self.lifecycle.update(row.key_id, state="Disabled", deletion_date=None)
        return {"KeyId": row.arn}
