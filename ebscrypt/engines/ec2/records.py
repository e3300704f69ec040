"""Typed, immutable views of the EC2 rows ec2core owns (built from SQLAlchemy rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from ebscrypt.storage.db import as_utc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

aware = as_utc  # SQLite times come back naive; every time here is UTC (others import records.aware)

_FIELDS: dict[type, tuple[str, ...]] = {}
_R = TypeVar("_R", bound="DataclassInstance")


def _from_row(cls: type[_R], row: Mapping[Any, Any]) -> _R:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    data = row if isinstance(row, dict) else dict(row)
    values = {}
    for name in names:
        v = data.get(name)
        if v.__class__ is datetime and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        values[name] = v
    return cls(**values)


def from_result(cls: type, result: Any) -> list[Any]:
    """Build ``cls`` records from a SQLAlchemy Result of full-table rows (fast path:
    positional tuples, no per-key mapping lookups)."""
    keys = list(result.keys())
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    index = [keys.index(n) if n in keys else None for n in names]
    out = []
    for row in result:
        values = {}
        for name, i in zip(names, index):
            v = None if i is None else row[i]
            if v.__class__ is datetime and v.tzinfo is None:
                v = v.replace(tzinfo=timezone.utc)
            values[name] = v
        out.append(cls(**values))
    return out


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
    def from_row(cls, row: Mapping[Any, Any]) -> "Volume":
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
    def from_row(cls, row: Mapping[Any, Any]) -> "Snapshot":
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
    def from_row(cls, row: Mapping[Any, Any]) -> "Attachment":
        return _from_row(cls, row)
