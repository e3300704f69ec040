"""KMS tables: keys, their (wrapped) backing material, aliases, grants, tags.

Key material is stored only as ``wrapped`` (AES-256-GCM under the root key, the key id
and material id bound as associated data); no column ever holds plaintext material.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from ebscrypt.storage.schema import metadata

kms_keys = Table(
    "kms_keys",
    metadata,
    Column("key_id", String(36), primary_key=True),  # UUID
    Column("account", String(12), nullable=False, index=True),
    Column("region", String(32), nullable=False, index=True),
    Column("arn", String(256), nullable=False, unique=True),
    Column("key_spec", String(32), nullable=False),
    Column("key_usage", String(32), nullable=False),
    Column("key_manager", String(16), nullable=False),  # CUSTOMER | AWS
    Column("state", String(32), nullable=False),  # Enabled | Disabled | PendingDeletion
    Column("description", Text, nullable=False, default=""),
    Column("policy", Text, nullable=False),
    Column("creation_date", DateTime(timezone=True), nullable=False),
    Column("deletion_date", DateTime(timezone=True), nullable=True),
    Column("rotation_enabled", Boolean, nullable=False, default=False),
    Column("rotation_period_days", Integer, nullable=True),
    Column("next_rotation_date", DateTime(timezone=True), nullable=True),
    Column("public_key", LargeBinary, nullable=True),  # DER SubjectPublicKeyInfo (not secret)
    # Authorization generation: bumped in the same transaction as every change that can
    # take a caller's use of the key away (state, policy, grant retired/revoked, alias),
    # so a cached data key authorized at an older generation is re-authorized at once, in
    # every process sharing this database (engines/kms/generations.py). NULL reads as 0
    # (rows of databases created before schema version 4).
    Column("auth_generation", Integer, nullable=True),
)

kms_key_material = Table(
    "kms_key_material",
    metadata,
    Column("key_id", String(36), primary_key=True),
    Column("material_id", String(32), primary_key=True),  # 16 bytes hex
    Column("wrapped", LargeBinary, nullable=False),  # see engines/kms/keystore.py (header | body)
    # The root key that wrapped this row (keystore.py: "file:kid=…" or "pkcs11:token=…;
    # object=…;id=…"); NULL: written before key stores, by the file store, no header.
    # `ebscrypt keystore migrate/rotate` move rows one at a time by rewriting both columns.
    Column("wrapped_by", String(512), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("is_current", Boolean, nullable=False, default=True),
    Column("rotation_type", String(16), nullable=True),  # None (original) | AUTOMATIC | ON_DEMAND
)

kms_aliases = Table(
    "kms_aliases",
    metadata,
    Column("account", String(12), primary_key=True),
    Column("region", String(32), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("target_key_id", String(36), nullable=False, index=True),
    Column("creation_date", DateTime(timezone=True), nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
)

kms_grants = Table(
    "kms_grants",
    metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("key_id", String(36), nullable=False, index=True),
    Column("name", String(256), nullable=True),
    Column("grantee", String(256), nullable=False),
    Column("retiring", String(256), nullable=True, index=True),
    Column("operations", Text, nullable=False),  # JSON list
    Column("constraints", Text, nullable=True),  # JSON object
    Column("issuing_account", String(12), nullable=False),
    Column("for_aws_resource", Boolean, nullable=False, default=False),
    Column("token", String(512), nullable=False, unique=True),
    Column("creation_date", DateTime(timezone=True), nullable=False),
)

kms_tags = Table(
    "kms_tags",
    metadata,
    Column("key_id", String(36), primary_key=True),
    Column("tag_key", String(128), primary_key=True),
    Column("tag_value", String(256), nullable=False),
)
