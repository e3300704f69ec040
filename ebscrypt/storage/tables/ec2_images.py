"""Tables for images (AMIs), their launch permissions, instances and launch templates.

Volumes, snapshots, attachments and tags are ec2core's (``tables/ec2.py``); an image's
block device mappings name snapshots by id and an instance's volumes are found through
ec2core's attachments, so no row here duplicates theirs.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ebscrypt.storage.schema import metadata

ec2_images = Table(
    "ec2_images",
    metadata,
    Column("image_id", String(32), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=True),
    Column("state", String(16), nullable=False),  # pending | available | failed
    Column("state_reason_code", String(128), nullable=True),
    Column("state_reason_message", Text, nullable=True),
    Column("architecture", String(16), nullable=False, default="x86_64"),
    Column("virtualization_type", String(16), nullable=False, default="hvm"),
    Column("root_device_name", String(64), nullable=True),
    Column("root_device_type", String(16), nullable=False, default="ebs"),
    Column("ena_support", Boolean, nullable=True),
    Column("sriov_net_support", String(16), nullable=True),
    Column("boot_mode", String(32), nullable=True),
    Column("tpm_support", String(16), nullable=True),
    Column("imds_support", String(16), nullable=True),
    Column("image_location", String(256), nullable=True),
    Column("kernel_id", String(32), nullable=True),
    Column("ramdisk_id", String(32), nullable=True),
    Column("platform", String(16), nullable=True),
    Column("public", Boolean, nullable=False, default=False),
    # JSON list of BlockDeviceMapping dicts as the model names them (Ebs.SnapshotId …).
    Column("mappings", Text, nullable=False),
    Column("source_image_id", String(32), nullable=True),
    Column("source_region", String(32), nullable=True),
    Column("source_instance_id", String(32), nullable=True),
    Column("client_token", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("account", "region", "name", name="uq_ec2_images_name"),
    Index("ix_ec2_images_owner", "account", "region"),
    Index("ix_ec2_images_token", "account", "region", "client_token"),
    Index("ux_ec2_images_client_token", "account", "region", "client_token", unique=True),  # as volumes
    # v10: an account's images in id order (DescribeImages pages)
    Index("ix_ec2_images_page", "account", "region", "image_id"),
)

ec2_image_launch_permissions = Table(
    "ec2_image_launch_permissions",
    metadata,
    Column("image_id", String(32), primary_key=True),
    Column("user_id", String(12), primary_key=True),
    Index("ix_ec2_image_lp_user", "user_id"),
)

# Which snapshots an image's mappings name: R-SNAP-3's in-use check, the
# ``block-device-mapping.snapshot-id`` filter, and finishing images as snapshots complete.
ec2_image_snapshots = Table(
    "ec2_image_snapshots",
    metadata,
    Column("image_id", String(32), primary_key=True),
    Column("snapshot_id", String(32), primary_key=True),
    Index("ix_ec2_image_snapshots_snap", "snapshot_id"),
)

ec2_instances = Table(
    "ec2_instances",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("reservation_id", String(32), nullable=False),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("image_id", String(32), nullable=False),
    Column("instance_type", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_reason_code", String(128), nullable=True),
    Column("state_reason_message", Text, nullable=True),
    Column("state_transition_reason", Text, nullable=True),
    Column("launch_time", DateTime(timezone=True), nullable=False),
    Column("key_name", String(255), nullable=True),
    Column("subnet_id", String(32), nullable=True),
    Column("vpc_id", String(32), nullable=True),
    Column("security_groups", Text, nullable=False, default="[]"),  # JSON [{GroupId, GroupName}]
    Column("availability_zone", String(32), nullable=False),
    Column("private_ip", String(16), nullable=False),
    Column("ami_launch_index", Integer, nullable=False, default=0),
    Column("root_device_name", String(64), nullable=True),
    Column("architecture", String(16), nullable=True),
    Column("virtualization_type", String(16), nullable=True),
    Column("ena_support", Boolean, nullable=True),
    Column("ebs_optimized", Boolean, nullable=False, default=False),
    Column("client_token", String(128), nullable=True),
    # JSON list of the launch's block device plan (device, snapshot, encryption request,
    # DeleteOnTermination), kept so a crashed launch job can finish idempotently.
    Column("launch_plan", Text, nullable=False, default="[]"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_ec2_instances_owner", "account", "region"),
    # as volumes; one RunInstances token names all its instances, one per launch index
    Index("ux_ec2_instances_client_token", "account", "region", "client_token", "ami_launch_index", unique=True),
    Index("ix_ec2_instances_reservation", "reservation_id"),
)

ec2_launch_templates = Table(
    "ec2_launch_templates",
    metadata,
    Column("template_id", String(32), primary_key=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("default_version", Integer, nullable=False, default=1),
    Column("latest_version", Integer, nullable=False, default=1),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("account", "region", "name", name="uq_ec2_lt_name"),
)

ec2_launch_template_versions = Table(
    "ec2_launch_template_versions",
    metadata,
    Column("template_id", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=True),
    Column("data", Text, nullable=False),  # JSON RequestLaunchTemplateData
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
