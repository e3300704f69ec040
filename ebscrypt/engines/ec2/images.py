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
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.context import RequestContext
from ebscrypt.domain import instance_types as states
from ebscrypt.engines import ec2 as core
from ebscrypt.engines.ec2.attributes import canonical, canonical_names, legacy_operation
from ebscrypt.engines.ec2.ids import check_id, is_well_formed, new_id
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.engines.ec2.records import Snapshot, aware
from ebscrypt.engines.ec2.snapshots import delete_snapshot
from ebscrypt.engines.jobs import JobContext, job_kind
from ebscrypt.errors import ServiceError
from ebscrypt.storage.tables.ec2 import ec2_snapshots
from ebscrypt.storage.tables.ec2_images import ec2_image_launch_permissions as perms_t
from ebscrypt.storage.tables.ec2_images import ec2_image_snapshots as image_snaps_t
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t

_NAME_RE = re.compile(r"^[a-zA-Z0-9()\[\] ./\-'@_]{3,128}$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")

PUBLIC_ENCRYPTED_MESSAGE = "Encrypted snapshots can\u2019t be shared publicly. Specify another snapshot."
AWS_MANAGED_SHARE_MESSAGE = "Snapshots encrypted with the AWS Managed CMK can\u2019t be shared. Specify another snapshot."
NO_STORAGE_ACCESS_MESSAGE = "You do not have permission to access the storage of this ami"


# ============================================================================ records


@dataclass(frozen=True)
class Image:
    image_id: str
    account: str
    region: str
    name: str
    description: str | None
    state: str
    state_reason_code: str | None
    state_reason_message: str | None
    architecture: str
    virtualization_type: str
    root_device_name: str | None
    root_device_type: str
    ena_support: bool | None
    sriov_net_support: str | None
    boot_mode: str | None
    tpm_support: str | None
    imds_support: str | None
    image_location: str | None
    kernel_id: str | None
    ramdisk_id: str | None
    platform: str | None
    public: bool
    mappings: list[dict[str, Any]]
    source_image_id: str | None
    source_region: str | None
    source_instance_id: str | None
    client_token: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> "Image":
        values = dict(row)
        values["mappings"] = json.loads(values["mappings"])
        values["created_at"] = aware(values["created_at"])
        values["public"] = bool(values["public"])
        return cls(**values)

    def snapshot_ids(self) -> list[str]:
        return [m["Ebs"]["SnapshotId"] for m in self.mappings if (m.get("Ebs") or {}).get("SnapshotId")]

    @property
    def has_encrypted_snapshot(self) -> bool:
        return any((m.get("Ebs") or {}).get("Encrypted") for m in self.mappings)


def new_image_id() -> str:
    return new_id("ami")


# ============================================================================ errors


def malformed(image_id: str) -> ServiceError:
    return ServiceError(f'Invalid id: "{image_id}" (expecting "ami-...")', code="InvalidAMIID.Malformed")


def not_found(ids: Iterable[str]) -> ServiceError:
    ids = list(ids)
    if len(ids) == 1:
        return ServiceError(f"The image id '[{ids[0]}]' does not exist", code="InvalidAMIID.NotFound")
    return ServiceError(f"The image ids '[{', '.join(ids)}]' do not exist", code="InvalidAMIID.NotFound")


def check_image_id(image_id: str | None) -> str:
    if not image_id:
        raise ServiceError("The request must contain the parameter ImageId", code="MissingParameter")
    if not is_well_formed(image_id, "ami"):
        raise malformed(image_id)
    return image_id


# ============================================================================ lookups


def _launch_permitted(conn: Connection, image: Image, account: str) -> bool:
    if image.account == account or image.public:
        return True
    row = conn.execute(
        select(perms_t.c.user_id).where(perms_t.c.image_id == image.image_id, perms_t.c.user_id == account)
    ).first()
    return row is not None


def get_image(conn: Connection, account: str, region: str, image_id: str, *, owner_only: bool = False) -> Image:
    """The image as ``account`` may see it in ``region`` (InvalidAMIID.NotFound otherwise). [conn]"""
    check_image_id(image_id)
    row = conn.execute(
        select(images_t).where(images_t.c.image_id == image_id, images_t.c.region == region)
    ).mappings().first()
    if row is None:
        raise not_found([image_id])
    image = Image.from_row(row)
    if owner_only and image.account != account:
        if _launch_permitted(conn, image, account):
            raise ServiceError(f"Not authorized for image:{image_id}", code="AuthFailure")
        raise not_found([image_id])
    if not _launch_permitted(conn, image, account):
        raise not_found([image_id])
    return image


def launch_permissions(conn: Connection, image_id: str) -> list[str]:
    return [r.user_id for r in conn.execute(select(perms_t.c.user_id).where(perms_t.c.image_id == image_id).order_by(perms_t.c.user_id))]


def image_using_snapshot(conn: Connection, snapshot_id: str) -> str | None:
    """R-SNAP-3: the id of an image whose mappings name ``snapshot_id``, if any. [conn]"""
    row = conn.execute(select(image_snaps_t.c.image_id).where(image_snaps_t.c.snapshot_id == snapshot_id)).first()
    return row.image_id if row else None


# ============================================================================ views


def image_view(image: Image, tags: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The model's ``Image`` structure."""
    out: dict[str, Any] = {
        "ImageId": image.image_id,
        "ImageLocation": image.image_location or f"{image.account}/{image.name}",
        "State": image.state,
        "OwnerId": image.account,
        "CreationDate": image.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "Public": image.public,
        "Architecture": image.architecture,
        "ImageType": "machine",
        "Name": image.name,
        "RootDeviceType": image.root_device_type,
        "VirtualizationType": image.virtualization_type,
        "Hypervisor": "xen",
        "BlockDeviceMappings": [_mapping_view(m) for m in image.mappings],
        "PlatformDetails": "Windows" if image.platform == "windows" else "Linux/UNIX",
        "UsageOperation": "RunInstances:0002" if image.platform == "windows" else "RunInstances",
    }
    if image.description is not None:
        out["Description"] = image.description
    if image.root_device_name:
        out["RootDeviceName"] = image.root_device_name
    if image.ena_support is not None:
        out["EnaSupport"] = image.ena_support
    if image.sriov_net_support:
        out["SriovNetSupport"] = image.sriov_net_support
    if image.boot_mode:
        out["BootMode"] = image.boot_mode
    if image.tpm_support:
        out["TpmSupport"] = image.tpm_support
    if image.imds_support:
        out["ImdsSupport"] = image.imds_support
    if image.kernel_id:
        out["KernelId"] = image.kernel_id
    if image.ramdisk_id:
        out["RamdiskId"] = image.ramdisk_id
    if image.platform:
        out["Platform"] = image.platform
    if image.source_instance_id:
        out["SourceInstanceId"] = image.source_instance_id
    if image.source_image_id:
        out["SourceImageId"] = image.source_image_id
        out["SourceImageRegion"] = image.source_region or image.region
    if image.state_reason_code or image.state_reason_message:
        out["StateReason"] = {"Code": image.state_reason_code or "", "Message": image.state_reason_message or ""}
    if tags:
        out["Tags"] = tags
    return out


def _mapping_view(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in m.items() if k in ("DeviceName", "VirtualName", "NoDevice")}
    if m.get("Ebs") is not None:
        ebs = m["Ebs"]
        out["Ebs"] = {k: ebs[k] for k in ("DeleteOnTermination", "Iops", "SnapshotId", "VolumeSize",
                                            "VolumeType", "Throughput", "Encrypted") if ebs.get(k) is not None}
    return out


# ============================================================================ settle


def settle(read_states: Callable[[], list[str]], transitional: Iterable[str], *, timeout: float = 2.5,
           interval: float = 0.05) -> None:
    """Wait (briefly) while any state ``read_states()`` returns is transitional.

    Describe calls use this so that a resource whose background job finishes within a
    moment is reported in its final state: boto3 waiters (delay 15 s) then succeed on
    their first poll (R-LIFE-1) instead of sleeping.
    """
    transitional = set(transitional)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not transitional.intersection(read_states()):
            return
        time.sleep(interval)


# ============================================================================ finishing


def _reason_parts(message: str | None) -> tuple[str, str]:
    """A snapshot's StateMessage → the image's StateReason (code, message).

    ``"Client.InvalidKMSKey.InvalidState: The KMS key … is disabled."`` keeps its code; a
    bare KMS refusal (the copier may not use the source key, R-SHARE-4) is reported as
    EC2 reports key problems, ``Client.InvalidKMSKey.InvalidState``, with the cause.
    """
    message = message or "Client.Error: a snapshot of the image could not be created"
    head, sep, _rest = message.partition(": ")
    if sep and re.match(r"^[A-Za-z]+(\.[A-Za-z]+)+$", head):
        return head, message
    if re.search(r"kms|KMS key|[Kk]ey '", message):
        return "Client.InvalidKMSKey.InvalidState", f"Client.InvalidKMSKey.InvalidState: {message}"
    return "Client.Error", f"Client.Error: {message}"


def refresh_image(conn: Connection, image_id: str) -> str | None:
    """Move a pending image to available/failed from its snapshots' states. [conn]

    Returns the new state (or None if the image is gone).
    """
    row = conn.execute(select(images_t).where(images_t.c.image_id == image_id)).mappings().first()
    if row is None:
        return None
    image = Image.from_row(row)
    if image.state != states.IMAGE_PENDING:
        return image.state
    snap_ids = image.snapshot_ids()
    found = {
        r.id: (r.state, r.state_message)
        for r in conn.execute(
            select(ec2_snapshots.c.id, ec2_snapshots.c.state, ec2_snapshots.c.state_message).where(ec2_snapshots.c.id.in_(snap_ids))
        )
    } if snap_ids else {}
    snapshot_states = [found.get(s, ("error", f"Client.Error: snapshot {s} no longer exists"))[0] for s in snap_ids]
    new_state = states.image_state_after(snapshot_states)
    if new_state == states.IMAGE_PENDING:
        return new_state
    values: dict[str, Any] = {"state": new_state}
    if new_state == states.IMAGE_FAILED:
        failed = next(s for s in snap_ids if found.get(s, ("error", None))[0] == "error")
        code, message = _reason_parts(found.get(failed, ("error", None))[1])
        values.update(state_reason_code=code, state_reason_message=f"{message} (snapshot {failed})")
    conn.execute(update(images_t).where(images_t.c.image_id == image_id, images_t.c.state == states.IMAGE_PENDING).values(**values))
    return new_state


def _on_snapshot_final(runtime: Any, snapshot_id: str, state: str) -> None:
    with runtime.db.begin() as conn:
        image_ids = [r.image_id for r in conn.execute(select(image_snaps_t.c.image_id).where(image_snaps_t.c.snapshot_id == snapshot_id))]
        for image_id in image_ids:
            refresh_image(conn, image_id)


def _fail_image(runtime: Any, payload: dict[str, Any], reason: str) -> None:
    with runtime.db.begin() as conn:
        conn.execute(
            update(images_t).where(images_t.c.image_id == payload["image_id"], images_t.c.state == states.IMAGE_PENDING)
            .values(state=states.IMAGE_FAILED, state_reason_code="Server.InternalError", state_reason_message=reason)
        )


@job_kind("image_finalize", resumable=True, on_fail=_fail_image)
def _finalize_job(job: JobContext) -> None:
    """Finish an image whose snapshots may already be final (RegisterImage, races)."""
    with job.runtime.db.begin() as conn:
        refresh_image(conn, job.payload["image_id"])


core.register_snapshot_listener(_on_snapshot_final)
core.register_snapshot_in_use_checker(image_using_snapshot)


# ============================================================================ helpers


def _check_name(conn: Connection, account: str, region: str, name: str | None) -> str:
    if not name:
        raise ServiceError("The request must contain the parameter name", code="MissingParameter")
    if not _NAME_RE.match(name):
        raise ServiceError(
            f"AMI names must be between 3 and 128 characters long, and may contain letters, numbers, "
            f"'(', ')', '.', '-', '/' and '_' ({name!r})",
            code="InvalidAMIName.Malformed",
        )
    row = conn.execute(
        select(images_t.c.image_id).where(images_t.c.account == account, images_t.c.region == region, images_t.c.name == name)
    ).first()
    if row is not None:
        raise ServiceError(f"AMI name {name} is already in use by AMI {row.image_id}", code="InvalidAMIName.Duplicate")
    return name


def _insert_image(conn: Connection, ctx: RequestContext, image_id: str, values: dict[str, Any],
                  mappings: list[dict[str, Any]], tags: list[dict[str, str]], *, ready: bool = False) -> None:
    """Write the image; ``ready``: its snapshots are all completed already, so it is
    ``available`` at once (RegisterImage), else ``pending`` until they are."""
    caller = ctx.caller
    row = dict(
        image_id=image_id,
        account=caller.account,
        region=caller.region,
        state=states.IMAGE_AVAILABLE if ready else states.IMAGE_PENDING,
        architecture="x86_64",
        virtualization_type="hvm",
        root_device_type="ebs",
        public=False,
        mappings=json.dumps(mappings),
        created_at=ctx.runtime.clock.now(),
    )
    row.update({k: v for k, v in values.items() if v is not None})
    conn.execute(insert(images_t).values(**row))
    for snap in {(m.get("Ebs") or {}).get("SnapshotId") for m in mappings} - {None}:
        conn.execute(insert(image_snaps_t).values(image_id=image_id, snapshot_id=snap))
    if tags:
        core.put_tags(conn, caller.account, caller.region, image_id, tags)
    if not ready:
        ctx.runtime.jobs.submit("image_finalize", {"image_id": image_id}, conn=conn)


def _ebs_mapping(device: str, *, snapshot_id: str | None, size: int, volume_type: str | None,
                 delete_on_termination: bool | None, encrypted: bool, iops: int | None = None,
                 throughput: int | None = None) -> dict[str, Any]:
    ebs: dict[str, Any] = {
        "DeleteOnTermination": True if delete_on_termination is None else bool(delete_on_termination),
        "VolumeSize": int(size),
        "VolumeType": volume_type or "gp2",
        "Encrypted": bool(encrypted),
    }
    if snapshot_id:
        ebs["SnapshotId"] = snapshot_id
    if iops is not None:
        ebs["Iops"] = iops
    if throughput is not None:
        ebs["Throughput"] = throughput
    return {"DeviceName": device, "Ebs": ebs}


def _size_check(size: int | None, snapshot: Snapshot) -> int:
    if size is None:
        return snapshot.volume_size
    if size < snapshot.volume_size:
        raise ServiceError(
            f"Volume of size {size}GB is smaller than snapshot '{snapshot.id}', expect size >= {snapshot.volume_size}GB",
            code="InvalidBlockDeviceMapping",
        )
    return size


# ============================================================================ RegisterImage


def register_image(ctx: RequestContext, params: dict[str, Any]) -> str:
    """R-IMG-3: an image over existing snapshots the caller owns."""
    caller = ctx.caller
    if params.get("ImageLocation"):
        raise ServiceError(
            "Instance store-backed (S3 manifest) images are not supported; register from EBS snapshots.",
            code="UnsupportedOperation",
        )
    requested = params.get("BlockDeviceMappings") or []
    if not requested:
        raise ServiceError(
            "The request must contain the parameter BlockDeviceMapping (an EBS snapshot for the root device)",
            code="MissingParameter",
        )
    root = params.get("RootDeviceName") or requested[0].get("DeviceName")
    tags = core.tag_specs(params.get("TagSpecifications"), "image")
    image_id = new_image_id()
    with ctx.runtime.db.begin() as conn:
        name = _check_name(conn, caller.account, caller.region, params.get("Name"))
        mappings: list[dict[str, Any]] = []
        seen: set[str] = set()
        all_completed = True
        for bdm in requested:
            device = bdm.get("DeviceName")
            if not device:
                raise ServiceError("The request must contain the parameter DeviceName", code="MissingParameter")
            if device in seen:
                raise ServiceError(f"The device '{device}' is used in more than one block-device mapping",
                                   code="InvalidBlockDeviceMapping")
            seen.add(device)
            if bdm.get("NoDevice") is not None:
                continue
            if bdm.get("VirtualName"):
                mappings.append({"DeviceName": device, "VirtualName": bdm["VirtualName"]})
                continue
            ebs = bdm.get("Ebs") or {}
            if ebs.get("KmsKeyId"):
                raise ServiceError(
                    "KmsKeyId cannot be set when registering an image: snapshots keep their own keys.",
                    code="InvalidParameterCombination",
                )
            snap_id = ebs.get("SnapshotId")
            if snap_id:
                check_id(snap_id, "snap", "InvalidSnapshotID.Malformed")
                snapshot = core.get_snapshot(conn, caller, snap_id)
                if snapshot.account != caller.account:
                    raise ServiceError(
                        f"You do not own snapshot {snap_id}: copy it into your account before registering an image.",
                        code="InvalidParameterValue",
                    )
                if snapshot.state == "error":
                    raise ServiceError(f"Snapshot {snap_id} is in state error.", code="IncorrectState")
                all_completed = all_completed and snapshot.state == "completed"
                size = _size_check(ebs.get("VolumeSize"), snapshot)
                encrypted = bool(snapshot.encrypted)
            else:
                if device == root:
                    raise ServiceError(
                        f"The root device {device} must name an EBS snapshot.", code="InvalidBlockDeviceMapping"
                    )
                if not ebs.get("VolumeSize"):
                    raise ServiceError(
                        f"The block-device mapping {device} needs a snapshot or a volume size.",
                        code="InvalidBlockDeviceMapping",
                    )
                size = int(ebs["VolumeSize"])
                encrypted = bool(ebs.get("Encrypted"))
            mappings.append(_ebs_mapping(
                device, snapshot_id=snap_id, size=size, volume_type=ebs.get("VolumeType"),
                delete_on_termination=ebs.get("DeleteOnTermination"), encrypted=encrypted,
                iops=ebs.get("Iops"), throughput=ebs.get("Throughput"),
            ))
        if not any(m["DeviceName"] == root and (m.get("Ebs") or {}).get("SnapshotId") for m in mappings):
            raise ServiceError(
                f"The root device name {root} does not match a block-device mapping with a snapshot.",
                code="InvalidBlockDeviceMapping",
            )
        _insert_image(conn, ctx, image_id, dict(
            name=name,
            description=params.get("Description"),
            architecture=params.get("Architecture") or "x86_64",
            virtualization_type=params.get("VirtualizationType") or "hvm",
            root_device_name=root,
            ena_support=params.get("EnaSupport"),
            sriov_net_support=params.get("SriovNetSupport"),
            boot_mode=params.get("BootMode"),
            tpm_support=params.get("TpmSupport"),
            imds_support=params.get("ImdsSupport"),
            kernel_id=params.get("KernelId"),
            ramdisk_id=params.get("RamdiskId"),
        ), mappings, tags, ready=all_completed)
    ctx.runtime.jobs.notify()
    return image_id


# ============================================================================ CreateImage


def create_image(ctx: RequestContext, params: dict[str, Any], instance: Any) -> str:
    """R-IMG-2: one snapshot per attached EBS volume, each with its volume's own key.

    ``instance`` is the caller's instance record (engines/ec2/instances.py looked it up
    and checked its state).
    """
    caller = ctx.caller
    overrides = {b.get("DeviceName"): b for b in params.get("BlockDeviceMappings") or [] if b.get("DeviceName")}
    image_tags = core.tag_specs(params.get("TagSpecifications"), "image")
    snapshot_tags = core.tag_specs(params.get("TagSpecifications"), "snapshot")
    image_id = new_image_id()
    with ctx.runtime.db.begin() as conn:
        name = _check_name(conn, caller.account, caller.region, params.get("Name"))
        mappings: list[dict[str, Any]] = []
        attached = sorted(core.volumes_of_instance(conn, instance.instance_id), key=lambda va: va[1].device)
        for volume, attachment in attached:
            override = overrides.pop(attachment.device, None) or {}
            if override.get("NoDevice") is not None:
                continue
            oebs = override.get("Ebs") or {}
            snapshot = core.create_snapshot_from_volume(
                ctx, conn, volume.id,
                description=f"Created by CreateImage({instance.instance_id}) for {image_id}",
                tags=snapshot_tags or None,
            )
            size = oebs.get("VolumeSize") or volume.size
            if size < volume.size:
                raise ServiceError(
                    f"Volume of size {size}GB is smaller than snapshot '{snapshot.id}', expect size >= {volume.size}GB",
                    code="InvalidBlockDeviceMapping",
                )
            dot = oebs.get("DeleteOnTermination")
            mappings.append(_ebs_mapping(
                attachment.device, snapshot_id=snapshot.id, size=size,
                volume_type=oebs.get("VolumeType") or volume.volume_type,
                delete_on_termination=attachment.delete_on_termination if dot is None else dot,
                encrypted=bool(volume.encrypted),
                iops=volume.iops if volume.volume_type in ("io1", "io2", "gp3") else None,
                throughput=volume.throughput if volume.volume_type == "gp3" else None,
            ))
        for device, bdm in overrides.items():  # extra mappings: empty volumes, ephemeral
            if bdm.get("NoDevice") is not None:
                continue
            if bdm.get("VirtualName"):
                mappings.append({"DeviceName": device, "VirtualName": bdm["VirtualName"]})
                continue
            ebs = bdm.get("Ebs") or {}
            if ebs.get("SnapshotId"):
                snapshot = core.get_snapshot(conn, caller, ebs["SnapshotId"])
                size = _size_check(ebs.get("VolumeSize"), snapshot)
                encrypted = bool(snapshot.encrypted)
            elif ebs.get("VolumeSize"):
                size, encrypted = int(ebs["VolumeSize"]), bool(ebs.get("Encrypted"))
            else:
                raise ServiceError(f"The block-device mapping {device} needs a snapshot or a volume size.",
                                   code="InvalidBlockDeviceMapping")
            mappings.append(_ebs_mapping(
                device, snapshot_id=ebs.get("SnapshotId"), size=size, volume_type=ebs.get("VolumeType"),
                delete_on_termination=ebs.get("DeleteOnTermination"), encrypted=encrypted,
            ))
        if not any((m.get("Ebs") or {}).get("SnapshotId") for m in mappings):
            raise ServiceError(f"Instance {instance.instance_id} has no EBS volume to image.",
                               code="InvalidParameterValue")
        _insert_image(conn, ctx, image_id, dict(
            name=name,
            description=params.get("Description"),
            architecture=instance.architecture or "x86_64",
            virtualization_type=instance.virtualization_type or "hvm",
            root_device_name=instance.root_device_name,
            ena_support=instance.ena_support,
            source_instance_id=instance.instance_id,
        ), mappings, image_tags)
    ctx.runtime.jobs.notify()
    return image_id


# ============================================================================ CopyImage


def copy_image(ctx: RequestContext, params: dict[str, Any]) -> str:
    """R-IMG-1: §2 applied to every snapshot independently; one KmsKeyId at most."""
    caller = ctx.caller
    source_region = params.get("SourceRegion") or caller.region
    source_id = check_image_id(params.get("SourceImageId"))
    token = params.get("ClientToken")
    encrypted = params.get("Encrypted")
    kms_key_id = params.get("KmsKeyId")
    if kms_key_id and encrypted is not True:  # R-OUT-1, before anything else
        raise ServiceError("The parameter KmsKeyId requires the parameter Encrypted to be set.",
                           code="InvalidParameterDependency")
    with ctx.runtime.db.read() as conn:
        if token:
            row = conn.execute(
                select(images_t.c.image_id).where(images_t.c.account == caller.account, images_t.c.region == caller.region,
                                                  images_t.c.client_token == token)
            ).first()
            if row is not None:
                return row.image_id  # idempotent retry
        source = get_image(conn, caller.account, source_region, source_id)
        if source.state != states.IMAGE_AVAILABLE:
            raise ServiceError(f"Image {source_id} is in state {source.state}; only available images can be copied.",
                               code="IncorrectState")
        _check_name(conn, caller.account, caller.region, params.get("Name"))
        source_tags = core.tags_for(conn, caller.account, [source_id])[source_id] if params.get("CopyImageTags") else []
        if source.account != caller.account:
            # Copying needs read access to the storage: each snapshot shared with the caller.
            for snap_id in source.snapshot_ids():
                try:
                    core.get_snapshot(conn, caller, snap_id, region=source_region)
                except ServiceError:
                    raise ServiceError(NO_STORAGE_ACCESS_MESSAGE, code="InvalidRequest") from None
    image_id = new_image_id()
    cross_region = source_region != caller.region
    plans: list[tuple[dict[str, Any], Any]] = []
    for m in source.mappings:  # [KMS, no conn]: each snapshot's plan (§2 per snapshot)
        snap_id = (m.get("Ebs") or {}).get("SnapshotId")
        if snap_id:
            plan = core.prepare_copy(ctx, snap_id, source_region=source_region if cross_region else None,
                                     encrypted=encrypted, kms_key_id=kms_key_id)
            plans.append((m, plan))
        else:
            plans.append((m, None))
    tags = source_tags + core.tag_specs(params.get("TagSpecifications"), "image")
    with ctx.runtime.db.begin() as conn:
        name = _check_name(conn, caller.account, caller.region, params.get("Name"))
        mappings: list[dict[str, Any]] = []
        for m, plan in plans:
            if plan is None:
                mappings.append(json.loads(json.dumps(m)))
                continue
            snap_id = m["Ebs"]["SnapshotId"]
            copy = core.insert_copy(
                ctx, conn, plan,
                description=f"Copied for DestinationAmi {image_id} from SourceAmi {source_id} for "
                            f"SourceSnapshot {snap_id}. Task created on {ctx.runtime.clock.now():%Y-%m-%dT%H:%M:%S}.",
            )
            ebs = dict(m["Ebs"], SnapshotId=copy.id, Encrypted=bool(copy.encrypted))
            mappings.append({"DeviceName": m["DeviceName"], "Ebs": ebs})
        _insert_image(conn, ctx, image_id, dict(
            name=name,
            description=params.get("Description", source.description),
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
        core.delete_tags_of(conn, image_id)
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
    def get(entry: tuple[Image, list]) -> Any:
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
    "creation-date": lambda e: e[0].created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
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


def describe_images(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """DescribeImages as the caller sees it: own, public and shared images of its region."""
    caller = ctx.caller
    ids = params.get("ImageIds") or []
    for image_id in ids:
        if not is_well_formed(image_id, "ami"):
            raise malformed(image_id)
    owners = params.get("Owners") or []
    executable = params.get("ExecutableUsers") or []
    filters = params.get("Filters")

    def read() -> list[tuple[Image, list[dict[str, str]]]]:
        with ctx.runtime.db.read() as conn:
            query = select(images_t).where(images_t.c.region == caller.region)
            if ids:
                query = query.where(images_t.c.image_id.in_(ids))
            owner_ids = {caller.account if o == "self" else o for o in owners}
            if owners:
                query = query.where(images_t.c.account.in_(owner_ids))
            rows = [Image.from_row(r) for r in conn.execute(query.order_by(images_t.c.created_at, images_t.c.image_id)).mappings()]
            shared_with_me = {
                r.image_id for r in conn.execute(select(perms_t.c.image_id).where(perms_t.c.user_id == caller.account))
            }
            visible = [i for i in rows if i.account == caller.account or i.public or i.image_id in shared_with_me]
            if executable:
                wanted: list[Image] = []
                own_perms: dict[str, set[str]] = {}
                for image in visible:
                    if image.account == caller.account and image.image_id not in own_perms:
                        own_perms[image.image_id] = set(launch_permissions(conn, image.image_id))
                for image in visible:
                    for user in executable:
                        if user == "all" and image.public:
                            wanted.append(image)
                            break
                        if user in ("self", caller.account) and (
                            image.account == caller.account or image.image_id in shared_with_me
                        ):
                            wanted.append(image)
                            break
                        if _ACCOUNT_RE.match(user) and image.account == caller.account and (
                            user in own_perms.get(image.image_id, set()) or image.public
                        ):
                            wanted.append(image)
                            break
                visible = wanted
            tags = core.tags_for(conn, caller.account, [i.image_id for i in visible])
            return [(i, tags.get(i.image_id) or []) for i in visible]

    entries = read()
    if ids:
        found = {e[0].image_id for e in entries}
        missing = [i for i in ids if i not in found]
        if missing:
            raise not_found(missing)
    pending = [e[0].image_id for e in entries if e[0].state == states.IMAGE_PENDING]
    if pending:
        _repair(ctx, pending)
        settle(lambda: _states(ctx, pending), [states.IMAGE_PENDING])
        entries = read()
    selected = filter_select(entries, filters, _FILTERS, tag_getter=lambda e: {t["Key"]: t["Value"] for t in e[1]})
    return [image_view(image, tags) for image, tags in selected]


def _states(ctx: RequestContext, image_ids: list[str]) -> list[str]:
    with ctx.runtime.db.read() as conn:
        return [r.state for r in conn.execute(select(images_t.c.state).where(images_t.c.image_id.in_(image_ids)))]


def _repair(ctx: RequestContext, image_ids: list[str]) -> None:
    """Finish pending images whose snapshots are already final (e.g. after a crash)."""
    with ctx.runtime.db.begin() as conn:
        for image_id in image_ids:
            refresh_image(conn, image_id)


# ============================================================================ attributes


# ImageAttributeName, matched without regard to case (engines.ec2.attributes).
_IMAGE_ATTRIBUTES = canonical_names((
    "description", "kernel", "ramdisk", "launchPermission", "productCodes", "blockDeviceMapping",
    "sriovNetSupport", "bootMode", "tpmSupport", "uefiData", "lastLaunchedTime", "imdsSupport",
    "deregistrationProtection"))

# What ModifyImageAttribute can change (its Attribute: "description | imdsSupport | launchPermission").
_MODIFIABLE = ("description", "imdsSupport", "launchPermission")

# The flat lists of the older launchPermission form (OperationType + lists), with the
# LaunchPermission item key each one stands for.
_LEGACY_LISTS = (("UserIds", "UserId"), ("UserGroups", "Group"), ("OrganizationArns", "OrganizationArn"),
                 ("OrganizationalUnitArns", "OrganizationalUnitArn"))


def canonical_attribute(attribute: str | None) -> str | None:
    """The model's spelling of an image attribute name (unknown names come back unchanged)."""
    return None if attribute is None else canonical(attribute, _IMAGE_ATTRIBUTES)


def unknown_attribute(attribute: str) -> ServiceError:
    return ServiceError(f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute.",
                        code="InvalidParameterValue")


def describe_attribute(ctx: RequestContext, image_id: str, attribute: str) -> dict[str, Any]:
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        attribute = canonical_attribute(attribute) or ""
        owner_only = attribute in ("launchPermission",)
        image = get_image(conn, caller.account, caller.region, image_id, owner_only=owner_only)
        out: dict[str, Any] = {"ImageId": image_id}
        if attribute == "launchPermission":
            perms = [{"UserId": u} for u in launch_permissions(conn, image_id)]
            if image.public:
                perms.insert(0, {"Group": "all"})
            out["LaunchPermissions"] = perms
        elif attribute == "description":
            out["Description"] = {"Value": image.description} if image.description is not None else {}
        elif attribute == "blockDeviceMapping":
            out["BlockDeviceMappings"] = [_mapping_view(m) for m in image.mappings]
        elif attribute == "kernel":
            out["KernelId"] = {"Value": image.kernel_id} if image.kernel_id else {}
        elif attribute == "ramdisk":
            out["RamdiskId"] = {"Value": image.ramdisk_id} if image.ramdisk_id else {}
        elif attribute == "productCodes":
            out["ProductCodes"] = []
        elif attribute == "sriovNetSupport":
            out["SriovNetSupport"] = {"Value": image.sriov_net_support} if image.sriov_net_support else {}
        elif attribute == "bootMode":
            out["BootMode"] = {"Value": image.boot_mode} if image.boot_mode else {}
        elif attribute == "tpmSupport":
            out["TpmSupport"] = {"Value": image.tpm_support} if image.tpm_support else {}
        elif attribute == "imdsSupport":
            out["ImdsSupport"] = {"Value": image.imds_support} if image.imds_support else {}
        elif attribute == "deregistrationProtection":
            out["DeregistrationProtection"] = {"Value": "disabled"}
        elif attribute in ("uefiData", "lastLaunchedTime"):
            pass
        else:
            raise unknown_attribute(attribute)
        return out


def _permission_changes(params: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(add, remove) LaunchPermission items from the structured and the flat-list forms."""
    add: list[dict[str, str]] = []
    remove: list[dict[str, str]] = []
    lp = params.get("LaunchPermission") or {}
    add.extend(lp.get("Add") or [])
    remove.extend(lp.get("Remove") or [])
    legacy = [{key: value} for member, key in _LEGACY_LISTS for value in params.get(member) or []]
    if legacy:
        (add if legacy_operation(params) == "add" else remove).extend(legacy)
    for item in add + remove:
        if item.get("OrganizationArn") or item.get("OrganizationalUnitArn"):
            raise ServiceError("Sharing with organizations is not supported by ebscrypt.", code="UnsupportedOperation")
        if "UserId" in item and item["UserId"] is not None and not _ACCOUNT_RE.match(item["UserId"]):
            raise ServiceError(f'Invalid attribute item value "{item["UserId"]}" for userId item type.',
                               code="InvalidAMIAttributeItemValue")
        if "Group" in item and item["Group"] is not None and item["Group"] != "all":
            raise ServiceError(f'Invalid attribute item value "{item["Group"]}" for group item type.',
                               code="InvalidAMIAttributeItemValue")
    return add, remove


def _uses_aws_managed_key(ctx: RequestContext, image: Image) -> bool:
    """R-SHARE-3: any snapshot of the image under the AWS managed key (alias/aws/ebs)? [KMS, no conn]"""
    with ctx.runtime.db.read() as conn:
        keys = {
            r.kms_key_arn
            for r in conn.execute(select(ec2_snapshots.c.kms_key_arn).where(ec2_snapshots.c.id.in_(image.snapshot_ids())))
            if r.kms_key_arn
        }
    if not keys:
        return False
    try:
        managed = ctx.runtime.kms.default_ebs_key(image.account, image.region).arn
    except Exception:  # no KMS engine yet: fall back to describing each key
        managed = None
    for key in keys:
        if key == managed:
            return True
        try:
            if ctx.runtime.kms.describe_key(ctx.caller, key).key_manager == "AWS":
                return True
        except ServiceError:
            continue
    return False


def _attribute_value(params: dict[str, Any], member: str, attribute: str | None, name: str) -> str | None:
    """A new value given as ``<member>.Value``, or as ``Value`` with ``Attribute=<name>``."""
    value = (params.get(member) or {}).get("Value")
    if value is None and attribute == name:
        value = params.get("Value")
    return value


def modify_attribute(ctx: RequestContext, params: dict[str, Any]) -> None:
    caller = ctx.caller
    image_id = check_image_id(params.get("ImageId"))
    attribute = canonical_attribute(params.get("Attribute"))
    if attribute is not None and attribute not in _MODIFIABLE:
        raise ServiceError(f"Value ({attribute}) for parameter attribute is invalid.", code="InvalidParameterValue")
    description = _attribute_value(params, "Description", attribute, "description")
    imds = _attribute_value(params, "ImdsSupport", attribute, "imdsSupport")
    if imds is not None and imds != "v2.0":
        raise ServiceError(f"Value ({imds}) for parameter imdsSupport is invalid. The only valid value is v2.0.",
                           code="InvalidParameterValue")
    add, remove = _permission_changes(params)
    if not add and not remove and description is None and imds is None:
        raise ServiceError("No attributes specified.", code="InvalidParameterCombination")
    with ctx.runtime.db.read() as conn:
        image = get_image(conn, caller.account, caller.region, image_id, owner_only=True)
    adds_public = any(i.get("Group") == "all" for i in add)
    adds_users = [i["UserId"] for i in add if i.get("UserId")]
    if adds_public and image.has_encrypted_snapshot:  # R-SHARE-2
        raise ServiceError(PUBLIC_ENCRYPTED_MESSAGE, code="UnsupportedOperation")
    if adds_users and image.has_encrypted_snapshot and _uses_aws_managed_key(ctx, image):  # R-SHARE-3
        raise ServiceError(AWS_MANAGED_SHARE_MESSAGE, code="InvalidParameter")
    with ctx.runtime.db.begin() as conn:
        if description is not None:
            conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(description=description))
        if imds is not None:  # v2.0 is one-way: AWS offers no value to set it back
            conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(imds_support=imds))
        existing = set(launch_permissions(conn, image_id))
        for user in dict.fromkeys(adds_users):  # Packer names each user twice (flat list and Add)
            if user not in existing:
                conn.execute(insert(perms_t).values(image_id=image_id, user_id=user))
        for item in remove:
            if item.get("UserId"):
                conn.execute(delete(perms_t).where(perms_t.c.image_id == image_id, perms_t.c.user_id == item["UserId"]))
        if adds_public:
            conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(public=True))
        elif any(i.get("Group") == "all" for i in remove):
            conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(public=False))


def reset_attribute(ctx: RequestContext, image_id: str, attribute: str | None) -> None:
    caller = ctx.caller
    if not attribute:
        raise ServiceError("The request must contain the parameter Attribute", code="MissingParameter")
    attribute = canonical_attribute(attribute)
    if attribute != "launchPermission":
        raise ServiceError(f"Value ({attribute}) for parameter attribute is invalid. Only launchPermission can be reset.",
                           code="InvalidParameterValue")
    with ctx.runtime.db.begin() as conn:
        get_image(conn, caller.account, caller.region, image_id, owner_only=True)
        conn.execute(delete(perms_t).where(perms_t.c.image_id == image_id))
        conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(public=False))
