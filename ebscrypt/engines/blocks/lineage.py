"""Layers and lineage: owners and their layer chains, ``share`` (freeze + fresh heads),
``changed_blocks``, ``release`` and the garbage it leaves, compaction.

Block *entries* live in *layers*; an owner points at its mutable head layer, and a layer
may have a parent. ``share`` freezes the source's head (it becomes the common parent) and
gives both owners a fresh empty head. A copy's layer has an *origin* (the frozen source
layer it mirrors), which ``changed_blocks`` follows so that a re-encrypted copy keeps its
source's lineage. A layer lives while an owner's head, an owner's pin (a copy in progress
reads from it) or a child layer references it; a frozen layer left with one child is
merged into it (blocks it shadowed are reclaimed). Dropped objects go to the garbage list
(``blk_garbage``); :mod:`.maintenance` deletes them after a grace period.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from ebscrypt.engines.blocks.crypto import DataKey
from ebscrypt.engines.blocks.errors import BlockError, KeyMismatch, UnrelatedLineage
from ebscrypt.engines.blocks.records import BlockRef, ChangedBlock, Owner, ref_from_row
from ebscrypt.engines.blocks.store import ObjectStore
from ebscrypt.storage.db import Database
from ebscrypt.storage.prepared import PreparedRead, PreparedWrite
from ebscrypt.storage.tables.blocks import blk_entries, blk_garbage, blk_layers, blk_owners

# Statements of the share path (CreateSnapshot, same-key copies: issue 15), built once:
# building one per call cost more CPU than running it.
_OWNER = select(blk_owners).where(blk_owners.c.owner_id == bindparam("owner_id"))
_OWNER_LOCKED = _OWNER.with_for_update()
_OWNER_READ = PreparedRead(_OWNER)  # read per group commit and per block read (storage/prepared.py)
# Run on the driver where plain (storage/prepared.py): each was ~60-90 µs of SQLAlchemy
# execution per share, CopySnapshot's and CreateSnapshot's (bench/README.md section M7).
_ANY_ENTRY = PreparedRead(select(blk_entries.c.block_index).where(blk_entries.c.layer_id == bindparam("layer")).limit(1))
_INSERT_OWNER = PreparedWrite(insert(blk_owners))
_INSERT_LAYER = PreparedWrite(insert(blk_layers))
_SET_HEAD = PreparedWrite(update(blk_owners).where(blk_owners.c.owner_id == bindparam("o_id"))
                          .values(head_id=bindparam("head")))


def _new_layer_id() -> str:
    return uuid.uuid4().hex


class LineageOperations:
    """Mixin of :class:`~ebscrypt.engines.blocks.engine.BlockEngine` (uses its ``db``,
    ``store``, ``now()``, ``sweep()`` and ``_layer_cache``)."""

    # What this mixin uses of its host, declared for the type checker only (annotations
    # without a value, and stubs under TYPE_CHECKING, create nothing at run time):
    # BlockEngine.__init__ sets the attributes; BlockEngine and MaintenanceOperations
    # define the methods (mypy checks that their signatures agree).
    db: Database
    store: ObjectStore
    _layer_cache: dict[str, tuple[str | None, str | None]]  # layer id -> (parent, origin)

    if TYPE_CHECKING:

        def now(self) -> datetime: ...

        def sweep(self, grace_seconds: float | None = None) -> int: ...

    # ---------------------------------------------------------------- share / changed blocks

    def share(self, src_owner_id: str, dst_owner_id: str) -> None:
        """dst gets src's current blocks by reference (same data key). O(1).

        Idempotent: if dst already exists, nothing happens (resumable jobs may repeat it).
        Later writes to either owner are not seen by the other.
        """
        with self.db.begin() as conn:
            self.share_in(conn, src_owner_id, dst_owner_id)

    def share_in(self, conn: Connection, src_owner_id: str, dst_owner_id: str) -> None:
        """:meth:`share` inside the caller's write transaction (``db.begin()`` of this
        engine's database), so a metadata-only operation (CreateSnapshot of a volume) stores
        its resource and its blocks in one durable commit. Metadata only: no object is
        read or written. Raises :class:`BlockError` before writing anything."""
        if src_owner_id == dst_owner_id:
            raise BlockError("cannot share an owner with itself")
        if self._get_owner(conn, dst_owner_id) is not None:
            return
        src = self._get_owner(conn, src_owner_id, lock=True)
        if src is None:
            self._create_owner(conn, dst_owner_id, None, None)
            return
        if src.pin_id is not None:
            raise BlockError(f"{src_owner_id} is still being copied; share it once the copy is done")
        base = self._freeze_head(conn, src)
        self._create_owner(conn, dst_owner_id, base, None, data_key_id=src.data_key_id, encrypted=src.encrypted)

    def _freeze_head(self, conn: Connection, owner: Owner) -> str | None:
        """Make ``owner``'s current content an immutable layer and return it (None: empty).

        An empty head is not frozen: its parent already holds the same content.
        """
        if not _ANY_ENTRY.exists(conn, {"layer": owner.head_id}):
            return self._layer(conn, owner.head_id)[0]
        new_head = self._new_layer(conn, owner.head_id)
        _SET_HEAD.run(conn, {"o_id": owner.owner_id, "head": new_head})
        return owner.head_id

    def changed_blocks(self, first_owner_id: str | None, second_owner_id: str) -> list[ChangedBlock]:
        """Blocks that differ between two owners of one lineage, by index.

        With ``first_owner_id`` None: every written block of the second. Raises
        :class:`UnrelatedLineage` when the two share no layer.
        """
        with self.db.read() as conn:
            second = self._get_owner(conn, second_owner_id)
            if second is None:
                raise UnrelatedLineage(second_owner_id)
            second_chain = self._chain(conn, second.head_id)
            if first_owner_id is None:
                return [ChangedBlock(r.index, None, r) for r in self._resolved(conn, second_chain)]
            first = self._get_owner(conn, first_owner_id)
            if first is None:
                raise UnrelatedLineage(first_owner_id)
            first_chain = self._chain(conn, first.head_id)
            first_ident = self._identity_chain(conn, first.head_id)
            second_ident = self._identity_chain(conn, second.head_id)
            common = set(first_ident) & set(second_ident)
            if not common:
                raise UnrelatedLineage(f"{first_owner_id} / {second_owner_id}")
            own_a = [layer for layer in first_ident if layer not in common]
            own_b = [layer for layer in second_ident if layer not in common]
            indices: set[int] = set()
            for layers in (own_a, own_b):
                if layers:
                    indices.update(
                        r.block_index
                        for r in conn.execute(select(blk_entries.c.block_index).where(blk_entries.c.layer_id.in_(layers)))
                    )
            if not indices:
                return []
            first_refs = {r.index: r for r in self._resolved(conn, first_chain)}
            second_refs = {r.index: r for r in self._resolved(conn, second_chain)}
        out = []
        for index in sorted(indices):
            a, b = first_refs.get(index), second_refs.get(index)
            if a is None and b is None:
                continue
            if a is not None and b is not None and a.object_key == b.object_key and a.layer_id == b.layer_id:
                continue
            out.append(ChangedBlock(index, a, b))
        return out

    def _identity_chain(self, conn: Connection, head_id: str) -> list[str]:
        """The chain for lineage purposes: a re-encrypted copy layer stands for its origin."""
        out: list[str] = []
        layer: str | None = head_id
        while layer is not None:
            try:
                parent, origin = self._layer(conn, layer)
            except BlockError:  # an origin that has since been released: the lineage ends
                break
            if origin is not None:
                layer = origin  # mirrors the origin chain exactly: contributes no change
                continue
            out.append(layer)
            layer = parent
        return out

    # ---------------------------------------------------------------- release / GC / compaction

    def release(self, owner_id: str) -> None:
        """Forget an owner. Blocks no other owner (or running copy) references are reclaimed.

        Releasing the destination of a copy still running cancels that copy: its next step
        finds the owner gone, deletes what it had just stored and raises
        :class:`CopyCancelled`. The blocks it had already recorded are deleted at once,
        without the garbage grace period: that grace protects readers that resolved an entry
        just before it was dropped, and a copy destination has none — it is readable only
        once the copy is done (EBS reads need a completed snapshot; a volume still being
        created cannot be attached).
        """
        with self.db.begin() as conn:
            owner = self._get_owner(conn, owner_id, lock=True)
            if owner is None:
                return
            conn.execute(delete(blk_owners).where(blk_owners.c.owner_id == owner_id))
            unread = {owner.head_id} if owner.pin_id is not None else set()
            at_once = self._drop_unreferenced(
                conn, [owner.head_id] + ([owner.pin_id] if owner.pin_id else []), reclaim_now=unread
            )
        self.sweep()
        if at_once:
            self._collect(at_once)

    def _collect(self, keys: list[str]) -> None:
        """Delete garbage objects now (no grace period), then their garbage rows. A crash in
        between leaves them listed: the regular sweep finishes the job."""
        for key in keys:
            self.store.delete(key)
        with self.db.begin(isolation="READ COMMITTED") as conn:  # as sweep(): rows only deleted
            for start in range(0, len(keys), 500):
                conn.execute(delete(blk_garbage).where(blk_garbage.c.object_key.in_(keys[start : start + 500])))

    def _drop_unreferenced(
        self, conn: Connection, candidates: list[str], *, reclaim_now: set[str] | None = None
    ) -> list[str]:
        """Drop layers nothing references any more (their objects to the garbage list), up
        the parent chain; a frozen layer left with a single child is merged into it.

        Returns the objects of the dropped layers named in ``reclaim_now`` (no reader can
        hold them): the caller deletes them after commit instead of after the grace period.
        """
        now_keys: list[str] = []
        while candidates:
            layer = candidates.pop()
            if self._layer_referenced(conn, layer):
                self._merge_into_only_child(conn, layer)
                continue
            parent, _ = self._layer(conn, layer)
            keys = [
                r.object_key
                for r in conn.execute(select(blk_entries.c.object_key).where(blk_entries.c.layer_id == layer))
                if r.object_key is not None
            ]
            self._to_garbage(conn, keys)
            if reclaim_now and layer in reclaim_now:
                now_keys.extend(keys)
            conn.execute(delete(blk_entries).where(blk_entries.c.layer_id == layer))
            conn.execute(delete(blk_layers).where(blk_layers.c.id == layer))
            self._layer_cache.pop(layer, None)
            if parent is not None:
                candidates.append(parent)
        return now_keys

    def _merge_into_only_child(self, conn: Connection, layer: str) -> None:
        """Compaction: a frozen layer that only one child layer still needs (no owner's head
        or pin, no copy mirroring it) is folded into that child. Its entries the child
        shadows are unreachable by every owner: their objects are reclaimed. Chains get
        shorter; contents of every owner stay the same."""
        if (
            self._owner_holds(conn, layer)
            or conn.execute(select(blk_layers.c.id).where(blk_layers.c.origin_id == layer).limit(1)).first() is not None
        ):
            return
        children = [r.id for r in conn.execute(select(blk_layers.c.id).where(blk_layers.c.parent_id == layer).limit(2))]
        if len(children) != 1:
            return
        child = children[0]
        parent, _origin = self._layer(conn, layer)
        shadowed = {
            r.block_index: r.object_key
            for r in conn.execute(
                select(blk_entries.c.block_index, blk_entries.c.object_key).where(
                    blk_entries.c.layer_id == layer,
                    blk_entries.c.block_index.in_(
                        select(blk_entries.c.block_index).where(blk_entries.c.layer_id == child)
                    ),
                )
            )
        }
        self._to_garbage(conn, [k for k in shadowed.values() if k is not None])
        if shadowed:
            conn.execute(
                delete(blk_entries).where(blk_entries.c.layer_id == layer, blk_entries.c.block_index.in_(list(shadowed)))
            )
        conn.execute(update(blk_entries).where(blk_entries.c.layer_id == layer).values(layer_id=child))
        conn.execute(update(blk_layers).where(blk_layers.c.id == child).values(parent_id=parent))
        conn.execute(delete(blk_layers).where(blk_layers.c.id == layer))
        # (the only place a layer's parent changes: a stale cached chain elsewhere still
        # resolves the same blocks — the merged layer is then merely empty)
        self._layer_cache[child] = (parent, self._layer(conn, child)[1])
        self._layer_cache.pop(layer, None)

    @staticmethod
    def _owner_holds(conn: Connection, layer: str) -> bool:
        """Some owner's head is ``layer``, or its pin (a copy in progress reads it)."""
        return (
            conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.head_id == layer).limit(1)).first() is not None
            or conn.execute(select(blk_owners.c.owner_id).where(blk_owners.c.pin_id == layer).limit(1)).first() is not None
        )

    def _layer_referenced(self, conn: Connection, layer: str) -> bool:
        return (
            self._owner_holds(conn, layer)
            or conn.execute(select(blk_layers.c.id).where(blk_layers.c.parent_id == layer).limit(1)).first() is not None
        )

    def _to_garbage(self, conn: Connection, keys: Iterable[str]) -> None:
        now = self.now()
        rows = [dict(object_key=key, since=now) for key in keys]
        if rows:  # one executemany (a publication supersedes up to a thousand objects)
            conn.execute(insert(blk_garbage), rows)

    # ---------------------------------------------------------------- owners and layers

    def _get_owner(self, conn: Connection, owner_id: str, *, lock: bool = False) -> Owner | None:
        row: Mapping[Any, Any] | None
        if lock and not self.db.is_sqlite:
            row = conn.execute(_OWNER_LOCKED, {"owner_id": owner_id}).mappings().first()
        else:
            row = _OWNER_READ.first(conn, {"owner_id": owner_id})
        if row is None:
            return None
        return Owner(row["owner_id"], row["head_id"], row["pin_id"], row["data_key_id"], row["encrypted"])

    def _create_owner(
        self,
        conn: Connection,
        owner_id: str,
        parent: str | None,
        key: DataKey | None,
        *,
        data_key_id: str | None = None,
        encrypted: bool | None = None,
    ) -> Owner:
        head = self._new_layer(conn, parent)
        if key is not None:
            data_key_id, encrypted = key.key_id, True
        return self._insert_owner(conn, Owner(owner_id, head, None, data_key_id, encrypted))

    def _insert_owner(self, conn: Connection, owner: Owner) -> Owner:
        """Record ``owner`` (its head, and pin, layers already exist)."""
        _INSERT_OWNER.run(
            conn,
            dict(
                owner_id=owner.owner_id,
                head_id=owner.head_id,
                pin_id=owner.pin_id,
                data_key_id=owner.data_key_id,
                encrypted=owner.encrypted,
                created_at=self.now(),
            ),
        )
        return owner

    def _check_key(self, owner: Owner, key: DataKey | None, *, adopt: Connection) -> None:
        if owner.encrypted is None:  # first write decides
            adopt.execute(
                update(blk_owners)
                .where(blk_owners.c.owner_id == owner.owner_id)
                .values(encrypted=key is not None, data_key_id=key.key_id if key else None)
            )
            return
        if owner.encrypted != (key is not None) or (key is not None and key.key_id != owner.data_key_id):
            raise KeyMismatch(f"{owner.owner_id} is stored under data key {owner.data_key_id!r}")

    def _new_layer(self, conn: Connection, parent: str | None, *, origin: str | None = None) -> str:
        layer = _new_layer_id()
        _INSERT_LAYER.run(conn, dict(id=layer, parent_id=parent, origin_id=origin, created_at=self.now()))
        self._layer_cache[layer] = (parent, origin)
        return layer

    def _layer(self, conn: Connection, layer: str) -> tuple[str | None, str | None]:
        cached = self._layer_cache.get(layer)
        if cached is not None:
            return cached
        row = conn.execute(select(blk_layers.c.parent_id, blk_layers.c.origin_id).where(blk_layers.c.id == layer)).first()
        if row is None:
            raise BlockError(f"layer {layer} is missing")
        value = (row.parent_id, row.origin_id)
        self._layer_cache[layer] = value  # changes only by a merge (see _chain)
        return value

    def _chain(self, conn: Connection, head: str) -> list[str]:
        try:
            return self._walk_chain(conn, head)
        except BlockError:
            # Another process merged a layer of this chain into its only child (the one
            # change of a layer's parent) after this process cached the child's parent:
            # the cached link names a layer now gone. Forget the cache, read the chain again.
            self._layer_cache.clear()
            return self._walk_chain(conn, head)

    def _walk_chain(self, conn: Connection, head: str) -> list[str]:
        out: list[str] = []
        layer: str | None = head
        while layer is not None:
            out.append(layer)
            layer = self._layer(conn, layer)[0]
        return out

    @staticmethod
    def _resolved(conn: Connection, chain: list[str]) -> list[BlockRef]:
        if not chain:
            return []
        pos = {layer: i for i, layer in enumerate(chain)}
        best: dict[int, tuple[int, Any]] = {}
        for i in range(0, len(chain), 500):
            for row in conn.execute(select(blk_entries).where(blk_entries.c.layer_id.in_(chain[i : i + 500]))).mappings():
                p = pos[row["layer_id"]]
                cur = best.get(row["block_index"])
                if cur is None or p < cur[0]:
                    best[row["block_index"]] = (p, row)
        return [ref_from_row(best[index][1]) for index in sorted(best)]
