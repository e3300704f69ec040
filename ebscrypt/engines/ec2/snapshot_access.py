"""Which snapshot a caller may see or act on (R-SHARE-1): the reads that both ``volumes``
(CreateVolume from a snapshot) and ``snapshots`` need, kept below both."""

from __future__ import annotations


from sqlalchemy import Connection, bindparam, select

from ebscrypt.context import Caller
from ebscrypt.engines.ec2.ids import check_id
from ebscrypt.engines.ec2.records import Snapshot
from ebscrypt.errors import NotFound, UnauthorizedOperation
from ebscrypt.storage.prepared import PreparedRead
from ebscrypt.storage.tables.ec2 import ec2_snapshot_permissions, ec2_snapshots


_BY_ID = select(ec2_snapshots).where(ec2_snapshots.c.id == bindparam("id"))  # built once (issue 15)
_BY_ID_READ = PreparedRead(_BY_ID)  # read per EBS direct block: compiled once, on the driver (storage/prepared.py)


_STATE = select(ec2_snapshots.c.state, ec2_snapshots.c.account).where(ec2_snapshots.c.id == bindparam("id"))
_STATE_READ = PreparedRead(_STATE)  # checked in each EBS direct upload group's write transaction


def snapshot_state(conn: Connection, snapshot_id: str) -> tuple[str, str] | None:
    """(state, owning account) of a snapshot; None if there is no such snapshot. [conn]"""
    row = _STATE_READ.first(conn, {"id": snapshot_id})
    return (str(row["state"]), str(row["account"])) if row else None


def snapshot_row(conn: Connection, snapshot_id: str) -> Snapshot | None:
    row = _BY_ID_READ.first(conn, {"id": snapshot_id})
    return Snapshot.from_row(row) if row else None


def not_found(snapshot_id: str) -> NotFound:
    return NotFound("InvalidSnapshot", snapshot_id)


def grantees(conn: Connection, snapshot_id: str) -> set[str]:
    return {r.grantee for r in conn.execute(select(ec2_snapshot_permissions.c.grantee).where(
        ec2_snapshot_permissions.c.snapshot_id == snapshot_id))}


def snapshot_is_owned(snapshot: Snapshot, caller: Caller) -> bool:
    return bool(snapshot.account == caller.account)


def get_snapshot(conn: Connection, caller: Caller, snapshot_id: str, region: str | None = None) -> Snapshot:
    """A snapshot the caller may see in ``region`` (default: its own): owned, shared with its
    account, or public (R-SHARE-1). InvalidSnapshot.NotFound otherwise. [conn]"""
    check_id(snapshot_id, "snap", "InvalidSnapshotID.Malformed")
    snap = snapshot_row(conn, snapshot_id)
    if snap is None or snap.region != (region or caller.region):
        raise not_found(snapshot_id)
    if snap.account != caller.account and not (grantees(conn, snapshot_id) & {caller.account, "all"}):
        raise not_found(snapshot_id)
    return snap


def owned_snapshot(conn: Connection, caller: Caller, snapshot_id: str) -> Snapshot:
    snap = get_snapshot(conn, caller, snapshot_id)
    if snap.account != caller.account:
        raise UnauthorizedOperation()
    return snap
