"""Why each volume and snapshot has its encryption: the outcome decision, kept with it.

One row per volume/snapshot, written in the transaction that creates the resource
(engines/ec2/provenance.py). It records what the rule of SPEC §2 saw at that moment —
the request's ``Encrypted``/``KmsKeyId``, encryption by default and the default key —
and what it chose (the rule id, the key), so ``ebscrypt explain`` can answer "why this
key?" after the account's settings have changed. The source chain itself is read from
the resources' own columns (ec2_volumes.snapshot_id, ec2_snapshots.volume_id /
source_snapshot_id / parent_id); ``source_id`` here is the direct source only.

Resources created before this table existed have no row: they are shown as "unknown
(created before provenance was recorded)", never guessed.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, String, Table

from ebscrypt.storage.schema import metadata
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volumes

ec2_provenance = Table(
    "ec2_provenance",
    metadata,
    Column("resource_id", String(32), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("operation", String(64), nullable=False),  # CreateVolume, CopySnapshot, RunInstances …
    Column("rule", String(16), nullable=False),  # R-OUT-n, or R-SNAP-1 for a snapshot of a volume
    Column("requested_encrypted", Boolean, nullable=True),  # None: the parameter was absent
    Column("requested_kms_key_id", String(256), nullable=True),  # as the caller wrote it
    Column("ebd", Boolean, nullable=True),  # encryption by default at that moment (None: not consulted)
    Column("default_key", String(256), nullable=True),  # the default EBS key at that moment
    Column("kms_key_arn", String(256), nullable=True),  # the key chosen (None: unencrypted)
    Column("source_type", String(16), nullable=False),  # empty | volume | snapshot | upload
    Column("source_id", String(32), nullable=True),
    Column("source_region", String(32), nullable=True),
    Column("data_key_shared", Boolean, nullable=False),  # R-KEY-2: the source's data key reused
    Column("problem", String(512), nullable=True),  # R-KEY-6: why the resource ends in error
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_ec2_provenance_owner", "account", "region"),
)

# Lineage lookups in the other direction — what was made from a volume or snapshot, what a
# key protects — for explain, the console's graph and the report (engines/insight). Declared
# here so the change stays additive: a new database gets them from create_all, an existing
# one from the v4 migration (storage/db.py, CREATE INDEX IF NOT EXISTS).
LINEAGE_INDEXES = (
    Index("ix_ec2_volumes_snapshot_id", ec2_volumes.c.snapshot_id),
    Index("ix_ec2_volumes_kms_key", ec2_volumes.c.kms_key_arn),
    Index("ix_ec2_snapshots_volume_id", ec2_snapshots.c.volume_id),
    Index("ix_ec2_snapshots_source", ec2_snapshots.c.source_snapshot_id),
    Index("ix_ec2_snapshots_kms_key", ec2_snapshots.c.kms_key_arn),
)
