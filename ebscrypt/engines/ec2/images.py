"""Images (AMIs): register, create from an instance, copy, deregister, describe, share.

An image is a row (``ec2_images``) whose block device mappings name snapshots; the
snapshots themselves are ec2core's records. The rules:

- R-IMG-1 CopyImage copies every snapshot through ec2core's copy machinery, which applies
  SPEC §2 to each one independently with the one ``Encrypted``/``KmsKeyId`` of the call.
  No parameters: each snapshot keeps its own encryption state (and key, if owned).
- R-IMG-2 CreateImage snapshots every attached EBS volume with the volume's own key and
  data key (R-SNAP-1), so one image may hold snapshots under several keys.
- R-IMG-3 RegisterImage builds an image over existing snapshots; DeregisterImage removes
  only the image. While an image names a snapshot it cannot be deleted (R-SNAP-3; the
  checker is registered with ec2core below).
- R-KEY-6 an image whose snapshot copy fails (unknown, inaccessible, disabled, pending
  deletion or asymmetric key) ends ``failed`` with a StateReason naming key and cause.
- R-SHARE-2/3 an image with an encrypted snapshot cannot be made public; one with a
  snapshot under the AWS managed key ``alias/aws/ebs`` cannot be shared at all.
- R-LIFE-1 images made by CreateImage / CopyImage start ``pending``; ec2core's snapshot
  listener moves them to ``available``/``failed`` when their snapshots reach a final
  state. RegisterImage over completed snapshots is available at once (nothing to copy).

Where each operation lives (import it from there: this module re-exports nothing):

- ``images`` (here): RegisterImage, DeregisterImage, DescribeImages.
- ``image_records``: the ``Image`` record, id checks, ``get_image`` / ``launch_permissions``
  lookups, and the helpers every way of making an image shares.
- ``image_copy``: CreateImage (R-IMG-2) and CopyImage (R-IMG-1).
- ``image_permissions``: Describe/Modify/ResetImageAttribute, launch permissions, R-SHARE-2/3.
- ``image_states``: pending → available/failed (R-LIFE-1, R-KEY-6), the ``image_finalize``
  job, and the call a snapshot reaching a final state makes (after_snapshot).
- ``waits.settle``: the bounded wait Describe calls make for transitional states.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Integer, bindparam, delete, or_, select

from ebscrypt.context import Caller, RequestContext
from ebscrypt.domain import image_states as states
from ebscrypt.engines.ec2 import tags as core_tags
from ebscrypt.engines.ec2 import image_states, waits
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.engines.ec2.ids import check_id, is_well_formed, new_id
from ebscrypt.engines.ec2.records import StoredRows, stored_rows
from ebscrypt.engines.ec2.sql_filters import as_bool, narrow, owner_column
from ebscrypt.engines.ec2.sql_filters import exact as sql_exact
from ebscrypt.engines.ec2.image_records import (
    ACCOUNT_RE,
    Image,
    add_non_ebs_mapping,
    check_name,
    ebs_mapping,
    get_image,
    insert_image,
    launch_permissions,
    malformed,
    not_found,
    size_check,
)
from ebscrypt.engines.ec2.snapshots import delete_snapshot
from ebscrypt.engines.ec2.snapshot_access import get_snapshot
from ebscrypt.errors import (
    IncorrectState,
    InvalidBlockDeviceMapping,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    ServiceError,
    UnsupportedOperation,
)
from ebscrypt.storage.tables.ec2_images import ec2_image_launch_permissions as perms_t
from ebscrypt.storage.tables.ec2_images import ec2_image_snapshots as image_snaps_t
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t



# ============================================================================ RegisterImage


@dataclass(frozen=True)
class ImageRegistration:
    """RegisterImage's request: EC2 BlockDeviceMapping and TagSpecification structures,
    and the image's own attributes (None: absent)."""

    block_device_mappings: list[dict[str, Any]]
    name: str | None = None
    image_location: str | None = None
    root_device_name: str | None = None
    tag_specifications: list[dict[str, Any]] | None = None
    description: str | None = None
    architecture: str | None = None
    virtualization_type: str | None = None
    ena_support: bool | None = None
    sriov_net_support: str | None = None
    boot_mode: str | None = None
    tpm_support: str | None = None
    imds_support: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None


def _registered_mappings(conn: Connection, caller: Caller, requested: list[dict[str, Any]],
                         root: str | None) -> tuple[list[dict[str, Any]], bool]:
    """RegisterImage's block device mappings as stored (snapshots the caller owns, not in
    error; empty volumes by size; non-EBS entries) and whether every snapshot is completed. [conn]"""
    mappings: list[dict[str, Any]] = []
    seen: set[str] = set()
    all_completed = True
    for bdm in requested:
        device = bdm.get("DeviceName")
        if not device:
            raise MissingParameter("DeviceName")
        if device in seen:
            raise InvalidBlockDeviceMapping(f"The device '{device}' is used in more than one block-device mapping")
        seen.add(device)
        if add_non_ebs_mapping(mappings, device, bdm):
            continue
        ebs = bdm.get("Ebs") or {}
        if ebs.get("KmsKeyId"):
            raise InvalidParameterCombination(
                "KmsKeyId cannot be set when registering an image: snapshots keep their own keys.",
            )
        snap_id = ebs.get("SnapshotId")
        if snap_id:
            check_id(snap_id, "snap", "InvalidSnapshotID.Malformed")
            snapshot = get_snapshot(conn, caller, snap_id)
            if snapshot.account != caller.account:
                raise InvalidParameterValue(
                    f"You do not own snapshot {snap_id}: copy it into your account before registering an image.",
                )
            if snapshot.state == "error":
                raise IncorrectState(f"Snapshot {snap_id} is in state error.")
            all_completed = all_completed and snapshot.state == "completed"
            size = size_check(ebs.get("VolumeSize"), snapshot)
            encrypted = bool(snapshot.encrypted)
        else:
            if device == root:
                raise InvalidBlockDeviceMapping(
                    f"The root device {device} must name an EBS snapshot.",
                )
            if not ebs.get("VolumeSize"):
                raise InvalidBlockDeviceMapping(
                    f"The block-device mapping {device} needs a snapshot or a volume size.",
                )
            size = int(ebs["VolumeSize"])
            encrypted = bool(ebs.get("Encrypted"))
        mappings.append(ebs_mapping(
            device, snapshot_id=snap_id, size=size, volume_type=ebs.get("VolumeType"),
            delete_on_termination=ebs.get("DeleteOnTermination"), encrypted=encrypted,
            iops=ebs.get("Iops"), throughput=ebs.get("Throughput"),
        ))
    return mappings, all_completed


def register_image(ctx: RequestContext, req: ImageRegistration) -> str:
    """R-IMG-3: an image over existing snapshots the caller owns."""
    caller = ctx.caller
    if req.image_location:
        raise UnsupportedOperation(
            "Instance store-backed (S3 manifest) images are not supported; register from EBS snapshots.",
        )
    requested = req.block_device_mappings or []
    if not requested:
        raise MissingParameter("BlockDeviceMapping (an EBS snapshot for the root device)")
    root = req.root_device_name or requested[0].get("DeviceName")
    tags = core_tags.tag_specs(req.tag_specifications, "image")
    image_id = new_id("ami")
    with ctx.runtime.db.begin() as conn:
        name = check_name(conn, caller.account, caller.region, req.name)
        mappings, all_completed = _registered_mappings(conn, caller, requested, root)
        if not any(m["DeviceName"] == root and (m.get("Ebs") or {}).get("SnapshotId") for m in mappings):
            raise InvalidBlockDeviceMapping(
                f"The root device name {root} does not match a block-device mapping with a snapshot.",
            )
        insert_image(conn, ctx, image_id, dict(
            name=name,
            description=req.description,
            architecture=req.architecture or "x86_64",
            virtualization_type=req.virtualization_type or "hvm",
            root_device_name=root,
            ena_support=req.ena_support,
            sriov_net_support=req.sriov_net_support,
            boot_mode=req.boot_mode,
            tpm_support=req.tpm_support,
            imds_support=req.imds_support,
            kernel_id=req.kernel_id,
            ramdisk_id=req.ramdisk_id,
        ), mappings, tags, ready=all_completed)
    ctx.runtime.jobs.notify()
    return image_id


# ============================================================================ Deregister


def deregister_image(ctx: RequestContext, image_id: str, *, delete_snapshots: bool = False) -> list[dict[str, str]]:
    """R-IMG-3: the image goes; its snapshots stay (and become deletable).

    ``delete_snapshots`` (DeleteAssociatedSnapshots): each snapshot of the image is then
    deleted as DeleteSnapshot would, and the outcome reported per snapshot (the model's
    ``DeleteSnapshotResults``). The image is deregistered whatever those outcomes.
    """
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        image = get_image(conn, caller.account, caller.region, image_id, owner_only=True)
        conn.execute(delete(image_snaps_t).where(image_snaps_t.c.image_id == image_id))
        conn.execute(delete(perms_t).where(perms_t.c.image_id == image_id))
        conn.execute(delete(images_t).where(images_t.c.image_id == image_id))
        core_tags.delete_tags_of(conn, image_id)
    if not delete_snapshots:
        return []
    # after the image's own rows are gone, so that only *other* images pin a snapshot
    return [{"SnapshotId": s, "ReturnCode": _delete_associated(ctx, s)} for s in dict.fromkeys(image.snapshot_ids())]


# DeleteSnapshot's refusals → the model's SnapshotReturnCodes.
_DELETE_RETURN_CODES = {
    "InvalidSnapshot.InUse": "skipped",           # another image still names it
    "UnauthorizedOperation": "missing-permissions",
    "AuthFailure": "missing-permissions",
}


def _delete_associated(ctx: RequestContext, snapshot_id: str) -> str:
    """Delete one snapshot of a deregistered image; its SnapshotReturnCode. [no conn]"""
    try:
        delete_snapshot(ctx, snapshot_id)
    except ServiceError as err:
        if err.status >= 500:
            return "internal-error"
        return _DELETE_RETURN_CODES.get(err.code, "client-error")
    return "success"


# ============================================================================ Describe


def _bdm_values(key: str) -> Callable[[Any], Any]:
    def get(entry: tuple[Image, list[Any]]) -> Any:
        out = []
        for m in entry[0].mappings:
            ebs = m.get("Ebs") or {}
            if key == "device-name":
                out.append(m.get("DeviceName"))
            elif m.get("Ebs") is not None:
                out.append({"delete-on-termination": ebs.get("DeleteOnTermination"),
                            "snapshot-id": ebs.get("SnapshotId"),
                            "volume-size": ebs.get("VolumeSize"),
                            "volume-type": ebs.get("VolumeType"),
                            "encrypted": ebs.get("Encrypted")}[key])
        return [v for v in out if v is not None]
    return get


_FILTERS: dict[str, Callable[[Any], Any]] = {
    "architecture": lambda e: e[0].architecture,
    "block-device-mapping.delete-on-termination": _bdm_values("delete-on-termination"),
    "block-device-mapping.device-name": _bdm_values("device-name"),
    "block-device-mapping.snapshot-id": _bdm_values("snapshot-id"),
    "block-device-mapping.volume-size": _bdm_values("volume-size"),
    "block-device-mapping.volume-type": _bdm_values("volume-type"),
    "block-device-mapping.encrypted": _bdm_values("encrypted"),
    "boot-mode": lambda e: e[0].boot_mode,
    "creation-date": lambda e: e[0].creation_date,
    "description": lambda e: e[0].description,
    "ena-support": lambda e: e[0].ena_support,
    "hypervisor": lambda e: "xen",
    "image-id": lambda e: e[0].image_id,
    "image-type": lambda e: "machine",
    "is-public": lambda e: e[0].public,
    "kernel-id": lambda e: e[0].kernel_id,
    "name": lambda e: e[0].name,
    "owner-id": lambda e: e[0].account,
    "platform": lambda e: e[0].platform,
    "ramdisk-id": lambda e: e[0].ramdisk_id,
    "root-device-name": lambda e: e[0].root_device_name,
    "root-device-type": lambda e: e[0].root_device_type,
    "source-image-id": lambda e: e[0].source_image_id,
    "source-instance-id": lambda e: e[0].source_instance_id,
    "state": lambda e: e[0].state,
    "state-reason-code": lambda e: e[0].state_reason_code,
    "state-reason-message": lambda e: e[0].state_reason_message,
    "sriov-net-support": lambda e: e[0].sriov_net_support,
    "tpm-support": lambda e: e[0].tpm_support,
    "virtualization-type": lambda e: e[0].virtualization_type,
}


# DescribeImages filters whose getter returns exactly a column's value (sql_filters).
SQL_FILTER_COLUMNS = {
    "image-id": (images_t.c.image_id, None),
    "owner-id": (images_t.c.account, None),
    "name": (images_t.c.name, None),
    "state": (images_t.c.state, None),
    "is-public": (images_t.c.public, as_bool),
}


def _images_query(caller: Caller, ids: list[str], owners: list[str], filters: list[dict[str, Any]] | None,
                  after: str | None, limit: int | None, columns: Sequence[str] | None = None) -> Any:
    """The statement of :func:`_visible_images` before its executable users (of only
    ``columns`` if given)."""
    shared = select(perms_t.c.image_id).where(perms_t.c.user_id == caller.account)
    account = owner_column(images_t.c.account, filters)
    owner_ids = {caller.account if o == "self" else o for o in owners}
    if owners and owner_ids <= {caller.account}:
        visible = account == caller.account  # Owners=self: no public or shared lookup
    else:
        visible = or_(account == caller.account, images_t.c.public.is_(True), images_t.c.image_id.in_(shared))
    selected = select(*(images_t.c[n] for n in columns)) if columns else select(images_t)
    query = narrow(selected.where(owner_column(images_t.c.region, filters) == caller.region, visible),
                   filters, SQL_FILTER_COLUMNS, images_t.c.image_id, caller.account)
    if ids:
        query = query.where(images_t.c.image_id.in_(ids))
    if owners:
        query = query.where(account.in_(sorted(owner_ids)))
    if after is not None:
        query = query.where(images_t.c.image_id > after)
    query = query.order_by(images_t.c.image_id)
    if limit is not None:
        query = query.limit(limit)
    return query


@lru_cache(maxsize=64)
def _own_page_query(columns: tuple[str, ...], after: bool, limit: bool) -> Any:
    """:func:`_images_query` of a page of the caller's own images (``Owners=self``, no ids
    nor filters) of ``columns``, its values bound by name (``account``, ``region``, and
    ``after`` / ``limit`` when flagged): built once per form (issue 15: building the
    statement, ~0.3 ms a page, cost more than running it)."""
    q = select(*(images_t.c[n] for n in columns)).where(images_t.c.region == bindparam("region"),
                                                         images_t.c.account == bindparam("account"))
    if after:
        q = q.where(images_t.c.image_id > bindparam("after"))
    q = q.order_by(images_t.c.image_id)
    return q.limit(bindparam("limit", type_=Integer)) if limit else q


def image_page(ctx: RequestContext, *, owners: list[str], after: str | None, limit: int | None,
               fields: Sequence[str], filters: list[dict[str, Any]] | None = None,
               ) -> tuple[StoredRows, dict[str, list[dict[str, str]]]] | None:
    """:func:`describe_images` without ids or executable users as the rows of the
    record's ``fields`` (those the caller's view reads, with ``image_id`` and ``state``)
    kept as read (``records.stored_rows``: the service renders them straight to its
    answer, issue 15), and their tags; None on another database than SQLite or when an
    image read is pending (:func:`describe_images` settles it). With ``filters``: only
    the rows whose images match them (narrowed in SQL, then tested exactly on their
    records, as :func:`describe_images` tests them — unless the SQL narrowing is itself
    exact, ``sql_filters.exact``: then the view's columns only, and no record)."""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        if conn.dialect.name != "sqlite":
            return None
        # filtered: every column (the filters test records), unless SQL selects exactly
        exact = bool(filters) and sql_exact(filters, SQL_FILTER_COLUMNS)
        every = bool(filters) and not exact
        columns = [n for n in images_t.c.keys() if every or n in {*fields, "image_id", "state"}]
        if not filters and owners and {caller.account if o == "self" else o for o in owners} == {caller.account}:
            values: dict[str, Any] = {"account": caller.account, "region": caller.region}
            values.update({k: v for k, v in (("after", after), ("limit", limit)) if v is not None})
            query = _own_page_query(tuple(columns), after is not None, limit is not None)
            found = stored_rows(Image, conn.execute(query, values))
        else:
            found = stored_rows(Image, conn.execute(_images_query(caller, [], owners, filters, after, limit, columns)))
        if not isinstance(found, StoredRows):
            return None
        i, state = found.column("image_id"), found.column("state")
        if any(r[state] == states.IMAGE_PENDING for r in found.rows):
            return None
        ids = [r[i] for r in found.rows]
        if not filters:
            # a page with nothing filtered out: every own image in its id range (one tags range)
            # (a list for every id, empty when untagged: no copy of the dict with new lists)
            return found, core_tags.page_tags_for(conn, caller.account, ids)
        tags = core_tags.tags_for(conn, caller.account, ids)
    if exact:
        # the rows are the answer (issue 15: Packer's name=prefix*): no record to test again
        # (every filter is then a known one: a tag: filter or a SQL_FILTER_COLUMNS name)
        return found, {image_id: tags.get(image_id) or [] for image_id in ids}
    entries = [(image, tags.get(image.image_id) or [], row) for image, row in zip(found.records(), found.rows)]
    kept = filter_select(entries, filters, _FILTERS, tag_getter=lambda e: {t["Key"]: t["Value"] for t in e[1]})
    return found.having([e[2] for e in kept]), {e[0].image_id: e[1] for e in kept}


def _visible_images(ctx: RequestContext, ids: list[str], owners: list[str], executable: list[str], *,
                    filters: list[dict[str, Any]] | None = None, after: str | None = None,
                    limit: int | None = None) -> list[tuple[Image, list[dict[str, str]]]]:
    """The images the caller sees in its region (own, public, shared with it), narrowed by
    ids, owners and executable users; each with its tags; by image id, only ids after
    ``after``, at most ``limit`` (issue 15: DescribeImages pages in SQL, through
    ``ix_ec2_images_page``, instead of reading every image of the region for each page).
    ``filters`` narrow the rows in SQL (a superset of the matches: apply them after)."""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        shared = select(perms_t.c.image_id).where(perms_t.c.user_id == caller.account)
        query = _images_query(caller, ids, owners, filters, after, limit)
        visible_images = Image.from_result(conn.execute(query))
        if executable:
            shared_with_me = {
                r.image_id for r in conn.execute(shared)
            }
            wanted: list[Image] = []
            own_perms: dict[str, set[str]] = {}
            for image in visible_images:
                if image.account == caller.account and image.image_id not in own_perms:
                    own_perms[image.image_id] = set(launch_permissions(conn, image.image_id))
            for image in visible_images:
                for user in executable:
                    if user == "all" and image.public:
                        wanted.append(image)
                        break
                    if user in ("self", caller.account) and (
                        image.account == caller.account or image.image_id in shared_with_me
                    ):
                        wanted.append(image)
                        break
                    if ACCOUNT_RE.match(user) and image.account == caller.account and (
                        user in own_perms.get(image.image_id, set()) or image.public
                    ):
                        wanted.append(image)
                        break
            visible_images = wanted
        image_ids = [i.image_id for i in visible_images]
        # a page with nothing filtered out: every own image in its id range (one tags range)
        paged = not ids and not filters and not executable
        tags = (core_tags.page_tags_for if paged else core_tags.tags_for)(conn, caller.account, image_ids)
        return [(i, tags.get(i.image_id) or []) for i in visible_images]


def describe_images(ctx: RequestContext, ids: list[str], *, owners: list[str], executable: list[str],
                    filters: list[dict[str, Any]] | None, after: str | None = None,
                    limit: int | None = None) -> list[tuple[Image, list[dict[str, str]]]]:
    """DescribeImages as the caller sees it: own, public and shared images of its region
    (only ``ids``, of ``owners`` — "self" the caller — and launchable by ``executable``
    users, when given), matching ``filters``: each record with its tags (the service
    builds the view), by image id; without ``ids``, only ids after ``after`` and at most
    ``limit`` (the caller passes a limit only when nothing is filtered after the query)."""
    for image_id in ids:
        if not is_well_formed(image_id, "ami"):
            raise malformed(image_id)
    narrowing = None if ids else filters
    after = None if ids else after
    entries = _visible_images(ctx, ids, owners, executable, filters=narrowing, after=after, limit=limit)
    if ids:
        found = {e[0].image_id for e in entries}
        missing = [i for i in ids if i not in found]
        if missing:
            raise not_found(missing)
    pending = [e[0].image_id for e in entries if e[0].state == states.IMAGE_PENDING]
    if pending:
        image_states.repair(ctx, pending)
        waits.settle(lambda: image_states.states_of(ctx, pending), [states.IMAGE_PENDING])
        entries = _visible_images(ctx, ids, owners, executable, filters=narrowing, after=after, limit=limit)
    selected = filter_select(entries, filters, _FILTERS, tag_getter=lambda e: {t["Key"]: t["Value"] for t in e[1]})
    return list(selected)
