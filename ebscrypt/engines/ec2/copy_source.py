"""The one copy path: a new volume or snapshot gets the blocks of a source snapshot, shared
or re-encrypted (CopySnapshot, CreateVolume from a snapshot, EBS StartSnapshot with a
parent), and whether the source survived the copy. Apart from volumes and snapshots: both
use it (and engines/ebs above them)."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import select

from ebscrypt.context import Runtime
from ebscrypt.storage.tables.ec2 import ec2_snapshots


class SourceSnapshotGone(Exception):
    """A copy's source snapshot was deleted before the copy could pin its blocks."""

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"The snapshot '{snapshot_id}' was deleted before its blocks could be copied.")


def check_source_survived(runtime: Runtime, source_id: str, dst_owner_id: str) -> None:
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


def copy_blocks(runtime: Runtime, source: Any, dst_id: str, dst_data_key_id: str | None, *,
                source_key: Callable[[], Any], dst_key: Callable[[], Any],
                progress: Callable[[float], None] | None = None, check_source: bool = True) -> None:
    """Give ``dst_id`` the blocks of the snapshot ``source``: shared when both have the same
    data key (R-KEY-2, R-SNAP-2: incremental, no data moved; both unencrypted too), else
    re-encrypted from ``source_key()`` to ``dst_key()`` (asked only then: each may call KMS),
    with ``progress``. ``check_source``: then refuse a copy whose source was deleted
    meanwhile (:func:`check_source_survived`)."""
    blocks = runtime.blocks
    if source.data_key_id == dst_data_key_id:
        blocks.share(source.id, dst_id)
    else:
        src_key = source_key()
        blocks.reencrypt(source.id, src_key, dst_id, dst_key(), progress=progress)
    if check_source:
        check_source_survived(runtime, source.id, dst_id)
