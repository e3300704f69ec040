"""EBS direct APIs (rest-json ``ebs``): write snapshots block by block, read them back.

StartSnapshot, PutSnapshotBlock, CompleteSnapshot, GetSnapshotBlock, ListSnapshotBlocks,
ListChangedBlocks (SPEC R-DATA-1, R-LIFE-2, §2). Snapshots here are the EC2 snapshot
records of ``ebscrypt.engines.ec2`` (visible in DescribeSnapshots and back), and their
bytes live in the block engine under the snapshot id. Write sessions (Timeout), tokens,
the data-key cache and the LINEAR checksum are in :mod:`ebscrypt.engines.blocks.direct`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines import ec2
from ebscrypt.engines.blocks import direct
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, BlockIntegrityError
from ebscrypt.engines.blocks.engine import CopyInProgress, UnrelatedLineage
from ebscrypt.engines.ec2 import snapshots as ec2_snapshots
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
from ebscrypt.services.registry import operation

log = logging.getLogger("ebscrypt.ebs")

BLOCKS_PER_GIB = (1024 * 1024 * 1024) // BLOCK_SIZE
DEFAULT_TIMEOUT_MINUTES = 60
DEFAULT_MAX_RESULTS = 10000


def _snapshot(
    ctx: RequestContext, snapshot_id: str, *, owned: bool = False, session: list[Any] | None = None, block: int | None = None,
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
            snap = ec2.get_snapshot(conn, ctx.caller, snapshot_id)
            if session is not None:
                session.append(direct.session_row(conn, snapshot_id))
            if generation is not None:
                generation.append(direct.keys.generation(ctx, snap, conn))
            if block is not None:
                ref = _blocks(ctx).block_ref(snapshot_id, block, conn=conn)
    except Malformed:
        raise EbsValidation(f"The snapshot ID '{snapshot_id}' is not valid.", "INVALID_SNAPSHOT_ID") from None
    except NotFound as err:
        if err.kind != "InvalidSnapshot":
            raise
        raise EbsNotFound(snapshot_id) from None
    if owned and not ec2.snapshot_is_owned(snap, ctx.caller):
        raise EbsAccessDenied(f"The snapshot '{snapshot_id}' is not owned by account {ctx.caller.account}.")
    return (snap, ref) if block is not None else snap


def _completed(snap: Any) -> None:
    if snap.state != "completed":
        raise EbsValidation(
            f"The snapshot '{snap.id}' is in the '{snap.state}' state; only completed snapshots can be read.",
            "INVALID_SNAPSHOT_ID",
        )


# --------------------------------------------------------------------------- helpers


def _blocks(ctx: RequestContext) -> Any:
    blocks = ctx.runtime.blocks
    if blocks is None:
        raise EbsInternal("The block store is not available.")
    return blocks


def _now(ctx: RequestContext) -> datetime:
    return ctx.runtime.clock.now()


def _max_blocks(snap: Any) -> int:
    return int(snap.volume_size) * BLOCKS_PER_GIB


def _page(params: dict[str, Any]) -> tuple[int, int]:
    max_results = int(params.get("MaxResults") or DEFAULT_MAX_RESULTS)
    start = int(params.get("StartingBlockIndex") or 0)
    return max_results, start


# --------------------------------------------------------------------------- operations


@operation("ebs", "StartSnapshot")
def start_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    volume_size = int(params["VolumeSize"])
    if volume_size > 65536:
        raise EbsValidation("The volume size must be at most 65536 GiB.", "INVALID_VOLUME_SIZE")
    parent_id = params.get("ParentSnapshotId")
    encrypted = params.get("Encrypted")
    if parent_id and encrypted is not None:
        raise EbsValidation("You can't specify ParentSnapshotId and Encrypted in the same request.", "INVALID_PARAMETER_VALUE")
    if encrypted is False:
        with ctx.runtime.db.read() as conn:
            ebd = ec2.get_settings(conn, ctx.caller.account, ctx.caller.region).ebd
        if ebd:
            raise EbsValidation(
                "Encryption by default is enabled for this account: a snapshot cannot be started unencrypted.",
                "INVALID_PARAMETER_VALUE",
            )
    kms_key = params.get("KmsKeyArn")
    if kms_key and encrypted is None:
        encrypted = True  # a KmsKeyArn asks for encryption under that key (with a parent too)
    tags = params.get("Tags") or []
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
    timeout = int(params.get("Timeout") or DEFAULT_TIMEOUT_MINUTES)
    try:
        snap = ec2.new_snapshot_record(
            ctx,
            volume_size=volume_size,
            encrypted=encrypted,
            kms_key_id=kms_key,
            parent_snapshot_id=parent_id,
            description=params.get("Description"),
            client_token=params.get("ClientToken"),
            tags=tags or None,
        )
    except InvalidParameterDependency as err:  # R-OUT-1: a KmsKeyArn without encryption
        raise EbsValidation(err.message, "INVALID_PARAMETER_VALUE") from None
    except ServiceError as err:
        # A ValidationException with a Reason EBS does not define (the EC2 record's own).
        if err.code == "ValidationException" and err.fields.get("Reason") not in _VALIDATION_REASONS:
            raise EbsValidation(err.message, "INVALID_PARAMETER_VALUE") from None
        raise
    blocks = _blocks(ctx)
    # A retried ClientToken finds its session (or its finished snapshot): no second seeding.
    fresh = snap.state == "pending" and direct.start_session(
        ctx.runtime, snap.id, ctx.caller.account, ctx.caller.region, timeout
    )
    if fresh and parent is not None:
        _seed_from_parent(ctx, blocks, parent, snap)
    with ctx.runtime.db.read() as conn:
        tag_list = ec2.tags_for(conn, snap.account, [snap.id]).get(snap.id, [])
    out: dict[str, Any] = {
        "SnapshotId": snap.id,
        "OwnerId": snap.account,
        "Status": snap.state if snap.state in ("pending", "completed", "error") else "pending",
        "StartTime": snap.start_time,
        "VolumeSize": int(snap.volume_size),
        "BlockSize": BLOCK_SIZE,
        "SseType": "sse-kms" if snap.encrypted else "none",
    }
    if snap.description:
        out["Description"] = snap.description
    if tag_list:
        out["Tags"] = tag_list
    if snap.parent_id:
        out["ParentSnapshotId"] = snap.parent_id
    if snap.encrypted and snap.kms_key_arn:
        out["KmsKeyArn"] = snap.kms_key_arn
    return out


_VALIDATION_REASONS = {
    "INVALID_CUSTOMER_KEY", "INVALID_PAGE_TOKEN", "INVALID_BLOCK_TOKEN", "INVALID_GRANT_TOKEN",
    "INVALID_SNAPSHOT_ID", "UNRELATED_SNAPSHOTS", "INVALID_BLOCK", "INVALID_CONTENT_ENCODING",
    "INVALID_TAG", "INVALID_DEPENDENCY_REQUEST", "INVALID_PARAMETER_VALUE", "INVALID_VOLUME_SIZE",
    "CONFLICTING_BLOCK_UPDATE", "INVALID_IMAGE_ID", "WRITE_REQUEST_TIMEOUT",
}


def _seed_from_parent(ctx: RequestContext, blocks: Any, parent: Any, snap: Any) -> None:
    """The new snapshot starts with its parent's blocks (R-LIFE-2): shared under the same
    data key (R-KEY-2), re-encrypted otherwise (the parent's lineage is kept)."""
    try:
        if parent.data_key_id == snap.data_key_id:
            blocks.share(parent.id, snap.id)
        else:
            src_key = direct.keys.get(ctx, parent)
            dst_key = direct.keys.get(ctx, snap)
            blocks.reencrypt(parent.id, src_key, snap.id, dst_key)
    except BlockIntegrityError:
        ec2.fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data failed its integrity check.")
        raise EbsInternal("The parent snapshot's data failed its integrity check.") from None
    except ServiceError:
        ec2.fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data could not be read.")
        raise


@operation("ebs", "PutSnapshotBlock")
def put_snapshot_block(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    index = int(params["BlockIndex"])
    data: bytes = params.get("BlockData") or b""
    found: list[Any] = []
    generation: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found, generation=generation)
    direct.check_write_session(ctx, snap, found[0])
    if index >= _max_blocks(snap):
        raise EbsValidation(
            f"The block index {index} is outside the {snap.volume_size} GiB volume (last index {_max_blocks(snap) - 1}).",
            "INVALID_BLOCK",
        )
    if int(params["DataLength"]) != BLOCK_SIZE or len(data) != BLOCK_SIZE:
        raise EbsValidation(
            f"A block must be exactly {BLOCK_SIZE} bytes (DataLength {params['DataLength']}, received {len(data)}).",
            "INVALID_PARAMETER_VALUE",
        )
    if params.get("ChecksumAlgorithm") != "SHA256":
        raise EbsValidation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
    actual = direct.verified_block_checksum(data, params["Checksum"])
    key = direct.keys.get(ctx, snap, generation=generation[0])
    try:
        _blocks(ctx).write_block(snapshot_id, index, data, key, checksum=actual)  # verified just above
    except BlockIntegrityError:
        raise EbsInternal("The block could not be stored.") from None
    except CopyInProgress:  # its parent's blocks are still being re-encrypted into it
        raise EbsThrottled(
            f"The snapshot '{snapshot_id}' is still being prepared from its parent; retry shortly.",
            "RESOURCE_LEVEL_THROTTLE",
        ) from None
    direct.touch(ctx, snapshot_id, found[0])
    progress = params.get("Progress")
    if progress is not None and direct.progress.advanced(ctx, snapshot_id, int(progress)):
        ec2_snapshots.set_progress(ctx.runtime, snapshot_id, int(progress))
    return {"Checksum": actual, "ChecksumAlgorithm": "SHA256"}


@operation("ebs", "CompleteSnapshot")
def complete_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    snap = _snapshot(ctx, snapshot_id, owned=True)
    if snap.state == "completed":
        return {"Status": "completed"}
    found: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found)
    direct.check_write_session(ctx, snap, found[0])
    blocks = _blocks(ctx)
    key = direct.keys.get(ctx, snap)
    own = blocks.own_blocks(snapshot_id, key)
    expected = int(params["ChangedBlocksCount"])
    if expected != len(own):
        raise EbsValidation(
            f"ChangedBlocksCount is {expected} but {len(own)} blocks were written to the snapshot.",
            "INVALID_PARAMETER_VALUE",
        )
    checksum = params.get("Checksum")
    if checksum is not None:
        if params.get("ChecksumAlgorithm", "SHA256") != "SHA256":
            raise EbsValidation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
        if params.get("ChecksumAggregationMethod", "LINEAR") != "LINEAR":
            raise EbsValidation("The only supported aggregation method is LINEAR.", "INVALID_PARAMETER_VALUE")
        direct.check_aggregate_checksum((c for _, c in own), checksum)
    ec2.complete_snapshot(ctx.runtime, snapshot_id)
    direct.end_session(ctx.runtime, snapshot_id)
    direct.keys.drop(ctx, snapshot_id)
    return {"Status": "completed"}


@operation("ebs", "GetSnapshotBlock")
def get_snapshot_block(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    index = int(params["BlockIndex"])
    generation: list[Any] = []
    snap, ref = _snapshot(ctx, snapshot_id, block=index, generation=generation)
    _completed(snap)
    blocks = _blocks(ctx)
    direct.check_block_token(ctx.runtime, snapshot_id, ref, params["BlockToken"], _now(ctx))
    key = direct.keys.get(ctx, snap, generation=generation[0])
    try:
        data, checksum, now_ref = blocks.read_block_checked(snapshot_id, index, key, ref=ref)
    except BlockIntegrityError:
        log.error("block %d of %s failed its integrity check", index, snapshot_id)
        raise EbsInternal("The block failed its integrity check and cannot be returned.") from None
    if (now_ref.object_key if now_ref else None) != (ref.object_key if ref else None):  # rewritten meanwhile
        raise EbsValidation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
    return {"BlockData": data, "DataLength": len(data), "Checksum": checksum, "ChecksumAlgorithm": "SHA256"}


@operation("ebs", "ListSnapshotBlocks")
def list_snapshot_blocks(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    snap = _snapshot(ctx, snapshot_id)
    _completed(snap)
    max_results, start = _page(params)
    now = _now(ctx)
    scope = f"list:{snapshot_id}"
    if params.get("NextToken"):
        start = max(start, direct.read_page_token(ctx.runtime, scope, params["NextToken"], now))
    expiry = now + direct.TOKEN_LIFETIME
    refs = [r for r in _blocks(ctx).list_block_refs(snapshot_id) if r.index >= start]
    page, rest = refs[:max_results], refs[max_results:]
    out: dict[str, Any] = {
        "Blocks": [{"BlockIndex": r.index, "BlockToken": direct.block_token(ctx.runtime, snapshot_id, r, expiry)} for r in page],
        "ExpiryTime": expiry,
        "VolumeSize": int(snap.volume_size),
        "BlockSize": BLOCK_SIZE,
    }
    if rest:
        out["NextToken"] = direct.page_token(ctx.runtime, scope, rest[0].index, expiry)
    return out


@operation("ebs", "ListChangedBlocks")
def list_changed_blocks(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    second_id = params["SecondSnapshotId"]
    first_id = params.get("FirstSnapshotId")
    second = _snapshot(ctx, second_id)
    _completed(second)
    if first_id:
        first = _snapshot(ctx, first_id)
        _completed(first)
    max_results, start = _page(params)
    now = _now(ctx)
    scope = f"changed:{first_id or ''}:{second_id}"
    if params.get("NextToken"):
        start = max(start, direct.read_page_token(ctx.runtime, scope, params["NextToken"], now))
    try:
        changed = _blocks(ctx).changed_blocks(first_id, second_id)
    except UnrelatedLineage:
        raise EbsValidation(
            f"The snapshots '{first_id}' and '{second_id}' are not in the same lineage.", "UNRELATED_SNAPSHOTS"
        ) from None
    changed = [c for c in changed if c.index >= start]
    page, rest = changed[:max_results], changed[max_results:]
    expiry = now + direct.TOKEN_LIFETIME
    items = []
    for c in page:
        item: dict[str, Any] = {"BlockIndex": c.index}
        if c.first is not None and first_id:
            item["FirstBlockToken"] = direct.block_token(ctx.runtime, first_id, c.first, expiry)
        if c.second is not None:
            item["SecondBlockToken"] = direct.block_token(ctx.runtime, second_id, c.second, expiry)
        items.append(item)
    out: dict[str, Any] = {
        "ChangedBlocks": items,
        "ExpiryTime": expiry,
        "VolumeSize": int(second.volume_size),
        "BlockSize": BLOCK_SIZE,
    }
    if rest:
        out["NextToken"] = direct.page_token(ctx.runtime, scope, rest[0].index, expiry)
    return out


