"""Key rotation: automatic (checked lazily against the clock when a key is loaded) and
on demand. A rotation adds a backing material and keeps the old ones for decryption.

A mixin of :class:`ebscrypt.engines.kms.engine.KeyEngine`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsLimitExceeded, KmsUnsupported, KmsValidation
from ebscrypt.storage.tables.kms import kms_key_material, kms_keys

MAX_ON_DEMAND_ROTATIONS = 10


class RotationOperations:
    """EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
    ListKeyRotations; automatic rotation."""

    def _auto_rotate(self, key_id: str) -> None:
        with self.db.begin() as conn:
            row = conn.execute(select(kms_keys).where(kms_keys.c.key_id == key_id)).first()
            if row is None or row.state != "Enabled" or not row.rotation_enabled or row.next_rotation_date is None:
                return
            now = self.clock.now()
            due = utc(row.next_rotation_date)
            period = timedelta(days=row.rotation_period_days or 365)
            if due > now:
                return
            self._add_material(conn, key_id, os.urandom(32), rotation_type="AUTOMATIC")
            while due <= now:
                due += period
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(next_rotation_date=due))

    @staticmethod
    def _require_rotatable(row: Any) -> None:
        if row.key_spec != "SYMMETRIC_DEFAULT":
            raise KmsUnsupported(
                f"{row.arn} key spec is {row.key_spec}: automatic and on-demand rotation are "
                "supported only for symmetric encryption KMS keys."
            )

    def enable_key_rotation(self, caller: Caller, args: api.EnableKeyRotation) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:EnableKeyRotation")
        self._require_rotatable(row)
        period = args.rotation_period_in_days if args.rotation_period_in_days is not None else 365
        if not isinstance(period, int) or not 90 <= period <= 2560:
            raise KmsValidation.out_of_range(period, "rotationPeriodInDays", 90, 2560)
        self._require_enabled(row)
        self._update(
            row.key_id,
            rotation_enabled=True,
            rotation_period_days=period,
            next_rotation_date=self.clock.now() + timedelta(days=period),
        )
        return {}

    def disable_key_rotation(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:DisableKeyRotation")
        self._require_rotatable(row)
        self._require_enabled(row)
        self._update(row.key_id, rotation_enabled=False, next_rotation_date=None)
        return {}

    def get_key_rotation_status(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self._resolve(caller, args.key_id)
        self._authorize(caller, row, "kms:GetKeyRotationStatus")
        self._require_not_pending(row)
        out: dict[str, Any] = {"KeyRotationEnabled": bool(row.rotation_enabled), "KeyId": row.arn}
        if row.rotation_enabled:
            out["RotationPeriodInDays"] = row.rotation_period_days
            out["NextRotationDate"] = utc(row.next_rotation_date)
        return out

    def rotate_key_on_demand(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self._key_to_change(caller, args.key_id, "kms:RotateKeyOnDemand")
        self._require_rotatable(row)
        self._require_enabled(row)
        with self.db.begin() as conn:
            n = len(
                conn.execute(
                    select(kms_key_material.c.material_id).where(
                        kms_key_material.c.key_id == row.key_id, kms_key_material.c.rotation_type == "ON_DEMAND"
                    )
                ).all()
            )
            if n >= MAX_ON_DEMAND_ROTATIONS:
                raise KmsLimitExceeded(
                    f"{row.arn} has reached the maximum of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations."
                )
            self._add_material(conn, row.key_id, os.urandom(32), rotation_type="ON_DEMAND")
        return {"KeyId": row.arn}

    def list_key_rotations(self, caller: Caller, args: api.KeyPage) -> dict[str, Any]:
        row = self._resolve(caller, args.key_id, own_account=True)
        self._authorize(caller, row, "kms:ListKeyRotations")
        self._require_rotatable(row)
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_key_material)
                .where(kms_key_material.c.key_id == row.key_id, kms_key_material.c.rotation_type.is_not(None))
                .order_by(kms_key_material.c.created_at)
            ).all()
        items, out = page(rows, args.limit, args.marker, default=100, max_limit=1000)
        out["Rotations"] = [
            {
                "KeyId": row.arn,
                "KeyMaterialId": r.material_id,
                "KeyMaterialState": "CURRENT" if r.is_current else "NON_CURRENT",
                "RotationDate": utc(r.created_at),
                "RotationType": r.rotation_type,
            }
            for r in items
        ]
        return out
