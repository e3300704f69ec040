"""Images whose snapshots are made now: CreateImage and CopyImage (R-IMG-1, R-IMG-2).

Both start the image ``pending`` with one new snapshot per EBS mapping (a snapshot of
each attached volume, or a copy of each source snapshot); ``image_states`` moves the
image to ``available``/``failed`` when those snapshots reach a final state (R-LIFE-1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from ebscrypt.context import Caller, RequestContext
from ebscrypt.domain import image_states as states
from ebscrypt.domain.outcome import check_key_dependency
from ebscrypt.engines.ec2 import snapshots as core_snapshots
from ebscrypt.engines.ec2 import tags as core_tags
from ebscrypt.engines.ec2 import volumes as core_volumes
from ebscrypt.engines.ec2.ids import new_id
from ebscrypt.engines.ec2.image_records import (
    add_non_ebs_mapping,
    check_image_id,
    check_name,
    ebs_mapping,
    get_image,
    insert_image,
    size_check,
)
from ebscrypt.engines.ec2.snapshot_access import get_snapshot
from ebscrypt.errors import (
    IncorrectState,
    InvalidBlockDeviceMapping,
    InvalidParameterValue,
    InvalidRequest,
    ServiceError,
)
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t

NO_STORAGE_ACCESS_MESSAGE = "You do not have permission to access the storage of this ami"


# ============================================================================ CreateImage


@dataclass(frozen=True)
class ImageCreation:
    """CreateImage's request: the new image's name and description, BlockDeviceMapping
    overrides and extra mappings, TagSpecifications (for the image and its snapshots)."""

    name: str | None
    description: str | None = None
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    tag_specifications: list[dict[str, Any]] | None = None


def _add_extra_mappings(conn: Connection, caller: Caller, extra: dict[str, dict[str, Any]],
                        mappings: list[dict[str, Any]]) -> None:
    """CreateImage's mappings for devices the instance has no volume on: empty volumes (by
    size), snapshots the caller may see, ephemeral and NoDevice entries. [conn]"""
    for device, bdm in extra.items():
        if add_non_ebs_mapping(mappings, device, bdm):
            continue
        ebs = bdm.get("Ebs") or {}
        if ebs.get("SnapshotId"):
            snapshot = get_snapshot(conn, caller, ebs["SnapshotId"])
            size = size_check(ebs.get("VolumeSize"), snapshot)
            encrypted = bool(snapshot.encrypted)
        elif ebs.get("VolumeSize"):
            size, encrypted = int(ebs["VolumeSize"]), bool(ebs.get("Encrypted"))
        else:
            raise InvalidBlockDeviceMapping(f"The block-device mapping {device} needs a snapshot or a volume size.")
        mappings.append(ebs_mapping(
            device, snapshot_id=ebs.get("SnapshotId"), size=size, volume_type=ebs.get("VolumeType"),
            delete_on_termination=ebs.get("DeleteOnTermination"), encrypted=encrypted,
        ))


def create_image(ctx: RequestContext, req: ImageCreation, instance: Any) -> str:
    """R-IMG-2: one snapshot per attached EBS volume, each with its volume's own key.

    ``instance`` is the caller's instance record (engines/ec2/instances.py looked it up
    and checked its state).
    """
    caller = ctx.caller
    overrides = {b["DeviceName"]: b for b in req.block_device_mappings or [] if b.get("DeviceName")}
    image_tags = core_tags.tag_specs(req.tag_specifications, "image")
    snapshot_tags = core_tags.tag_specs(req.tag_specifications, "snapshot")
    image_id = new_id("ami")
    with ctx.runtime.db.begin() as conn:
        name = check_name(conn, caller.account, caller.region, req.name)
        mappings: list[dict[str, Any]] = []
        attached = sorted(core_volumes.volumes_of_instance(conn, instance.instance_id), key=lambda va: va[1].device)
        for volume, attachment in attached:
            override = overrides.pop(attachment.device, None) or {}
            if override.get("NoDevice") is not None:
                continue
            oebs = override.get("Ebs") or {}
            snapshot = core_snapshots.create_snapshot_from_volume(
                ctx, conn, volume.id,
                description=f"Created by CreateImage({instance.instance_id}) for {image_id}",
                tags=snapshot_tags or None,
            )
            size = oebs.get("VolumeSize") or volume.size
            if size < volume.size:
                raise InvalidBlockDeviceMapping(
                    f"Volume of size {size}GB is smaller than snapshot '{snapshot.id}', expect size >= {volume.size}GB",
                )
            dot = oebs.get("DeleteOnTermination")
            mappings.append(ebs_mapping(
                attachment.device, snapshot_id=snapshot.id, size=size,
                volume_type=oebs.get("VolumeType") or volume.volume_type,
                delete_on_termination=attachment.delete_on_termination if dot is None else dot,
                encrypted=bool(volume.encrypted),
                iops=volume.iops if volume.volume_type in ("io1", "io2", "gp3") else None,
                throughput=volume.throughput if volume.volume_type == "gp3" else None,
            ))
        _add_extra_mappings(conn, caller, overrides, mappings)
        if not any((m.get("Ebs") or {}).get("SnapshotId") for m in mappings):
            raise InvalidParameterValue(f"Instance {instance.instance_id} has no EBS volume to image.")
        insert_image(conn, ctx, image_id, dict(
            name=name,
            description=req.description,
            architecture=instance.architecture or "x86_64",
            virtualization_type=instance.virtualization_type or "hvm",
            root_device_name=instance.root_device_name,
            ena_support=instance.ena_support,
            source_instance_id=instance.instance_id,
        ), mappings, image_tags)
    ctx.runtime.jobs.notify()
    return image_id


# ============================================================================ CopyImage


@dataclass(frozen=True)
class ImageCopy:
    """CopyImage's request (None: absent)."""

    source_image_id: str | None
    source_region: str | None = None
    name: str | None = None
    description: str | None = None  # None: the source image's
    encrypted: bool | None = None
    kms_key_id: str | None = None
    client_token: str | None = None
    copy_image_tags: bool = False
    tag_specifications: list[dict[str, Any]] | None = None


def _copy_plans(ctx: RequestContext, source: Any, other_region: str | None, encrypted: bool | None,
                kms_key_id: str | None) -> list[tuple[dict[str, Any], Any]]:
    """[KMS, no conn]: each mapping with its snapshot's copy plan (§2 per snapshot; None for
    a mapping without a snapshot). ``other_region``: the source's, for a cross-region copy."""
    plans: list[tuple[dict[str, Any], Any]] = []
    for m in source.mappings:
        snap_id = (m.get("Ebs") or {}).get("SnapshotId")
        if snap_id:
            plan = core_snapshots.prepare_copy(ctx, snap_id, source_region=other_region,
                                               encrypted=encrypted, kms_key_id=kms_key_id)
            plans.append((m, plan))
        else:
            plans.append((m, None))
    return plans


def _copied_mappings(ctx: RequestContext, conn: Connection, plans: list[tuple[dict[str, Any], Any]],
                     image_id: str, source_id: str) -> list[dict[str, Any]]:
    """The new image's mappings: each snapshot copied by its plan (stored pending; its job
    copies the blocks), other mappings as they were. [conn]"""
    mappings: list[dict[str, Any]] = []
    for m, plan in plans:
        if plan is None:
            mappings.append(json.loads(json.dumps(m)))
            continue
        snap_id = m["Ebs"]["SnapshotId"]
        copy = core_snapshots.insert_copy(
            ctx, conn, plan,
            description=f"Copied for DestinationAmi {image_id} from SourceAmi {source_id} for "
                        f"SourceSnapshot {snap_id}. Task created on {ctx.runtime.clock.now():%Y-%m-%dT%H:%M:%S}.",
        )
        ebs = dict(m["Ebs"], SnapshotId=copy.id, Encrypted=bool(copy.encrypted))
        mappings.append({"DeviceName": m["DeviceName"], "Ebs": ebs})
    return mappings


def copy_image(ctx: RequestContext, req: ImageCopy) -> str:
    """R-IMG-1: §2 applied to every snapshot independently; one KmsKeyId at most."""
    caller = ctx.caller
    source_region = req.source_region or caller.region
    source_id = check_image_id(req.source_image_id)
    token = req.client_token
    encrypted = req.encrypted
    kms_key_id = req.kms_key_id
    check_key_dependency(encrypted, kms_key_id)  # R-OUT-1, before anything else
    with ctx.runtime.db.read() as conn:
        if token:
            row = conn.execute(
                select(images_t.c.image_id).where(images_t.c.account == caller.account, images_t.c.region == caller.region,
                                                  images_t.c.client_token == token)
            ).first()
            if row is not None:
                return str(row.image_id)  # idempotent retry
        source = get_image(conn, caller.account, source_region, source_id)
        if source.state != states.IMAGE_AVAILABLE:
            raise IncorrectState(f"Image {source_id} is in state {source.state}; only available images can be copied.")
        check_name(conn, caller.account, caller.region, req.name)
        source_tags = core_tags.tags_for(conn, caller.account, [source_id])[source_id] if req.copy_image_tags else []
        if source.account != caller.account:
            # Copying needs read access to the storage: each snapshot shared with the caller.
            for snap_id in source.snapshot_ids():
                try:
                    get_snapshot(conn, caller, snap_id, region=source_region)
                except ServiceError:
                    raise InvalidRequest(NO_STORAGE_ACCESS_MESSAGE) from None
    image_id = new_id("ami")
    cross_region = source_region != caller.region
    plans = _copy_plans(ctx, source, source_region if cross_region else None, encrypted, kms_key_id)
    tags = source_tags + core_tags.tag_specs(req.tag_specifications, "image")
    with ctx.runtime.db.begin() as conn:
        name = check_name(conn, caller.account, caller.region, req.name)
        mappings = _copied_mappings(ctx, conn, plans, image_id, source_id)
        insert_image(conn, ctx, image_id, dict(
            name=name,
            description=source.description if req.description is None else req.description,
            architecture=source.architecture,
            virtualization_type=source.virtualization_type,
            root_device_name=source.root_device_name,
            ena_support=source.ena_support,
            sriov_net_support=source.sriov_net_support,
            boot_mode=source.boot_mode,
            tpm_support=source.tpm_support,
            imds_support=source.imds_support,
            platform=source.platform,
            source_image_id=source_id,
            source_region=source_region,
            client_token=token,
        ), mappings, tags)
    ctx.runtime.jobs.notify()
    return image_id
