"""Keys: creation (customer keys and the AWS managed ``alias/aws/ebs`` key), description,
listing, enable/disable, scheduled deletion and the crypto-shredding that ends it.

A mixin of :class:`ebscrypt.engines.kms.engine.KeyEngine`; resolution, authorization
and the key store are the engine's.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ebscrypt.blocking import may_block
from ebscrypt.context import Caller
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import api, asym, generations
from ebscrypt.engines.kms.aliases import EBS_ALIAS, alias_row, insert_alias
from ebscrypt.engines.kms.metadata import key_metadata, utc
from ebscrypt.engines.kms.paging import page
from ebscrypt.engines.kms.tags import validate_tags
from ebscrypt.errors import KmsInvalidState, KmsUnsupported, KmsValidation
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants, kms_key_material, kms_keys, kms_tags

MAX_DESCRIPTION_CHARS = 8192


def _description(description: str | None) -> str:
    desc = description if description is not None else ""
    if len(desc) > MAX_DESCRIPTION_CHARS:
        raise KmsValidation(f"Description must be at most {MAX_DESCRIPTION_CHARS} characters")
    return desc


_INSERT_KEY = insert(kms_keys)
_INSERT_TAG = insert(kms_tags)


class KeyOperations:
    """CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey, DisableKey,
    ScheduleKeyDeletion, CancelKeyDeletion."""

    # ------------------------------------------------------------- key creation

    def _insert_key(
        self,
        conn: Connection,
        *,
        account: str,
        region: str,
        key_spec: str,
        key_usage: str,
        key_manager: str,
        policy: str,
        description: str,
        rotation: bool = False,
    ) -> Any:
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{region}:{account}:key/{key_id}"
        now = self.clock.now()
        public = None
        if key_spec == "SYMMETRIC_DEFAULT":
            material = os.urandom(32)
        else:
            material, public = asym.generate(key_spec)
        # A statement built once and its values as parameters: building .values(...)
        # per call cost more than running the insert (issue 15).
        conn.execute(
            _INSERT_KEY,
            {
                "key_id": key_id,
                "account": account,
                "region": region,
                "arn": arn,
                "key_spec": key_spec,
                "key_usage": key_usage,
                "key_manager": key_manager,
                "state": "Enabled",
                "description": description,
                "policy": policy,
                "creation_date": now,
                "deletion_date": None,
                "rotation_enabled": rotation,
                "rotation_period_days": 365 if rotation else None,
                "next_rotation_date": now + timedelta(days=365) if rotation else None,
                "public_key": public,
            },
        )
        self._add_material(conn, key_id, material, new_key=True)
        return self._key_row(conn, key_id)

    def _ebs_alias(self, account: str, region: str) -> Any:
        """The ``alias/aws/ebs`` alias row of ``account`` in ``region``, its key made on first use."""
        with self.db.read() as conn:
            alias = alias_row(conn, account, region, EBS_ALIAS)
        if alias is not None:
            return alias
        try:
            self._create_ebs_key(account, region)
        except IntegrityError:
            # Another server process (scale-out) created it first: use theirs.
            with self.db.read() as conn:
                alias = alias_row(conn, account, region, EBS_ALIAS)
            if alias is None:
                raise
            return alias
        with self.db.read() as conn:
            return alias_row(conn, account, region, EBS_ALIAS)

    def _create_ebs_key(self, account: str, region: str) -> None:
        may_block()  # the lock below is held across a durable write
        with self._lock:
            with self.db.begin() as conn:
                if alias_row(conn, account, region, EBS_ALIAS) is not None:
                    return
                row = self._insert_key(
                    conn,
                    account=account,
                    region=region,
                    key_spec="SYMMETRIC_DEFAULT",
                    key_usage="ENCRYPT_DECRYPT",
                    key_manager="AWS",
                    policy=policy_rules.aws_managed_policy(account, region),
                    description="Default key that protects my EBS volumes when no other key is defined",
                    rotation=True,
                )
                insert_alias(conn, account, region, EBS_ALIAS, row.key_id, self.clock.now())

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
            self._validate_policy(policy_text)
        else:
            policy_text = policy_rules.default_key_policy(caller.account)
        with self.db.begin() as conn:
            # The lockout check needs the ARN, known only once the key row exists.
            row = self._insert_key(
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
                self._lockout_check(caller, row, policy_text)
            if tags:
                conn.execute(_INSERT_TAG, [{"key_id": row.key_id, "tag_key": k, "tag_value": v} for k, v in tags.items()])
        self._note_resource(row.arn)
        return {"KeyMetadata": key_metadata(row)}

    # --------------------------------------------------------- reading keys

    def describe_key_metadata(self, caller: Caller, args: api.KeyWithGrantTokens) -> dict[str, Any]:
        """DescribeKey (``describe_key`` is the via-service form, :mod:`.via_service`)."""
        row = self._resolve(caller, args.key_id)
        self._authorize(caller, row, "kms:DescribeKey", grant_tokens=args.grant_tokens)
        return {"KeyMetadata": key_metadata(row)}

    def list_keys(self, caller: Caller, args: api.Page) -> dict[str, Any]:
        self.sweep_deletions()
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

    def _update(self, key_id: str, **values: Any) -> None:
        # Every change of a key row (state, policy, deletion date …) invalidates the
        # remembered authorizations of the key, in the same transaction.
        with self.db.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(**values))
            generations.bump(conn, key_id)

    def update_key_description(self, caller: Caller, args: api.UpdateKeyDescription) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:UpdateKeyDescription")
        self._require_not_pending(row)
        desc = _description(args.description)
        self._update(row.key_id, description=desc)
        return {}

    def _set_state(self, caller: Caller, key_ref: str, action: str, state: str) -> dict[str, Any]:
        row = self._key_to_change(caller, key_ref, action)
        self._require_not_pending(row)
        self._update(row.key_id, state=state)
        if state != "Enabled":
            self.forget_key(row.key_id)  # material stays in memory only while usable
        return {}

    def enable_key(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        return self._set_state(caller, args.key_id, "kms:EnableKey", "Enabled")

    def disable_key(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        return self._set_state(caller, args.key_id, "kms:DisableKey", "Disabled")

    # --------------------------------------------------------------- deletion

    def schedule_key_deletion(self, caller: Caller, args: api.ScheduleKeyDeletion) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:ScheduleKeyDeletion")
        days = args.pending_window_in_days if args.pending_window_in_days is not None else 30
        if not isinstance(days, int) or not 7 <= days <= 30:
            raise KmsValidation.out_of_range(days, "pendingWindowInDays", 7, 30)
        self._require_not_pending(row)
        when = self.clock.now() + timedelta(days=days)
        self._update(row.key_id, state="PendingDeletion", deletion_date=when)
        self.forget_key(row.key_id)
        return {"KeyId": row.arn, "DeletionDate": when, "KeyState": "PendingDeletion", "PendingWindowInDays": days}

    def cancel_key_deletion(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:CancelKeyDeletion")
        if row.state != "PendingDeletion":
            raise KmsInvalidState(f"{row.arn} is not pending deletion.")
        self._update(row.key_id, state="Disabled", deletion_date=None)
        return {"KeyId": row.arn}

    def _destroy(self, key_id: str) -> bool:
        """Crypto-shred a key whose deletion date has passed: delete its wrapped material
        and every record of it. Re-checked inside the transaction (a concurrent
        CancelKeyDeletion wins). SQLite overwrites the freed pages (secure_delete)."""
        with self.db.begin() as conn:
            if self.db.is_sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            row = conn.execute(
                select(kms_keys.c.state, kms_keys.c.deletion_date).where(kms_keys.c.key_id == key_id)
            ).first()
            if row is None or row.state != "PendingDeletion" or utc(row.deletion_date) > self.clock.now():
                return False
            for table in (kms_key_material, kms_aliases, kms_grants, kms_tags):
                col = table.c.target_key_id if table is kms_aliases else table.c.key_id
                conn.execute(delete(table).where(col == key_id))
            conn.execute(delete(kms_keys).where(kms_keys.c.key_id == key_id))
        self.forget_key(key_id)
        return True

    def sweep_deletions(self) -> int:
        """Destroy every key whose deletion date has passed; return how many."""
        now = self.clock.now()
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_keys.c.key_id, kms_keys.c.deletion_date).where(kms_keys.c.state == "PendingDeletion")
            ).all()
        n = 0
        for r in rows:
            if utc(r.deletion_date) <= now and self._destroy(r.key_id):
                n += 1
        return n
