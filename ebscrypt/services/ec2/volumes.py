"""EBS volume operations (R-VOL): thin handlers over :mod:`ebscrypt.engines.ec2.volumes`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.domain import regions
from ebscrypt.engines.attach.engine import EXPORT_TAG
from ebscrypt.engines.ec2 import volumes as V
from ebscrypt.engines.ec2.ids import check_id
from ebscrypt.engines.ec2.filters import apply_filters as filter_select
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import encode_token, page, page_after, page_size
from ebscrypt.engines.ec2.records import Attachment, StoredRows, Volume, aware
from ebscrypt.services.ec2.view_table import RowsPage, ViewTable
from ebscrypt.engines.ec2.tags import tag_specs
from ebscrypt.errors import InvalidParameterValue, MissingParameter, NotFound
from ebscrypt.services.registry import operation


def attachment_dict(a: Attachment) -> dict[str, Any]:
    return {"VolumeId": a.volume_id, "InstanceId": a.instance_id, "Device": a.device, "State": a.state,
            "AttachTime": a.attach_time, "DeleteOnTermination": bool(a.delete_on_termination)}


# The ``Volume`` view (the view convention: keyed by the output shape's member names,
# ``None`` for a member AWS leaves out — the codec drops it), one expression per member
# over the record ``s``, its attachments and its tags: compiled into ``volume_dict`` and
# into the writer of a Describe page straight from its stored rows (view_table.py).
VOLUME_VIEW = ViewTable("Volume", {
    "VolumeId": "s.id", "Size": "s.size", "SnapshotId": "s.snapshot_id or ''",
    "AvailabilityZone": "s.availability_zone", "State": "s.state", "CreateTime": "s.create_time",
    "Attachments": "[attachment_dict(a) for a in attachments]", "Encrypted": "bool(s.encrypted)",
    "KmsKeyId": "(s.kms_key_arn or None) if s.encrypted else None", "VolumeType": "s.volume_type",
    "Iops": "s.iops", "Throughput": "s.throughput", "MultiAttachEnabled": "bool(s.multi_attach)",
    "Tags": "tags or None",
}, env={"attachment_dict": attachment_dict}, extras=("attachments", "tags"))


# The columns a page rendered from its rows reads (those of the view).
_VOLUME_FIELDS = VOLUME_VIEW.fields_read(Volume)


def volume_dict(v: Volume, attachments: list[Attachment], tags: list[dict[str, str]]) -> dict[str, Any]:
    """The ``Volume`` view of a record (``VOLUME_VIEW``)."""
    return VOLUME_VIEW.view(v, attachments, tags)


_FILTERS = {
    "attachment.attach-time": lambda d: [a["AttachTime"].isoformat() for a in d["Attachments"]],
    "attachment.delete-on-termination": lambda d: [a["DeleteOnTermination"] for a in d["Attachments"]],
    "attachment.device": lambda d: [a["Device"] for a in d["Attachments"]],
    "attachment.instance-id": lambda d: [a["InstanceId"] for a in d["Attachments"]],
    "attachment.status": lambda d: [a["State"] for a in d["Attachments"]],
    "availability-zone": lambda d: d["AvailabilityZone"],
    "create-time": lambda d: d["CreateTime"].isoformat(),
    "encrypted": lambda d: d["Encrypted"],
    "kms-key-id": lambda d: d.get("KmsKeyId"),
    "multi-attach-enabled": lambda d: d["MultiAttachEnabled"],
    "size": lambda d: d["Size"],
    "snapshot-id": lambda d: d["SnapshotId"],
    "status": lambda d: d["State"],
    "volume-id": lambda d: d["VolumeId"],
    "volume-type": lambda d: d["VolumeType"],
    "iops": lambda d: d.get("Iops"),
    "throughput": lambda d: d.get("Throughput"),
}


def _tag_map(d: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in d.get("Tags") or ()}


def describe(ctx: RequestContext, volume_ids: list[str] | None = None, *, after: str | None = None,
             limit: int | None = None, filters: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The caller's volumes (by id order), optionally only ids > ``after``, at most ``limit``;
    ``filters`` narrow the rows read (SQL, indexes) — the caller still applies them exactly."""
    found = V.describe_volumes(ctx, volume_ids, after=after, limit=limit, filters=filters)
    if ctx.runtime.settings.auth == "strict":
        return [volume_dict(v, atts, tags + _export_tags(ctx, atts)) for v, atts, tags in found]
    return [volume_dict(v, atts, tags) for v, atts, tags in found]


def _export_tags(ctx: RequestContext, attachments: list[Any]) -> list[dict[str, str]]:
    """An in-use volume's NBD export name (with its per-attachment secret) for its owner:
    NBD carries no credentials, the export name does (see engines/attach/engine.py)."""
    attach = ctx.runtime.engines.get("attach")
    if attach is None:
        return []
    return [{"Key": EXPORT_TAG, "Value": attach.export_name(a.volume_id, a.instance_id, a.attach_time)}
            for a in attachments if a.state == "attached"][:1]


@operation("ec2", "CreateVolume")
def create_volume(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if params.get("AvailabilityZoneId") and not params.get("AvailabilityZone"):
        z = regions.zone(params["AvailabilityZoneId"])
        if z is None:
            raise NotFound("InvalidZone", params['AvailabilityZoneId'])
        params = {**params, "AvailabilityZone": z.name}
    if params.get("SnapshotId"):
        check_id(params["SnapshotId"], "snap", "InvalidSnapshotID.Malformed")
    tags = tag_specs(params.get("TagSpecifications"), "volume")
    vol = V.create_volume(
        ctx, availability_zone=params.get("AvailabilityZone"), size=params.get("Size"),
        volume_type=params.get("VolumeType"), iops=params.get("Iops"), throughput=params.get("Throughput"),
        snapshot_id=params.get("SnapshotId"), encrypted=params.get("Encrypted"),
        kms_key_id=params.get("KmsKeyId"), multi_attach=bool(params.get("MultiAttachEnabled")),
        client_token=params.get("ClientToken"), tags=tags,
    )
    if vol.client_token and params.get("ClientToken") and vol.state != "creating":  # a replay
        out = describe(ctx, [vol.id])[0]
    else:
        out = volume_dict(vol, [], tags)
    # CreateVolume's answer has no attachmentSet (API reference, Volume: "This parameter is
    # not returned by CreateVolume"); DescribeVolumes' always has one.
    return {k: v for k, v in out.items() if k != "Attachments"}


@operation("ec2", "DescribeVolumes")
def describe_volumes(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if not params.get("VolumeIds") and ctx.runtime.settings.auth != "strict":
        # A listing, filtered or not (no export names to add): paged in SQL, rendered
        # straight from its rows (issue 15).
        return _listing(ctx, params)
    if not params.get("Filters") and not params.get("VolumeIds") and params.get("MaxResults"):
        # Page in SQL: one more row than asked tells whether a NextToken is due.
        size = page_size(params, low=5, high=500, clamp=True) or 500
        items = describe(ctx, after=page_after(params.get("NextToken")), limit=size + 1)
        chunk, more = items[:size], len(items) > size
        token = encode_token(chunk[-1]["VolumeId"]) if more and chunk else None
    else:
        # With VolumeIds, every id must be found (InvalidVolume.NotFound) before filtering.
        items = describe(ctx, params.get("VolumeIds"),
                         filters=None if params.get("VolumeIds") else params.get("Filters"))
        items = filter_select(items, params.get("Filters"), _FILTERS, _tag_map)
        chunk, token = page(items, params, lambda d: d["VolumeId"], low=5, high=500, ids_param="VolumeIds",
                            clamp=True)
    return {"Volumes": chunk, "NextToken": token or None}


def _listing(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """DescribeVolumes without VolumeIds: ids after the token's, at most MaxResults (500
    at most: the API clamps) and ``Filters`` narrowed in SQL; on SQLite the items stay rows
    written straight to the XML — with Filters, the views the filters test are built from
    the rows by ``VOLUME_VIEW``'s plan (no records), and the page of those that pass is
    written from their rows."""
    filters = params.get("Filters")
    size = page_size(params, low=5, high=500, clamp=True)
    # A LIMIT only when nothing is filtered after the query: one more row than asked
    # tells whether a NextToken is due.
    limit = size + 1 if size is not None and not filters else None
    found, atts, tags = V.volume_page(ctx, after=page_after(params.get("NextToken")), limit=limit,
                                      fields=_VOLUME_FIELDS, filters=filters)
    if isinstance(found, StoredRows) and not filters:  # no view dict per item either
        rows = found.rows if size is None else found.rows[:size]
        more = size is not None and len(found.rows) > size and bool(rows)
        token = encode_token(rows[-1][found.column("id")]) if more else None
        return {"Volumes": VOLUME_VIEW.page(found.having(rows), atts, tags), "NextToken": token}
    every: RowsPage | None = None
    if isinstance(found, StoredRows):
        every = VOLUME_VIEW.page(found, atts, tags)
        items = every.views()
    else:  # records (PostgreSQL)
        items = [volume_dict(v, atts[v.id], tags[v.id]) for v in found]
    items = filter_select(items, filters, _FILTERS, _tag_map)
    chunk, more = (items, False) if size is None else (items[:size], len(items) > size)
    token = encode_token(chunk[-1]["VolumeId"]) if more and chunk else None
    return {"Volumes": every.subset(chunk) if every is not None else chunk, "NextToken": token}


@operation("ec2", "DeleteVolume")
def delete_volume(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    V.delete_volume(ctx, params["VolumeId"])
    return {}


@operation("ec2", "AttachVolume")
def attach_volume(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    att = V.attach_volume(ctx, params["VolumeId"], params["InstanceId"], params["Device"])
    return attachment_dict(att)


@operation("ec2", "DetachVolume")
def detach_volume(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    # Force is accepted and changes nothing: every detach here flushes and drops the key
    # (R-ATTACH-2); there is no stuck attachment for it to break.
    att = V.detach_volume(ctx, params["VolumeId"], params.get("InstanceId"), device=params.get("Device"))
    return attachment_dict(att)


def modification_dict(m: dict[str, Any]) -> dict[str, Any]:
    """The ``VolumeModification`` view of a modification row (``None``: left out)."""
    return {
        "VolumeId": m["volume_id"], "ModificationState": m["state"], "StatusMessage": m.get("status_message"),
        "TargetSize": m["target_size"], "TargetIops": m.get("target_iops"), "TargetVolumeType": m["target_type"],
        "TargetThroughput": m.get("target_throughput"),
        "TargetMultiAttachEnabled": bool(m["target_multi_attach"]),
        "OriginalSize": m["original_size"], "OriginalIops": m.get("original_iops"),
        "OriginalVolumeType": m["original_type"], "OriginalThroughput": m.get("original_throughput"),
        "OriginalMultiAttachEnabled": bool(m["original_multi_attach"]),
        "Progress": m["progress"], "StartTime": aware(m["start_time"]),
        "EndTime": aware(m["end_time"]) if m.get("end_time") is not None else None,
    }


@operation("ec2", "ModifyVolume")
def modify_volume(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    row = V.modify_volume(ctx, params["VolumeId"], size=params.get("Size"), volume_type=params.get("VolumeType"),
                          iops=params.get("Iops"), throughput=params.get("Throughput"),
                          multi_attach=params.get("MultiAttachEnabled"))
    return {"VolumeModification": modification_dict(row)}


_MOD_FILTERS = {
    "modification-state": lambda d: d["ModificationState"],
    "volume-id": lambda d: d["VolumeId"],
    "target-size": lambda d: d["TargetSize"],
    "target-volume-type": lambda d: d["TargetVolumeType"],
    "original-size": lambda d: d["OriginalSize"],
    "original-volume-type": lambda d: d["OriginalVolumeType"],
}


@operation("ec2", "DescribeVolumesModifications")
def describe_modifications(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    mods = [modification_dict(m) for m in V.modifications_of(ctx, params.get("VolumeIds"))]
    mods = filter_select(mods, params.get("Filters"), _MOD_FILTERS)
    return {"VolumesModifications": mods}


@operation("ec2", "DescribeVolumeAttribute")
def describe_volume_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = params.get("Attribute")
    vol = V.owned_volume(ctx, params["VolumeId"])
    if attribute == "autoEnableIO":
        return {"VolumeId": vol.id, "AutoEnableIO": {"Value": bool(vol.auto_enable_io)}}
    if attribute == "productCodes":
        return {"VolumeId": vol.id, "ProductCodes": []}
    raise InvalidParameterValue(f"Value ({attribute}) for parameter attribute is invalid.")


@operation("ec2", "ModifyVolumeAttribute")
def modify_volume_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    value = (params.get("AutoEnableIO") or {}).get("Value")
    if value is None:
        raise MissingParameter("AutoEnableIO")
    V.set_auto_enable_io(ctx, params["VolumeId"], bool(value))
    return {}
