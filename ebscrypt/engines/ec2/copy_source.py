"""Whether a copy's source snapshot survived the copy (CopySnapshot, CreateVolume from a
snapshot). Apart from both: snapshots.py imports volumes.py, and both jobs ask this."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ebscrypt.storage.tables.ec2 import ec2_snapshots


class SourceSnapshotGone(Exception):
    """A copy's source snapshot was deleted before the copy could pin its blocks."""

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"The snapshot '{snapshot_id}' was deleted before its blocks could be copied.")


def check_source_survived(runtime: Any, source_id: str, dst_owner_id: str) -> None:
    """Refuse a copy that may have read a deleted source as empty.

    The block engine copies a source it no longer has as an empty one, which is right for
    a snapshot that never held a block and wrong for one deleted (record first, then its
    blocks) between the job's read of the record and the copy. While the record still
    exists its blocks were there when the copy pinned them; once it is gone, only a copy
    that received blocks can be trusted.
    """
    with runtime.db.read() as conn:
        if conn.execute(select(ec2_snapshots.c.id).where(ec2_snapshots.c.id == source_id)).first() is not None:
            return
    if not runtime.blocks.list_block_refs(dst_owner_id):
        raise SourceSnapshotGone(source_id)
