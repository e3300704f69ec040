"""EBS direct-API machinery: write sessions (Timeout), opaque block and page tokens, the
data-key cache (re-validated against the KMS key's authorization generation on every
use), and the LINEAR aggregated checksum.

The operations in :mod:`ebscrypt.engines.ebs.snapshots` use these and the block engine.

Block and page tokens are opaque: base64 of an expiry and an HMAC (a server secret kept
in the metadata store) over the snapshot id, the block index and the stored object (unique per write),
so a token cannot be forged, moved to another block or snapshot, or outlive a
rewrite of its block.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from ebscrypt.context import Caller, RequestContext, Runtime
from ebscrypt.engines.blocks.crypto import DataKey, sha256_b64
from ebscrypt.engines.blocks.engine import BlockRef, RecordCheck
from ebscrypt.engines.ec2.encryption import data_key_for
from ebscrypt.engines.ec2.snapshot_access import get_snapshot, snapshot_state
from ebscrypt.engines.ec2.snapshots import fail_snapshot
from ebscrypt.errors import EbsAccessDenied, EbsValidation, ServiceError
from ebscrypt.storage.db import as_utc
from ebscrypt.storage.tables.blocks import blk_secrets, ebs_sessions

log = logging.getLogger("ebscrypt.ebs")

TOKEN_LIFETIME = timedelta(hours=24)
KEY_CACHE_SECONDS = 60.0


# --------------------------------------------------------------------------- data keys


class _Unread:
    """Marks a generation not read by the caller yet."""


UNREAD = _Unread()


@dataclass(frozen=True)
class _CachedKey:
    expires: float  # server clock, seconds
    key: DataKey | None
    generation: int  # the KMS key's authorization generation read before authorizing


class _KeyCache:
    """Plaintext data keys of snapshots in use, in memory for a short while only (R-KEY-1).

    A write session would otherwise Decrypt once per block (and audit each). An entry is
    reused only by the principal it was authorized for, for ``KEY_CACHE_SECONDS`` at most,
    and only while the KMS key's authorization generation is the one read before it was
    authorized: every change that can take a use away (DisableKey, ScheduleKeyDeletion, a
    key policy, a grant retired or revoked, an alias; see engines/kms/generations.py) bumps
    it in the metadata, so the next read anywhere — in this process or any other sharing
    the database — authorizes afresh through KMS and is refused at once (R-KEY-7, R-KEY-8).
    That check is one primary-key read per use. Entries are also dropped when a snapshot
    completes. (Attached volumes hold their own key, R-ATTACH-2: not this cache.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (runtime, snapshot id, account, principal ARN) -> entry: one per caller authorized
        self._items: dict[tuple[int, str, str, str], _CachedKey] = {}

    def generation(self, ctx: RequestContext, snap: Any, conn: Connection | None = None) -> int | None:
        """The authorization generation of the snapshot's KMS key (None: unencrypted, or
        the key is gone); with ``conn``, read in the caller's transaction — the one that
        read the snapshot — so a request checks its cached key at no extra transaction."""
        if not snap.encrypted or not snap.kms_key_arn:
            return None
        return ctx.runtime.kms.authorization_generation(snap.kms_key_arn, conn=conn)

    def get(self, ctx: RequestContext, snap: Any, *, generation: int | None | _Unread = UNREAD) -> DataKey | None:
        """The snapshot's data key for the caller. ``generation``: from :meth:`generation`,
        read before this call (read here otherwise)."""
        if not snap.encrypted:
            return None
        ident = (id(ctx.runtime), snap.id, ctx.caller.account, ctx.caller.arn)
        now = ctx.runtime.clock.now().timestamp()  # the server clock: tests may advance it
        # Read before authorizing: a change racing with the authorization below leaves
        # the entry at an older generation, so its next use authorizes again.
        if isinstance(generation, _Unread):
            generation = self.generation(ctx, snap)
        with self._lock:
            hit = self._items.get(ident)
        if hit is not None and generation is not None and hit.generation == generation and hit.expires > now:
            return hit.key
        try:
            key: DataKey = data_key_for(ctx, snap)
        except ServiceError as err:
            with self._lock:
                self._items.pop(ident, None)
            raise EbsAccessDenied(
                f"The KMS key of snapshot '{snap.id}' cannot be used: {err.code}: {err.message}",
                "DEPENDENCY_ACCESS_DENIED",
            ) from None
        with self._lock:
            if len(self._items) > 256:
                self._items = {k: v for k, v in self._items.items() if v.expires > now}
            if generation is not None:
                self._items[ident] = _CachedKey(now + KEY_CACHE_SECONDS, key, generation)
        return key

    def peek(self, ctx: RequestContext, snap: Any) -> tuple[DataKey | None, int | None] | None:
        """The caller's remembered data key of ``snap`` and the authorization generation it
        was authorized at, without reading the current generation: for a use whose
        generation is checked later, in the transaction that commits it (PutSnapshotBlock:
        :func:`write_check`). ``(None, None)`` for an unencrypted snapshot (no key); None
        when nothing usable is remembered (read and authorize through :meth:`get`)."""
        if not snap.encrypted:
            return None, None
        with self._lock:
            hit = self._items.get((id(ctx.runtime), snap.id, ctx.caller.account, ctx.caller.arn))
        if hit is None or hit.expires <= ctx.runtime.clock.now().timestamp():
            return None
        return hit.key, hit.generation

    def drop(self, ctx: RequestContext, snapshot_id: str) -> None:
        """Forget the snapshot's key for every caller."""
        runtime = id(ctx.runtime)
        with self._lock:
            for ident in [i for i in self._items if i[0] == runtime and i[1] == snapshot_id]:
                del self._items[ident]


keys = _KeyCache()


# --------------------------------------------------------------------------- tokens


_secret_lock = threading.Lock()
_secrets: dict[int, bytes] = {}


def _secret(runtime: Runtime) -> bytes:
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


def _mac(runtime: Runtime, *parts: str | int) -> bytes:
    msg = "\x1f".join(str(p) for p in parts).encode()
    return hmac.new(_secret(runtime), msg, hashlib.sha256).digest()[:18]


def block_token(runtime: Runtime, snapshot_id: str, ref: BlockRef, expiry: datetime) -> str:
    exp = int(expiry.timestamp())
    mac = _mac(runtime, "block", snapshot_id, ref.index, ref.object_key or "zero", exp)
    return base64.b64encode(struct.pack(">BI", 1, exp) + mac).decode()


def check_block_token(runtime: Runtime, snapshot_id: str, ref: BlockRef | None, token: str, now: datetime) -> None:
    bad = EbsValidation("The block token is not valid.", "INVALID_BLOCK_TOKEN")
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:
        raise bad from None
    if ref is None or len(raw) != 23 or raw[0] != 1:
        raise bad
    (exp,) = struct.unpack(">I", raw[1:5])
    want = _mac(runtime, "block", snapshot_id, ref.index, ref.object_key or "zero", exp)
    if not hmac.compare_digest(want, raw[5:]) or exp < int(now.timestamp()):
        raise bad


def page_token(runtime: Runtime, scope: str, next_index: int, expiry: datetime) -> str:
    exp = int(expiry.timestamp())
    mac = _mac(runtime, "page", scope, next_index, exp)
    return base64.b64encode(struct.pack(">BII", 1, next_index, exp) + mac).decode()


def read_page_token(runtime: Runtime, scope: str, token: str, now: datetime) -> int:
    bad = EbsValidation("The pagination token is not valid.", "INVALID_PAGE_TOKEN")
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:
        raise bad from None
    if len(raw) != 27 or raw[0] != 1:
        raise bad
    index: int
    exp: int
    _, index, exp = struct.unpack(">BII", raw[:9])
    if not hmac.compare_digest(_mac(runtime, "page", scope, index, exp), raw[9:]) or exp < int(now.timestamp()):
        raise bad
    return index


# --------------------------------------------------------------------------- sessions


class _ProgressMemo:
    """Last Progress recorded per snapshot, so the record is written when it moves by
    5 points (or reaches 99+), not on every block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[int, str], int] = {}

    def advanced(self, ctx: RequestContext, snapshot_id: str, value: int) -> bool:
        ident = (id(ctx.runtime), snapshot_id)
        with self._lock:
            last = self._last.get(ident, -100)
            if value >= last + 5 or (value >= 99 and value > last):
                if len(self._last) > 4096:
                    self._last.clear()
                self._last[ident] = value
                return True
            return False


progress = _ProgressMemo()


_SESSION = select(ebs_sessions).where(ebs_sessions.c.snapshot_id == bindparam("id"))  # built once (issue 15)


def session_row(conn: Connection, snapshot_id: str) -> Any:
    """The StartSnapshot write session of a snapshot (None if it has none). [conn]"""
    return conn.execute(_SESSION, {"id": snapshot_id}).first()


@dataclass(frozen=True)
class SessionFacts:
    """What a PutSnapshotBlock needs of its snapshot's write session; and the snapshot's
    record as last read while ``pending`` (``snapshot``: its account, region, size and
    key never change; its state is checked again where each block is recorded)."""

    last_activity: datetime
    timeout_minutes: int
    snapshot: Any = None


class _SessionMemo:
    """The write sessions of snapshots being uploaded, remembered by this process so that a
    PutSnapshotBlock does not read its session row each time (one statement of the four a
    block cost, issue 15), nor its snapshot (a read transaction per block: the record is
    remembered with the session, ``SessionFacts.snapshot``).

    Sound because of what a session is: it is created by StartSnapshot for a snapshot
    created ``pending``, and deleted only with (or after) the snapshot leaving ``pending``
    — completed, failed on its Timeout, deleted — which every PutSnapshotBlock checks
    afresh in the transaction that records its block (:func:`write_check`): a block is
    never recorded into a snapshot no longer pending, whatever was remembered. Its Timeout
    never changes, and its last activity only moves on (:func:`touch`, in any process), so
    the deadline remembered is never later than the real one: a remembered session is used
    only while that deadline is more than a margin away, and read again after. Forgotten
    at :func:`end_session`.
    """

    MARGIN = timedelta(seconds=60)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[int, str], SessionFacts] = {}

    def get(self, runtime: Runtime, snapshot_id: str, now: datetime) -> SessionFacts | None:
        with self._lock:
            facts = self._items.get((id(runtime), snapshot_id))
        if facts is None or as_utc(facts.last_activity) + timedelta(minutes=facts.timeout_minutes) - self.MARGIN <= now:
            return None
        return facts

    def put(self, runtime: Runtime, snapshot_id: str, row: Any, snapshot: Any = None) -> SessionFacts | None:
        """Remember a session row (or facts) just read, with the snapshot's record when it
        was read ``pending`` in the same request (None: no session, nothing remembered)."""
        if row is None:
            return None
        facts = SessionFacts(as_utc(row.last_activity), int(row.timeout_minutes), snapshot)
        with self._lock:
            if len(self._items) > 4096:
                self._items.clear()
            self._items[(id(runtime), snapshot_id)] = facts
        return facts

    def drop(self, runtime: Runtime, snapshot_id: str) -> None:
        with self._lock:
            self._items.pop((id(runtime), snapshot_id), None)


sessions = _SessionMemo()


def start_session(runtime: Runtime, snapshot_id: str, account: str, region: str, timeout_minutes: int) -> bool:
    """Open the write session of a new snapshot; False if it already has one (retries)."""
    now = runtime.clock.now()
    with runtime.db.begin() as conn:
        if session_row(conn, snapshot_id) is not None:
            return False
        conn.execute(
            insert(ebs_sessions).values(
                snapshot_id=snapshot_id,
                account=account,
                region=region,
                timeout_minutes=timeout_minutes,
                last_activity=now,
            )
        )
    return True  # its Timeout is watched by the reaper scheduled at start-up (engines/ebs schedule_timeouts)


def check_write_session(ctx: RequestContext, snap: Any, session: Any) -> None:
    """The snapshot accepts writes: pending, started here, not past its Timeout."""
    if snap.state != "pending":
        raise EbsValidation(
            f"The snapshot '{snap.id}' is in the '{snap.state}' state and no longer accepts writes.",
            "INVALID_SNAPSHOT_ID",
        )
    if session is None:
        raise EbsValidation(f"The snapshot '{snap.id}' was not started with StartSnapshot.", "INVALID_SNAPSHOT_ID")
    deadline = as_utc(session.last_activity) + timedelta(minutes=session.timeout_minutes)
    if ctx.runtime.clock.now() >= deadline:
        fail_snapshot(ctx.runtime, snap.id, "The snapshot timed out before it was completed.")
        end_session(ctx.runtime, snap.id)
        raise EbsValidation(f"The snapshot '{snap.id}' timed out.", "WRITE_REQUEST_TIMEOUT")


class StaleWrite(Exception):
    """What a PutSnapshotBlock checked before writing its block — the snapshot ``pending``,
    its KMS key's authorization generation — was no longer so when the block was to be
    recorded: nothing was recorded; check afresh (and refuse, or write again)."""


def write_check(ctx: RequestContext, snap: Any, generation: int | None) -> RecordCheck:
    """The condition a PutSnapshotBlock's entry is recorded under, checked in the block
    engine's recording transaction (:class:`RecordCheck`; :class:`StaleWrite` if it fails):
    the snapshot still exists, is ``pending`` and its owner's, and — encrypted — its KMS
    key's authorization generation is still ``generation``, the one the data key in hand
    was authorized at (any change that can take a use of the key away bumps it:
    engines/kms/generations.py). Two primary-key reads per group of blocks of one upload
    (the scope), instead of a read transaction per block before the write."""
    kms = ctx.runtime.kms
    snapshot_id, account = snap.id, snap.account
    arn = snap.kms_key_arn if snap.encrypted else None

    def check(conn: Connection) -> None:
        if snapshot_state(conn, snapshot_id) != ("pending", account):
            raise StaleWrite(snapshot_id)
        if arn is not None and kms.authorization_generation(arn, conn=conn) != generation:
            raise StaleWrite(snapshot_id)

    return RecordCheck((snapshot_id, account, arn, generation), check)


def touch(ctx: RequestContext, snapshot_id: str, session: Any) -> None:
    """Push the Timeout deadline on (written at most every 30 s, not per block)."""
    now = ctx.runtime.clock.now()
    if now - as_utc(session.last_activity) < timedelta(seconds=30):
        return
    with ctx.runtime.db.begin() as conn:
        conn.execute(
            update(ebs_sessions)
            .where(ebs_sessions.c.snapshot_id == snapshot_id, ebs_sessions.c.last_activity < now - timedelta(seconds=30))
            .values(last_activity=now)
        )
    sessions.drop(ctx.runtime, snapshot_id)  # read again (with its new activity) by the next block


def aggregate_checksum(checksums: Any) -> str:
    """LINEAR aggregation: SHA-256 over the concatenated per-block SHA-256 digests, in
    ascending block index, base64."""
    h = hashlib.sha256()
    for c in checksums:
        h.update(base64.b64decode(c))
    return base64.b64encode(h.digest()).decode()


def verified_block_checksum(data: bytes, claimed: str) -> str:
    """The base64 SHA-256 of a block PutSnapshotBlock received, which must be the
    ``x-amz-Checksum`` sent with it (compared in constant time)."""
    actual = sha256_b64(data)
    if not hmac.compare_digest(actual, claimed):
        raise EbsValidation("The checksum of the block data does not match x-amz-Checksum.", "INVALID_BLOCK")
    return actual


def check_aggregate_checksum(checksums: Any, claimed: str) -> None:
    """CompleteSnapshot's LINEAR checksum must be that of the blocks written."""
    if not hmac.compare_digest(aggregate_checksum(checksums), claimed):
        raise EbsValidation("The aggregated checksum does not match the blocks written.", "INVALID_PARAMETER_VALUE")


# --------------------------------------------------------------------------- timeout


def reap_timed_out(runtime: Runtime) -> int:
    """Move every StartSnapshot session past its Timeout to ``error``. Returns how many.

    Runs every few seconds in the block engine's maintenance thread (and may be called
    directly). A session's deadline is its last write plus its Timeout.
    """
    now = runtime.clock.now()
    with runtime.db.read() as conn:
        sessions = conn.execute(select(ebs_sessions)).all()
    failed = 0
    for s in sessions:
        if now < as_utc(s.last_activity) + timedelta(minutes=s.timeout_minutes):
            continue
        try:
            with runtime.db.read() as conn:
                snap = get_snapshot(conn, Caller(account=s.account, region=s.region), s.snapshot_id)
        except ServiceError:
            snap = None
        if snap is not None and snap.state == "pending":
            fail_snapshot(runtime, s.snapshot_id, "The snapshot timed out before it was completed.")
            failed += 1
        end_session(runtime, s.snapshot_id)
    return failed


def end_session(runtime: Runtime, snapshot_id: str) -> None:
    with runtime.db.begin() as conn:
        conn.execute(delete(ebs_sessions).where(ebs_sessions.c.snapshot_id == snapshot_id))
    sessions.drop(runtime, snapshot_id)
