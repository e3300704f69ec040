"""What a key row becomes in answers: ``KeyMetadata`` (KMS API) and :class:`KeyInfo`
(the cross-member API)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ebscrypt.engines.kms import asym
from ebscrypt.storage.db import as_utc


utc = as_utc  # SQLite hands datetimes back naive; they were stored as UTC


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    arn: str
    account: str
    region: str
    state: str
    key_spec: str
    key_usage: str
    key_manager: str
    creation_date: datetime
    description: str


def key_info(row: Any) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        arn=row.arn,
        account=row.account,
        region=row.region,
        state=row.state,
        key_spec=row.key_spec,
        key_usage=row.key_usage,
        key_manager=row.key_manager,
        creation_date=utc(row.creation_date),
        description=row.description,
    )


def algorithms(row: Any) -> dict[str, Any]:
    if row.key_usage == "GENERATE_VERIFY_MAC":
        return {"MacAlgorithms": list(asym.mac_algorithms(row.key_spec))}
    if row.key_usage == "ENCRYPT_DECRYPT":
        return {"EncryptionAlgorithms": list(asym.encryption_algorithms(row.key_spec, row.key_usage))}
    return {"SigningAlgorithms": list(asym.signing_algorithms(row.key_spec))}


def key_metadata(row: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "AWSAccountId": row.account,
        "KeyId": row.key_id,
        "Arn": row.arn,
        "CreationDate": utc(row.creation_date),
        "Enabled": row.state == "Enabled",
        "Description": row.description,
        "KeyUsage": row.key_usage,
        "KeyState": row.state,
        "Origin": "AWS_KMS",
        "KeyManager": row.key_manager,
        "CustomerMasterKeySpec": row.key_spec,
        "KeySpec": row.key_spec,
        "MultiRegion": False,
    }
    if row.state == "PendingDeletion" and row.deletion_date is not None:
        md["DeletionDate"] = utc(row.deletion_date)
    if row.key_spec == "SYMMETRIC_DEFAULT" and getattr(row, "current_material_id", None):
        md["CurrentKeyMaterialId"] = row.current_material_id
    md.update(algorithms(row))
    return md
