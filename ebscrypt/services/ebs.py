"""EBS direct APIs (rest-json ``ebs``): write snapshots block by block, read them back.

StartSnapshot, PutSnapshotBlock, CompleteSnapshot, GetSnapshotBlock, ListSnapshotBlocks,
ListChangedBlocks (SPEC R-DATA-1, R-LIFE-2, §2). Snapshots here are the EC2 snapshot
records of ``ebscrypt.engines.ec2`` (visible in DescribeSnapshots and back), and their
bytes live in the block engine under the snapshot id.

Block and page tokens are opaque: base64 of an expiry and an HMAC (server secret) over
the snapshot id, the block index and the stored object, so a token cannot be forged,
moved to another block or snapshot, or outlive a rewrite of its block.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, BlockIntegrityError, DataKey
from ebscrypt.engines.blocks.engine import BlockRef, UnrelatedLineage
from ebscrypt.errors import ServiceError
from ebscrypt.services.registry import operation
from ebscrypt.storage.tables.blocks import blk_secrets, ebs_sessions

log = logging.getLogger("ebscrypt.ebs")

BLOCKS_PER_GIB = (1024 * 1024 * 1024) // BLOCK_SIZE
DEFAULT_TIMEOUT_MINUTES = 60
TOKEN_LIFETIME = timedelta(hours=24)
KEY_CACHE_SECONDS = 60.0
DEFAULT_MAX_RESULTS = 10000


# --------------------------------------------------------------------------- errors


def validation(message: str, reason: str | None = None) -> ServiceError:
    fields = {"Reason": reason} if reason else {}
    return ServiceError(message, code="ValidationException", status=400, **fields)


def not_found(snapshot_id: str) -> ServiceError:
    return ServiceError(
        f"The snapshot '{snapshot_id}' does not exist.",
        code="ResourceNotFoundException",
        status=404,
        Reason="SNAPSHOT_NOT_FOUND",
    )


def access_denied(message: str, reason: str = "UNAUTHORIZED_ACCOUNT") -> ServiceError:
    return ServiceError(message, code="AccessDeniedException", status=403, Reason=reason)


def internal(message: str) -> ServiceError:
    return ServiceError(message, code="InternalServerException", status=500)


def _ec2() -> Any:
    import ebscrypt.engines.ec2 as ec2

    return ec2


def _snapshot(ctx: Any, snapshot_id: str, *, owned: bool = False, session: list[Any] | None = None) -> Any:
    """The EC2 snapshot record the caller may see, with EBS's error shapes. With
    ``session`` (a list), its write session row is appended, read in the same transaction."""
    ec2 = _ec2()
    try:
        with ctx.runtime.db.read() as conn:
            snap = ec2.get_snapshot(conn, ctx.caller, snapshot_id)
            if session is not None:
                session.append(
                    conn.execute(select(ebs_sessions).where(ebs_sessions.c.snapshot_id == snapshot_id)).first()
                )
    except ServiceError as err:
        if err.code.endswith("Malformed"):
            raise validation(f"The snapshot ID '{snapshot_id}' is not valid.", "INVALID_SNAPSHOT_ID") from None
        if err.code.startswith("InvalidSnapshot"):
            raise not_found(snapshot_id) from None
        raise
    if owned and not ec2.snapshot_is_owned(snap, ctx.caller):
        raise access_denied(f"The snapshot '{snapshot_id}' is not owned by account {ctx.caller.account}.")
    return snap


def _completed(snap: Any) -> None:
    if snap.state != "completed":
        raise validation(
            f"The snapshot '{snap.id}' is in the '{snap.state}' state; only completed snapshots can be read.",
            "INVALID_SNAPSHOT_ID",
        )


# --------------------------------------------------------------------------- data keys


class _KeyCache:
    """Plaintext data keys of snapshots in use, in memory for a short while only (R-KEY-1).

    A write session would otherwise Decrypt once per block. Entries expire after
    ``KEY_CACHE_SECONDS`` and are dropped when a snapshot completes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[int, str], tuple[float, DataKey | None, str]] = {}

    def get(self, ctx: Any, snap: Any) -> DataKey | None:
        if not snap.encrypted:
            return None
        ident = (id(ctx.runtime), snap.id)
        now = ctx.runtime.clock.now().timestamp()  # the server clock: tests may advance it
        with self._lock:
            hit = self._items.get(ident)
            if hit is not None and hit[0] > now and hit[2] == ctx.caller.account:
                return hit[1]
        try:
            key = _ec2().data_key_for(ctx, snap)
        except ServiceError as err:
            raise access_denied(
                f"The KMS key of snapshot '{snap.id}' cannot be used: {err.code}: {err.message}",
                "DEPENDENCY_ACCESS_DENIED",
            ) from None
        with self._lock:
            if len(self._items) > 256:
                self._items = {k: v for k, v in self._items.items() if v[0] > now}
            self._items[ident] = (now + KEY_CACHE_SECONDS, key, ctx.caller.account)
        # (a cache hit skips KMS: a key disabled or deleted meanwhile stops working within
        # KEY_CACHE_SECONDS)
        return key

    def drop(self, ctx: Any, snapshot_id: str) -> None:
        with self._lock:
            self._items.pop((id(ctx.runtime), snapshot_id), None)


_keys = _KeyCache()


# --------------------------------------------------------------------------- tokens


_secret_lock = threading.Lock()
_secrets: dict[int, bytes] = {}


def _secret(runtime: Any) -> bytes:
    ident = id(runtime)
    with _secret_lock:
        if ident in _secrets:
            return _secrets[ident]
        with runtime.db.begin() as conn:
            row = conn.execute(select(blk_secrets.c.value).where(blk_secrets.c.name == "ebs-token")).first()
            if row is None:
                value = os.urandom(32)
                conn.execute(insert(blk_secrets).values(name="ebs-token", value=value))
            else:
                value = bytes(row.value)
        _secrets[ident] = value
        return value


def _mac(runtime: Any, *parts: str | int) -> bytes:
    msg = "\x1f".join(str(p) for p in parts).encode()
    return hmac.new(_secret(runtime), msg, hashlib.sha256).digest()[:18]


def block_token(runtime: Any, snapshot_id: str, ref: BlockRef, expiry: datetime) -> str:
    exp = int(expiry.timestamp())
    mac = _mac(runtime, "block", snapshot_id, ref.index, ref.object_key or "zero", ref.layer_id, exp)
    return base64.b64encode(struct.pack(">BI", 1, exp) + mac).decode()


def check_block_token(runtime: Any, snapshot_id: str, ref: BlockRef | None, token: str, now: datetime) -> None:
    bad = validation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:
        raise bad from None
    if ref is None or len(raw) != 23 or raw[0] != 1:
        raise bad
    (exp,) = struct.unpack(">I", raw[1:5])
    want = _mac(runtime, "block", snapshot_id, ref.index, ref.object_key or "zero", ref.layer_id, exp)
    if not hmac.compare_digest(want, raw[5:]) or exp < int(now.timestamp()):
        raise bad


def page_token(runtime: Any, scope: str, next_index: int, expiry: datetime) -> str:
    exp = int(expiry.timestamp())
    mac = _mac(runtime, "page", scope, next_index, exp)
    return base64.b64encode(struct.pack(">BII", 1, next_index, exp) + mac).decode()


def read_page_token(runtime: Any, scope: str, token: str, now: datetime) -> int:
    bad = validation("The pagination token is not valid.", "INVALID_PAGE_TOKEN")
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:
        raise bad from None
    if len(raw) != 27 or raw[0] != 1:
        raise bad
    _, index, exp = struct.unpack(">BII", raw[:9])
    if not hmac.compare_digest(_mac(runtime, "page", scope, index, exp), raw[9:]) or exp < int(now.timestamp()):
        raise bad
    return index


# --------------------------------------------------------------------------- helpers


def _blocks(ctx: Any) -> Any:
    blocks = ctx.runtime.blocks
    if blocks is None:
        raise internal("The block store is not available.")
    return blocks


def _now(ctx: Any) -> datetime:
    return ctx.runtime.clock.now()


class _ProgressMemo:
    """Last Progress recorded per snapshot, so the record is written when it moves by
    5 points (or reaches 99+), not on every block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[int, str], int] = {}

    def advanced(self, ctx: Any, snapshot_id: str, value: int) -> bool:
        ident = (id(ctx.runtime), snapshot_id)
        with self._lock:
            last = self._last.get(ident, -100)
            if value >= last + 5 or (value >= 99 and value > last):
                if len(self._last) > 4096:
                    self._last.clear()
                self._last[ident] = value
                return True
            return False


_progress = _ProgressMemo()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _check_write_session(ctx: Any, snap: Any, session: Any) -> None:
    """The snapshot accepts writes: pending, started here, not past its Timeout."""
    if snap.state != "pending":
        raise validation(
            f"The snapshot '{snap.id}' is in the '{snap.state}' state and no longer accepts writes.",
            "INVALID_SNAPSHOT_ID",
        )
    if session is None:
        raise validation(f"The snapshot '{snap.id}' was not started with StartSnapshot.", "INVALID_SNAPSHOT_ID")
    deadline = _aware(session.last_activity) + timedelta(minutes=session.timeout_minutes)
    if _now(ctx) >= deadline:
        _ec2().fail_snapshot(ctx.runtime, snap.id, "The snapshot timed out before it was completed.")
        _end_session(ctx.runtime, snap.id)
        raise validation(f"The snapshot '{snap.id}' timed out.", "WRITE_REQUEST_TIMEOUT")


def _touch(ctx: Any, snapshot_id: str, session: Any) -> None:
    """Push the Timeout deadline on (written at most every 30 s, not per block)."""
    now = _now(ctx)
    if now - _aware(session.last_activity) < timedelta(seconds=30):
        return
    with ctx.runtime.db.begin() as conn:
        conn.execute(
            update(ebs_sessions)
            .where(ebs_sessions.c.snapshot_id == snapshot_id, ebs_sessions.c.last_activity < now - timedelta(seconds=30))
            .values(last_activity=now)
        )


def _max_blocks(snap: Any) -> int:
    return int(snap.volume_size) * BLOCKS_PER_GIB


def _page(params: dict[str, Any]) -> tuple[int, int]:
    max_results = int(params.get("MaxResults") or DEFAULT_MAX_RESULTS)
    start = int(params.get("StartingBlockIndex") or 0)
    return max_results, start


# --------------------------------------------------------------------------- operations


@operation("ebs", "StartSnapshot")
def start_snapshot(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    ec2 = _ec2()
    volume_size = int(params["VolumeSize"])
    if volume_size > 65536:
        raise validation("The volume size must be at most 65536 GiB.", "INVALID_VOLUME_SIZE")
    parent_id = params.get("ParentSnapshotId")
    encrypted = params.get("Encrypted")
    if parent_id and encrypted is not None:
        raise validation("You can't specify ParentSnapshotId and Encrypted in the same request.", "INVALID_PARAMETER_VALUE")
    if encrypted is False:
        with ctx.runtime.db.read() as conn:
            ebd = ec2.get_settings(conn, ctx.caller.account, ctx.caller.region).ebd
        if ebd:
            raise validation(
                "Encryption by default is enabled for this account: a snapshot cannot be started unencrypted.",
                "INVALID_PARAMETER_VALUE",
            )
    kms_key = params.get("KmsKeyArn")
    if kms_key and encrypted is None:
        encrypted = True  # a KmsKeyArn asks for encryption under that key (with a parent too)
    tags = params.get("Tags") or []
    for tag in tags:
        if not tag.get("Key") or str(tag.get("Key", "")).startswith("aws:"):
            raise validation("Tag keys must be non-empty and must not start with 'aws:'.", "INVALID_TAG")
    parent = _snapshot(ctx, parent_id) if parent_id else None
    if parent is not None:
        _completed(parent)
        if parent.volume_size > volume_size:
            raise validation(
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
    except ServiceError as err:
        if err.code == "InvalidParameterDependency":
            raise validation(err.message, "INVALID_PARAMETER_VALUE") from None
        if err.code == "ValidationException" and err.fields.get("Reason") not in _VALIDATION_REASONS:
            raise validation(err.message, "INVALID_PARAMETER_VALUE") from None
        raise
    blocks = _blocks(ctx)
    now = _now(ctx)
    with ctx.runtime.db.begin() as conn:
        fresh = conn.execute(select(ebs_sessions.c.snapshot_id).where(ebs_sessions.c.snapshot_id == snap.id)).first() is None
        if fresh and snap.state == "pending":
            conn.execute(
                insert(ebs_sessions).values(
                    snapshot_id=snap.id,
                    account=ctx.caller.account,
                    region=ctx.caller.region,
                    timeout_minutes=timeout,
                    last_activity=now,
                )
            )
    blocks.add_periodic("ebs-timeouts", lambda: reap_timed_out(ctx.runtime), 2.0)
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


def _seed_from_parent(ctx: Any, blocks: Any, parent: Any, snap: Any) -> None:
    """The new snapshot starts with its parent's blocks (R-LIFE-2): shared under the same
    data key (R-KEY-2), re-encrypted otherwise (the parent's lineage is kept)."""
    try:
        if parent.data_key_id == snap.data_key_id:
            blocks.share(parent.id, snap.id)
        else:
            src_key = _keys.get(ctx, parent)
            dst_key = _keys.get(ctx, snap)
            blocks.reencrypt(parent.id, src_key, snap.id, dst_key)
    except ServiceError:
        _ec2().fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data could not be read.")
        raise
    except BlockIntegrityError:
        _ec2().fail_snapshot(ctx.runtime, snap.id, "The parent snapshot's data failed its integrity check.")
        raise internal("The parent snapshot's data failed its integrity check.") from None


@operation("ebs", "PutSnapshotBlock")
def put_snapshot_block(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    index = int(params["BlockIndex"])
    data: bytes = params.get("BlockData") or b""
    found: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found)
    _check_write_session(ctx, snap, found[0])
    if index >= _max_blocks(snap):
        raise validation(
            f"The block index {index} is outside the {snap.volume_size} GiB volume (last index {_max_blocks(snap) - 1}).",
            "INVALID_BLOCK",
        )
    if int(params["DataLength"]) != BLOCK_SIZE or len(data) != BLOCK_SIZE:
        raise validation(
            f"A block must be exactly {BLOCK_SIZE} bytes (DataLength {params['DataLength']}, received {len(data)}).",
            "INVALID_PARAMETER_VALUE",
        )
    if params.get("ChecksumAlgorithm") != "SHA256":
        raise validation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
    actual = base64.b64encode(hashlib.sha256(data).digest()).decode()
    if not hmac.compare_digest(actual, params["Checksum"]):
        raise validation("The checksum of the block data does not match x-amz-Checksum.", "INVALID_BLOCK")
    key = _keys.get(ctx, snap)
    try:
        _blocks(ctx).write_block(snapshot_id, index, data, key)
    except BlockIntegrityError:
        raise internal("The block could not be stored.") from None
    _touch(ctx, snapshot_id, found[0])
    progress = params.get("Progress")
    if progress is not None and _progress.advanced(ctx, snapshot_id, int(progress)):
        from ebscrypt.engines.ec2.snapshots import set_progress

        set_progress(ctx.runtime, snapshot_id, int(progress))
    return {"Checksum": actual, "ChecksumAlgorithm": "SHA256"}


@operation("ebs", "CompleteSnapshot")
def complete_snapshot(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    snap = _snapshot(ctx, snapshot_id, owned=True)
    if snap.state == "completed":
        return {"Status": "completed"}
    found: list[Any] = []
    snap = _snapshot(ctx, snapshot_id, owned=True, session=found)
    _check_write_session(ctx, snap, found[0])
    blocks = _blocks(ctx)
    key = _keys.get(ctx, snap)
    own = blocks.own_blocks(snapshot_id, key)
    expected = int(params["ChangedBlocksCount"])
    if expected != len(own):
        raise validation(
            f"ChangedBlocksCount is {expected} but {len(own)} blocks were written to the snapshot.",
            "INVALID_PARAMETER_VALUE",
        )
    checksum = params.get("Checksum")
    if checksum is not None:
        if params.get("ChecksumAlgorithm", "SHA256") != "SHA256":
            raise validation("The only supported checksum algorithm is SHA256.", "INVALID_PARAMETER_VALUE")
        if params.get("ChecksumAggregationMethod", "LINEAR") != "LINEAR":
            raise validation("The only supported aggregation method is LINEAR.", "INVALID_PARAMETER_VALUE")
        if not hmac.compare_digest(aggregate_checksum(c for _, c in own), checksum):
            raise validation("The aggregated checksum does not match the blocks written.", "INVALID_PARAMETER_VALUE")
    _ec2().complete_snapshot(ctx.runtime, snapshot_id)
    _end_session(ctx.runtime, snapshot_id)
    _keys.drop(ctx, snapshot_id)
    return {"Status": "completed"}


def aggregate_checksum(checksums: Any) -> str:
    """LINEAR aggregation: SHA-256 over the concatenated per-block SHA-256 digests, in
    ascending block index, base64."""
    h = hashlib.sha256()
    for c in checksums:
        h.update(base64.b64decode(c))
    return base64.b64encode(h.digest()).decode()


@operation("ebs", "GetSnapshotBlock")
def get_snapshot_block(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    index = int(params["BlockIndex"])
    snap = _snapshot(ctx, snapshot_id)
    _completed(snap)
    blocks = _blocks(ctx)
    ref = blocks.block_ref(snapshot_id, index)
    check_block_token(ctx.runtime, snapshot_id, ref, params["BlockToken"], _now(ctx))
    key = _keys.get(ctx, snap)
    try:
        data, checksum, now_ref = blocks.read_block_checked(snapshot_id, index, key, ref=ref)
    except BlockIntegrityError:
        log.error("block %d of %s failed its integrity check", index, snapshot_id)
        raise internal("The block failed its integrity check and cannot be returned.") from None
    if now_ref != ref:  # rewritten between token check and read: the token named the old block
        raise validation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
    return {"BlockData": data, "DataLength": len(data), "Checksum": checksum, "ChecksumAlgorithm": "SHA256"}


@operation("ebs", "ListSnapshotBlocks")
def list_snapshot_blocks(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    snapshot_id = params["SnapshotId"]
    snap = _snapshot(ctx, snapshot_id)
    _completed(snap)
    max_results, start = _page(params)
    now = _now(ctx)
    scope = f"list:{snapshot_id}"
    if params.get("NextToken"):
        start = max(start, read_page_token(ctx.runtime, scope, params["NextToken"], now))
    expiry = now + TOKEN_LIFETIME
    refs = [r for r in _blocks(ctx).list_block_refs(snapshot_id) if r.index >= start]
    page, rest = refs[:max_results], refs[max_results:]
    out: dict[str, Any] = {
        "Blocks": [{"BlockIndex": r.index, "BlockToken": block_token(ctx.runtime, snapshot_id, r, expiry)} for r in page],
        "ExpiryTime": expiry,
        "VolumeSize": int(snap.volume_size),
        "BlockSize": BLOCK_SIZE,
    }
    if rest:
        out["NextToken"] = page_token(ctx.runtime, scope, rest[0].index, expiry)
    return out


@operation("ebs", "ListChangedBlocks")
def list_changed_blocks(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
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
        start = max(start, read_page_token(ctx.runtime, scope, params["NextToken"], now))
    try:
        changed = _blocks(ctx).changed_blocks(first_id, second_id)
    except UnrelatedLineage:
        raise validation(
            f"The snapshots '{first_id}' and '{second_id}' are not in the same lineage.", "UNRELATED_SNAPSHOTS"
        ) from None
    changed = [c for c in changed if c.index >= start]
    page, rest = changed[:max_results], changed[max_results:]
    expiry = now + TOKEN_LIFETIME
    items = []
    for c in page:
        item: dict[str, Any] = {"BlockIndex": c.index}
        if c.first is not None and first_id:
            item["FirstBlockToken"] = block_token(ctx.runtime, first_id, c.first, expiry)
        if c.second is not None:
            item["SecondBlockToken"] = block_token(ctx.runtime, second_id, c.second, expiry)
        items.append(item)
    out: dict[str, Any] = {
        "ChangedBlocks": items,
        "ExpiryTime": expiry,
        "VolumeSize": int(second.volume_size),
        "BlockSize": BLOCK_SIZE,
    }
    if rest:
        out["NextToken"] = page_token(ctx.runtime, scope, rest[0].index, expiry)
    return out


# --------------------------------------------------------------------------- timeout


def reap_timed_out(runtime: Any) -> int:
    """Move every StartSnapshot session past its Timeout to ``error``. Returns how many.

    Runs every few seconds in the block engine's maintenance thread (and may be called
    directly). A session's deadline is its last write plus its Timeout.
    """
    from ebscrypt.context import Caller

    ec2 = _ec2()
    now = runtime.clock.now()
    with runtime.db.read() as conn:
        sessions = conn.execute(select(ebs_sessions)).all()
    failed = 0
    for s in sessions:
        if now < _aware(s.last_activity) + timedelta(minutes=s.timeout_minutes):
            continue
        try:
            with runtime.db.read() as conn:
                snap = ec2.get_snapshot(conn, Caller(account=s.account, region=s.region), s.snapshot_id)
        except ServiceError:
            snap = None
        if snap is not None and snap.state == "pending":
            ec2.fail_snapshot(runtime, s.snapshot_id, "The snapshot timed out before it was completed.")
            failed += 1
        _end_session(runtime, s.snapshot_id)
    return failed


def _end_session(runtime: Any, snapshot_id: str) -> None:
    with runtime.db.begin() as conn:
        conn.execute(delete(ebs_sessions).where(ebs_sessions.c.snapshot_id == snapshot_id))
