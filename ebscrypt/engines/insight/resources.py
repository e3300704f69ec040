"""Reads over the EC2 and KMS tables for the insight engine (the only SQL it runs).

Rows are returned as plain mappings; ids are globally unique, so a resource is found by
id alone and its ``account`` column says whose it is (the callers decide visibility).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from sqlalchemy import Connection, RowMapping, func, inspect, or_, select

from ebscrypt.engines.insight.records import KeyInfo
from ebscrypt.storage.tables.ec2 import (
    ec2_account_settings,
    ec2_snapshot_permissions,
    ec2_snapshots,
    ec2_volume_attachments,
    ec2_volumes,
)
from ebscrypt.storage.tables.ec2_images import (
    ec2_image_launch_permissions,
    ec2_image_snapshots,
    ec2_images,
    ec2_instances,
)
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants, kms_keys
from ebscrypt.storage.tables.provenance import ec2_provenance

# A row read as a mapping (``.mappings()``): column name -> value.
Row = RowMapping
# Volumes and snapshots that still exist as far as a key's dependants go.
GONE_STATES = ("deleted", "deleting")


def kind_of(resource_id: str) -> str | None:
    prefix = resource_id.split("-", 1)[0]
    return {"vol": "volume", "snap": "snapshot", "ami": "image", "i": "instance"}.get(prefix)


def volume(conn: Connection, volume_id: str) -> Row | None:
    return conn.execute(select(ec2_volumes).where(ec2_volumes.c.id == volume_id)).mappings().first()


def snapshot(conn: Connection, snapshot_id: str) -> Row | None:
    return conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.id == snapshot_id)).mappings().first()


def image(conn: Connection, image_id: str) -> Row | None:
    return conn.execute(select(ec2_images).where(ec2_images.c.image_id == image_id)).mappings().first()


def instance(conn: Connection, instance_id: str) -> Row | None:
    return conn.execute(select(ec2_instances).where(ec2_instances.c.instance_id == instance_id)).mappings().first()


def resource(conn: Connection, resource_id: str) -> tuple[str, Row] | None:
    kind = kind_of(resource_id)
    reader = {"volume": volume, "snapshot": snapshot, "image": image, "instance": instance}.get(kind or "")
    row = reader(conn, resource_id) if reader else None
    return (kind, row) if row is not None and kind else None


def owner_of(row: Row) -> str:
    return str(row["account"])


def image_snapshot_ids(row: Mapping[Any, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in json.loads(row["mappings"]) if (m.get("Ebs") or {}).get("SnapshotId")]


def images_using(conn: Connection, snapshot_ids: Iterable[str]) -> dict[str, list[str]]:
    """snapshot id -> the images whose mappings name it."""
    ids = list(snapshot_ids)
    out: dict[str, list[str]] = {}
    if not ids:
        return out
    for r in conn.execute(select(ec2_image_snapshots).where(ec2_image_snapshots.c.snapshot_id.in_(ids))):
        out.setdefault(r.snapshot_id, []).append(r.image_id)
    return out


def volumes_from_snapshot(conn: Connection, snapshot_id: str, limit: int) -> list[Row]:
    return list(conn.execute(select(ec2_volumes).where(ec2_volumes.c.snapshot_id == snapshot_id)
                             .limit(limit)).mappings())


def snapshots_of_volume(conn: Connection, volume_id: str, limit: int) -> list[Row]:
    return list(conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.volume_id == volume_id)
                             .limit(limit)).mappings())


def copies_of(conn: Connection, snapshot_id: str, limit: int) -> list[Row]:
    return list(conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.source_snapshot_id == snapshot_id)
                             .limit(limit)).mappings())


def volumes_of_instance(conn: Connection, instance_id: str) -> list[Row]:
    q = (select(ec2_volumes).join(ec2_volume_attachments, ec2_volume_attachments.c.volume_id == ec2_volumes.c.id)
         .where(ec2_volume_attachments.c.instance_id == instance_id))
    return list(conn.execute(q).mappings())


def instance_of_volume(conn: Connection, volume_id: str) -> str | None:
    return conn.execute(select(ec2_volume_attachments.c.instance_id)
                        .where(ec2_volume_attachments.c.volume_id == volume_id)).scalar()


def instances_of_image(conn: Connection, image_id: str, limit: int) -> list[Row]:
    return list(conn.execute(select(ec2_instances).where(ec2_instances.c.image_id == image_id)
                             .limit(limit)).mappings())


# ----------------------------------------------------------------------------- keys


def key_info(conn: Connection, arn: str | None) -> KeyInfo | None:
    if not arn:
        return None
    row = conn.execute(select(kms_keys).where(kms_keys.c.arn == arn)).mappings().first()
    parts = arn.split(":")
    key_id = arn.rsplit("/", 1)[-1]
    if row is None:
        # No row: the key was deleted (crypto-shredded) or never existed here.
        return KeyInfo(arn, key_id, parts[4] if len(parts) > 4 else "", parts[3] if len(parts) > 3 else "",
                       "Deleted")
    return _key_from_row(conn, row)


def _key_from_row(conn: Connection, row: Row) -> KeyInfo:
    aliases = tuple(sorted(conn.execute(select(kms_aliases.c.name).where(
        kms_aliases.c.target_key_id == row["key_id"])).scalars()))
    deletion = row["deletion_date"]
    return KeyInfo(row["arn"], row["key_id"], row["account"], row["region"], row["state"], row["key_manager"],
                   aliases, deletion.isoformat() if deletion is not None else None)


def key_by_id(conn: Connection, key_id_or_arn: str) -> KeyInfo | None:
    row = conn.execute(select(kms_keys).where(or_(kms_keys.c.key_id == key_id_or_arn,
                                                  kms_keys.c.arn == key_id_or_arn))).mappings().first()
    return _key_from_row(conn, row) if row is not None else None


def keys(conn: Connection, account: str | None = None, region: str | None = None) -> list[Row]:
    q = select(kms_keys)
    if account:
        q = q.where(kms_keys.c.account == account)
    if region:
        q = q.where(kms_keys.c.region == region)
    return list(conn.execute(q.order_by(kms_keys.c.creation_date)).mappings())


def grants_of(conn: Connection, key_id: str) -> list[Row]:
    return list(conn.execute(select(kms_grants).where(kms_grants.c.key_id == key_id)).mappings())


def dependants(conn: Connection, key_arn: str, limit: int) -> tuple[list[Row], list[Row]]:
    """(volumes, snapshots) still encrypted under ``key_arn`` (at most ``limit`` each)."""
    vols = list(conn.execute(select(ec2_volumes).where(
        ec2_volumes.c.kms_key_arn == key_arn, ec2_volumes.c.state.not_in(GONE_STATES)).limit(limit)).mappings())
    snaps = list(conn.execute(select(ec2_snapshots).where(
        ec2_snapshots.c.kms_key_arn == key_arn).limit(limit)).mappings())
    return vols, snaps


def dependant_counts(conn: Connection) -> dict[str, int]:
    """key ARN -> number of volumes and snapshots under it (one grouped query each)."""
    counts: dict[str, int] = {}
    for table, extra in ((ec2_volumes, ec2_volumes.c.state.not_in(GONE_STATES)), (ec2_snapshots, None)):
        q = select(table.c.kms_key_arn, func.count()).where(table.c.kms_key_arn.is_not(None))
        if extra is not None:
            q = q.where(extra)
        for arn, n in conn.execute(q.group_by(table.c.kms_key_arn)):
            counts[arn] = counts.get(arn, 0) + n
    return counts


# ----------------------------------------------------------------------------- provenance, sharing, settings


def has_provenance(conn: Connection) -> bool:
    """False on a database not yet upgraded to the schema with ec2_provenance."""
    return inspect(conn).has_table(ec2_provenance.name)


def provenance(conn: Connection, resource_id: str) -> Row | None:
    if not has_provenance(conn):
        return None
    return conn.execute(select(ec2_provenance).where(ec2_provenance.c.resource_id == resource_id)).mappings().first()


def _grantees(conn: Connection, resource: Any, grantee: Any, ids: Iterable[str] | None) -> dict[str, list[str]]:
    """Resource id -> the accounts (or groups) it is shared with, sorted."""
    q = select(resource, grantee)
    if ids is not None:
        q = q.where(resource.in_(list(ids)))
    out: dict[str, list[str]] = {}
    for rid, who in conn.execute(q.order_by(grantee)):
        out.setdefault(rid, []).append(who)
    return out


def snapshot_grantees(conn: Connection, snapshot_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    t = ec2_snapshot_permissions
    return _grantees(conn, t.c.snapshot_id, t.c.grantee, snapshot_ids)


def image_grantees(conn: Connection, image_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    t = ec2_image_launch_permissions
    return _grantees(conn, t.c.image_id, t.c.user_id, image_ids)


def settings(conn: Connection) -> dict[tuple[str, str], Row]:
    return {(r["account"], r["region"]): r for r in conn.execute(select(ec2_account_settings)).mappings()}


def table_rows(conn: Connection, table: Any, account: str | None) -> list[Row]:
    q = select(table)
    if account:
        q = q.where(table.c.account == account)
    return list(conn.execute(q).mappings())


def accounts_and_regions(conn: Connection, account: str | None = None) -> set[tuple[str, str]]:
    """Every (account, region) that holds a resource, a key or a settings row."""
    pairs: set[tuple[str, str]] = set()
    for table in (ec2_volumes, ec2_snapshots, ec2_images, ec2_instances, kms_keys, ec2_account_settings):
        q = select(table.c.account, table.c.region).distinct()
        if account:
            q = q.where(table.c.account == account)
        pairs.update((a, r) for a, r in conn.execute(q))
    return pairs
