"""Instances: launch, describe, start/stop/terminate. They run no code; their states,
volumes and attachments are real.

RunInstances (R-RUN-1): the image's block device mappings, overridden per device by the
launch template's and then the request's, become one volume per EBS mapping, each made
through ec2core's volume creation, i.e. SPEC §2 with the mapping's own ``Encrypted`` /
``KmsKeyId``. Volumes are created attached (``Attach``) by this module's job kind
``ec2_launch_volume``: the volume's own creation job body (``volumes.run_create_job``: it
moves the data and does R-KEY-3, grant + Decrypt of the data key as the caller), then the
launch settled here (no callback registered with ``volumes``). When every volume of a
launch is ``in-use`` the instance is ``running``; if one ends in ``error`` (a key the
caller may not use: R-KEY-6, R-SHARE-4) the instance ends ``terminated`` with StateReason
``Client.InvalidKMSKey.InvalidState``, as EC2 does. Encrypted and unencrypted volumes may
be attached at once (R-RUN-3). With encryption by default on, instance types that cannot
attach encrypted volumes are refused (R-RUN-2, domain/instance_types.py).

Lifecycle (R-LIFE-1) through jobs: pending → running, stopping → stopped,
shutting-down → terminated (DeleteOnTermination volumes deleted, the others detached).
Termination protection (``disableApiTermination``) and stop protection (``disableApiStop``,
which EC2 also applies to termination) refuse TerminateInstances / StopInstances with
OperationNotPermitted. ModifyInstanceAttribute / DescribeInstanceAttribute /
DescribeInstanceStatus are in instance_attributes.py.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.context import Caller, RequestContext, Runtime
from ebscrypt.domain import instance_types as it
from ebscrypt.domain import regions
from ebscrypt.domain.outcome import check_key_dependency
from ebscrypt.engines.ec2 import account as core_account
from ebscrypt.engines.ec2 import encryption as core_encryption
from ebscrypt.engines.ec2 import tags as core_tags
from ebscrypt.engines.ec2 import volumes as core_volumes
from ebscrypt.engines.attach import engine as attach_io
from ebscrypt.engines.ec2 import image_records
from ebscrypt.engines.ec2 import keypairs, network, waits
from ebscrypt.engines.ec2 import templates as templates_engine
from ebscrypt.engines.ec2.encryption import prepare_data_key, resolve_encryption
from ebscrypt.engines.ec2.ids import job_ctx, new_id
from ebscrypt.engines.ec2.instance_records import (
    Instance,
    check_instance_ids,
    get_instance,
    get_instances,
    not_found as _not_found,
    visible_instances,
)
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.engines.ec2.records import Attachment, Snapshot, Subnet, Volume
from ebscrypt.engines.ec2.volumes import (
    VolumePrep,
    release_volumes,
    validate_volume_spec,
)
from ebscrypt.engines.ec2.snapshot_access import get_snapshot
from ebscrypt.engines.jobs import JobContext, job_kind
from ebscrypt.errors import (
    ImageUnavailable,
    IncorrectInstanceState,
    IncorrectState,
    InstanceLimitExceeded,
    InvalidBlockDeviceMapping,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    NotFound,
    OperationNotPermitted,
    ServiceError,
    UnsupportedOperation,
)
from ebscrypt.storage.db import retry_conflicts
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volume_attachments, ec2_volumes
from ebscrypt.storage.tables.ec2_images import ec2_instances as instances_t
from ebscrypt.storage.tables.ec2_instance_attrs import ec2_instance_attributes as attrs_t

log = logging.getLogger("ebscrypt.ec2.instances")

MAX_INSTANCES_PER_CALL = 20
# The job kind of a RunInstances volume: the volume's creation, then its launch settled.
LAUNCH_VOLUME_JOB = "ec2_launch_volume"

KMS_STATE_REASON = ("Client.InvalidKMSKey.InvalidState",
                    "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state")
USER_SHUTDOWN_REASON = ("Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown")
SHUTDOWN_BEHAVIORS = ("stop", "terminate")
USER_DATA_LIMIT = 16384  # bytes, before base64 (EC2's user data limit)


# ============================================================================ records


@lru_cache(maxsize=None)
def model_enum(shape: str) -> frozenset[str]:
    """The values of one string enum of the EC2 model (loaded once, on first use)."""
    return frozenset(_ec2_model().shape_for(shape).enum)


@lru_cache(maxsize=1)
def _ec2_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2")


def known_instance_types() -> frozenset[str]:
    """Every instance type name the EC2 model knows (its ``InstanceType`` enum)."""
    return model_enum("InstanceType")


@dataclass(frozen=True)
class InstanceAttrs:
    """The instance attributes kept in ``ec2_instance_attributes``; the defaults are EC2's
    (an instance without a row has them)."""

    disable_api_termination: bool = False
    disable_api_stop: bool = False
    shutdown_behavior: str = "stop"
    source_dest_check: bool = True
    sriov_net_support: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    user_data: str | None = None  # base64

    @classmethod
    def from_row(cls, row: Any) -> "InstanceAttrs":
        values = dict(row)
        values.pop("instance_id", None)
        for flag in ("disable_api_termination", "disable_api_stop", "source_dest_check"):
            values[flag] = bool(values[flag])
        return cls(**values)


def attributes_of(conn: Connection, instance_ids: list[str]) -> dict[str, InstanceAttrs]:
    """Each instance's attributes (defaults for those without a row). [conn]"""
    out = {i: InstanceAttrs() for i in instance_ids}
    for chunk in range(0, len(instance_ids), 500):
        part = instance_ids[chunk:chunk + 500]
        for row in conn.execute(select(attrs_t).where(attrs_t.c.instance_id.in_(part))).mappings():
            out[row["instance_id"]] = InstanceAttrs.from_row(row)
    return out


def save_attributes(conn: Connection, instance_id: str, attrs: InstanceAttrs) -> None:
    """Replace the instance's attribute row. [conn]"""
    conn.execute(delete(attrs_t).where(attrs_t.c.instance_id == instance_id))
    conn.execute(insert(attrs_t).values(instance_id=instance_id, **attrs.__dict__))


def check_user_data(user_data: str) -> str:
    """User data as EC2 takes it: base64 of at most 16 KiB (InvalidParameterValue otherwise)."""
    try:
        raw = base64.b64decode(user_data.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterValue("Invalid BASE64 encoding of user data.") from None
    if len(raw) > USER_DATA_LIMIT:
        raise InvalidParameterValue(f"User data is limited to {USER_DATA_LIMIT} bytes")
    return user_data


def check_shutdown_behavior(value: str) -> str:
    if value not in SHUTDOWN_BEHAVIORS:
        raise InvalidParameterValue(f"Value ({value}) for parameter instanceInitiatedShutdownBehavior is invalid. "
                                    "Valid values: stop | terminate")
    return value


# ============================================================================ errors


# ============================================================================ lookups


@dataclass(frozen=True)
class InstanceDetail:
    """One instance as DescribeInstances shows it: its row, its attached volumes (sorted by
    device), its tags and its attributes (the service builds the ``Instance`` view)."""

    instance: Instance
    attachments: list[tuple[Volume, Attachment]]
    tags: list[dict[str, str]]
    attrs: InstanceAttrs


@dataclass(frozen=True)
class Reservation:
    """The instances of one RunInstances call (``Reservation`` of the model)."""

    reservation_id: str
    owner_id: str
    instances: list[InstanceDetail]


def attachments_by_instance(conn: Connection, instance_ids: list[str]) -> dict[str, list[tuple[Volume, Attachment]]]:
    """ec2core's ``volumes_of_instance`` for many instances in two queries. [conn]"""
    out: dict[str, list[tuple[Volume, Attachment]]] = {i: [] for i in instance_ids}
    for chunk in range(0, len(instance_ids), 500):
        part = instance_ids[chunk:chunk + 500]
        atts = [Attachment.from_row(r) for r in conn.execute(
            select(ec2_volume_attachments).where(ec2_volume_attachments.c.instance_id.in_(part))).mappings()]
        vol_ids = [a.volume_id for a in atts]
        vols = {r["id"]: Volume.from_row(r) for r in conn.execute(
            select(ec2_volumes).where(ec2_volumes.c.id.in_(vol_ids))).mappings()} if vol_ids else {}
        for att in atts:
            if att.volume_id in vols:
                out[att.instance_id].append((vols[att.volume_id], att))
    return out


def _details(conn: Connection, instances: list[Instance], account: str) -> list[InstanceDetail]:
    ids = [i.instance_id for i in instances]
    tags = core_tags.tags_for(conn, account, ids)
    atts = attachments_by_instance(conn, ids)
    attrs = attributes_of(conn, ids)
    return [_detail(i, atts[i.instance_id], tags.get(i.instance_id) or [], attrs[i.instance_id]) for i in instances]


def _detail(instance: Instance, attachments: list[tuple[Volume, Attachment]], tags: list[dict[str, str]],
            attrs: InstanceAttrs) -> InstanceDetail:
    return InstanceDetail(instance, sorted(attachments, key=lambda va: va[1].device), tags, attrs)


# ============================================================================ launch planning


def _merge_mappings(base: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device: an override replaces or amends the base mapping; NoDevice drops it."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for m in base:
        merged[m["DeviceName"]] = json.loads(json.dumps(m))
        order.append(m["DeviceName"])
    for o in overrides:
        device = o.get("DeviceName")
        if not device:
            raise MissingParameter("DeviceName")
        if o.get("NoDevice") is not None:
            merged[device] = {"DeviceName": device, "NoDevice": ""}
        elif o.get("VirtualName"):
            merged[device] = {"DeviceName": device, "VirtualName": o["VirtualName"]}
        else:
            current = merged.get(device) or {"DeviceName": device}
            ebs = dict(current.get("Ebs") or {})
            # A mapping's own encryption request (R-RUN-1), kept apart from the image's
            # descriptive Encrypted flag.
            request = dict(current.get("_request") or {})
            for k, v in (o.get("Ebs") or {}).items():
                if v is None:
                    continue
                if k in ("Encrypted", "KmsKeyId"):
                    request[k] = v
                else:
                    ebs[k] = v
            merged[device] = {"DeviceName": device, "Ebs": ebs, "_request": request}
        if device not in order:
            order.append(device)
    return [merged[d] for d in order if "NoDevice" not in merged[d]]


def _snapshot_for_launch(conn: Connection, caller: Caller, snapshot_id: str, image: Any) -> Snapshot:
    """The source snapshot of an image mapping. Launch permission on the image is enough:
    the snapshot itself need not be shared (EC2 behaves so); others need visibility."""
    if snapshot_id in image.snapshot_ids():
        row = conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.id == snapshot_id)).mappings().first()
        if row is None:
            raise NotFound("InvalidSnapshot", snapshot_id)
        return Snapshot.from_row(row)
    return get_snapshot(conn, caller, snapshot_id)


def _prepare_volume(ctx: RequestContext, *, zone: str, source: Snapshot | None, ebs: dict[str, Any],
                    requested: dict[str, Any], attach: Any) -> VolumePrep:
    """ec2core's prepare_volume, with the source snapshot already authorised by the image's
    launch permission. [KMS, no conn] ``ebs``: the mapping's merged Ebs structure;
    ``requested``: the Encrypted/KmsKeyId the launch itself asked for (R-RUN-1)."""
    if source is not None and source.state != "completed":
        raise IncorrectState(f"Snapshot is in invalid state - {source.state}")
    spec = validate_volume_spec(ebs.get("VolumeType"), ebs.get("VolumeSize"), ebs.get("Iops"), ebs.get("Throughput"),
                                snapshot_id=source.id if source else None,
                                snapshot_size=source.volume_size if source else None)
    plan = resolve_encryption(ctx, source, requested.get("Encrypted"), requested.get("KmsKeyId"))
    volume_id = new_id("vol")
    plan, data_key = prepare_data_key(ctx, plan, source, volume_id)
    return VolumePrep(volume_id, zone, spec, plan, source, data_key, attach=attach)


@dataclass(frozen=True)
class LaunchSpec:
    """What RunInstances launches: its request, or a launch template's version data (the
    same shape) with the request over it. None: not given."""

    image_id: str | None = None
    instance_type: str | None = None
    min_count: Any = None
    max_count: Any = None
    client_token: str | None = None
    key_name: str | None = None
    subnet_id: str | None = None
    placement: dict[str, Any] | None = None  # Placement (its AvailabilityZone is used)
    security_group_ids: list[str] | None = None
    security_groups: list[str] | None = None
    block_device_mappings: list[dict[str, Any]] | None = None  # EC2 BlockDeviceMapping structures
    tag_specifications: list[dict[str, Any]] | None = None
    disable_api_termination: bool | None = None
    disable_api_stop: bool | None = None
    shutdown_behavior: str | None = None
    user_data: str | None = None
    ebs_optimized: bool | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    launch_template: dict[str, Any] | None = None  # LaunchTemplateSpecification

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "LaunchSpec":
        """From RunInstances members, or from stored RequestLaunchTemplateData (which
        spells the RAM disk ``RamDiskId``)."""
        return cls(
            image_id=fields.get("ImageId"), instance_type=fields.get("InstanceType"),
            min_count=fields.get("MinCount"), max_count=fields.get("MaxCount"),
            client_token=fields.get("ClientToken"), key_name=fields.get("KeyName"),
            subnet_id=fields.get("SubnetId"), placement=fields.get("Placement"),
            security_group_ids=fields.get("SecurityGroupIds"), security_groups=fields.get("SecurityGroups"),
            block_device_mappings=fields.get("BlockDeviceMappings"),
            tag_specifications=fields.get("TagSpecifications"),
            disable_api_termination=fields.get("DisableApiTermination"),
            disable_api_stop=fields.get("DisableApiStop"),
            shutdown_behavior=fields.get("InstanceInitiatedShutdownBehavior"),
            user_data=fields.get("UserData"), ebs_optimized=fields.get("EbsOptimized"),
            kernel_id=fields.get("KernelId"), ramdisk_id=fields.get("RamdiskId") or fields.get("RamDiskId"),
            launch_template=fields.get("LaunchTemplate"),
        )

    @property
    def placement_zone(self) -> str | None:
        zone: str | None = (self.placement or {}).get("AvailabilityZone")
        return zone

    def over(self, base: "LaunchSpec") -> "LaunchSpec":
        """This request over a template's data: each member given here wins; block device
        mappings merge by device; tag specifications add up."""
        merged = {f: getattr(self, f) if getattr(self, f) is not None else getattr(base, f)
                  for f in self.__dataclass_fields__}
        merged["block_device_mappings"] = _merge_plain(base.block_device_mappings or [],
                                                       self.block_device_mappings or [])
        merged["tag_specifications"] = list(base.tag_specifications or []) + list(self.tag_specifications or [])
        merged["launch_template"] = None
        return LaunchSpec(**merged)


def _effective_spec(ctx: RequestContext, spec: LaunchSpec) -> tuple[LaunchSpec, dict[str, Any] | None]:
    """The launch with a launch template's version data underneath (and the template's ids)."""
    if not spec.launch_template:
        return spec, None
    ident, data = templates_engine.resolve(ctx, spec.launch_template)
    return spec.over(LaunchSpec.from_fields(data)), ident


def _merge_plain(base: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_device = {m.get("DeviceName"): m for m in base}
    order = [m.get("DeviceName") for m in base]
    for o in overrides:
        d = o.get("DeviceName")
        if d in by_device and o.get("Ebs") and by_device[d].get("Ebs"):
            by_device[d] = dict(by_device[d], Ebs={**by_device[d]["Ebs"], **o["Ebs"]})
        else:
            by_device[d] = o
        if d not in order:
            order.append(d)
    return [by_device[d] for d in order]


def _check_instance_type(instance_type: str) -> None:
    if instance_type not in known_instance_types():
        raise InvalidParameterValue(f"The instance type '{instance_type}' does not exist.")


def _zone(zone: str | None, region: str) -> str:
    if zone:
        if not regions.is_zone_in_region(zone, region):
            raise InvalidParameterValue(f"Invalid availability zone: [{zone}]")
        return zone
    zones = regions.availability_zones(region)
    if not zones:
        raise InvalidParameterValue(f"The region {region} has no availability zones.")
    return zones[0].name


def _launch_attributes(p: LaunchSpec, image: Any) -> InstanceAttrs:
    """The launch's own attributes (RunInstances parameters over the image's kernel,
    RAM disk and SR-IOV setting)."""
    for param, given, from_image in (("KernelId", p.kernel_id, image.kernel_id),
                                     ("RamdiskId", p.ramdisk_id, image.ramdisk_id)):
        if given and given != from_image:
            # No kernel (aki-) or RAM disk (ari-) images exist in ebscrypt to launch with.
            raise UnsupportedOperation(f"{param} is not supported by ebscrypt: it has no kernel or RAM disk images.")
    user_data = p.user_data
    return InstanceAttrs(
        disable_api_termination=bool(p.disable_api_termination),
        disable_api_stop=bool(p.disable_api_stop),
        shutdown_behavior=check_shutdown_behavior(p.shutdown_behavior or "stop"),
        sriov_net_support=image.sriov_net_support,
        kernel_id=image.kernel_id,
        ramdisk_id=image.ramdisk_id,
        user_data=check_user_data(user_data) if user_data else None,
    )


def _private_ip(cidr: str | None) -> str:
    """A free-looking address of the subnet (AWS reserves the first four and the last)."""
    if not cidr:
        return f"172.31.{random.randint(0, 255)}.{random.randint(4, 254)}"
    net = ipaddress.ip_network(cidr)
    return str(net.network_address + random.randint(4, max(4, net.num_addresses - 2)))


# ============================================================================ RunInstances


def _instance_count(p: LaunchSpec) -> int:
    """How many instances to launch: MaxCount, at most MAX_INSTANCES_PER_CALL (MinCount above
    that is refused)."""
    min_count = int(p.min_count or 1)
    max_count = int(p.max_count or min_count)
    if min_count < 1 or max_count < min_count:
        raise InvalidParameterValue("MinCount must be at least 1 and at most MaxCount.")
    if min_count > MAX_INSTANCES_PER_CALL:
        raise InstanceLimitExceeded(
            f"You have requested more instances ({min_count}) than your current instance limit of "
            f"{MAX_INSTANCES_PER_CALL} allows for the specified instance type. Please visit "
            "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
        )
    return min(max_count, MAX_INSTANCES_PER_CALL)


def _check_launch_encryption(instance_type: str, ebs_mappings: list[dict[str, Any]],
                             sources: dict[str, Snapshot | None], ebd: bool) -> None:
    """R-OUT-1 per mapping (an image's encrypted empty-volume mapping asks for encryption),
    then R-RUN-2: with EBD on (or any volume to be encrypted) the type must support it."""
    for m in ebs_mappings:
        request = m.get("_request") or {}
        check_key_dependency(request.get("Encrypted"), request.get("KmsKeyId"))  # R-OUT-1
        if sources[m["DeviceName"]] is None and "Encrypted" not in request and m["Ebs"].get("Encrypted"):
            request["Encrypted"] = True  # an image's encrypted empty-volume mapping
            m["_request"] = request
    needs_encryption = ebd or any(
        (m.get("_request") or {}).get("Encrypted") or ((src := sources[m["DeviceName"]]) is not None and src.encrypted)
        for m in ebs_mappings
    )
    refusal = it.encryption_refusal(instance_type, needs_encryption=needs_encryption)
    if refusal:
        raise InvalidParameterCombination(refusal)


@dataclass
class _Launch:
    """What the read phase of RunInstances found: where, from which image, with which
    volumes (their mappings and source snapshots)."""

    image_id: str
    image: Any
    instance_type: str
    zone: str
    subnet: Subnet | None
    ebd: bool
    mappings: list[dict[str, Any]]
    sources: dict[str, Snapshot | None]


def _plan_instances(ctx: RequestContext, p: LaunchSpec, launch: _Launch, ebs_mappings: list[dict[str, Any]],
                    count: int, now: datetime) -> tuple[list[Instance], list[list[VolumePrep]]]:
    """[KMS, no conn]: §2 and data keys per mapping, per instance; the instance records."""
    caller = ctx.caller
    image = launch.image
    reservation_id = new_id("r")
    launched: list[Instance] = []
    preps_per_instance: list[list[VolumePrep]] = []
    for index in range(count):
        instance_id = new_id("i")
        preps = []
        plan = []
        for m in ebs_mappings:
            ebs = m["Ebs"]
            dot = ebs.get("DeleteOnTermination")
            attach = core_volumes.Attach(instance_id, m["DeviceName"], True if dot is None else bool(dot))
            prep = _prepare_volume(ctx, zone=launch.zone, source=launch.sources[m["DeviceName"]], ebs=ebs,
                                   requested=m.get("_request") or {}, attach=attach)
            preps.append(prep)
            plan.append({"device": attach.device, "volume_id": prep.volume_id,
                         "delete_on_termination": attach.delete_on_termination})
        row = dict(  # network fields are filled in the write transaction (_store_launch)
            instance_id=instance_id, reservation_id=reservation_id, account=caller.account, region=caller.region,
            image_id=launch.image_id, instance_type=launch.instance_type, state=it.PENDING, state_reason_code=None,
            state_reason_message=None, state_transition_reason="", launch_time=now, key_name=p.key_name,
            subnet_id=None, vpc_id=None, security_groups="[]",
            availability_zone=launch.zone, private_ip="", ami_launch_index=index,
            root_device_name=image.root_device_name, architecture=image.architecture,
            virtualization_type=image.virtualization_type, ena_support=image.ena_support,
            ebs_optimized=bool(p.ebs_optimized), client_token=p.client_token, launch_plan=json.dumps(plan),
            updated_at=now,
        )
        launched.append(Instance.from_row(row))
        preps_per_instance.append(preps)
    return launched, preps_per_instance


def _read_launch(ctx: RequestContext, conn: Connection, p: LaunchSpec, image_id: str, instance_type: str) -> _Launch:
    """The read phase: subnet and zone, key pair, image, EBD, the merged mappings and their
    source snapshots. [conn]"""
    caller = ctx.caller
    subnet = network.get_subnet(conn, caller.account, caller.region, p.subnet_id) if p.subnet_id else None
    if subnet is not None:
        placement_zone = p.placement_zone
        if placement_zone and placement_zone != subnet.availability_zone:
            raise InvalidParameterCombination(
                f"The specified AvailabilityZone ({placement_zone}) does not match the subnet's "
                f"({subnet.availability_zone}).")
        zone = subnet.availability_zone
    else:
        zone = _zone(p.placement_zone, caller.region)
    if p.key_name and not keypairs.key_pair_exists(conn, caller.account, caller.region, p.key_name):
        raise keypairs.not_found(p.key_name)
    image = image_records.get_image(conn, caller.account, caller.region, image_id)
    if image.state != "available":
        raise ImageUnavailable(f"Image {image_id} is not available (state {image.state}).")
    ebd = core_account.get_settings(conn, caller.account, caller.region).ebd
    mappings = _merge_mappings(image.mappings, p.block_device_mappings or [])
    sources: dict[str, Snapshot | None] = {}
    for m in mappings:
        ebs = m.get("Ebs")
        if ebs is None:
            continue
        snap_id = ebs.get("SnapshotId")
        sources[m["DeviceName"]] = _snapshot_for_launch(conn, caller, snap_id, image) if snap_id else None
    return _Launch(image_id, image, instance_type, zone, subnet, ebd, mappings, sources)


def _store_launch(ctx: RequestContext, p: LaunchSpec, launch: _Launch, launched: list[Instance],
                  preps_per_instance: list[list[VolumePrep]], launch_attrs: InstanceAttrs, now: datetime, *,
                  instance_tags: list[dict[str, str]], volume_tags: list[dict[str, str]]) -> Reservation:
    """The write phase: networking, the instances, their attributes, volumes and tags; the
    reservation as stored."""
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        # Networking (ec2net): the named subnet or the zone's default subnet of the default
        # VPC; the named security groups or the VPC's default group.
        subnet = launch.subnet
        if subnet is None:
            subnet = network.default_subnet(conn, caller.account, caller.region, now, availability_zone=launch.zone)
        vpc_id = subnet.vpc_id if subnet else None
        groups = network.resolve_groups(conn, caller.account, caller.region, now,
                                        ids=p.security_group_ids or [], names=p.security_groups or [])
        if not groups and vpc_id:
            groups = [network.default_group(conn, caller.account, caller.region, vpc_id)]
        security_groups = [{"GroupId": g.id, "GroupName": g.name} for g in groups]
        finished = []
        for instance, preps in zip(launched, preps_per_instance):
            values = {k: getattr(instance, k) for k in instance.__dataclass_fields__}
            values.update(
                subnet_id=subnet.id if subnet else None, vpc_id=vpc_id,
                security_groups=json.dumps(security_groups),
                private_ip=_private_ip(subnet.cidr_block if subnet else None),
            )
            finished.append(Instance.from_row(dict(values, launch_plan=json.dumps(instance.launch_plan))))
            values["launch_plan"] = json.dumps(instance.launch_plan)
            conn.execute(insert(instances_t).values(**values))
            save_attributes(conn, instance.instance_id, launch_attrs)
            for prep in preps:
                prep.tags = list(volume_tags)
                core_volumes.insert_volume(ctx, conn, prep, job=LAUNCH_VOLUME_JOB)
            if instance_tags:
                core_tags.put_tags(conn, caller.account, caller.region, instance.instance_id, instance_tags)
        return _reservation(conn, finished, caller.account)


def run_instances(ctx: RequestContext, spec: LaunchSpec) -> Reservation:
    """RunInstances (R-RUN-1..3): validated and read, volumes planned (KMS, no transaction
    open), then everything stored in one transaction; the volumes' jobs finish the launch."""
    caller = ctx.caller
    p, _template = _effective_spec(ctx, spec)
    count = _instance_count(p)
    image_id = image_records.check_image_id(p.image_id)
    instance_type = p.instance_type or it.DEFAULT_INSTANCE_TYPE
    _check_instance_type(instance_type)
    token = p.client_token
    instance_tags = core_tags.tag_specs(p.tag_specifications, "instance")
    volume_tags = core_tags.tag_specs(p.tag_specifications, "volume")
    with ctx.runtime.db.read() as conn:
        if token:
            rows = conn.execute(
                select(instances_t).where(instances_t.c.account == caller.account, instances_t.c.region == caller.region,
                                          instances_t.c.client_token == token)
                .order_by(instances_t.c.ami_launch_index)
            ).mappings().all()
            if rows:  # idempotent retry: the same reservation again
                found = [Instance.from_row(r) for r in rows]
                return _reservation(conn, found, caller.account)
        launch = _read_launch(ctx, conn, p, image_id, instance_type)
    launch_attrs = _launch_attributes(p, launch.image)
    ebs_mappings = [m for m in launch.mappings if m.get("Ebs") is not None]
    if not ebs_mappings:
        raise InvalidBlockDeviceMapping("The image has no EBS root device.")
    _check_launch_encryption(instance_type, ebs_mappings, launch.sources, launch.ebd)
    now = ctx.runtime.clock.now()
    launched, preps_per_instance = _plan_instances(ctx, p, launch, ebs_mappings, count, now)
    result = _store_launch(ctx, p, launch, launched, preps_per_instance, launch_attrs, now,
                           instance_tags=instance_tags, volume_tags=volume_tags)
    ctx.runtime.jobs.notify()
    return result


def _reservation(conn: Connection, instances: list[Instance], account: str) -> Reservation:
    first = instances[0]
    return Reservation(first.reservation_id, first.account, _details(conn, instances, account))


# ============================================================================ launch outcome


def _launch_volume_states(conn: Connection, instance: Instance) -> list[tuple[str, str | None]]:
    ids = [p["volume_id"] for p in instance.launch_plan]
    if not ids:
        return []
    found = {r.id: (r.state, r.state_message) for r in conn.execute(
        select(ec2_volumes.c.id, ec2_volumes.c.state, ec2_volumes.c.state_message).where(ec2_volumes.c.id.in_(ids)))}
    return [found.get(v, ("error", f"volume {v} no longer exists")) for v in ids]


def _settle_launch(runtime: Runtime, instance_id: str) -> None:
    """A pending (launching) instance → running when its volumes are in use, or →
    terminated when one of them failed (KMS key problem: Client.InvalidKMSKey.InvalidState)."""
    deleted: list[str] = []
    failed_volumes: list[str] = []
    with runtime.db.begin() as conn:
        row = conn.execute(select(instances_t).where(instances_t.c.instance_id == instance_id)).mappings().first()
        if row is None:
            return
        instance = Instance.from_row(row)
        if instance.state != it.PENDING or not instance.launch_plan:
            return
        states = _launch_volume_states(conn, instance)
        now = runtime.clock.now()
        if any(s == "error" for s, _m in states):
            # Volumes that never came up go with the instance (they were DeleteOnTermination).
            failed_volumes = [p["volume_id"] for p, (s, _m) in zip(instance.launch_plan, states)
                              if s == "error" and p.get("delete_on_termination", True)]
            messages = [m or "" for s, m in states if s == "error"]
            kms = any("KMS" in m or "kms" in m.lower() for m in messages)
            code, message = KMS_STATE_REASON if kms else ("Server.InternalError",
                                                           "Server.InternalError: Internal error on launch")
            # In the transaction that terminates the instance: a client that sees it
            # terminated never sees its failed volumes still there.
            deleted = core_volumes.delete_attachments_of_instance(conn, instance_id)
            deleted += core_volumes.delete_unattached(conn, [v for v in failed_volumes if v not in deleted])
            conn.execute(update(instances_t).where(instances_t.c.instance_id == instance_id).values(
                state=it.TERMINATED, state_reason_code=code, state_reason_message=message,
                state_transition_reason=message, launch_plan="[]", updated_at=now))
        elif all(s == "in-use" for s, _m in states):
            conn.execute(update(instances_t).where(instances_t.c.instance_id == instance_id).values(
                state=it.RUNNING, launch_plan="[]", updated_at=now))
    if deleted:
        release_volumes(runtime, deleted)


def _settle_launches_of(runtime: Runtime, volume_id: str) -> None:
    """Settle the pending launches waiting on ``volume_id``. A fault here must not fail the
    volume's own job (DescribeInstances settles a launch this missed)."""
    try:
        with runtime.db.read() as conn:
            ids = [r.instance_id for r in conn.execute(
                select(instances_t.c.instance_id).where(instances_t.c.state == it.PENDING,
                                                        instances_t.c.launch_plan.like(f'%"{volume_id}"%')))]
        for instance_id in ids:
            retry_conflicts(lambda: _settle_launch(runtime, instance_id))  # noqa: B023 (called at once)
    except Exception:
        log.exception("settling the launch of volume %s failed", volume_id)


def _launch_volume_failed(runtime: Runtime, payload: dict[str, Any], reason: str) -> None:
    core_volumes.volume_failed(runtime, payload, reason)
    _settle_launches_of(runtime, payload["volume_id"])


@job_kind(LAUNCH_VOLUME_JOB, resumable=True, on_fail=_launch_volume_failed)
def _launch_volume_job(job: JobContext) -> None:
    """A RunInstances volume: created as any volume, then the launch waiting on it settles
    (running when all its volumes are in use, terminated when one failed)."""
    core_volumes.run_create_job(job)
    _settle_launches_of(job.runtime, job.payload["volume_id"])


# ============================================================================ start / stop / terminate


def _fail_transition(runtime: Runtime, payload: dict[str, Any], reason: str) -> None:
    with runtime.db.begin() as conn:
        conn.execute(update(instances_t).where(instances_t.c.instance_id == payload["instance_id"],
                                               instances_t.c.state == payload.get("from")).values(
            state=payload.get("fallback", it.STOPPED), state_reason_code="Server.InternalError",
            state_reason_message=f"Server.InternalError: {reason}", updated_at=runtime.clock.now()))


@job_kind("ec2_instance_transition", resumable=True, on_fail=_fail_transition)
def _transition_job(job: JobContext) -> None:
    runtime = job.runtime
    p = job.payload
    instance_id, from_state, to_state = p["instance_id"], p["from"], p["to"]
    with runtime.db.read() as conn:
        row = conn.execute(select(instances_t).where(instances_t.c.instance_id == instance_id)).mappings().first()
        if row is None or row["state"] != from_state:
            return  # already moved on (resumed job, or a later request)
        instance = Instance.from_row(row)
        attached = core_volumes.volumes_of_instance(conn, instance_id)
    values: dict[str, Any] = {"state": to_state, "updated_at": runtime.clock.now()}
    deleted: list[str] = []
    keys: list[tuple[Volume, Any]] = []
    if to_state != it.RUNNING:
        # R-ATTACH-2: stopped or terminated, the host lets go: writes flushed, keys dropped.
        attach_io.close_volumes(runtime, [vol.id for vol, _att in attached])
    if to_state == it.RUNNING:
        # R-KEY-3 on start: the service is granted the key and decrypts each data key.
        ctx = job_ctx(runtime, instance.account, instance.region, "StartInstances")
        try:
            for vol, _att in attached:
                keys.append((vol, core_encryption.data_key_for(ctx, vol)))
        except ServiceError:
            keys = []
            code, message = KMS_STATE_REASON
            values.update(state=it.STOPPED, state_reason_code=code, state_reason_message=message,
                          state_transition_reason=message)
    with runtime.db.begin() as conn:
        if to_state == it.TERMINATED:
            deleted = core_volumes.delete_attachments_of_instance(conn, instance_id)
        conn.execute(update(instances_t).where(instances_t.c.instance_id == instance_id,
                                               instances_t.c.state == from_state).values(**values))
    for vol, key in keys:  # running again: each data key decrypted once, kept in memory (R-ATTACH-2)
        attach_io.open_volume(runtime, vol, key, instance_id)
    if to_state != it.RUNNING:  # again: an NBD client may have reopened one before the state changed
        attach_io.close_volumes(runtime, [vol.id for vol, _att in attached])
    if deleted:
        release_volumes(runtime, deleted)


@dataclass(frozen=True)
class StateChange:
    """One instance of a Start/Stop/TerminateInstances call: its state before and after."""

    instance_id: str
    previous: str
    current: str


def _check_protection(instance_id: str, attrs: InstanceAttrs, verb: str) -> None:
    """Termination / stop protection. Stop protection guards against termination too (EC2
    documents it so) without setting disableApiTermination."""
    blocking = None
    if verb == "terminate":
        blocking = ("disableApiTermination" if attrs.disable_api_termination
                    else "disableApiStop" if attrs.disable_api_stop else None)
    elif verb == "stop" and attrs.disable_api_stop:
        blocking = "disableApiStop"
    if blocking:
        done = "terminated" if verb == "terminate" else "stopped"
        raise OperationNotPermitted(f"The instance '{instance_id}' may not be {done}. Modify its '{blocking}' instance "
                                    "attribute and try again.")


def _state_change(ctx: RequestContext, ids: list[str], transition: Callable[[str], it.Transition],
                  verb: str) -> list[StateChange]:
    caller = ctx.caller
    if not ids:
        raise MissingParameter("InstanceId")
    check_instance_ids(ids)
    now = ctx.runtime.clock.now()
    changes = []
    with ctx.runtime.db.begin() as conn:
        instances = get_instances(conn, caller.account, caller.region, ids, now)
        protection = attributes_of(conn, [i.instance_id for i in instances])
        for instance in instances:  # all-or-nothing: check every instance first
            t = transition(instance.state)
            if t.error:
                raise IncorrectInstanceState(it.incorrect_state_message(instance.instance_id, t.error))
            if t.to is not None:
                _check_protection(instance.instance_id, protection[instance.instance_id], verb)
        for instance in instances:
            t = transition(instance.state)
            previous = instance.state
            current = previous
            if t.to is not None:
                current = t.to
                values: dict[str, Any] = {"state": t.to, "updated_at": now}
                if verb in ("stop", "terminate"):
                    stamp = now.strftime("%Y-%m-%d %H:%M:%S GMT")
                    values.update(state_transition_reason=f"User initiated ({stamp})",
                                  state_reason_code=USER_SHUTDOWN_REASON[0],
                                  state_reason_message=USER_SHUTDOWN_REASON[1])
                else:
                    values.update(state_transition_reason="", state_reason_code=None, state_reason_message=None)
                if verb == "terminate" and previous == it.PENDING and instance.launch_plan:
                    values["launch_plan"] = "[]"  # the launch is abandoned
                conn.execute(update(instances_t).where(instances_t.c.instance_id == instance.instance_id).values(**values))
                ctx.runtime.jobs.submit("ec2_instance_transition", {
                    "instance_id": instance.instance_id, "from": t.to, "to": t.then,
                    "fallback": previous if verb == "start" else t.to,
                }, conn=conn)
            changes.append(StateChange(instance.instance_id, previous, current))
    ctx.runtime.jobs.notify()
    return changes


def start_instances(ctx: RequestContext, ids: list[str]) -> list[StateChange]:
    return _state_change(ctx, ids, it.start, "start")


def stop_instances(ctx: RequestContext, ids: list[str]) -> list[StateChange]:
    return _state_change(ctx, ids, it.stop, "stop")


def terminate_instances(ctx: RequestContext, ids: list[str]) -> list[StateChange]:
    return _state_change(ctx, ids, it.terminate, "terminate")


# ============================================================================ describe


_TRANSITIONAL = (it.PENDING, it.STOPPING, it.SHUTTING_DOWN)


def _bdm(key: str) -> Callable[[Any], Any]:
    def get(entry: tuple[Instance, list[Any], list[Any]]) -> Any:
        out = []
        for vol, att in entry[1]:
            out.append({"volume-id": vol.id, "device-name": att.device, "status": att.state,
                        "delete-on-termination": att.delete_on_termination,
                        "attach-time": att.attach_time.strftime("%Y-%m-%dT%H:%M:%S.000Z")}[key])
        return out
    return get


_FILTERS: dict[str, Callable[[Any], Any]] = {
    "instance-id": lambda e: e[0].instance_id,
    "instance-state-name": lambda e: e[0].state,
    "instance-state-code": lambda e: it.STATE_CODES[e[0].state],
    "instance-type": lambda e: e[0].instance_type,
    "image-id": lambda e: e[0].image_id,
    "reservation-id": lambda e: e[0].reservation_id,
    "owner-id": lambda e: e[0].account,
    "availability-zone": lambda e: e[0].availability_zone,
    "key-name": lambda e: e[0].key_name,
    "subnet-id": lambda e: e[0].subnet_id,
    "vpc-id": lambda e: e[0].vpc_id,
    "private-ip-address": lambda e: e[0].private_ip,
    "root-device-name": lambda e: e[0].root_device_name,
    "root-device-type": lambda e: "ebs",
    "architecture": lambda e: e[0].architecture,
    "virtualization-type": lambda e: e[0].virtualization_type,
    "launch-index": lambda e: e[0].ami_launch_index,
    "client-token": lambda e: e[0].client_token,
    "state-reason-code": lambda e: e[0].state_reason_code,
    "instance.group-id": lambda e: [g.get("GroupId") for g in e[0].security_groups],
    "block-device-mapping.volume-id": _bdm("volume-id"),
    "block-device-mapping.device-name": _bdm("device-name"),
    "block-device-mapping.status": _bdm("status"),
    "block-device-mapping.delete-on-termination": _bdm("delete-on-termination"),
    "block-device-mapping.attach-time": _bdm("attach-time"),
}


def describe_instances(ctx: RequestContext, ids: list[str], filters: list[dict[str, Any]] | None) -> list[Reservation]:
    """Reservations of the caller's instances (region-scoped), filtered, in the order the
    instances were read."""
    caller = ctx.caller
    check_instance_ids(ids)

    def read() -> list[Instance]:
        now = ctx.runtime.clock.now()
        with ctx.runtime.db.read() as conn:
            return visible_instances(conn, caller.account, caller.region, now, ids)

    instances = read()
    if ids:
        found = {i.instance_id for i in instances}
        missing = [i for i in ids if i not in found]
        if missing:
            raise _not_found(missing)
    moving = [i.instance_id for i in instances if i.state in _TRANSITIONAL]
    if moving:
        for instance_id in [i.instance_id for i in instances if i.state == it.PENDING and i.launch_plan]:
            _settle_launch(ctx.runtime, instance_id)  # repairs a launch its volume job did not settle

        def states() -> list[str]:
            with ctx.runtime.db.read() as conn:
                return [r.state for r in conn.execute(select(instances_t.c.state).where(instances_t.c.instance_id.in_(moving)))]

        waits.settle(states, _TRANSITIONAL)
        instances = read()
    with ctx.runtime.db.read() as conn:
        ids_seen = [i.instance_id for i in instances]
        tags = core_tags.tags_for(conn, caller.account, ids_seen)
        atts = attachments_by_instance(conn, ids_seen)
        attrs = attributes_of(conn, ids_seen)
        entries = [(i, atts[i.instance_id], tags.get(i.instance_id) or []) for i in instances]
    selected = filter_select(entries, filters, _FILTERS, tag_getter=lambda e: {t["Key"]: t["Value"] for t in e[2]})
    reservations: dict[str, Reservation] = {}
    for instance, attachments, instance_tags in selected:
        res = reservations.setdefault(instance.reservation_id,
                                      Reservation(instance.reservation_id, instance.account, []))
        res.instances.append(_detail(instance, attachments, instance_tags, attrs[instance.instance_id]))
    return list(reservations.values())


def owned_instance_for_image(ctx: RequestContext, instance_id: str) -> Instance:
    """CreateImage's instance: the caller's, running or stopped."""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        instance = get_instance(conn, caller.account, caller.region, instance_id, ctx.runtime.clock.now())
    if instance.state not in (it.RUNNING, it.STOPPED, it.STOPPING):
        raise IncorrectInstanceState(f"Instance '{instance_id}' is not in a state from which it can be imaged "
                                     f"(state {instance.state}).")
    return instance

