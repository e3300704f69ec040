"""EBS snapshot operations (R-SNAP-1..3, §5): thin handlers over
:mod:`ebscrypt.engines.ec2.snapshots`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import snapshots as S
from ebscrypt.engines.ec2.attributes import canonical_names, legacy_operation
from ebscrypt.engines.ec2.filters import apply_filters as filter_select
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page, page_after, page_size
from ebscrypt.engines.ec2.records import Snapshot, StoredRows
from ebscrypt.services.ec2.view_table import ViewTable
from ebscrypt.engines.ec2.tags import tag_specs
from ebscrypt.errors import InvalidParameterValue, MissingParameter
from ebscrypt.services.registry import operation


# The ``Snapshot`` view (the view convention: keyed by the output shape's member names,
# ``None`` for a member AWS leaves out — the codec drops it), one expression per member
# over the record ``s`` and its ``tags``: compiled into ``snapshot_dict`` and into the
# writer of a Describe page straight from its stored rows (view_table.py, issue 15).
SNAPSHOT_VIEW = ViewTable("Snapshot", {
    "SnapshotId": "s.id", "VolumeId": "s.volume_id or COPY_VOLUME_ID", "State": "s.state",
    "StateMessage": "s.state_message or None", "StartTime": "s.start_time", "Progress": "f'{s.progress}%'",
    "OwnerId": "s.account", "Description": "s.description or ''", "VolumeSize": "s.volume_size",
    "Encrypted": "bool(s.encrypted)", "KmsKeyId": "(s.kms_key_arn or None) if s.encrypted else None",
    # same value <=> same data key (R-KEY-2)
    "DataEncryptionKeyId": "(s.data_key_id or None) if s.encrypted else None",
    "CompletionTime": "s.completion_time", "StorageTier": "'standard'", "Tags": "tags or None",
}, env={"COPY_VOLUME_ID": S.COPY_VOLUME_ID})


# The columns a page rendered from its rows reads (those of the view).
_SNAPSHOT_FIELDS = SNAPSHOT_VIEW.fields_read(Snapshot)


def snapshot_dict(s: Snapshot, tags: list[dict[str, str]]) -> dict[str, Any]:
    """The ``Snapshot`` view of a record (``SNAPSHOT_VIEW``)."""
    return SNAPSHOT_VIEW.view(s, tags)


def _tag_map(d: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in d.get("Tags") or ()}


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


@operation("ec2", "CreateSnapshot")
def create_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    tags = tag_specs(params.get("TagSpecifications"), "snapshot")
    snap = S.create_snapshot(ctx, params["VolumeId"], params.get("Description"), tags)
    return snapshot_dict(snap, tags)


@operation("ec2", "CreateSnapshots")
def create_snapshots(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """Snapshots of every EBS volume attached to an instance (optionally not the boot volume)."""
    dry_run_check(params)
    spec = params.get("InstanceSpecification") or {}
    instance_id = spec.get("InstanceId")
    if not instance_id:
        raise MissingParameter("InstanceSpecification.InstanceId")
    req = S.InstanceSnapshots(instance_id, frozenset(spec.get("ExcludeDataVolumeIds") or []),
                              bool(spec.get("ExcludeBootVolume")), params.get("Description"),
                              tuple(tag_specs(params.get("TagSpecifications"), "snapshot")),
                              params.get("CopyTagsFromSource") == "volume")
    out = []
    for snap, snap_tags in S.create_snapshots_of_instance(ctx, req):
        d = snapshot_dict(snap, snap_tags)  # SnapshotInfo: these members of the Snapshot view
        out.append({k: d[k] for k in ("Description", "Encrypted", "VolumeId", "State", "VolumeSize",
                                      "StartTime", "Progress", "OwnerId", "SnapshotId", "Tags")})
    return {"Snapshots": out}


@operation("ec2", "CopySnapshot")
def copy_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    source_id = params.get("SourceSnapshotId")
    if not source_id:
        raise MissingParameter("SourceSnapshotId")
    source_region = params.get("SourceRegion")
    if not source_region:
        raise MissingParameter("SourceRegion")
    dest = params.get("DestinationRegion")
    if dest and dest != ctx.caller.region:
        raise InvalidParameterValue(f"DestinationRegion {dest} must be the region of the request ({ctx.caller.region}).")
    tags = tag_specs(params.get("TagSpecifications"), "snapshot")
    snap = S.copy_snapshot(ctx, source_id, source_region, params.get("Encrypted"), params.get("KmsKeyId"),
                           params.get("Description"), tags)
    return {"SnapshotId": snap.id, "Tags": tags or None}


@operation("ec2", "DeleteSnapshot")
def delete_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    S.delete_snapshot(ctx, params["SnapshotId"])
    return {}


@operation("ec2", "DescribeSnapshots")
def describe_snapshots(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    ids = params.get("SnapshotIds") or []
    # Paging in SQL (the CLI pages 1,000 at a time): ids after the token's always; a
    # LIMIT only when nothing is filtered after the query (one more row than asked
    # tells page() a NextToken is due).
    size = page_size(params, low=5, high=1000) if not ids else None
    after = page_after(params.get("NextToken")) if not ids else None
    filters, restorable_by = params.get("Filters"), params.get("RestorableByUserIds")
    limit = size + 1 if size is not None and not filters and not restorable_by else None
    if not ids and not restorable_by and not _exports_shown(ctx):
        # A page (the CLI's listing) or a filtered listing: rendered straight from its
        # stored rows where the database allows (issue 15: no record per item; no view
        # dict per item either when nothing is filtered).
        found, tags = S.snapshot_page(ctx, owner_ids=params.get("OwnerIds"), after=after, limit=limit,
                                      fields=_SNAPSHOT_FIELDS, filters=filters)
        if isinstance(found, StoredRows):
            if filters:  # the filters read the views (from the rows: the same plan)
                return _filtered_page(found, tags, params)
            i = found.column("id")
            rows, token = page(found.rows, params, lambda r: str(r[i]), low=5, high=1000, ids_param="SnapshotIds")
            return {"Snapshots": SNAPSHOT_VIEW.page(found.having(rows), tags), "NextToken": token or None}
        items = [snapshot_dict(s, tags[s.id]) for s in found]
    else:
        snaps, tags = S.describe_snapshots(ctx, ids, owner_ids=params.get("OwnerIds"), restorable_by=restorable_by,
                                           filters=filters, after=after, limit=limit)
        if _exports_shown(ctx):
            items = [snapshot_dict(s, tags[s.id] + _export_tags(ctx, s)) for s in snaps]
        else:  # the common case: no per-item check (issue 15, Describe at scale)
            items = [snapshot_dict(s, tags[s.id]) for s in snaps]
    items = filter_select(items, filters, _FILTERS, _tag_map)
    chunk, token = page(items, params, lambda d: d["SnapshotId"], low=5, high=1000, ids_param="SnapshotIds")
    return {"Snapshots": chunk, "NextToken": token or None}


def _filtered_page(found: StoredRows, tags: dict[str, list[dict[str, str]]], params: dict[str, Any]) -> dict[str, Any]:
    """DescribeSnapshots with Filters over rows read as stored: the views the filters test
    built from the rows (``SNAPSHOT_VIEW``'s plan: no records), the page of those that
    pass written from their rows."""
    every = SNAPSHOT_VIEW.page(found, tags)
    chunk, token = page(filter_select(every.views(), params.get("Filters"), _FILTERS, _tag_map), params,
                        lambda d: d["SnapshotId"], low=5, high=1000, ids_param="SnapshotIds")
    return {"Snapshots": every.subset(chunk), "NextToken": token or None}


def _exports_shown(ctx: RequestContext) -> bool:
    """Whether snapshots show their NBD export names (strict auth, attach engine open)."""
    return ctx.runtime.engines.get("attach") is not None and ctx.runtime.settings.auth == "strict"


def _export_tags(ctx: RequestContext, snap: Snapshot) -> list[dict[str, str]]:
    """Under strict auth, a completed snapshot's read-only NBD export name for the caller
    (with its per-account secret; see engines/attach/engine.py), as volumes show theirs."""
    attach = ctx.runtime.engines.get("attach")
    if attach is None or snap.state != "completed" or ctx.runtime.settings.auth != "strict":
        return []
    from ebscrypt.engines.attach.engine import EXPORT_TAG

    return [{"Key": EXPORT_TAG, "Value": attach.snapshot_export_name(snap.id, ctx.caller.account)}]


# SnapshotAttributeName, matched without regard to case (engines.ec2.attributes).
_SNAPSHOT_ATTRIBUTES = canonical_names(("createVolumePermission", "productCodes"))


def _check_attribute(params: dict[str, Any]) -> str:
    attribute = params.get("Attribute")
    if attribute is None:
        return "createVolumePermission"
    if attribute.lower() not in _SNAPSHOT_ATTRIBUTES:
        raise InvalidParameterValue(f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute.")
    return _SNAPSHOT_ATTRIBUTES[attribute.lower()]


@operation("ec2", "DescribeSnapshotAttribute")
def describe_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = _check_attribute(params)
    snapshot_id, grantees = S.create_volume_permissions(ctx, params["SnapshotId"])
    if attribute == "productCodes":
        return {"SnapshotId": snapshot_id, "ProductCodes": []}
    perms = [{"Group": g} if g == "all" else {"UserId": g} for g in grantees]
    return {"SnapshotId": snapshot_id, "CreateVolumePermissions": perms}


@operation("ec2", "ModifySnapshotAttribute")
def modify_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = _check_attribute(params)
    if attribute != "createVolumePermission":
        raise InvalidParameterValue("Only the createVolumePermission attribute can be modified.")
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
        op = legacy_operation(params.get("OperationType"))
        (add_users if op == "add" else rm_users).extend(params.get("UserIds") or [])
        (add_groups if op == "add" else rm_groups).extend(params.get("GroupNames") or [])
    if not (add_users or add_groups or rm_users or rm_groups):
        raise MissingParameter("CreateVolumePermission", "No permission changes were specified.")
    S.modify_create_volume_permission(ctx, params["SnapshotId"], add_users=add_users, add_groups=add_groups,
                                      remove_users=rm_users, remove_groups=rm_groups)
    return {}


@operation("ec2", "ResetSnapshotAttribute")
def reset_snapshot_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if _check_attribute(params) != "createVolumePermission":
        raise InvalidParameterValue("Only the createVolumePermission attribute can be reset.")
    S.reset_create_volume_permission(ctx, params["SnapshotId"])
    return {}

