"""EBS volumes: validation, creation (empty or from a snapshot), attachments, deletion.

Creation follows the one create protocol (:mod:`.creation`), so KMS is never called inside
a write transaction: :func:`prepare_volume` validates, applies §2 and makes the data key;
:func:`insert_volume` writes the row and either finishes it in the same transaction
(metadata only: empty, the same data key as its snapshot — a shared block reference — or a
key problem: ``available`` / ``error``) or submits the ``ec2_volume_create`` job, which
moves the data (re-encrypt: R-KEY-2) and makes the volume ``available`` (or ``in-use``
when created attached, RunInstances), or ``error`` (R-KEY-6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Integer, bindparam, delete, insert, select, update

from ebscrypt.context import Caller, RequestContext, Runtime
from ebscrypt.domain import regions
from ebscrypt.engines.attach import engine as attach_io
from ebscrypt.engines.blocks.engine import CopyCancelled
from ebscrypt.engines.blocks.errors import BlockError
from ebscrypt.engines.ec2.account import AccountSettings, get_settings
from ebscrypt.engines.ec2.copy_source import SourceSnapshotGone, copy_blocks
from ebscrypt.engines.ec2.encryption import (
    EncryptionPlan,
    WrappedDataKey,
    data_key_for,
    prepare_data_key,
    resolve_encryption,
    source_key_refusal,
)
from ebscrypt.engines.ec2.ids import check_id, job_ctx, new_id
from ebscrypt.engines.ec2.records import Attachment, Snapshot, StoredRows, Volume, from_result, stored_rows
from ebscrypt.engines.ec2.snapshot_access import get_snapshot
from ebscrypt.engines.ec2.sql_filters import as_bool, narrow, owner_column
from ebscrypt.engines.ec2 import creation, instance_records, provenance, waits
from ebscrypt.engines.ec2.tags import delete_tags_of, page_tags_for, put_tags, tags_for
from ebscrypt.engines.jobs import JobContext, job_kind
from ebscrypt.errors import (
    IncorrectModificationState,
    IncorrectState,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    NotFound,
    ServiceError,
    VolumeInUse,
    VolumeZoneMismatch,
)
from ebscrypt.storage.db import is_conflict, retry_conflicts
from ebscrypt.storage.prepared import PreparedRead, PreparedWrite
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volume_attachments, ec2_volume_modifications, ec2_volumes

log = logging.getLogger("ebscrypt.ec2.volumes")

VOLUME_TYPES = ("standard", "io1", "io2", "gp2", "sc1", "st1", "gp3")
_SIZE = {"gp2": (1, 16384), "gp3": (1, 16384), "io1": (4, 16384), "io2": (4, 65536),
         "st1": (125, 16384), "sc1": (125, 16384), "standard": (1, 1024)}
_IOPS = {"gp3": (3000, 80000, 500), "io1": (100, 64000, 50), "io2": (100, 256000, 1000)}

CREATE_JOB = "ec2_volume_create"


def lookup_instance(conn: Connection, caller: Caller, instance_id: str) -> dict[str, Any]:
    """The instance's zone and root device (instance_records.lookup: it must exist, running
    or stopped)."""
    return dict(instance_records.lookup(conn, caller, instance_id))


def _notify(runtime: Runtime, volume_id: str, state: str) -> None:
    """A volume reached ``state`` (final): wake the requests waiting on it. Whoever else
    must hear of it runs its own job kind around :func:`run_create_job` (RunInstances:
    ``instances.ec2_launch_volume``), so nothing registers with this module."""
    waits.done(volume_id)


# ----------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class VolumeSpec:
    volume_type: str
    size: int
    iops: int | None
    throughput: int | None


def gp2_iops(size: int) -> int:
    return min(max(100, 3 * size), 16000)


def validate_volume_spec(volume_type: str | None, size: int | None, iops: int | None,
                         throughput: int | None, *, snapshot_id: str | None = None,
                         snapshot_size: int | None = None) -> VolumeSpec:
    """AWS's CreateVolume rules for type, size, IOPS and throughput; fills the defaults."""
    vtype = volume_type or "gp2"
    if vtype not in VOLUME_TYPES:
        raise InvalidParameterValue(f"Value ({vtype}) for parameter volumeType is invalid. "
                                    f"Valid values are: {', '.join(VOLUME_TYPES)}.")
    if size is None:
        if snapshot_size is None:
            raise MissingParameter("size or snapshotId")
        size = snapshot_size
    if snapshot_size is not None and size < snapshot_size:
        raise InvalidParameterValue(f"Volume of size {size}GB is smaller than snapshot '{snapshot_id}', "
                                    f"expect size >= {snapshot_size}GB")
    low, high = _SIZE[vtype]
    if size < low:
        raise InvalidParameterValue(f"The volume size is invalid for {vtype} volumes: {size} GiB. {vtype} volumes "
                                    f"must be at least {low} GiB in size.")
    if size > high:
        raise InvalidParameterValue(f"Volume of {size}GiB is too large for volume type {vtype}; maximum is {high}GiB")
    if throughput is not None and vtype != "gp3":
        raise InvalidParameterCombination(f"The parameter throughput is not supported for {vtype} volumes.")
    if vtype in _IOPS:
        lo, hi, ratio = _IOPS[vtype]
        if iops is None:
            if vtype != "gp3":
                raise MissingParameter("iops")
            iops = 3000
        if not lo <= iops <= hi:
            raise InvalidParameterValue(f"Value ({iops}) for parameter iops is invalid. Expected a value between "
                                        f"{lo} and {hi}.")
        if vtype != "gp3" or iops > 3000:
            if iops > ratio * size:
                raise InvalidParameterValue(f"Iops to volume size ratio of {iops / size:.6f} is too high; maximum is "
                                            f"{float(ratio):.6f}")
    elif iops is not None:
        raise InvalidParameterCombination(f"The parameter iops is not supported for {vtype} volumes.")
    if vtype == "gp3":
        throughput = 125 if throughput is None else throughput
        if not 125 <= throughput <= 2000:
            raise InvalidParameterValue(f"Value ({throughput}) for parameter throughput is invalid. Expected a value "
                                        "between 125 and 2000.")
        if throughput > (iops or 3000) // 4 and throughput > 125:
            raise InvalidParameterValue(f"Throughput ({throughput} MiB/s) is too high for {iops} IOPS; the maximum "
                                        "is 0.25 MiB/s per provisioned IOPS.")
    if vtype == "gp2":
        iops = gp2_iops(size)
    return VolumeSpec(vtype, size, iops, throughput)


def check_zone(zone: str | None, region: str) -> str:
    if not zone:
        raise MissingParameter("availabilityZone")
    if not regions.is_zone_in_region(zone, region):
        raise NotFound("InvalidZone", zone)
    return zone


# ----------------------------------------------------------------------------- reads


# The statements of the create path, built once: building one per call (``insert(...)
# .values(**row)``, a ``select(...).where(...)``) cost more CPU than running it (issue 15);
# the token read and the insert run on the driver where plain (storage/prepared.py).
_BY_ID = PreparedRead(select(ec2_volumes).where(ec2_volumes.c.id == bindparam("id")))
_BY_TOKEN = PreparedRead(select(ec2_volumes).where(
    ec2_volumes.c.client_token == bindparam("token"), ec2_volumes.c.account == bindparam("account"),
    ec2_volumes.c.region == bindparam("region")))
_INSERT = PreparedWrite(insert(ec2_volumes))


def _row(conn: Connection, volume_id: str) -> Volume | None:
    row = _BY_ID.first(conn, {"id": volume_id})
    return Volume.from_row(row) if row else None


def get_volume(conn: Connection, caller: Caller, volume_id: str) -> Volume:
    """The caller's volume in its region; InvalidVolume.NotFound otherwise. [conn]"""
    check_id(volume_id, "vol", "InvalidVolumeID.Malformed")
    vol = _row(conn, volume_id)
    if vol is None or vol.account != caller.account or vol.region != caller.region:
        raise NotFound("InvalidVolume", volume_id)
    return vol


# DescribeVolumes filters whose getter returns exactly a column's value (sql_filters).
SQL_FILTER_COLUMNS = {
    "encrypted": (ec2_volumes.c.encrypted, as_bool),
    "kms-key-id": (ec2_volumes.c.kms_key_arn, None),
    "status": (ec2_volumes.c.state, None),
    "volume-id": (ec2_volumes.c.id, None),
    "volume-type": (ec2_volumes.c.volume_type, None),
    "availability-zone": (ec2_volumes.c.availability_zone, None),
}


def list_volumes(conn: Connection, account: str, region: str, volume_ids: list[str] | None = None, *,
                 after: str | None = None, limit: int | None = None,
                 filters: list[dict[str, Any]] | None = None) -> list[Volume]:
    """The account's volumes in the region by id order (only ``volume_ids`` if given), only
    ids after ``after``, at most ``limit``: DescribeVolumes pages in SQL with these.
    ``filters`` narrow the rows in SQL (a superset of the matches: apply them after). [conn]"""
    return from_result(Volume, conn.execute(_volumes_query(account, region, volume_ids, after, limit, filters)))


def _volumes_query(account: str, region: str, volume_ids: list[str] | None, after: str | None, limit: int | None,
                   filters: list[dict[str, Any]] | None, columns: Sequence[str] | None = None) -> Any:
    """The statement of :func:`list_volumes` (of only ``columns`` if given)."""
    selected = select(*(ec2_volumes.c[n] for n in columns)) if columns else select(ec2_volumes)
    q = narrow(selected.where(owner_column(ec2_volumes.c.account, filters) == account,
                                         owner_column(ec2_volumes.c.region, filters) == region),
               filters, SQL_FILTER_COLUMNS, ec2_volumes.c.id, account).order_by(ec2_volumes.c.id)
    if volume_ids:
        q = q.where(ec2_volumes.c.id.in_(volume_ids))
    if after is not None:
        q = q.where(ec2_volumes.c.id > after)
    if limit is not None:
        q = q.limit(limit)
    return q


@lru_cache(maxsize=64)
def _page_query(columns: tuple[str, ...], after: bool, limit: bool) -> Any:
    """:func:`_volumes_query` of a page (no ids, no filters) of ``columns`` (all when
    empty), its values bound by name (``account``, ``region``, and ``after`` / ``limit``
    when flagged): built once per form (issue 15: building the statement, ~0.3 ms, cost
    more than running it for a page of 500)."""
    selected = select(*(ec2_volumes.c[n] for n in columns)) if columns else select(ec2_volumes)
    q = selected.where(ec2_volumes.c.account == bindparam("account"),
                       ec2_volumes.c.region == bindparam("region")).order_by(ec2_volumes.c.id)
    if after:
        q = q.where(ec2_volumes.c.id > bindparam("after"))
    if limit:
        q = q.limit(bindparam("limit", type_=Integer))
    return q


def attachments_of(conn: Connection, volume_ids: list[str]) -> dict[str, list[Attachment]]:
    out: dict[str, list[Attachment]] = {v: [] for v in volume_ids}
    for chunk in range(0, len(volume_ids), 500):
        rows = conn.execute(select(ec2_volume_attachments).where(
            ec2_volume_attachments.c.volume_id.in_(volume_ids[chunk:chunk + 500]))).mappings()
        for r in rows:
            out[r["volume_id"]].append(Attachment.from_row(r))
    return out


# Built once (issue 15: building the statement per page cost more than running it).
_ATTACHMENTS_OF_RANGE = select(ec2_volume_attachments).join(
    ec2_volumes, ec2_volumes.c.id == ec2_volume_attachments.c.volume_id).where(
    ec2_volumes.c.account == bindparam("account"), ec2_volumes.c.region == bindparam("region"),
    ec2_volumes.c.id >= bindparam("first"), ec2_volumes.c.id <= bindparam("last"))


def page_attachments_of(conn: Connection, account: str, region: str,
                        volume_ids: list[str]) -> dict[str, list[Attachment]]:
    """``attachments_of`` a page of ``account``'s volumes (``volume_ids`` in the database's
    order, as a Describe page is read): the account's volumes between the first and the
    last id, through the page index, each joined to its attachments by primary key — one
    statement instead of IN lists of 500 ids (issue 15: their compilation was a tenth of a
    DescribeVolumes page). The answer is that of ``attachments_of`` for any of
    ``account``'s volumes (the attachments of volumes not in ``volume_ids`` are left out). [conn]"""
    if len(volume_ids) < 50:
        return attachments_of(conn, volume_ids)
    out: dict[str, list[Attachment]] = {v: [] for v in volume_ids}
    rows = conn.execute(_ATTACHMENTS_OF_RANGE, {"account": account, "region": region, "first": volume_ids[0],
                                                "last": volume_ids[-1]}).mappings().fetchall()
    for r in rows:
        found = out.get(r["volume_id"])
        if found is not None:
            found.append(Attachment.from_row(r))
    return out


def volumes_of_instance(conn: Connection, instance_id: str) -> list[tuple[Volume, Attachment]]:
    rows = conn.execute(select(ec2_volume_attachments).where(
        ec2_volume_attachments.c.instance_id == instance_id)).mappings().all()
    out = []
    for r in rows:
        vol = _row(conn, r["volume_id"])
        if vol is not None:
            out.append((vol, Attachment.from_row(r)))
    return out


# ----------------------------------------------------------------------------- create


@dataclass(frozen=True)
class Attach:
    instance_id: str
    device: str
    delete_on_termination: bool = False


@dataclass
class VolumePrep:
    volume_id: str
    zone: str
    spec: VolumeSpec
    plan: EncryptionPlan
    source: Snapshot | None
    data_key: WrappedDataKey | None
    multi_attach: bool = False
    client_token: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)
    attach: Attach | None = None
    existing: Volume | None = None  # ClientToken replay
    failure: str | None = None  # the source key refused (encryption.source_key_refusal): stored ``error``


def load_source_snapshot(conn: Connection, caller: Caller, snapshot_id: str) -> Snapshot:
    snap = get_snapshot(conn, caller, snapshot_id)
    if snap.state != "completed":
        raise IncorrectState(f"Snapshot is in invalid state - {snap.state}")
    return snap


def prepare_volume(ctx: RequestContext, *, availability_zone: str | None, size: int | None = None,
                   volume_type: str | None = None, iops: int | None = None, throughput: int | None = None,
                   snapshot_id: str | None = None, encrypted: bool | None = None,
                   kms_key_id: str | None = None, multi_attach: bool = False,
                   client_token: str | None = None, tags: list[dict[str, str]] | None = None,
                   attach: Attach | None = None) -> VolumePrep:
    """Validate and decide everything about a new volume. [KMS, no conn]"""
    caller = ctx.caller
    zone = check_zone(availability_zone, caller.region)
    source = None
    with ctx.runtime.db.read() as conn:
        settings = get_settings(conn, caller.account, caller.region)
        if not settings.ebd:  # turned off again: plain volumes may take _create_plain again
            _EBD_SEEN.discard((caller.account, caller.region))
        if client_token:
            row = _BY_TOKEN.first(conn, {"token": client_token, "account": caller.account,
                                         "region": caller.region})
            if row is not None:
                vol = Volume.from_row(row)
                return VolumePrep(vol.id, vol.availability_zone,
                                  VolumeSpec(vol.volume_type, vol.size, vol.iops, vol.throughput),
                                  EncryptionPlan(vol.encrypted, vol.kms_key_arn, False, "replay"), None, None,
                                  existing=vol)
        if snapshot_id:
            source = load_source_snapshot(conn, caller, snapshot_id)
    spec = validate_volume_spec(volume_type, size, iops, throughput, snapshot_id=snapshot_id,
                                snapshot_size=source.volume_size if source else None)
    if multi_attach and spec.volume_type not in ("io1", "io2"):
        raise InvalidParameterCombination("The multi-attach feature is only supported for io1 and io2 volumes.")
    # One request's KMS uses of its key (describe, generate, grant, decrypt) read the key
    # row once; each is still authorized, state-checked and audited (R-KEY-3).
    with ctx.runtime.kms.key_row_scope():
        plan, data_key, volume_id = _plan_and_key(ctx, source, encrypted, kms_key_id, settings)
    return VolumePrep(volume_id, zone, spec, plan, source, data_key, multi_attach, client_token,
                      list(tags or []), attach)


def _plan_and_key(ctx: RequestContext, source: Snapshot | None, encrypted: bool | None, kms_key_id: str | None,
                  settings: AccountSettings) -> tuple[EncryptionPlan, WrappedDataKey | None, str]:
    """§2's outcome for a new volume, its id and (when encrypted) its data key; an empty
    volume's new key is proven usable, as it is ready once inserted. [KMS, no conn]"""
    plan = resolve_encryption(ctx, source, encrypted, kms_key_id, settings=settings)
    volume_id = new_id("vol")
    plan, data_key = prepare_data_key(ctx, plan, source, volume_id, prove=source is None)
    return plan, data_key, volume_id


def is_cheap(prep: VolumePrep) -> bool:
    """No data to re-encrypt: empty, same data key (share), or doomed by a key problem."""
    if prep.source is None or prep.plan.problem:
        return True
    if prep.data_key is None:
        return not prep.source.encrypted
    return prep.data_key.data_key_id == prep.source.data_key_id


def insert_volume(ctx: RequestContext, conn: Connection, prep: VolumePrep, *, complete: bool = False,
                  job: str = CREATE_JOB) -> Volume:
    """Write the volume and either finish it here or submit its creation job. [conn]

    ``complete`` (metadata only, see :func:`is_cheap` and :mod:`.creation`; not for a volume
    created attached): the volume is stored in its final state in ``conn`` — ``available``,
    its blocks (if from a snapshot) a reference to the snapshot's (``blocks.share_in``), or
    ``error`` with the key problem — no job. Otherwise it is stored ``creating`` with its
    ``ec2_volume_create`` job; call ``ctx.runtime.jobs.notify()`` after commit. The answer
    shows ``creating`` either way, as AWS's does.
    ``job``: the job kind that creates it: :data:`CREATE_JOB`, or a kind of a module above
    that runs :func:`run_create_job` and then its own follow-up (RunInstances' volumes).
    """
    if prep.existing is not None:
        return prep.existing
    caller = ctx.caller
    now = ctx.runtime.clock.now()
    dk = prep.data_key
    values = dict(
        id=prep.volume_id, account=caller.account, region=caller.region, availability_zone=prep.zone,
        size=prep.spec.size, volume_type=prep.spec.volume_type, iops=prep.spec.iops,
        throughput=prep.spec.throughput, multi_attach=prep.multi_attach, state="creating",
        state_message=None, encrypted=prep.plan.encrypted, kms_key_arn=prep.plan.key_arn,
        data_key_id=dk.data_key_id if dk else None, data_key_blob=dk.blob if dk else None,
        data_key_context=dk.context_json if dk else None,
        snapshot_id=prep.source.id if prep.source else None, client_token=prep.client_token,
        auto_enable_io=False, create_time=now,
    )
    provenance.record(conn, ctx, prep.volume_id, plan=prep.plan, key_arn=prep.plan.key_arn,
                      source_type="snapshot" if prep.source else "empty",
                      source_id=prep.source.id if prep.source else None,
                      source_region=prep.source.region if prep.source else None,
                      data_key_shared=bool(dk and prep.source and dk.data_key_id == prep.source.data_key_id))
    if complete and prep.attach is None:
        state, message = _complete_in(ctx, conn, prep)
        _INSERT.run(conn, dict(values, state=state, state_message=message))
        if prep.tags:
            put_tags(conn, caller.account, caller.region, prep.volume_id, prep.tags)
        return Volume.from_row(values)  # the answer shows "creating", as AWS's does
    _INSERT.run(conn, values)
    if prep.tags:
        put_tags(conn, caller.account, caller.region, prep.volume_id, prep.tags)
    if prep.attach is not None:
        conn.execute(insert(ec2_volume_attachments).values(
            volume_id=prep.volume_id, instance_id=prep.attach.instance_id, device=prep.attach.device,
            state="attaching", attach_time=now, delete_on_termination=prep.attach.delete_on_termination))
    ctx.runtime.jobs.submit(job, {
        "volume_id": prep.volume_id, "account": caller.account, "region": caller.region,
        "problem": prep.plan.problem or prep.failure,
    }, conn=conn)
    return Volume.from_row(values)


def _complete_in(ctx: RequestContext, conn: Connection, prep: VolumePrep) -> tuple[str, str | None]:
    """The metadata-only creation work inside the creating transaction: (state, message)."""
    problem = prep.plan.problem or prep.failure
    if problem:
        return "error", problem
    if prep.source is None:
        return "available", None
    if not creation.source_present(conn, ec2_snapshots, prep.source.id):  # DeleteSnapshot came first
        return "error", SourceSnapshotGone(prep.source.id).args[0]
    try:
        ctx.runtime.blocks.share_in(conn, prep.source.id, prep.volume_id)  # same data key: no data moved
    except BlockError as exc:  # as the job would have: the volume records why
        return "error", str(exc)
    return "available", None


class _NeedsKms(Exception):
    """The account's settings make this volume encrypted: not for :func:`_create_plain`."""


# (account, region)s whose encryption by default was on when last seen: their requests go
# straight to the KMS path (a hint only: _create_plain re-reads the settings and backs out).
_EBD_SEEN: set[tuple[str, str]] = set()


def _create_plain(ctx: RequestContext, *, availability_zone: str | None, size: int | None = None,
                  volume_type: str | None = None, iops: int | None = None, throughput: int | None = None,
                  encrypted: bool | None = None, multi_attach: bool = False, client_token: str | None = None,
                  tags: list[dict[str, str]] | None = None) -> Volume | None:
    """An empty volume that needs no KMS (no key named, not asked encrypted, encryption by
    default off — R-OUT-6), in ONE transaction: the settings and the ClientToken are read
    in the write transaction that stores the volume, not in a read transaction before it
    (issue 15: that read was ~9% of the call's server CPU). None when the settings make it
    encrypted (R-OUT-5): nothing was written; the caller takes the KMS path, which never
    calls KMS inside a write transaction. [no conn]"""
    caller = ctx.caller
    zone = check_zone(availability_zone, caller.region)
    try:
        with ctx.runtime.db.begin() as conn:
            settings = get_settings(conn, caller.account, caller.region)
            if settings.ebd:
                raise _NeedsKms()
            if client_token:
                row = _BY_TOKEN.first(conn, {"token": client_token, "account": caller.account,
                                             "region": caller.region})
                if row is not None:  # a replay: wrote nothing
                    return Volume.from_row(row)
            spec = validate_volume_spec(volume_type, size, iops, throughput)
            if multi_attach and spec.volume_type not in ("io1", "io2"):
                raise InvalidParameterCombination("The multi-attach feature is only supported for io1 and io2 "
                                                  "volumes.")
            plan = resolve_encryption(ctx, None, encrypted, None, settings=settings)
            if plan.encrypted:  # not reached (EBD off, not asked): never KMS in here
                raise _NeedsKms()
            prep = VolumePrep(new_id("vol"), zone, spec, plan, None, None, multi_attach, client_token,
                              list(tags or []))
            return insert_volume(ctx, conn, prep, complete=True)
    except _NeedsKms:
        _EBD_SEEN.add((caller.account, caller.region))
        return None


def create_volume(ctx: RequestContext, *, wait_seconds: float = 3.0, **kwargs: Any) -> Volume:
    """CreateVolume: prepare, then the create protocol (:mod:`.creation`): metadata only
    (empty, same data key, doomed) in one transaction; a re-encryption as a job, waited
    for up to ``wait_seconds`` (boto3 waiters then see it done at once). An empty volume
    that needs no KMS: :func:`_create_plain`, one transaction in all. [KMS, no conn]"""
    if (not kwargs.get("snapshot_id") and not kwargs.get("kms_key_id") and kwargs.get("encrypted") is not True
            and kwargs.get("attach") is None
            and (ctx.caller.account, ctx.caller.region) not in _EBD_SEEN):
        plain = _create_plain(ctx, **{k: v for k, v in kwargs.items() if k not in ("snapshot_id", "kms_key_id")})
        if plain is not None:
            return plain
    with creation.deferring_grants(ctx) as grants:  # the grant for EC2 stored with the volume
        prep = prepare_volume(ctx, **kwargs)
        if prep.existing is not None:
            return prep.existing
        metadata_only = is_cheap(prep) and (prep.source is None or ctx.runtime.blocks is not None)
        if metadata_only and prep.source is not None and not prep.plan.problem:
            prep.failure = source_key_refusal(ctx, prep.source)
        return creation.create(ctx, prep.volume_id,
                               lambda conn, done: insert_volume(ctx, conn, prep, complete=done),
                               metadata_only=metadata_only, table=ec2_volumes, transitional="creating",
                               wait_seconds=wait_seconds, grants=grants)


def finish_volume(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Run the creation work now (idempotent); a failure puts the volume in ``error``."""
    try:
        retry_conflicts(lambda: _finish(runtime, payload, None))
    except Exception as exc:  # as the job runner would: the resource records why
        if is_conflict(exc):  # kept losing races: its backstop job finishes it
            log.info("volume %s: left to its job after repeated conflicts", payload["volume_id"])
            return
        log.warning("volume %s failed: %s", payload["volume_id"], exc)
        volume_failed(runtime, payload, getattr(exc, "message", None) or str(exc) or type(exc).__name__)


def set_volume_state(runtime: Runtime, volume_id: str, state: str, message: str | None = None) -> None:
    with runtime.db.begin() as conn:
        conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == volume_id)
                     .values(state=state, state_message=message))
        if state == "error":
            conn.execute(delete(ec2_volume_attachments).where(ec2_volume_attachments.c.volume_id == volume_id))
    _notify(runtime, volume_id, state)


def volume_failed(runtime: Runtime, payload: dict[str, Any], reason: str) -> None:
    """The ``on_fail`` of a volume's creation job: the volume goes to ``error``."""
    set_volume_state(runtime, payload["volume_id"], "error", reason)


def run_create_job(job: JobContext) -> None:
    """The body of a volume's creation job (idempotent: a resumed job finds its work done)."""
    _finish(job.runtime, job.payload, job.progress)


job_kind(CREATE_JOB, resumable=True, on_fail=volume_failed)(run_create_job)


def _finish(runtime: Runtime, payload: dict[str, Any], report: Callable[[float], None] | None) -> None:
    if payload.get("problem"):
        set_volume_state(runtime, payload["volume_id"], "error", payload["problem"])
        return
    with runtime.db.read() as conn:
        vol = _row(conn, payload["volume_id"])
        if vol is None or vol.state != "creating":
            return  # deleted meanwhile, or already done (resumed job)
        src_row = (conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.id == vol.snapshot_id))
                   .mappings().first() if vol.snapshot_id else None)
    if vol.snapshot_id and src_row is None:  # DeleteSnapshot came first: nothing to build from
        set_volume_state(runtime, vol.id, "error", SourceSnapshotGone(vol.snapshot_id).args[0])
        return
    ctx = job_ctx(runtime, payload["account"], payload["region"], "CreateVolume")
    dst_key = data_key_for(ctx, vol)  # R-KEY-3: grant + decrypt; proves the key is usable
    if src_row is not None:
        src = Snapshot.from_row(src_row)
        blocks = runtime.blocks
        if blocks is None:
            raise RuntimeError("the block engine is not available")
        try:
            src_key = data_key_for(ctx, src)  # R-SHARE-4: the caller must be allowed the source key
            copy_blocks(runtime, src, vol.id, vol.data_key_id, source_key=lambda: src_key,
                        dst_key=lambda: dst_key, progress=report)
        except CopyCancelled:
            if _exists(runtime, vol.id):
                raise  # released by something other than DeleteVolume: a real failure
            return  # DeleteVolume released the copy mid-way: it stopped and left nothing
    with runtime.db.begin() as conn:
        gone = _row(conn, vol.id) is None
        if not gone:
            attached = conn.execute(select(ec2_volume_attachments).where(
                ec2_volume_attachments.c.volume_id == vol.id)).first() is not None
            if attached:
                conn.execute(update(ec2_volume_attachments).where(ec2_volume_attachments.c.volume_id == vol.id)
                             .values(state="attached"))
            state = "in-use" if attached else "available"
            holder = conn.execute(select(ec2_volume_attachments.c.instance_id).where(
                ec2_volume_attachments.c.volume_id == vol.id)).first() if attached else None
            conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == vol.id, ec2_volumes.c.state == "creating")
                         .values(state=state))
    if gone:
        # Deleted after this job read it: its DeleteVolume may have released the blocks
        # before the share/copy above created them. Release them again (idempotent).
        release_volumes(runtime, [vol.id])
        return
    if holder is not None:  # created attached (RunInstances): the key just decrypted stays in memory
        attach_io.open_volume(runtime, vol, dst_key, holder.instance_id)
    _notify(runtime, vol.id, state)


def _exists(runtime: Runtime, volume_id: str) -> bool:
    with runtime.db.read() as conn:
        return _row(conn, volume_id) is not None


# ----------------------------------------------------------------------------- attachments


def attach_volume(ctx: RequestContext, volume_id: str, instance_id: str, device: str, *,
                  instance_az: str | None = None, delete_on_termination: bool = False) -> Attachment:
    """AttachVolume. [KMS, no conn]: the key is checked by grant + decrypt (R-KEY-3)."""
    caller = ctx.caller
    running = True
    with ctx.runtime.db.read() as conn:
        vol = get_volume(conn, caller, volume_id)
        if instance_az is None:
            info = lookup_instance(conn, caller, instance_id)
            instance_az = info["availability_zone"]
            running = info.get("state", "running") == "running"
        current = attachments_of(conn, [volume_id])[volume_id]
        taken = conn.execute(select(ec2_volume_attachments.c.volume_id).where(
            ec2_volume_attachments.c.instance_id == instance_id,
            ec2_volume_attachments.c.device == device)).first() is not None
    if current and not vol.multi_attach:
        raise VolumeInUse(f"{volume_id} is already attached to an instance")
    if vol.state not in ("available", "in-use"):
        raise IncorrectState(f"The volume '{volume_id}' is not 'available'.")
    if instance_az != vol.availability_zone:
        raise VolumeZoneMismatch(volume_id, instance_id)
    if taken:
        raise InvalidParameterValue(f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use")
    try:
        key = data_key_for(ctx, vol)  # R-ATTACH-2: EBS's grant + one Decrypt, audited
    except ServiceError as err:
        if err.status >= 500:
            raise
        raise IncorrectState(f"The KMS key {vol.kms_key_arn} of volume '{volume_id}' cannot be used: "
                             f"{err.code}: {err.message}") from err
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        # Checked again in the writing transaction: a concurrent AttachVolume of the same
        # volume may have won since the read above (its insert then broke the primary key: a 500).
        current = attachments_of(conn, [volume_id])[volume_id]
        if any(a.instance_id == instance_id for a in current) or (current and not vol.multi_attach):
            raise VolumeInUse(f"{volume_id} is already attached to an instance")
        conn.execute(insert(ec2_volume_attachments).values(
            volume_id=volume_id, instance_id=instance_id, device=device, state="attached",
            attach_time=now, delete_on_termination=delete_on_termination))
        conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == volume_id).values(state="in-use"))
    if running:  # a stopped instance's volumes get their key at StartInstances
        attach_io.open_volume(ctx.runtime, vol, key, instance_id)  # the plaintext key stays in memory only
    return Attachment(volume_id, instance_id, device, "attaching", now, delete_on_termination)


def detach_volume(ctx: RequestContext, volume_id: str, instance_id: str | None = None, *,
                  device: str | None = None) -> Attachment:
    """DetachVolume: acknowledged writes are flushed and the data key dropped (R-ATTACH-2). [no conn]"""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        get_volume(conn, caller, volume_id)
        known = attachments_of(conn, [volume_id])[volume_id]
    if any((instance_id is None or a.instance_id == instance_id) and (device is None or a.device == device)
           for a in known):
        attach_io.close_volumes(ctx.runtime, [volume_id])  # outside the transaction: it writes blocks
    with ctx.runtime.db.begin() as conn:
        vol = get_volume(conn, caller, volume_id)
        atts = attachments_of(conn, [volume_id])[volume_id]
        if not atts:
            raise IncorrectState(f"Volume '{volume_id}' is in the '{vol.state}' state.")
        match = [a for a in atts if (instance_id is None or a.instance_id == instance_id)
                 and (device is None or a.device == device)]
        if not match:
            raise NotFound("InvalidAttachment", volume_id, f"Volume {volume_id} can not be detached from "
                           f"{instance_id} because it is not attached")
        att = match[0]
        conn.execute(delete(ec2_volume_attachments).where(
            ec2_volume_attachments.c.volume_id == volume_id,
            ec2_volume_attachments.c.instance_id == att.instance_id))
        if len(atts) == 1:
            conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == volume_id).values(state="available"))
    attach_io.close_volumes(ctx.runtime, [volume_id])  # again: an NBD client may have reopened it meanwhile
    return Attachment(att.volume_id, att.instance_id, att.device, "detaching", att.attach_time,
                      att.delete_on_termination)


def set_delete_on_termination(conn: Connection, volume_id: str, instance_id: str, value: bool) -> None:
    conn.execute(update(ec2_volume_attachments).where(
        ec2_volume_attachments.c.volume_id == volume_id,
        ec2_volume_attachments.c.instance_id == instance_id).values(delete_on_termination=value))


def delete_attachments_of_instance(conn: Connection, instance_id: str, *,
                                   honour_delete_on_termination: bool = True) -> list[str]:
    """Instance terminated: detach its volumes; delete those marked DeleteOnTermination.

    Returns the ids of deleted volumes: call :func:`release_volumes` after commit. [conn]
    """
    deleted = []
    for vol, att in volumes_of_instance(conn, instance_id):
        conn.execute(delete(ec2_volume_attachments).where(
            ec2_volume_attachments.c.volume_id == vol.id, ec2_volume_attachments.c.instance_id == instance_id))
        if honour_delete_on_termination and att.delete_on_termination:
            _delete_rows(conn, vol.id)
            deleted.append(vol.id)
        else:
            remaining = conn.execute(select(ec2_volume_attachments.c.volume_id).where(
                ec2_volume_attachments.c.volume_id == vol.id)).first()
            if remaining is None:
                conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == vol.id).values(state="available"))
    return deleted


def release_volumes(runtime: Runtime, volume_ids: list[str]) -> None:
    blocks = runtime.blocks
    if blocks is None:
        return
    for vid in volume_ids:
        blocks.release(vid)


def _delete_rows(conn: Connection, volume_id: str) -> None:
    conn.execute(delete(ec2_volumes).where(ec2_volumes.c.id == volume_id))
    conn.execute(delete(ec2_volume_modifications).where(ec2_volume_modifications.c.volume_id == volume_id))
    provenance.forget(conn, volume_id)
    delete_tags_of(conn, volume_id)


def delete_unattached(conn: Connection, volume_ids: list[str]) -> list[str]:
    """Delete the rows of those of ``volume_ids`` that exist and are not attached (a failed
    launch's volumes, in the transaction that terminates their instance).

    Returns the ids deleted: call :func:`release_volumes` after commit. [conn]
    """
    atts = attachments_of(conn, volume_ids)
    gone = [vid for vid in volume_ids if not atts[vid]
            and conn.execute(select(ec2_volumes.c.id).where(ec2_volumes.c.id == vid)).first() is not None]
    for vid in gone:
        _delete_rows(conn, vid)
    return gone


def delete_volume(ctx: RequestContext, volume_id: str) -> None:
    """DeleteVolume; VolumeInUse while attached. [no conn]"""
    with ctx.runtime.db.begin() as conn:
        get_volume(conn, ctx.caller, volume_id)
        atts = attachments_of(conn, [volume_id])[volume_id]
        if atts:
            raise VolumeInUse(f"Volume {volume_id} is currently attached to {atts[0].instance_id}")
        _delete_rows(conn, volume_id)
    release_volumes(ctx.runtime, [volume_id])


# ----------------------------------------------------------------------------- modifications


def modify_volume(ctx: RequestContext, volume_id: str, *, size: int | None = None, volume_type: str | None = None,
                  iops: int | None = None, throughput: int | None = None,
                  multi_attach: bool | None = None) -> dict[str, Any]:
    """ModifyVolume: record the modification (``modifying``) and complete it in a job. [no conn]"""
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        vol = get_volume(conn, ctx.caller, volume_id)
        if vol.state not in ("available", "in-use"):
            raise IncorrectState(f"Volume '{volume_id}' is in the '{vol.state}' state.")
        open_mod = conn.execute(select(ec2_volume_modifications.c.id).where(
            ec2_volume_modifications.c.volume_id == volume_id,
            ec2_volume_modifications.c.state.in_(("modifying", "optimizing")))).first()
        if open_mod is not None:
            raise IncorrectModificationState(f"Volume {volume_id} is already being modified.")
        if size is None and volume_type is None and iops is None and throughput is None and multi_attach is None:
            raise MissingParameter("Size", "Modification request must specify at least one of size, volume type, "
                                   "iops, throughput or multi-attach.")
        if size is not None and size < vol.size:
            raise InvalidParameterValue(f"New size cannot be smaller than existing size ({vol.size} GiB).")
        new_type = volume_type or vol.volume_type
        keep_iops = iops if iops is not None else (vol.iops if new_type in _IOPS and vol.volume_type == new_type
                                                   else None)
        keep_tp = throughput if throughput is not None else (vol.throughput if new_type == "gp3"
                                                             and vol.volume_type == "gp3" else None)
        spec = validate_volume_spec(new_type, size if size is not None else vol.size, keep_iops, keep_tp)
        target_multi = vol.multi_attach if multi_attach is None else multi_attach
        row = dict(volume_id=volume_id, state="modifying", original_size=vol.size, target_size=spec.size,
                   original_type=vol.volume_type, target_type=spec.volume_type, original_iops=vol.iops,
                   target_iops=spec.iops, original_throughput=vol.throughput, target_throughput=spec.throughput,
                   original_multi_attach=vol.multi_attach, target_multi_attach=target_multi, progress=0,
                   start_time=now, end_time=None)
        key = conn.execute(insert(ec2_volume_modifications).values(**row)).inserted_primary_key
        # A single-row INSERT on an autoincrement key always reports it; typed as optional
        # only because executemany/INSERT..SELECT do not.
        if key is None:
            raise RuntimeError("the volume modification row reported no key")
        mod_id = key[0]
        ctx.runtime.jobs.submit("ec2_volume_modify", {"modification_id": mod_id}, conn=conn)
    ctx.runtime.jobs.notify()
    return row


@job_kind("ec2_volume_modify", resumable=True)
def _modify_job(job: JobContext) -> None:
    runtime = job.runtime
    now = runtime.clock.now()
    with runtime.db.begin() as conn:
        mod = conn.execute(select(ec2_volume_modifications).where(
            ec2_volume_modifications.c.id == job.payload["modification_id"])).mappings().first()
        if mod is None or mod["state"] == "completed":
            return
        conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == mod["volume_id"]).values(
            size=mod["target_size"], volume_type=mod["target_type"], iops=mod["target_iops"],
            throughput=mod["target_throughput"], multi_attach=mod["target_multi_attach"]))
        conn.execute(update(ec2_volume_modifications).where(ec2_volume_modifications.c.id == mod["id"])
                     .values(state="completed", progress=100, end_time=now))


def modifications(conn: Connection, caller: Caller, volume_ids: list[str] | None) -> list[dict[str, Any]]:
    q = (select(ec2_volume_modifications).join(ec2_volumes, ec2_volumes.c.id == ec2_volume_modifications.c.volume_id)
         .where(ec2_volumes.c.account == caller.account, ec2_volumes.c.region == caller.region)
         .order_by(ec2_volume_modifications.c.id))
    if volume_ids:
        q = q.where(ec2_volume_modifications.c.volume_id.in_(volume_ids))
    return [dict(r) for r in conn.execute(q).mappings()]


def set_auto_enable_io(ctx: RequestContext, volume_id: str, value: bool) -> None:
    with ctx.runtime.db.begin() as conn:
        get_volume(conn, ctx.caller, volume_id)
        conn.execute(update(ec2_volumes).where(ec2_volumes.c.id == volume_id).values(auto_enable_io=value))


# ----------------------------------------------------------------------------- operations
# The request-level reads of services/ec2/volumes.py, one transaction each.


def describe_volumes(ctx: RequestContext, volume_ids: list[str] | None = None, *, after: str | None = None,
                     limit: int | None = None, filters: list[dict[str, Any]] | None = None,
                     ) -> list[tuple[Volume, list[Attachment], list[dict[str, str]]]]:
    """The caller's volumes (by id order), optionally only ``volume_ids`` (each must exist),
    only ids > ``after``, at most ``limit``: each with its attachments and tags. ``filters``
    narrow the rows read (SQL, indexes); the caller still applies them exactly."""
    caller = ctx.caller
    for vid in volume_ids or []:
        check_id(vid, "vol", "InvalidVolumeID.Malformed")
    with ctx.runtime.db.read() as conn:
        vols = list_volumes(conn, caller.account, caller.region, volume_ids, after=after, limit=limit,
                            filters=filters)
        ids = [v.id for v in vols]
        if not volume_ids and not filters:  # a page: every volume of the account in its id range
            atts = page_attachments_of(conn, caller.account, caller.region, ids)
            tags = page_tags_for(conn, caller.account, ids)
        else:
            atts = attachments_of(conn, ids)
            tags = tags_for(conn, caller.account, ids)
    if volume_ids:
        missing = sorted(set(volume_ids) - set(ids))
        if missing:
            raise NotFound("InvalidVolume", missing[0])
    return [(v, atts[v.id], tags[v.id]) for v in vols]


def volume_page(ctx: RequestContext, *, after: str | None = None, limit: int | None = None,
                fields: Sequence[str] = (), filters: list[dict[str, Any]] | None = None,
                ) -> tuple[StoredRows | list[Volume], dict[str, list[Attachment]], dict[str, list[dict[str, str]]]]:
    """:func:`describe_volumes` without ids, with the attachments and the tags of each id:
    on SQLite the rows of the record's ``fields`` (those the caller's view reads, with
    ``id``) kept as read (``records.stored_rows``: the service renders them straight to
    its answer, issue 15), else the records. ``filters`` narrow the rows in SQL (a superset
    of the matches: the caller applies them after)."""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        columns = None
        if conn.dialect.name == "sqlite" and fields:
            columns = [n for n in ec2_volumes.c.keys() if n in {*fields, "id"}]
        if filters:
            query = _volumes_query(caller.account, caller.region, None, after, limit, filters, columns)
            found = stored_rows(Volume, conn.execute(query))
        else:
            values: dict[str, Any] = {"account": caller.account, "region": caller.region}
            values.update({k: v for k, v in (("after", after), ("limit", limit)) if v is not None})
            query = _page_query(tuple(columns or ()), after is not None, limit is not None)
            found = stored_rows(Volume, conn.execute(query, values))
        if isinstance(found, StoredRows):
            i = found.column("id")
            ids = [r[i] for r in found.rows]
        else:
            ids = [v.id for v in found]
        if filters:  # scattered ids: read by id (a range would span the account's volumes)
            return found, attachments_of(conn, ids), tags_for(conn, caller.account, ids)
        # a page: every volume of the account in its id range
        atts = page_attachments_of(conn, caller.account, caller.region, ids)
        return found, atts, page_tags_for(conn, caller.account, ids)


def modifications_of(ctx: RequestContext, volume_ids: list[str] | None) -> list[dict[str, Any]]:
    """The modifications of the caller's volumes (of ``volume_ids``: each must exist)."""
    if volume_ids:
        describe_volumes(ctx, volume_ids)  # NotFound / Malformed as AWS
    with ctx.runtime.db.read() as conn:
        return modifications(conn, ctx.caller, volume_ids)


def owned_volume(ctx: RequestContext, volume_id: str) -> Volume:
    with ctx.runtime.db.read() as conn:
        return get_volume(conn, ctx.caller, volume_id)
