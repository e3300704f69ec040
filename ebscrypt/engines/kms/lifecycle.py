"""Key rows over their life: insertion (customer keys and the AWS managed
``alias/aws/ebs`` key made on first use), changes (each bumps the key's authorization
generation), automatic rotation when due, and the crypto-shredding of keys whose
deletion date has passed.

Resolution (:mod:`.access`) calls :meth:`KeyLifecycle.destroy` and
:meth:`KeyLifecycle.auto_rotate` lazily, when it reads a key past its date; the
operation families call the rest.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ebscrypt.blocking import may_block
from ebscrypt.clock import Clock
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import asym, generations
from ebscrypt.engines.kms.aliases import EBS_ALIAS, alias_row, insert_alias
from ebscrypt.engines.kms.key_rows import KeyRows
from ebscrypt.engines.kms.materials import KeyMaterials
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.storage.db import Database
from ebscrypt.storage.prepared import PreparedWrite
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants, kms_key_material, kms_keys, kms_tags

__all__ = ["KeyLifecycle"]

# A statement built once and its values as parameters: building .values(...) per call
# cost more than running the insert (issue 15).
_INSERT_KEY = PreparedWrite(insert(kms_keys))  # on the driver where plain (storage/prepared.py)


class KeyLifecycle:
    """Creates, changes and destroys key rows (and their material, through ``materials``)."""

    def __init__(self, db: Database, clock: Clock, materials: KeyMaterials) -> None:
        self.db = db
        self.clock = clock
        self.materials = materials
        self._ebs_lock = threading.Lock()  # one alias/aws/ebs key per account and region

    # ------------------------------------------------------------- creation

    def insert_key(
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
        """Insert a key and its first material in ``conn``'s transaction; the new key row."""
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{region}:{account}:key/{key_id}"
        now = self.clock.now()
        public = None
        if key_spec == "SYMMETRIC_DEFAULT":
            material = os.urandom(32)
        else:
            material, public = asym.generate(key_spec)
        _INSERT_KEY.run(
            conn,
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
        self.materials.add(conn, key_id, material, new_key=True)
        return KeyRows.read(conn, key_id)

    def ebs_alias(self, account: str, region: str) -> Any:
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
        with self._ebs_lock:
            with self.db.begin() as conn:
                if alias_row(conn, account, region, EBS_ALIAS) is not None:
                    return
                row = self.insert_key(
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

    # ---------------------------------------------------------------- changes

    def update(self, key_id: str, **values: Any) -> None:
        # Every change of a key row (state, policy, deletion date …) invalidates the
        # remembered authorizations of the key, in the same transaction.
        with self.db.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(**values))
            generations.bump(conn, key_id)

    def auto_rotate(self, key_id: str) -> None:
        """Add a backing material if the key's automatic rotation is due (re-checked here)."""
        with self.db.begin() as conn:
            row = conn.execute(select(kms_keys).where(kms_keys.c.key_id == key_id)).first()
            if row is None or row.state != "Enabled" or not row.rotation_enabled or row.next_rotation_date is None:
                return
            now = self.clock.now()
            due = utc(row.next_rotation_date)
            period = timedelta(days=row.rotation_period_days or 365)
            if due > now:
                return
            self.materials.add(conn, key_id, os.urandom(32), rotation_type="AUTOMATIC")
            while due <= now:
                due += period
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(next_rotation_date=due))

    # --------------------------------------------------------------- deletion

    def destroy(self, key_id: str) -> bool:
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
        self.materials.forget(key_id)
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
            if utc(r.deletion_date) <= now and self.destroy(r.key_id):
                n += 1
        return n
