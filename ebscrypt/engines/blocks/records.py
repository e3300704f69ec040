"""What the block engine hands out and keeps per owner: ``BlockRef`` (where a block
lives), ``ChangedBlock`` (one difference between two owners), ``Owner`` (a ``blk_owners``
row), and the small helpers every part of the engine uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ebscrypt.engines.blocks.store import ObjectStore

log = logging.getLogger("ebscrypt.blocks")


@dataclass(frozen=True)
class BlockRef:
    """Where an owner's block lives: the object (None: written as zeros) and its checksum."""

    index: int
    object_key: str | None
    checksum: str  # as stored: base64 SHA-256, or sealed under the data key ("e1:…")
    data_key_id: str | None
    layer_id: str


@dataclass(frozen=True)
class ChangedBlock:
    index: int
    first: BlockRef | None  # the block in the first owner, if it has one
    second: BlockRef | None


@dataclass(frozen=True)
class Owner:
    """A ``blk_owners`` row: the head layer, the pinned source of a copy in progress,
    and the data key the owner is stored under (``encrypted`` None: not decided yet)."""

    owner_id: str
    head_id: str
    pin_id: str | None
    data_key_id: str | None
    encrypted: bool | None


def ref_from_row(row: Any) -> BlockRef:
    """A ``blk_entries`` row as a BlockRef."""
    return BlockRef(row["block_index"], row["object_key"], row["checksum"], row["data_key_id"], row["layer_id"])


def check_index(index: int) -> None:
    if not isinstance(index, int) or index < 0:
        raise ValueError("block index must be a non-negative integer")


def delete_quietly(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # best effort: an orphan is swept later
            log.warning("could not delete object %s", key)
