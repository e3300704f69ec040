"""The EBS direct-API operations over the EC2 snapshot records (``engines.ec2``) and the
block engine (``runtime.blocks``), with typed arguments (SPEC R-DATA-1, R-LIFE-2, §2).

Snapshots here are the EC2 snapshot records (visible in DescribeSnapshots and back);
their bytes live in the block engine under the snapshot id. Errors have EBS's shapes
(:mod:`ebscrypt.engines.ebs.direct`).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ebscrypt.domain.outcome import key_implies_encrypted, refuses_unencrypted
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, sha256_b64
from ebscrypt.engines.blocks.engine import CopyInProgress, UnrelatedLineage
from ebscrypt.engines.blocks.errors import BlockIntegrityError
from ebscrypt.engines.ebs import direct
from ebscrypt.engines.ec2 import snapshots as ec2_snapshots
from ebscrypt.engines.ec2.copy_source import copy_blocks
from ebscrypt.engines.ec2.account import get_settings
from ebscrypt.engines.ec2.records import Snapshot
from ebscrypt.engines.ec2.snapshot_access import get_snapshot, snapshot_is_owned
from ebscrypt.engines.ec2.tags import tags_for
from ebscrypt.errors import (
    EbsAccessDenied,
    EbsInternal,
    EbsNotFound,
    EbsThrottled,
    EbsValidation,
    InvalidParameterDependency,
    Malformed,
    NotFound,
    ServiceError,
)

log = logging.getLogger("ebscrypt.ebs")

BLOCKS_PER_GIB = (1024 * 1024 * 1024) // BLOCK_SIZE
DEFAULT_TIMEOUT_MINUTES = 60
DEFAULT_MAX_RESULTS = 10000


def _snapshot(
    ctx: Any, snapshot_id: str, *, owned: bool = False, session: list[Any] | None = None, block: int | None = None,
    generation: list[Any] | None = None,
) -> Any:
    """The EC2 snapshot record the caller may see, with EBS's error shapes. In the same
    transaction: with ``session`` (a list), its write session row is appended to it; with
    ``generation`` (a list), the authorization generation of its KMS key (for
    ``direct.keys.get``); with ``block``, the entry of that block is returned too
    (``(snap, ref)``)."""
    ref = None
    try:
        with ctx.runtime.db.read() as conn:
            snap = get_snapshot(conn, ctx.caller, snapshot_id)
            if session is not None:
                session.append(direct.session_row(conn, snapshot_id))
            if generation is not None:
                generation.append(direct.keys.generation(ctx, snap, conn))
            if block is not None:
                ref = _blocks(ctx).block_ref(snapshot_id, block, conn=conn, head_first=True)
    except Malformed:
        raise EbsValidation(f"The snapshot ID '{snapshot_id}' is not valid.", "INVALID_SNAPSHOT_ID") from None
    except NotFound as err:
        if err.kind != "InvalidSnapshot":
            raise
        raise EbsNotFound(snapshot_id) from None
    if owned and not snapshot_is_owned(snap, ctx.caller):
        raise EbsAccessDenied(f"The snapshot '{snapshot_id}' is not owned by account {ctx.caller.account}.")
    return (snap, ref) if block is not None else snap


def _completed(snap: Any) -> None:
    if snap.state != "completed":
        raise EbsValidation(
            f"The snapshot '{snap.id}' is in the '{snap.state}' state; only completed snapshots can be read.",
            "INVALID_SNAPSHOT_ID",
        )


def _blocks(ctx: Any) -> Any:
    blocks = ctx.runtime.blocks
    if blocks is None:
        raise EbsInternal("The block store is not available.")
    return blocks


def _now(ctx: Any) -> datetime:
    now: datetime = ctx.runtime.clock.now()
    return now


def _max_blocks(snap: Any) -> int:
    return int(snap.volume_size) * BLOCKS_PER_GIB


# --------------------------------------------------------------------------- StartSnapshot


@dataclass(frozen=True)
class StartRequest:
    """StartSnapshot's arguments."""

    volume_size: int
    parent_snapshot_id: str | None = None
    encrypted: bool | None = None
    kms_key_arn: str | None = None
    description: str | None = None
    client_token: str | None = None
    tags: tuple[dict[str, Any], ...] = ()
    timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES


_VALIDATION_REASONS = {
    "INVALID_CUSTOMER_KEY", "INVALID_PAGE_TOKEN", "INVALID_BLOCK_TOKEN", "INVALID_GRANT_TOKEN",
    "INVALID_SNAPSHOT_ID", "UNRELATED_SNAPSHOTS", "INVALID_BLOCK", "INVALID_CONTENT_ENCODING",
    "INVALID_TAG", "INVALID_DEPENDENCY_REQUEST", "INVALID_PARAMETER_VALUE", "INVALID_VOLUME_SIZE",
    "CONFLICTING_BLOCK_UPDATE", "INVALID_IMAGE_ID", "WRITE_REQUEST_TIMEOUT",
}


def start_snapshot(ctx: Any, req: StartRequest) -> tuple[Snapshot, list[dict[str, str]]]:
    """A new ``pending`` snapshot with its write session (seeded from its parent's blocks,
    R-LIFE-2), or the one a retried ClientToken made; and its tags."""
    volume_size = req.volume_size
    if volume_size > 65536:
        raise EbsValidation("The volume size must be at most 65536 GiB.", "INVALID_VOLUME_SIZE")
    parent_id = req.parent_snapshot_id
    encrypted = req.encrypted
    if parent_id and encrypted is not None:
        raise EbsValidation("You can't specify ParentSnapshotId and Encrypted in the same request.", "INVALID_PARAMETER_VALUE")
    if encrypted is False:
        with ctx.runtime.db.read() as conn:
            ebd = get_settings(conn, ctx.caller.account, ctx.caller.region).ebd
        if refuses_unencrypted(encrypted, ebd):
            raise EbsValidation(
                "Encryption by default is enabled for this account: a snapshot cannot be started unencrypted.",
                "INVALID_PARAMETER_VALUE",
            )
    kms_key = req.kms_key_arn
    encrypted = key_implies_encrypted(encrypted, kms_key)
    tags = list(req.tags)
    for tag in tags:
        if not tag.get("Key") or str(tag.get("Key", "")).startswith("aws:"):
            raise EbsValidation("Tag keys must be non-empty and must not start with 'aws:'.", "INVALID_TAG")
    parent = _snapshot(ctx, parent_id) if parent_id else None
    if parent is not None:
        _completed(parent)
        if parent.volume_size > volume_size:
            raise EbsValidation(
                f"The volume size {volume_size} GiB is smaller than the parent snapshot's {parent.volume_size} GiB.",
                "INVALID_VOLUME_SIZE",
            )
    try:
        snap = ec2_snapshots.new_snapshot_record(
            ctx,
            volume_size=volume_size,
            encrypted=encrypted,
            kms_key_id=kms_key,
            parent_snapshot_id=parent_id,
            description=req.description,
            client_token=req.client_token,
            tags=tags or None,
        )
    except InvalidParameterDependency as err:  # R-OUT-1: a KmsKeyArn without encryption
        raise EbsValidation(err.message, "INVALID_PARAMETER_VALUE") from None
    except ServiceError as err:
        # A ValidationException with a Reason EBS does not define (the EC2 record's own).
        if err.code == "ValidationException" and err.fields.get("Reason") not in _VALIDATION_REASONS:
            raise EbsValidation(err.message, "INVALID_PARAMETER_VALUE") from None
        raise
    _blocks(ctx)  # the block store must be there (InternalServerException otherwise)
    # A retried ClientToken finds its session (or its finished snapshot): no second seeding.
    fresh = snap.state == "pending" and direct.start_session(
        ctx.runtime, snap.id, ctx.caller.account, ctx.caller.region, req.timeout_minutes
    )
    if fresh and parent is not None:
        _seed_from_parent(ctx, parent, snap)
    with ctx.runtime.db.read() as conn:
        tag_list = tags_for(conn, snap.account, [snap.id]).get(snap.id, [])
    return snap, tag_list


def _seed_from_parent(ctx: Any, parent: Any, snap: Any) -> None:
    """The new snapshot starts with its parent's blocks (R-LIFE-2): shared under the same
    data key (R-KEY-2), re-encrypted otherwise (the parent's lineage is kept)."""
    try:
        copy_blocks(ctx.runtime, parent, snap.id, snap.data_key_id, source_key=lambda: direct.keys.get(ctx, parent),
                    dst_key=lambda: direct.keys.get(ctx, snap), check_source=False)
    except BlockIntegrityError:
        ec2_snapshots.fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data failed its integrity check.")
        raise EbsInternal("The parent snapshot's data failed its integrity check.") from None
    except ServiceError:
        ec2_snapshots.fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data could not be read.")
        raise


# --------------------------------------------------------------------------- write, complete


# How many times a PutSnapshotBlock whose checks changed before its entry was recorded
# (direct.StaleWrite: the KMS key's generation bumped by an alias created, or another
# principal's grant revoked, say) is written again before the client is told to retry.
_WRITE_ATTEMPTS = 4


@dataclass(frozen=True)
class _Write:
    """What a PutSnapshotBlock writes with: its snapshot, the data key (None: unencrypted)
    and the authorization generation it holds at, and the block's verified checksum."""

    snap: Any
    session: Any
    key: Any
    generation: int | None
    checksum: str


def put_block(ctx: Any, snapshot_id: str, index: int, data: bytes, *, data_length: int, checksum: str,
              checksum_algorithm: str | None, progress: int | None) -> str:
    """Store one block of a pending snapshot (its write session open, the checksum
    verified); the block's SHA256 checksum.

    The snapshot's state and its KMS key's authorization are checked in the transaction
    that records the block (direct.write_check), not in a read of their own before it:
    while an upload runs, a block is checked and written from what the upload's earlier
    blocks read (``_remembered_write``: no transaction before the write), and if the check
    fails at the commit, the request reads afresh (``_read_write``) and fails with the
    error a fresh read gives — or, the key's generation having moved for a change that
    took nothing away, writes again."""
    write = _remembered_write(ctx, snapshot_id, index, data, data_length, checksum, checksum_algorithm)
    for _attempt in range(_WRITE_ATTEMPTS):
        if write is None:
            write = _read_write(ctx, snapshot_id, index, data, data_length, checksum, checksum_algorithm)
        try:
            _blocks(ctx).write_block(snapshot_id, index, data, write.key, checksum=write.checksum,  # verified
                                     check=direct.write_check(ctx, write.snap, write.generation))
            break
        except direct.StaleWrite:
            write = None  # read afresh: refused with its error, or written again
        except BlockIntegrityError:
            raise EbsInternal("The block could not be stored.") from None
        except CopyInProgress:  # its parent's blocks are still being re-encrypted into it
            raise EbsThrottled(
                f"The snapshot '{snapshot_id}' is still being prepared from its parent; retry shortly.",
                "RESOURCE_LEVEL_THROTTLE",
            ) from None
    else:
        raise EbsThrottled(
            f"The snapshot '{snapshot_id}' or its KMS key kept changing while the block was written; retry.",
            "RESOURCE_LEVEL_THROTTLE",
        )
    direct.touch(ctx, snapshot_id, write.session)
    if progress is not None and direct.progress.advanced(ctx, snapshot_id, progress):
        ec2_snapshots.set_progress(ctx.runtime, snapshot_id, progress)
    return write.checksum


def _remembered_write(ctx: Any, snapshot_id: str, index: int, data: bytes, data_length: int, checksum: str,
                      checksum_algorithm: str | None) -> _Write | None:
    """The write from what this process remembers of the upload — its session and snapshot
    (direct.sessions), the caller's data key (direct.keys.peek) — with no read; None when
    something is not remembered or the request would fail (``_read_write`` then reads
    afresh and fails it with the error, in the order, a fresh read gives)."""
    session = direct.sessions.get(ctx.runtime, snapshot_id, _now(ctx))
    snap = session.snapshot if session is not None else None
    caller = ctx.caller
    if snap is None or snap.account != caller.account or snap.region != caller.region:
        return None
    if index >= _max_blocks(snap) or data_length != BLOCK_SIZE or len(data) != BLOCK_SIZE or checksum_algorithm != "SHA256":
        return None
    held = direct.keys.peek(ctx, snap)
    if held is None:
        return None
    actual = sha256_b64(data)
    if not hmac.compare_digest(actual, checksum):
        return None
    return _Write(snap, session, held[0], held[1], actual)


def _read_write(ctx: Any, snapshot_id: str, index: int, data: bytes, data_length: int, checksum: str,
                checksum_algorithm: str | None) -> _Write:
    """The write from a fresh read of the snapshot (and its session when not remembered),
    checked in AWS's order; the data key authorized afresh if its generation moved."""
    session = direct.sessions.get(ctx.runtime, snapshot_id, _now(ctx))
    found: list[Any] = []
    generation: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found if session is None else None, generation=generation)
    if session is None:
        session = found[0]
    if snap.state == "pending":  # the upload's next blocks check and write from these (_remembered_write)
        session = direct.sessions.put(ctx.runtime, snapshot_id, session, snapshot=snap) or session
    direct.check_write_session(ctx, snap, session)
    if index >= _max_blocks(snap):
        raise EbsValidation(
            f"The block index {index} is outside the {snap.volume_size} GiB volume (last index {_max_blocks(snap) - 1}).",
            "INVALID_BLOCK",
        )
    if data_length != BLOCK_SIZE or len(data) != BLOCK_SIZE:
        raise EbsValidation(
            f"A block must be exactly {BLOCK_SIZE} bytes (DataLength {data_length}, received {len(data)}).",
            "INVALID_PARAMETER_VALUE",
        )
    if checksum_algorithm != "SHA256":
        raise EbsValidation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
    actual = direct.verified_block_checksum(data, checksum)
    key = direct.keys.get(ctx, snap, generation=generation[0])
    return _Write(snap, session, key, generation[0], actual)


def complete_snapshot(ctx: Any, snapshot_id: str, *, changed_blocks_count: int, checksum: str | None,
                      checksum_algorithm: str, aggregation_method: str) -> None:
    """Seal a pending snapshot once ``changed_blocks_count`` blocks (and, when given, the
    LINEAR aggregate ``checksum``) match what was written; a completed one is left as is."""
    snap = _snapshot(ctx, snapshot_id, owned=True)
    if snap.state == "completed":
        return
    found: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found)
    direct.check_write_session(ctx, snap, found[0])
    blocks = _blocks(ctx)
    key = direct.keys.get(ctx, snap)
    own = blocks.own_blocks(snapshot_id, key)
    if changed_blocks_count != len(own):
        raise EbsValidation(
            f"ChangedBlocksCount is {changed_blocks_count} but {len(own)} blocks were written to the snapshot.",
            "INVALID_PARAMETER_VALUE",
        )
    if checksum is not None:
        if checksum_algorithm != "SHA256":
            raise EbsValidation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
        if aggregation_method != "LINEAR":
            raise EbsValidation("The only supported aggregation method is LINEAR.", "INVALID_PARAMETER_VALUE")
        direct.check_aggregate_checksum((c for _, c in own), checksum)
    ec2_snapshots.complete_snapshot(ctx.runtime, snapshot_id)
    direct.end_session(ctx.runtime, snapshot_id)
    direct.keys.drop(ctx, snapshot_id)


# --------------------------------------------------------------------------- read


def get_block(ctx: Any, snapshot_id: str, index: int, block_token: str) -> tuple[bytes, str]:
    """One block of a completed snapshot, named by a valid token: its bytes and checksum."""
    generation: list[Any] = []
    snap, ref = _snapshot(ctx, snapshot_id, block=index, generation=generation)
    _completed(snap)
    blocks = _blocks(ctx)
    direct.check_block_token(ctx.runtime, snapshot_id, ref, block_token, _now(ctx))
    key = direct.keys.get(ctx, snap, generation=generation[0])
    try:
        data, checksum, now_ref = blocks.read_block_checked(snapshot_id, index, key, ref=ref)
    except BlockIntegrityError:
        log.error("block %d of %s failed its integrity check", index, snapshot_id)
        raise EbsInternal("The block failed its integrity check and cannot be returned.") from None
    if (now_ref.object_key if now_ref else None) != (ref.object_key if ref else None):  # rewritten meanwhile
        raise EbsValidation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
    return data, checksum


@dataclass(frozen=True)
class Page:
    """One page of a block listing: ``items`` as the operation lists them, when their
    tokens expire, the snapshot's size and the token of the next page (if more remain)."""

    items: list[Any]
    expiry: datetime
    volume_size: int
    next_token: str | None


@dataclass(frozen=True)
class ChangedBlock:
    index: int
    first_token: str | None
    second_token: str | None


def _page_start(ctx: Any, scope: str, max_results: int | None, start: int | None,
                next_token: str | None) -> tuple[int, int, datetime]:
    """(page size, first block index, now) of a ListSnapshotBlocks/ListChangedBlocks page:
    the defaults filled, and a NextToken (checked against ``scope`` and its expiry) moving
    the start on."""
    now = _now(ctx)
    first = start or 0
    if next_token:
        first = max(first, direct.read_page_token(ctx.runtime, scope, next_token, now))
    return max_results or DEFAULT_MAX_RESULTS, first, now


def list_blocks(ctx: Any, snapshot_id: str, *, max_results: int | None, start: int | None,
                next_token: str | None) -> Page:
    """The blocks of a completed snapshot from index ``start`` on: (index, block token)."""
    snap = _snapshot(ctx, snapshot_id)
    _completed(snap)
    scope = f"list:{snapshot_id}"
    max_results, start, now = _page_start(ctx, scope, max_results, start, next_token)
    expiry = now + direct.TOKEN_LIFETIME
    refs = [r for r in _blocks(ctx).list_block_refs(snapshot_id) if r.index >= start]
    page, rest = refs[:max_results], refs[max_results:]
    items = [(r.index, direct.block_token(ctx.runtime, snapshot_id, r, expiry)) for r in page]
    token = direct.page_token(ctx.runtime, scope, rest[0].index, expiry) if rest else None
    return Page(items, expiry, int(snap.volume_size), token)


def list_changed_blocks(ctx: Any, first_id: str | None, second_id: str, *, max_results: int | None,
                        start: int | None, next_token: str | None) -> Page:
    """The blocks that differ between two completed snapshots of one lineage (all of
    ``second_id``'s without a first): :class:`ChangedBlock` items."""
    second = _snapshot(ctx, second_id)
    _completed(second)
    if first_id:
        first = _snapshot(ctx, first_id)
        _completed(first)
    scope = f"changed:{first_id or ''}:{second_id}"
    max_results, start, now = _page_start(ctx, scope, max_results, start, next_token)
    try:
        changed = _blocks(ctx).changed_blocks(first_id, second_id)
    except UnrelatedLineage:
        raise EbsValidation(
            f"The snapshots '{first_id}' and '{second_id}' are not in the same lineage.", "UNRELATED_SNAPSHOTS"
        ) from None
    changed = [c for c in changed if c.index >= start]
    page, rest = changed[:max_results], changed[max_results:]
    expiry = now + direct.TOKEN_LIFETIME
    items = [ChangedBlock(c.index,
                          direct.block_token(ctx.runtime, first_id, c.first, expiry)
                          if c.first is not None and first_id else None,
                          direct.block_token(ctx.runtime, second_id, c.second, expiry)
                          if c.second is not None else None)
             for c in page]
    token = direct.page_token(ctx.runtime, scope, rest[0].index, expiry) if rest else None
    return Page(items, expiry, int(second.volume_size), token)
