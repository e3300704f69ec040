"""Image (AMI) rows: the ``Image`` record, its id checks and lookups, its view, and the
helpers every way of making an image shares (name check, mapping shape, insertion).

An image is a row (``ec2_images``) whose block device mappings name snapshots; the
snapshots themselves are ec2core's records. ``ec2_image_snapshots`` indexes which
snapshots an image names (R-SNAP-3) and ``ec2_image_launch_permissions`` the accounts it
is shared with (R-SHARE).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, ClassVar, Iterable

from sqlalchemy import Connection, insert, select

from ebscrypt.context import RequestContext
from ebscrypt.domain import image_states as states
from ebscrypt.engines.ec2 import tags as core_tags
from ebscrypt.engines.ec2.ids import is_well_formed
from ebscrypt.engines.ec2.records import Snapshot, aware, from_result
from ebscrypt.errors import (
    AuthFailure,
    Duplicate,
    InvalidBlockDeviceMapping,
    Malformed,
    MissingParameter,
    NotFound,
)
from ebscrypt.storage.tables.ec2_images import ec2_image_launch_permissions as perms_t
from ebscrypt.storage.tables.ec2_images import ec2_image_snapshots as image_snaps_t
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t

_NAME_RE = re.compile(r"^[a-zA-Z0-9()\[\] ./\-'@_]{3,128}$")
ACCOUNT_RE = re.compile(r"^\d{12}$")


# ============================================================================ records


_raw_decode = json.JSONDecoder().raw_decode


def _mappings(text: str) -> Any:
    """The stored mappings (``json.dumps`` text) decoded: ``raw_decode`` is the decoder
    ``json.loads`` calls, without its two whitespace regex scans and checks — 1.0 vs 3.0
    µs an image (issue 15, DescribeImages pages); anything else (leading blanks) through
    ``json.loads``."""
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def creation_date(t: datetime) -> str:
    """An image's CreationDate (:attr:`Image.creation_date`) of its creation time."""
    return "%04d-%02d-%02dT%02d:%02d:%02d.000Z" % (t.year, t.month, t.day, t.hour, t.minute, t.second)


def creation_date_of_iso(text: str) -> str:
    """:func:`creation_date` of the time whose ISO 8601 text (``YYYY-MM-DDTHH:MM:SS.mmmZ``,
    a year from 1000) is ``text``: its seconds kept, ``.000Z`` after them (a DescribeImages
    page from its rows slices it from the stored time: no datetime, no formatting)."""
    return text[:19] + ".000Z"


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

    # The stored mappings (JSON text) as the record holds them (records.row_locals).
    ROW_DECODERS: ClassVar[dict[str, Callable[[str], Any]]] = {"mappings": _mappings}

    @classmethod
    def from_row(cls, row: Any) -> "Image":
        values = dict(row)
        values["mappings"] = json.loads(values["mappings"])
        values["created_at"] = aware(values["created_at"])
        values["public"] = bool(values["public"])
        return cls(**values)

    @classmethod
    def from_result(cls, result: Any) -> list["Image"]:
        """Records of a SQLAlchemy Result of full ``ec2_images`` rows, by position
        (:func:`.records.from_result`; issue 15: DescribeImages pages), the stored
        mappings decoded from their JSON text."""
        images = from_result(cls, result)
        for image in images:
            if image.mappings.__class__ is str:  # not decoded by the SQLite builder (ROW_DECODERS)
                image.__dict__["mappings"] = _mappings(image.mappings)
        return images

    @property
    def creation_date(self) -> str:
        """CreationDate as AWS writes it (to the second, ``.000Z``): %-formatted, ~4x
        faster than ``strftime`` of an aware datetime (3 µs, a tenth of a DescribeImages
        item; issue 15). Years before 1000 would be zero-padded where strftime's are not."""
        return creation_date(self.created_at)

    def snapshot_ids(self) -> list[str]:
        return [m["Ebs"]["SnapshotId"] for m in self.mappings if (m.get("Ebs") or {}).get("SnapshotId")]

    @property
    def has_encrypted_snapshot(self) -> bool:
        return any((m.get("Ebs") or {}).get("Encrypted") for m in self.mappings)


# ============================================================================ errors


def malformed(image_id: str) -> Malformed:
    return Malformed("InvalidAMIID", image_id, prefix="ami")


def not_found(ids: Iterable[str]) -> NotFound:
    ids = list(ids)
    if len(ids) == 1:
        return NotFound("InvalidAMIID", ids[0])
    return NotFound("InvalidAMIID", ", ".join(ids), f"The image ids '[{', '.join(ids)}]' do not exist")


def check_image_id(image_id: str | None) -> str:
    if not image_id:
        raise MissingParameter("ImageId")
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
            raise AuthFailure(f"Not authorized for image:{image_id}")
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


# ============================================================================ making an image


def check_name(conn: Connection, account: str, region: str, name: str | None) -> str:
    if not name:
        raise MissingParameter("name")
    if not _NAME_RE.match(name):
        raise Malformed(
            "InvalidAMIName", name,
            f"AMI names must be between 3 and 128 characters long, and may contain letters, numbers, "
            f"'(', ')', '.', '-', '/' and '_' ({name!r})",
        )
    row = conn.execute(
        select(images_t.c.image_id).where(images_t.c.account == account, images_t.c.region == region, images_t.c.name == name)
    ).first()
    if row is not None:
        raise Duplicate("InvalidAMIName", f"AMI name {name} is already in use by AMI {row.image_id}")
    return name


def insert_image(conn: Connection, ctx: RequestContext, image_id: str, values: dict[str, Any],
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
        core_tags.put_tags(conn, caller.account, caller.region, image_id, tags)
    if not ready:
        ctx.runtime.jobs.submit("image_finalize", {"image_id": image_id}, conn=conn)


def ebs_mapping(device: str, *, snapshot_id: str | None, size: int, volume_type: str | None,
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


def size_check(size: int | None, snapshot: Snapshot) -> int:
    if size is None:
        return snapshot.volume_size
    if size < snapshot.volume_size:
        raise InvalidBlockDeviceMapping(
            f"Volume of size {size}GB is smaller than snapshot '{snapshot.id}', expect size >= {snapshot.volume_size}GB",
        )
    return size


def add_non_ebs_mapping(mappings: list[dict[str, Any]], device: str, bdm: dict[str, Any]) -> bool:
    """Handle a mapping that names no EBS volume; True when ``bdm`` was one.

    ``NoDevice`` drops the device (nothing is mapped); ``VirtualName`` maps an instance
    store volume as given. Anything else is an EBS mapping the caller builds.
    """
    if bdm.get("NoDevice") is not None:
        return True
    if bdm.get("VirtualName"):
        mappings.append({"DeviceName": device, "VirtualName": bdm["VirtualName"]})
        return True
    return False
