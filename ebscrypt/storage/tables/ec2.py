"""EC2 resource records owned by ec2core: volumes, snapshots, sharing, account settings, tags.

Data keys (R-KEY-1) live beside the resource: ``data_key_blob`` is the KMS ciphertext of
the AES-256 data key (never its plaintext), ``data_key_id`` the stable id the block engine
knows it by, ``data_key_context`` the KMS encryption context (JSON) it was generated under.
Resources that reuse a data key (R-KEY-2) carry the same three values.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from ebscrypt.storage.schema import metadata

ec2_volumes = Table(
    "ec2_volumes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("availability_zone", String(40), nullable=False),
    Column("size", Integer, nullable=False),  # GiB
    Column("volume_type", String(16), nullable=False),
    Column("iops", Integer, nullable=True),
    Column("throughput", Integer, nullable=True),
    Column("multi_attach", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),  # creating|available|in-use|deleting|deleted|error
    Column("state_message", Text, nullable=True),
    Column("encrypted", Boolean, nullable=False),
    Column("kms_key_arn", String(256), nullable=True),
    Column("data_key_id", String(64), nullable=True),
    Column("data_key_blob", LargeBinary, nullable=True),
    Column("data_key_context", Text, nullable=True),
    Column("snapshot_id", String(32), nullable=True),
    Column("client_token", String(128), nullable=True),
    Column("auto_enable_io", Boolean, nullable=False, default=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Index("ix_ec2_volumes_owner", "account", "region"),
    # ClientToken idempotency across processes: two concurrent creates with one token
    # cannot both insert (the loser's request is run again and replays the winner's).
    Index("ux_ec2_volumes_client_token", "account", "region", "client_token", unique=True),
    # The filters people use in DescribeVolumes (pushed down by engines/ec2/sql_filters.py);
    # storage/db.py's describe-index step creates them in older databases.
    Index("ix_ec2_volumes_encrypted", "account", "region", "encrypted"),
    Index("ix_ec2_volumes_kms", "account", "region", "kms_key_arn"),
    Index("ix_ec2_volumes_state", "account", "region", "state"),
    # v9: an account's volumes in id order (DescribeVolumes pages), and by key in id order
    Index("ix_ec2_volumes_page", "account", "region", "id"),
    Index("ix_ec2_volumes_kms_page", "account", "region", "kms_key_arn", "id"),
)

ec2_volume_attachments = Table(
    "ec2_volume_attachments",
    metadata,
    Column("volume_id", String(32), primary_key=True),
    Column("instance_id", String(32), primary_key=True),
    Column("device", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # attaching|attached|detaching|detached
    Column("attach_time", DateTime(timezone=True), nullable=False),
    Column("delete_on_termination", Boolean, nullable=False, default=False),
    Index("ix_ec2_attach_instance", "instance_id"),
)

ec2_volume_modifications = Table(
    "ec2_volume_modifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("volume_id", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # modifying|optimizing|completed|failed
    Column("status_message", Text, nullable=True),
    Column("original_size", Integer, nullable=False),
    Column("target_size", Integer, nullable=False),
    Column("original_type", String(16), nullable=False),
    Column("target_type", String(16), nullable=False),
    Column("original_iops", Integer, nullable=True),
    Column("target_iops", Integer, nullable=True),
    Column("original_throughput", Integer, nullable=True),
    Column("target_throughput", Integer, nullable=True),
    Column("original_multi_attach", Boolean, nullable=False, default=False),
    Column("target_multi_attach", Boolean, nullable=False, default=False),
    Column("progress", Integer, nullable=False, default=0),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=True),
)

ec2_snapshots = Table(
    "ec2_snapshots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # pending|completed|error|recoverable|recovering
    Column("state_message", Text, nullable=True),
    Column("progress", Integer, nullable=False, default=0),  # percent
    Column("volume_size", Integer, nullable=False),  # GiB
    Column("encrypted", Boolean, nullable=False),
    Column("kms_key_arn", String(256), nullable=True),
    Column("data_key_id", String(64), nullable=True),
    Column("data_key_blob", LargeBinary, nullable=True),
    Column("data_key_context", Text, nullable=True),
    Column("volume_id", String(32), nullable=True),  # vol-ffffffff for copies, as AWS
    Column("parent_id", String(32), nullable=True),  # lineage parent (incremental base)
    Column("source_snapshot_id", String(32), nullable=True),  # CopySnapshot source
    Column("source_region", String(32), nullable=True),
    Column("description", Text, nullable=True),
    Column("origin", String(16), nullable=False, default="volume"),  # volume|copy|direct
    Column("client_token", String(128), nullable=True),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("completion_time", DateTime(timezone=True), nullable=True),
    Index("ix_ec2_snapshots_owner", "account", "region"),
    Index("ux_ec2_snapshots_client_token", "account", "region", "client_token", unique=True),  # as volumes
    # DescribeSnapshots' common filters (see ec2_volumes); the parent lookup of CreateSnapshot.
    Index("ix_ec2_snapshots_encrypted", "account", "region", "encrypted"),
    Index("ix_ec2_snapshots_kms", "account", "region", "kms_key_arn"),
    Index("ix_ec2_snapshots_state", "account", "region", "state"),
    # v9: an account's snapshots in id order (DescribeSnapshots pages), and by key in id order
    Index("ix_ec2_snapshots_page", "account", "region", "id"),
    Index("ix_ec2_snapshots_kms_page", "account", "region", "kms_key_arn", "id"),
    Index("ix_ec2_snapshots_volume", "volume_id", "start_time"),
)

# createVolumePermission: one row per account (or group "all") a snapshot is shared with.
ec2_snapshot_permissions = Table(
    "ec2_snapshot_permissions",
    metadata,
    Column("snapshot_id", String(32), primary_key=True),
    Column("grantee", String(16), primary_key=True),  # a 12-digit account, or "all" (group)
)

ec2_account_settings = Table(
    "ec2_account_settings",
    metadata,
    Column("account", String(12), primary_key=True),
    Column("region", String(32), primary_key=True),
    Column("ebs_encryption_by_default", Boolean, nullable=False, default=False),
    Column("default_kms_key", String(256), nullable=True),  # None: alias/aws/ebs
)

# Generic tags for every EC2 resource type (volumes, snapshots, images, instances, …).
ec2_tags = Table(
    "ec2_tags",
    metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False, default=""),
    Column("resource_type", String(32), nullable=False),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Index("ix_ec2_tags_owner", "account", "region"),
    # tag:K=V filters (tag:Name…): the ids carrying a tag, without reading every tag
    Index("ix_ec2_tags_key_value", "account", "key", "value"),
    # v10: an account's tags in resource id order (the tags of a Describe page: one range)
    Index("ix_ec2_tags_account_resource", "account", "resource_id", "key"),
)

__all__ = [
    "ec2_volumes",
    "ec2_volume_attachments",
    "ec2_volume_modifications",
    "ec2_snapshots",
    "ec2_snapshot_permissions",
    "ec2_account_settings",
    "ec2_tags",
]

