"""Block engine metadata: layers (lineage), owners (volumes/snapshots), block entries.

A *layer* is a set of block entries (index -> object) plus an optional parent layer.
An *owner* (a volume or snapshot id) points at its mutable *head* layer; reading a block
looks in the head, then up the parent chain. ``share`` freezes the source's head and
gives both owners a new empty head on top of it, so sharing is O(1).

A layer made by a re-encrypting copy records ``origin_id``: the (frozen) source layer
whose content it mirrors, so changed-block queries can treat the copy as part of the
source's lineage.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, LargeBinary, String, Table

from ebscrypt.storage.schema import metadata

blk_layers = Table(
    "blk_layers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("parent_id", String(32), nullable=True, index=True),
    Column("origin_id", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

blk_owners = Table(
    "blk_owners",
    metadata,
    Column("owner_id", String(64), primary_key=True),
    Column("head_id", String(32), nullable=False, index=True),
    # A re-encrypting copy in progress pins the frozen source layer it reads from.
    Column("pin_id", String(32), nullable=True, index=True),
    Column("data_key_id", String(128), nullable=True),
    Column("encrypted", Boolean, nullable=True),  # NULL until the first write decides
    Column("created_at", DateTime(timezone=True), nullable=False),
)

blk_entries = Table(
    "blk_entries",
    metadata,
    Column("layer_id", String(32), primary_key=True),
    Column("block_index", Integer, primary_key=True, autoincrement=False),
    # NULL object_key: the block was written as all zeros (nothing stored).
    Column("object_key", String(96), nullable=True),
    # Plain resources: base64 SHA-256 of the plaintext; for a format 3 object, also the
    # digest of its sector table ("t1:" + SHA-256 + ":" + table digest, both base64:
    # engines/blocks/crypto.py). Encrypted resources: the SHA-256 sealed under the data
    # key ("e1:" + base64), so metadata reveals nothing either.
    Column("checksum", String(160), nullable=False),
    Column("data_key_id", String(128), nullable=True),
)
Index("ix_blk_entries_object", blk_entries.c.object_key)

# Objects no longer referenced, deleted from the store after a grace period.
blk_garbage = Table(
    "blk_garbage",
    metadata,
    Column("object_key", String(96), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False),
)

# EBS direct API write sessions (StartSnapshot .. CompleteSnapshot): the Timeout clock.
ebs_sessions = Table(
    "ebs_sessions",
    metadata,
    Column("snapshot_id", String(64), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("timeout_minutes", Integer, nullable=False),
    Column("last_activity", DateTime(timezone=True), nullable=False),
)

# Server secrets of the block layer (the HMAC key of EBS block and page tokens).
blk_secrets = Table(
    "blk_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
