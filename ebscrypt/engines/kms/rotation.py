"""Key rotation: automatic (checked lazily against the clock when a key is loaded) and
on demand. A rotation adds a backing material and keeps the old ones for decryption.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api, checks
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsLimitExceeded, KmsValidation
from ebscrypt.storage.tables.kms import kms_key_material

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.clock import Clock
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.lifecycle import KeyLifecycle
    from ebscrypt.engines.kms.materials import KeyMaterials
    from ebscrypt.storage.db import Database

MAX_ON_DEMAND_ROTATIONS = 10


class RotationOperations:
    """EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
    ListKeyRotations (automatic rotation: :meth:`.lifecycle.KeyLifecycle.auto_rotate`)."""

    def __init__(
        self, db: Database, clock: Clock, access: KeyAccess, lifecycle: KeyLifecycle, materials: KeyMaterials
    ) -> None:
        self.db = db
        self.clock = clock
        self.access = access
        self.lifecycle = lifecycle
        self.materials = materials

    def enable_key_rotation(self, caller: Caller, args: api.EnableKeyRotation) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:EnableKeyRotation")
        checks.require_rotatable(row)
        period = args.rotation_period_in_days if args.rotation_period_in_days is not None else 365
        if not isinstance(period, int) or not 90 <= period <= 2560:
            raise KmsValidation.out_of_range(period, "rotationPeriodInDays", 90, 2560)
        checks.require_enabled(row)
        self.lifecycle.update(
            row.key_id,
            rotation_enabled=True,
            rotation_period_days=period,
            next_rotation_date=self.clock.now() + timedelta(days=period),
        )
        return {}

    def disable_key_rotation(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:DisableKeyRotation")
        checks.require_rotatable(row)
        checks.require_enabled(row)
        self.lifecycle.update(row.key_id, rotation_enabled=False, next_rotation_date=None)
        return {}

    def get_key_rotation_status(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id)
        self.access.authorize(caller, row, "kms:GetKeyRotationStatus")
        checks.require_not_pending(row)
        out: dict[str, Any] = {"KeyRotationEnabled": bool(row.rotation_enabled), "KeyId": row.arn}
        if row.rotation_enabled:
            out["RotationPeriodInDays"] = row.rotation_period_days
            out["NextRotationDate"] = utc(row.next_rotation_date)
        return out

    def rotate_key_on_demand(self, caller: Caller, args: api.KeyRef) -> dict[str, Any]:
        row = self.access.key_to_change(caller, args.key_id, "kms:RotateKeyOnDemand")
        checks.require_rotatable(row)
        checks.require_enabled(row)
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
            self.materials.add(conn, row.key_id, os.urandom(32), rotation_type="ON_DEMAND")
        return {"KeyId": row.arn}

    def list_key_rotations(self, caller: Caller, args: api.KeyPage) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id, own_account=True)
        self.access.authorize(caller, row, "kms:ListKeyRotations")
        checks.require_rotatable(row)
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
