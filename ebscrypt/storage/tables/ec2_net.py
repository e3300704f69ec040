"""EC2 networking and key-pair records owned by ec2net.

Key pairs keep only the public half (``public_key``, OpenSSH text) and the fingerprint:
the private key of a created pair is returned once by CreateKeyPair and never stored.
Default VPC, its subnets and default security group are created lazily per account and
region (``ec2_net_defaults`` records that it happened, so it happens once).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

ec2_key_pairs = Table(
    "ec2_key_pairs",
    metadata,
    Column("id", String(32), primary_key=True),  # key-<17 hex>
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(255), nullable=False),
    Column("key_type", String(16), nullable=False),  # rsa | ed25519
    Column("fingerprint", String(128), nullable=False),
    Column("public_key", Text, nullable=False),  # OpenSSH public key line
    Column("imported", Boolean, nullable=False, default=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    UniqueConstraint("account", "region", "name", name="uq_ec2_key_pairs_name"),
)

ec2_net_defaults = Table(
    "ec2_net_defaults",
    metadata,
    Column("account", String(12), primary_key=True),
    Column("region", String(32), primary_key=True),
    Column("default_vpc_id", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

ec2_vpcs = Table(
    "ec2_vpcs",
    metadata,
    Column("id", String(32), primary_key=True),  # vpc-<17 hex>
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("cidr_block", String(64), nullable=False),
    Column("cidr_association_id", String(64), nullable=False),
    Column("dhcp_options_id", String(32), nullable=False),
    Column("instance_tenancy", String(16), nullable=False, default="default"),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False, default="available"),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Index("ix_ec2_vpcs_owner", "account", "region"),
)

ec2_subnets = Table(
    "ec2_subnets",
    metadata,
    Column("id", String(32), primary_key=True),  # subnet-<17 hex>
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("vpc_id", String(32), nullable=False, index=True),
    Column("availability_zone", String(40), nullable=False),
    Column("availability_zone_id", String(40), nullable=False),
    Column("cidr_block", String(64), nullable=False),
    Column("default_for_az", Boolean, nullable=False, default=False),
    Column("map_public_ip_on_launch", Boolean, nullable=False, default=False),
    Column("available_ip_count", Integer, nullable=False),
    Column("state", String(16), nullable=False, default="available"),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Index("ix_ec2_subnets_owner", "account", "region"),
)

ec2_security_groups = Table(
    "ec2_security_groups",
    metadata,
    Column("id", String(32), primary_key=True),  # sg-<17 hex>
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("vpc_id", String(32), nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", String(255), nullable=False),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    UniqueConstraint("vpc_id", "name", name="uq_ec2_security_groups_name"),
    Index("ix_ec2_security_groups_owner", "account", "region"),
)

# One row per rule, as DescribeSecurityGroupRules lists them: a rule has exactly one peer
# (an IPv4 CIDR, an IPv6 CIDR, a prefix list or a referenced group).
ec2_security_group_rules = Table(
    "ec2_security_group_rules",
    metadata,
    Column("id", String(32), primary_key=True),  # sgr-<17 hex>
    Column("group_id", String(32), nullable=False, index=True),
    Column("account", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("is_egress", Boolean, nullable=False),
    Column("ip_protocol", String(16), nullable=False),  # "-1", "tcp", "udp", "icmp", "icmpv6", or a number
    Column("from_port", Integer, nullable=True),
    Column("to_port", Integer, nullable=True),
    Column("cidr_ipv4", String(64), nullable=True),
    Column("cidr_ipv6", String(64), nullable=True),
    Column("prefix_list_id", String(64), nullable=True),
    Column("ref_group_id", String(32), nullable=True, index=True),
    Column("ref_user_id", String(12), nullable=True),
    Column("description", String(255), nullable=True),
    Column("position", BigInteger, nullable=False),  # creation order (time_ns based: > 2**31)
    Index("ix_ec2_sg_rules_owner", "account", "region"),
)

__all__ = [
    "ec2_key_pairs",
    "ec2_net_defaults",
    "ec2_vpcs",
    "ec2_subnets",
    "ec2_security_groups",
    "ec2_security_group_rules",
]
