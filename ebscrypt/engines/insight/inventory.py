"""Paged lists of one account's resources in one region, with their encryption (console).

Each page is one bounded query (LIMIT/OFFSET over the owner index), so a list stays fast
on an account with 10,000 resources; the total comes from a COUNT on the same index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from ebscrypt.engines.insight import resources as res
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volumes
from ebscrypt.storage.tables.ec2_images import ec2_images, ec2_instances
from ebscrypt.storage.tables.kms import kms_keys

PAGE_SIZE = 50

# kind -> (table, id column, order column)
_KINDS: dict[str, tuple[Any, Any, Any]] = {
    "keys": (kms_keys, kms_keys.c.key_id, kms_keys.c.creation_date),
    "volumes": (ec2_volumes, ec2_volumes.c.id, ec2_volumes.c.create_time),
    "snapshots": (ec2_snapshots, ec2_snapshots.c.id, ec2_snapshots.c.start_time),
    "images": (ec2_images, ec2_images.c.image_id, ec2_images.c.created_at),
    "instances": (ec2_instances, ec2_instances.c.instance_id, ec2_instances.c.launch_time),
}
KINDS = tuple(_KINDS)


@dataclass(frozen=True)
class Page:
    kind: str
    rows: list[dict[str, Any]]
    page: int
    pages: int
    total: int


def page(conn: Connection, kind: str, account: str, region: str, number: int = 1,
         size: int = PAGE_SIZE) -> Page:
    """Page ``number`` (from 1) of ``kind`` owned by ``account`` in ``region``, newest first."""
    table, id_col, order = _KINDS[kind]
    where = (table.c.account == account, table.c.region == region)
    total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0
    pages = max(1, -(-total // size))
    number = min(max(1, number), pages)
    rows = [dict(r) for r in conn.execute(select(table).where(*where).order_by(order.desc(), id_col)
                                          .limit(size).offset((number - 1) * size)).mappings()]
    for r in rows:
        r.pop("data_key_blob", None)  # wrapped, but never shown
    keys: dict[str | None, Any] = {}

    def key_info(arn: str | None) -> Any:  # a page names few keys: read each once
        if arn not in keys:
            keys[arn] = res.key_info(conn, arn)
        return keys[arn]

    if kind == "keys":
        for r in rows:
            key = res.key_by_id(conn, r["key_id"])
            r["aliases"] = list(key.aliases) if key else []
    elif kind in ("volumes", "snapshots"):
        for r in rows:
            key = key_info(r["kms_key_arn"])
            r["key_label"] = key.label if key else ""
            r["key_state"] = key.state if key else ""
    elif kind == "images":
        for r in rows:
            snaps = [res.snapshot(conn, s) for s in res.image_snapshot_ids(r)]
            flags = [bool(s["encrypted"]) for s in snaps if s is not None]
            r["encryption"] = ("encrypted" if flags and all(flags) else
                               "mixed" if any(flags) else "unencrypted" if flags else "-")
            r["key_count"] = len({s["kms_key_arn"] for s in snaps if s is not None and s["kms_key_arn"]})
    elif kind == "instances":
        for r in rows:
            vols = res.volumes_of_instance(conn, r["instance_id"])
            flags = [bool(v["encrypted"]) for v in vols]
            r["encryption"] = ("encrypted" if flags and all(flags) else
                               "mixed" if any(flags) else "unencrypted" if flags else "-")
    return Page(kind, rows, number, pages, total)


def regions_of(conn: Connection, account: str) -> list[str]:
    return sorted({region for acct, region in res.accounts_and_regions(conn, account) if acct == account})
