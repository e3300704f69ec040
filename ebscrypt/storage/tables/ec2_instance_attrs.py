"""Instance attributes that ModifyInstanceAttribute changes and ``ec2_instances`` does not hold.

A table of its own (one row per instance, written at launch) rather than new columns on
``ec2_instances``: ``create_all`` adds a missing table to an existing database, so a
database made before these attributes existed needs no schema migration. An instance
without a row has EC2's defaults (see ``InstanceAttrs`` in engines/ec2/instances.py).
The attributes the instance row already had (instance type, EBS optimization, ENA
support, security groups) stay there; DeleteOnTermination lives on ec2core's attachments.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, String, Table, Text

from ebscrypt.storage.schema import metadata

ec2_instance_attributes = Table(
    "ec2_instance_attributes",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("disable_api_termination", Boolean, nullable=False, default=False),
    Column("disable_api_stop", Boolean, nullable=False, default=False),
    Column("shutdown_behavior", String(16), nullable=False, default="stop"),  # stop | terminate
    Column("source_dest_check", Boolean, nullable=False, default=True),
    Column("sriov_net_support", String(16), nullable=True),  # "simple" once enabled
    Column("kernel_id", String(32), nullable=True),
    Column("ramdisk_id", String(32), nullable=True),
    Column("user_data", Text, nullable=True),  # base64, as the API carries it
)

__all__ = ["ec2_instance_attributes"]
