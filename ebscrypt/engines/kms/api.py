"""The typed arguments of the KMS operations: what :class:`~.engine.KeyEngine` takes.

One frozen dataclass per operation (operations with the same members share one). The
KMS service (:mod:`ebscrypt.services.kms`) builds them from a parsed request; a field
is the snake_case of the model's member name (``KeyId`` → ``key_id``) and is ``None``
when the member was absent (the codec never passes a JSON ``null`` on). The values are
as the codec parsed them against the model; the engine keeps its own checks (ranges,
combinations, lengths), in the order AWS reports them — checking them here would
change which error a request with several faults gets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

# --------------------------------------------------------------------------- shared shapes

Tags = Sequence[Mapping[str, Any]]  # [{"TagKey": ..., "TagValue": ...}]
EncryptionContext = Mapping[str, str]


@dataclass(frozen=True)
class KeyRef:
    """EnableKey, DisableKey, CancelKeyDeletion, DisableKeyRotation,
    GetKeyRotationStatus, RotateKeyOnDemand: a key and nothing else."""

    key_id: str


@dataclass(frozen=True)
class KeyWithGrantTokens:
    """DescribeKey, GetPublicKey."""

    key_id: str
    grant_tokens: Sequence[str] | None = None


@dataclass(frozen=True)
class Page:
    """ListKeys (and the Limit/Marker members of every List*)."""

    limit: int | None = None
    marker: str | None = None


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class CreateKey:
    key_spec: str | None = None
    customer_master_key_spec: str | None = None
    key_usage: str | None = None
    origin: str | None = None
    multi_region: bool | None = None
    description: str | None = None
    tags: Tags | None = None
    policy: str | None = None
    bypass_policy_lockout_safety_check: bool | None = None


@dataclass(frozen=True)
class UpdateKeyDescription:
    key_id: str
    description: str | None = None


@dataclass(frozen=True)
class ScheduleKeyDeletion:
    key_id: str
    pending_window_in_days: int | None = None


@dataclass(frozen=True)
class EnableKeyRotation:
    key_id: str
    rotation_period_in_days: int | None = None


@dataclass(frozen=True)
class KeyPage:
    """ListKeyRotations, ListKeyPolicies, ListResourceTags: one key's list, paged."""

    key_id: str
    limit: int | None = None
    marker: str | None = None


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class GetKeyPolicy:
    key_id: str
    policy_name: str | None = None


@dataclass(frozen=True)
class PutKeyPolicy:
    key_id: str
    policy: str
    policy_name: str | None = None
    bypass_policy_lockout_safety_check: bool | None = None


# --------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasTarget:
    """CreateAlias, UpdateAlias."""

    alias_name: str
    target_key_id: str


@dataclass(frozen=True)
class DeleteAlias:
    alias_name: str


@dataclass(frozen=True)
class ListAliases:
    key_id: str | None = None
    limit: int | None = None
    marker: str | None = None


# --------------------------------------------------------------------------- grants


@dataclass(frozen=True)
class CreateGrant:
    key_id: str
    grantee_principal: str
    operations: Sequence[str] | None = None
    retiring_principal: str | None = None
    constraints: Mapping[str, Any] | None = None
    name: str | None = None
    grant_tokens: Sequence[str] | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class ListGrants:
    key_id: str
    grant_id: str | None = None
    grantee_principal: str | None = None
    limit: int | None = None
    marker: str | None = None


@dataclass(frozen=True)
class ListRetirableGrants:
    retiring_principal: str
    limit: int | None = None
    marker: str | None = None


@dataclass(frozen=True)
class RetireGrant:
    grant_token: str | None = None
    key_id: str | None = None
    grant_id: str | None = None


@dataclass(frozen=True)
class RevokeGrant:
    key_id: str
    grant_id: str


# --------------------------------------------------------------------------- cryptography


@dataclass(frozen=True)
class Encrypt:
    key_id: str
    plaintext: bytes | None = None
    encryption_context: EncryptionContext | None = None
    grant_tokens: Sequence[str] | None = None
    encryption_algorithm: str | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class Decrypt:
    ciphertext_blob: bytes | None = None
    encryption_context: EncryptionContext | None = None
    grant_tokens: Sequence[str] | None = None
    key_id: str | None = None
    encryption_algorithm: str | None = None
    recipient: Mapping[str, Any] | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class ReEncrypt:
    destination_key_id: str
    ciphertext_blob: bytes | None = None
    source_encryption_context: EncryptionContext | None = None
    source_key_id: str | None = None
    destination_encryption_context: EncryptionContext | None = None
    source_encryption_algorithm: str | None = None
    destination_encryption_algorithm: str | None = None
    grant_tokens: Sequence[str] | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class GenerateDataKey:
    """GenerateDataKey, GenerateDataKeyWithoutPlaintext (which has no Recipient)."""

    key_id: str
    encryption_context: EncryptionContext | None = None
    number_of_bytes: int | None = None
    key_spec: str | None = None
    grant_tokens: Sequence[str] | None = None
    recipient: Mapping[str, Any] | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class GenerateDataKeyPair:
    """GenerateDataKeyPair, GenerateDataKeyPairWithoutPlaintext."""

    key_id: str
    key_pair_spec: str
    encryption_context: EncryptionContext | None = None
    grant_tokens: Sequence[str] | None = None
    recipient: Mapping[str, Any] | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class GenerateRandom:
    number_of_bytes: int | None = None
    custom_key_store_id: str | None = None


# --------------------------------------------------------------------------- signing, MACs


@dataclass(frozen=True)
class Sign:
    """Sign, Verify (``signature`` only for Verify)."""

    key_id: str
    signing_algorithm: str
    message: bytes | None = None
    message_type: str | None = None
    grant_tokens: Sequence[str] | None = None
    signature: bytes | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class Mac:
    """GenerateMac, VerifyMac (``mac`` only for VerifyMac)."""

    key_id: str
    mac_algorithm: str
    message: bytes | None = None
    grant_tokens: Sequence[str] | None = None
    mac: bytes | None = None
    dry_run: bool | None = None


# --------------------------------------------------------------------------- tags


@dataclass(frozen=True)
class TagResource:
    key_id: str
    tags: Tags | None = None


@dataclass(frozen=True)
class UntagResource:
    key_id: str
    tag_keys: Sequence[str] | None = None


# --------------------------------------------------------------------------- from a request

A = TypeVar("A")


def member_name(field_name: str) -> str:
    """``key_id`` → ``KeyId`` (the model's spelling of the member a field holds)."""
    return "".join(part[:1].upper() + part[1:] for part in field_name.split("_"))


_MEMBERS: dict[type, tuple[tuple[str, str], ...]] = {}


def _members_of(cls: type) -> tuple[tuple[str, str], ...]:
    """(field name, member name) of each field of ``cls``: worked out once per class."""
    got = _MEMBERS.get(cls)
    if got is None:
        got = _MEMBERS[cls] = tuple((f.name, member_name(f.name)) for f in dataclasses.fields(cls))
    return got


def from_members(cls: type[A], members: Mapping[str, Any]) -> A:
    """``cls`` filled from a request's members (absent ones: the field's default)."""
    values = {}
    for field_name, member in _members_of(cls):
        if member in members:
            values[field_name] = members[member]
    return cls(**values)
