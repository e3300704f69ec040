"""Typed, immutable views of the EC2 rows ec2core owns (built from SQLAlchemy rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time here is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _from_row(cls: type, row: Mapping[str, Any]) -> Any:
    values = {}
    for f in fields(cls):
        v = row.get(f.name)
        if isinstance(v, datetime):
            v = aware(v)
        values[f.name] = v
    return cls(**values)


@dataclass(frozen=True)
class Volume:
    id: str
    account: str
    region: str
    availability_zone: str
    size: int
    volume_type: str
    iops: int | None
    throughput: int | None
    multi_attach: bool
    state: str
    state_message: str | None
    encrypted: bool
    kms_key_arn: str | None
    data_key_id: str | None
    data_key_blob: bytes | None
    data_key_context: str | None
    snapshot_id: str | None
    client_token: str | None
    auto_enable_io: bool
    create_time: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Volume":
        return _from_row(cls, row)

    @property
    def encryption_context(self) -> dict[str, str]:
        return json.loads(self.data_key_context) if self.data_key_context else {}


@dataclass(frozen=True)
class Snapshot:
    id: str
    account: str
    region: str
    state: str
    state_message: str | None
    progress: int
    volume_size: int
    encrypted: bool
    kms_key_arn: str | None
    data_key_id: str | None
    data_key_blob: bytes | None
    data_key_context: str | None
    volume_id: str | None
    parent_id: str | None
    source_snapshot_id: str | None
    source_region: str | None
    description: str | None
    origin: str
    client_token: str | None
    start_time: datetime
    completion_time: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Snapshot":
        return _from_row(cls, row)

    @property
    def encryption_context(self) -> dict[str, str]:
        return json.loads(self.data_key_context) if self.data_key_context else {}


@dataclass(frozen=True)
class Attachment:
    volume_id: str
    instance_id: str
    device: str
    state: str
    attach_time: datetime
    delete_on_termination: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Attachment":
        return _from_row(cls, row)
