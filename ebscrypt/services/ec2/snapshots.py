"""EBS snapshot operations (R-SNAP-1..3, §5): thin handlers over
:mod:`ebscrypt.engines.ec2.snapshots`."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.attach import engine as attach_io
from ebscrypt.engines.ec2 import snapshots as S
from ebscrypt.engines.ec2 import volumes as V
from ebscrypt.engines.ec2.attributes import canonical_names, legacy_operation
from ebscrypt.engines.ec2.ids import check_id
from ebscrypt.engines.ec2.filters import apply_filters as filter_select, dry_run_check
from ebscrypt.engines.ec2.paging import page, page_after, page_size
from ebscrypt.engines.ec2.records import Snapshot
from ebscrypt.engines.ec2.tags import put_tags, tag_specs, tags_for
from ebscrypt.errors import ServiceError
from ebscrypt.services.registry import operation


def snapshot_dict(s: Snapshot, tags: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "SnapshotId": s.id, "VolumeId": s.volume_id or S.COPY_VOLUME_ID, "State": s.state,
        "StartTime": s.start_time, "Progress": f"{s.progress}%", "OwnerId": s.account,
        "Description": s.description or "", "VolumeSize": s.volume_size, "Encrypted": bool(s.encrypted),
        "StorageTier": "standard",
    }
    if s.state_message:
        out["StateMessage"] = s.state_message
    if s.encrypted and s.kms_key_arn:
        out["KmsKeyId"] = s.kms_key_arn
    if s.encrypted and s.data_key_id:
        out["DataEncryptionKeyId"] = s.data_key_id  # same value <=> same data key (R-KEY-2)
    if s.completion_time is not None:
        out["CompletionTime"] = s.completion_time
    if tags:
        out["Tags"] = tags
    return out


def _tag_map(d: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in d.get("Tags", [])}


_FILTERS = {
    "description": lambda d: d["Description"],
    "encrypted": lambda d: d["Encrypted"],
    "kms-key-id": lambda d: d.get("KmsKeyId"),
    "owner-id": lambda d: d["OwnerId"],
    "progress": lambda d: d["Progress"],
    "snapshot-id": lambda d: d["SnapshotId"],
    "start-time": lambda d: d["StartTime"].isoformat(),
    "status": lambda d: d["State"],
    "volume-id": lambda d: d["VolumeId"],
    "volume-size": lambda d: d["VolumeSize"],
    "storage-tier": lambda d: d["StorageTier"],
}


def _one(ctx: RequestContext, snapshot_id: str) -> dict[str, Any]:
    with ctx.runtime.db.read() as conn:
        snap = S.get_snapshot(conn, ctx.caller, snapshot_id)
        tags = tags_for(conn, ctx.caller.account, [snap.id])[snap.id]
    return snapshot_dict(snap, tags)


@operation("ec2", "CreateSnapshot")
def create_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    tags = tag_specs(params.get("TagSpecifications"), "snapshot")
    # R-ATTACH-4: an attached volume's acknowledged writes are flushed first, and none is
    # applied until the point-in-time reference is committed.
    with attach_io.quiesced(ctx.runtime, params["VolumeId"]), ctx.runtime.db.begin() as conn:
        # O(1), metadata only (a block-lineage reference, R-SNAP-1): stored completed in
        # this one transaction, no job
        snap = S.create_snapshot_from_volume(ctx, conn, params["VolumeId"], params.get("Description"), tags,
                                             complete_now=True)
    S.snapshot_stored(ctx.runtime, snap.id)
    return snapshot_dict(snap, tags)


@operation("ec2", "CreateSnapshots")
def create_snapshots(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Snapshots of every EBS volume attached to an instance (optionally not the boot volume)."""
    dry_run_check(params)
    spec = params.get("InstanceSpecification") or {}
    instance_id = spec.get("InstanceId")
    if not instance_id:
        raise ServiceError("The request must contain the parameter InstanceSpecification.InstanceId",
                           code="MissingParameter")
    exclude = set(spec.get("ExcludeDataVolumeIds") or [])
    tags = tag_specs(params.get("TagSpecifications"), "snapshot")
    out = []
    with ctx.runtime.db.read() as conn:
        attached = [v.id for v, _ in V.volumes_of_instance(conn, instance_id)]
    with ExitStack() as held:
        for volume_id in attached:  # R-ATTACH-4, as CreateSnapshot (before the write transaction)
            held.enter_context(attach_io.quiesced(ctx.runtime, volume_id))
        with ctx.runtime.db.begin() as conn:
            info = V.lookup_instance(conn, ctx.caller, instance_id)
            root = (info or {}).get("root_device_name")
            pairs = V.volumes_of_instance(conn, instance_id)
            source_tags = tags_for(conn, ctx.caller.account, [v.id for v, _ in pairs])
            for vol, att in pairs:
                if vol.account != ctx.caller.account or vol.id in exclude:
                    continue
                if spec.get("ExcludeBootVolume") and root and att.device == root:
                    continue
                snap_tags = list(tags)
                if params.get("CopyTagsFromSource") == "volume":
                    keys = {t["Key"] for t in snap_tags}
                    snap_tags += [t for t in source_tags[vol.id] if t["Key"] not in keys]
                snap = S.create_snapshot_from_volume(ctx, conn, vol.id, params.get("Description"), snap_tags,
                                                     complete_now=True)
                d = snapshot_dict(snap, snap_tags)
                out.append({k: d[k] for k in ("Description", "Encrypted", "VolumeId", "State", "VolumeSize",
                                              "StartTime", "Progress", "OwnerId", "SnapshotId") if k in d}
                           | ({"Tags": snap_tags} if snap_tags else {}))
    for item in out:
        S.snapshot_stored(ctx.runtime, item["SnapshotId"])
    return {"Snapshots": out}


@operation("ec2", "CopySnapshot")
def copy_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    source_id = params.get("SourceSnapshotId")
    if not source_id:
        raise ServiceError("The request must contain the parameter SourceSnapshotId", code="MissingParameter")
    source_region = params.get("SourceRegion")
    if not source_region:
        raise ServiceError("The request must contain the parameter SourceRegion", code="MissingParameter")
    dest = params.get("DestinationRegion")
    if dest and dest != ctx.caller.region:
        raise ServiceError(f"DestinationRegion {dest} must be the region of the request ({ctx.caller.region}).",
                           code="InvalidParameterValue")
    tags = tag_specs(params.get("TagSpecifications"), "snapshot")
    snap = S.copy_snapshot(ctx, source_id, source_region, params.get("Encrypted"), params.get("KmsKeyId"),
                           params.get("Description"), tags)
    out: dict[str, Any] = {"SnapshotId": snap.id}
    if tags:
        out["Tags"] = tags
    return out


@operation("ec2", "DeleteSnapshot")
def delete_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    S.delete_snapshot(ctx, params["SnapshotId"])
    return {}


def _accounts(values: list[str] | None, caller_account: str) -> set[str]:
    return {caller_account if v == "self" else v for v in values or []}


@operation("ec2", "DescribeSnapshots")
def describe_snapshots(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    caller = ctx.caller
    ids = params.get("SnapshotIds") or []
    for sid in ids:
        check_id(sid, "snap", "InvalidSnapshotID.Malformed")
    owners = _accounts(params.get("OwnerIds"), caller.account) if params.get("OwnerIds") and not ids else None
    # Paging in SQL (the CLI pages 1,000 at a time): ids after the token's always; a
    # LIMIT only when nothing is filtered after the query (one more row than asked
    # tells page() a NextToken is due).
    size = page_size(params, low=5, high=1000) if not ids else None
    after = page_after(params.get("NextToken")) if not ids else None
    limit = (size + 1 if size is not None and not params.get("Filters") and not params.get("RestorableByUserIds")
             else None)
    with ctx.runtime.db.read() as conn:
        # OwnerIds and (without SnapshotIds, whose every id must be found first) Filters
        # narrow the rows in SQL; both are still applied exactly below.
        snaps = S.visible_snapshots(conn, caller, owners=owners, filters=None if ids else params.get("Filters"),
                                    after=after, limit=limit)
        perms = S.permissions_of(conn, [s.id for s in snaps])
        if ids:
            found = {s.id for s in snaps}
            missing = [i for i in ids if i not in found]
            if missing:
                raise S.not_found(missing[0])
            snaps = [s for s in snaps if s.id in set(ids)]
        owners = _accounts(params.get("OwnerIds"), caller.account)
        if params.get("OwnerIds"):
            snaps = [s for s in snaps if s.account in owners]
        restorable = _accounts(params.get("RestorableByUserIds"), caller.account)
        if params.get("RestorableByUserIds"):
            snaps = [s for s in snaps
                     if ({s.account} | perms[s.id]) & restorable or "all" in perms[s.id]]
        tags = tags_for(conn, caller.account, [s.id for s in snaps])
    items = [snapshot_dict(s, tags[s.id]) for s in snaps]
    items = filter_select(items, params.get("Filters"), _FILTERS, _tag_map)
    chunk, token = page(items, params, lambda d: d["SnapshotId"], low=5, high=1000, ids_param="SnapshotIds")
    out: dict[str, Any] = {"Snapshots": chunk}
    if token:
        out["NextToken"] = token
    return out


# SnapshotAttributeName, matched without regard to case (engines.ec2.attributes).
_SNAPSHOT_ATTRIBUTES = canonical_names(("createVolumePermission", "productCodes"))


def _check_attribute(params: dict[str, Any]) -> str:
    attribute = params.get("Attribute")
    if attribute is None:
        return "createVolumePermission"
    if attribute.lower() not in _SNAPSHOT_ATTRIBUTES:
        raise ServiceError(f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute.",
                           code="InvalidParameterValue")
    return _SNAPSHOT_ATTRIBUTES[attribute.lower()]


@operation("ec2", "DescribeSnapshotAttribute")
def describe_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = _check_attribute(params)
    with ctx.runtime.db.read() as conn:
        snap = S.owned_snapshot(conn, ctx.caller, params["SnapshotId"])
        grantees = sorted(S.grantees(conn, snap.id))
    if attribute == "productCodes":
        return {"SnapshotId": snap.id, "ProductCodes": []}
    perms = [{"Group": g} if g == "all" else {"UserId": g} for g in grantees]
    return {"SnapshotId": snap.id, "CreateVolumePermissions": perms}


@operation("ec2", "ModifySnapshotAttribute")
def modify_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = _check_attribute(params)
    if attribute != "createVolumePermission":
        raise ServiceError("Only the createVolumePermission attribute can be modified.",
                           code="InvalidParameterValue")
    add_users: list[str] = []
    add_groups: list[str] = []
    rm_users: list[str] = []
    rm_groups: list[str] = []
    mods = params.get("CreateVolumePermission") or {}
    for p in mods.get("Add") or []:
        (add_groups if "Group" in p else add_users).append(p.get("Group") or p.get("UserId"))
    for p in mods.get("Remove") or []:
        (rm_groups if "Group" in p else rm_users).append(p.get("Group") or p.get("UserId"))
    if params.get("UserIds") or params.get("GroupNames"):
        # the flat-list form; Packer's snapshot_users sends it beside CreateVolumePermission.Add
        # with no OperationType (engines.ec2.attributes)
        op = legacy_operation(params)
        (add_users if op == "add" else rm_users).extend(params.get("UserIds") or [])
        (add_groups if op == "add" else rm_groups).extend(params.get("GroupNames") or [])
    if not (add_users or add_groups or rm_users or rm_groups):
        raise ServiceError("No permission changes were specified.", code="MissingParameter")
    S.modify_create_volume_permission(ctx, params["SnapshotId"], add_users=add_users, add_groups=add_groups,
                                      remove_users=rm_users, remove_groups=rm_groups)
    return {}


@operation("ec2", "ResetSnapshotAttribute")
def reset_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if _check_attribute(params) != "createVolumePermission":
        raise ServiceError("Only the createVolumePermission attribute can be reset.", code="InvalidParameterValue")
    S.reset_create_volume_permission(ctx, params["SnapshotId"])
    return {}


__all__ = ["snapshot_dict", "put_tags"]
