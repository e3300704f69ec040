"""Image (AMI) operations (R-IMG-1..3, R-SHARE for images): thin handlers over
:mod:`ebscrypt.engines.ec2.images`."""

from __future__ import annotations

from typing import Any, Callable

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import image_copy, image_permissions, image_records
from ebscrypt.engines.ec2 import images as engine
from ebscrypt.engines.ec2.image_records import Image
from ebscrypt.engines.ec2 import instances as instances_engine
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page, page_after, page_size
from ebscrypt.services.ec2.view_table import ViewTable
from ebscrypt.errors import MissingParameter
from ebscrypt.services.registry import operation


@operation("ec2", "RegisterImage")
def register_image(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"ImageId": engine.register_image(ctx, engine.ImageRegistration(
        params.get("BlockDeviceMappings") or [], name=params.get("Name"),
        image_location=params.get("ImageLocation"), root_device_name=params.get("RootDeviceName"),
        tag_specifications=params.get("TagSpecifications"), description=params.get("Description"),
        architecture=params.get("Architecture"), virtualization_type=params.get("VirtualizationType"),
        ena_support=params.get("EnaSupport"), sriov_net_support=params.get("SriovNetSupport"),
        boot_mode=params.get("BootMode"), tpm_support=params.get("TpmSupport"),
        imds_support=params.get("ImdsSupport"), kernel_id=params.get("KernelId"),
        ramdisk_id=params.get("RamdiskId"),
    ))}


@operation("ec2", "CreateImage")
def create_image(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if not params.get("InstanceId"):
        raise MissingParameter("InstanceId")
    instance = instances_engine.owned_instance_for_image(ctx, params["InstanceId"])
    creation = image_copy.ImageCreation(params.get("Name"), params.get("Description"),
                                        params.get("BlockDeviceMappings") or [], params.get("TagSpecifications"))
    return {"ImageId": image_copy.create_image(ctx, creation, instance)}


@operation("ec2", "CopyImage")
def copy_image(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"ImageId": image_copy.copy_image(ctx, image_copy.ImageCopy(
        params.get("SourceImageId"), source_region=params.get("SourceRegion"), name=params.get("Name"),
        description=params.get("Description"), encrypted=params.get("Encrypted"),
        kms_key_id=params.get("KmsKeyId"), client_token=params.get("ClientToken"),
        copy_image_tags=bool(params.get("CopyImageTags")), tag_specifications=params.get("TagSpecifications"),
    ))}


@operation("ec2", "DeregisterImage")
def deregister_image(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    image_id = image_records.check_image_id(params.get("ImageId"))
    delete_snapshots = bool(params.get("DeleteAssociatedSnapshots"))
    results = engine.deregister_image(ctx, image_id, delete_snapshots=delete_snapshots)
    out: dict[str, Any] = {"Return": True}
    if delete_snapshots:
        out["DeleteSnapshotResults"] = results
    return out


# The members of a stored block device mapping the answer carries (the stored mapping holds
# the request's members): ``mapping_view``, and the projection a DescribeImages page writes
# the stored mappings by (IMAGE_VIEW), so the two cannot differ.
_EBS_MEMBERS = ("DeleteOnTermination", "Iops", "SnapshotId", "VolumeSize", "VolumeType", "Throughput", "Encrypted")
MAPPING_PROJECTION: dict[str, Any] = {"DeviceName": None, "VirtualName": None, "NoDevice": None,
                                      "Ebs": dict.fromkeys(_EBS_MEMBERS)}


# A snapshot id as ``json.dumps`` stores it in an image's mappings (xml_writer ``Holes``):
# the value of a ``SnapshotId`` key — a quote inside a JSON string is always escaped, so
# ``"SnapshotId": "`` is a key and its value's start — of only the characters an id has
# (none escaped by JSON or XML).
MAPPING_SNAPSHOT_IDS = ('"SnapshotId": "', "snap-[0-9a-f]{1,64}", '"')


def mapping_view(m: dict[str, Any]) -> dict[str, Any]:
    """A stored block device mapping as the model's ``BlockDeviceMapping`` (the Image view
    and DescribeImageAttribute's ``blockDeviceMapping``): the members of
    ``MAPPING_PROJECTION``, ``None`` ones left out of ``Ebs``."""
    ebs = m.get("Ebs")
    return {
        "DeviceName": m.get("DeviceName"),
        "VirtualName": m.get("VirtualName"),
        "NoDevice": m.get("NoDevice"),
        "Ebs": {k: ebs[k] for k in _EBS_MEMBERS if ebs.get(k) is not None} if ebs is not None else None,
    }


# The ``Image`` view (the view convention: keyed by the output shape's member names,
# ``None`` for a member AWS leaves out — the codec drops it), one expression per member
# over the record ``s`` and its ``tags``: compiled into ``image_view`` and into the writer
# of a DescribeImages page straight from its stored rows (view_table.py, issue 15).
IMAGE_VIEW = ViewTable("Image", {
    "ImageId": "s.image_id",
    "ImageLocation": "s.image_location or f'{s.account}/{s.name}'",
    "State": "s.state",
    "OwnerId": "s.account",
    "CreationDate": "creation_date(s.created_at)",
    "Public": "s.public",
    "Architecture": "s.architecture",
    "ImageType": "'machine'",
    "Name": "s.name",
    "Description": "s.description",
    "RootDeviceType": "s.root_device_type",
    "RootDeviceName": "s.root_device_name or None",
    "VirtualizationType": "s.virtualization_type",
    "Hypervisor": "'xen'",
    "BlockDeviceMappings": "[mapping_view(m) for m in s.mappings]",
    "PlatformDetails": "'Windows' if s.platform == 'windows' else 'Linux/UNIX'",
    "UsageOperation": "'RunInstances:0002' if s.platform == 'windows' else 'RunInstances'",
    "EnaSupport": "s.ena_support",
    "SriovNetSupport": "s.sriov_net_support or None",
    "BootMode": "s.boot_mode or None",
    "TpmSupport": "s.tpm_support or None",
    "ImdsSupport": "s.imds_support or None",
    "KernelId": "s.kernel_id or None",
    "RamdiskId": "s.ramdisk_id or None",
    "Platform": "s.platform or None",
    "SourceInstanceId": "s.source_instance_id or None",
    "SourceImageId": "s.source_image_id or None",
    "SourceImageRegion": "(s.source_region or s.region) if s.source_image_id else None",
    "StateReason": "({'Code': s.state_reason_code or '', 'Message': s.state_reason_message or ''} "
                   "if s.state_reason_code or s.state_reason_message else None)",
    "Tags": "tags or None",
}, env={"creation_date": image_records.creation_date, "mapping_view": mapping_view}, key_field="image_id",
   text_forms={"creation_date": image_records.creation_date_of_iso},
   # Fixed once the image is made, and a third of a page's time (the JSON decode, the views,
   # the nested writers; issue 15): rendered once per stored mappings text.
   memo=("BlockDeviceMappings",),
   # ...and written from the stored dicts themselves: no view per mapping on a miss either
   projections={"BlockDeviceMappings": ("s.mappings", MAPPING_PROJECTION)},
   # ...and on a first listing, where no text is kept yet, from the text of images
   # registered alike: the stored mappings (``json.dumps``) differ mostly in their snapshot
   # ids, which the XML carries as they are (no escapes in JSON or XML); the rest of the
   # text is rendered once per such shape (issue 15: a cold listing rendered every image's)
   memo_holes={"BlockDeviceMappings": MAPPING_SNAPSHOT_IDS})

# The columns a page rendered from its rows reads (those of the view).
_IMAGE_FIELDS = IMAGE_VIEW.fields_read(Image)


def image_view(image: Image, tags: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The ``Image`` view of a record (``IMAGE_VIEW``)."""
    return IMAGE_VIEW.view(image, tags)


@operation("ec2", "DescribeImages")
def describe_images(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    ids = params.get("ImageIds") or []
    executable = params.get("ExecutableUsers") or []
    # Paging in SQL (issue 15): ids after the token's always; a LIMIT only when nothing is
    # filtered after the query (one more row than asked tells page() a NextToken is due).
    size = page_size(params, low=1, high=1000, ids_param="ImageIds")
    after = page_after(params.get("NextToken")) if not ids else None
    limit = size + 1 if size is not None and not ids and not executable and not params.get("Filters") else None
    if not ids and not executable:
        # A listing, filtered or not (the CLI's pages, Packer's name=prefix*): rendered
        # straight from its stored rows where the database allows and no image is pending
        # (issue 15: no view per item; no record either when nothing is filtered).
        found = engine.image_page(ctx, owners=params.get("Owners") or [], after=after, limit=limit,
                                  fields=_IMAGE_FIELDS, filters=params.get("Filters"))
        if found is not None:
            stored, tags = found
            i = stored.column("image_id")
            rows, token = page(stored.rows, params, lambda r: str(r[i]), low=1, high=1000, ids_param="ImageIds")
            return {"Images": IMAGE_VIEW.page(stored.having(rows), tags), "NextToken": token or None}
    images = engine.describe_images(ctx, ids, owners=params.get("Owners") or [], executable=executable,
                                    filters=params.get("Filters"), after=after, limit=limit)
    views = sorted((image_view(image, tags) for image, tags in images), key=lambda d: d["ImageId"])  # paging order
    chunk, token = page(views, params, lambda d: d["ImageId"], low=1, high=1000, ids_param="ImageIds")
    return {"Images": chunk, "NextToken": token or None}


@operation("ec2", "DescribeImageAttribute")
def describe_image_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    image_id = image_records.check_image_id(params.get("ImageId"))
    if not params.get("Attribute"):
        raise MissingParameter("Attribute")
    return image_attribute_view(image_permissions.read_attribute(ctx, image_id, params["Attribute"]))


def _value(value: str | None) -> dict[str, str]:
    """An ``AttributeValue``: empty (``{}``, an empty element) when the image has none."""
    return {"Value": value} if value else {}


def image_attribute_view(reading: image_permissions.ImageAttributeReading) -> dict[str, Any]:
    """DescribeImageAttribute's answer: the image id and the one member the attribute names
    (none for ``uefiData`` / ``lastLaunchedTime``, which ebscrypt images never have)."""
    image = reading.image
    answers: dict[str, Callable[[], tuple[str, Any]]] = {
        "launchPermission": lambda: ("LaunchPermissions", ([{"Group": "all"}] if image.public else [])
                                     + [{"UserId": u} for u in reading.launch_permissions]),
        # An empty description is still a value (only a missing one is left out).
        "description": lambda: ("Description", {"Value": image.description} if image.description is not None
                                else {}),
        "blockDeviceMapping": lambda: ("BlockDeviceMappings", [mapping_view(m) for m in image.mappings]),
        "kernel": lambda: ("KernelId", _value(image.kernel_id)),
        "ramdisk": lambda: ("RamdiskId", _value(image.ramdisk_id)),
        "productCodes": lambda: ("ProductCodes", []),
        "sriovNetSupport": lambda: ("SriovNetSupport", _value(image.sriov_net_support)),
        "bootMode": lambda: ("BootMode", _value(image.boot_mode)),
        "tpmSupport": lambda: ("TpmSupport", _value(image.tpm_support)),
        "imdsSupport": lambda: ("ImdsSupport", _value(image.imds_support)),
        "deregistrationProtection": lambda: ("DeregistrationProtection", {"Value": "disabled"}),
        "uefiData": lambda: ("UefiData", None),
        "lastLaunchedTime": lambda: ("LastLaunchedTime", None),
    }
    key, value = answers[reading.attribute]()
    return {"ImageId": image.image_id, key: value}


# The flat lists of the older launchPermission form (OperationType + lists), with the
# LaunchPermission item key each one stands for (engines.ec2.attributes).
_LEGACY_LISTS = (("UserIds", "UserId"), ("UserGroups", "Group"), ("OrganizationArns", "OrganizationArn"),
                 ("OrganizationalUnitArns", "OrganizationalUnitArn"))


def _attribute_value(params: dict[str, Any], member: str, attribute: str | None, name: str) -> str | None:
    """A new value given as ``<member>.Value``, or as ``Value`` with ``Attribute=<name>``."""
    value = (params.get(member) or {}).get("Value")
    if value is None and attribute == name:
        value = params.get("Value")
    return value


@operation("ec2", "ModifyImageAttribute")
def modify_image_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    attribute = image_permissions.canonical_attribute(params.get("Attribute"))
    launch = params.get("LaunchPermission") or {}
    image_permissions.modify_attribute(ctx, image_permissions.ImageAttributeChange(
        params.get("ImageId"), attribute,
        description=_attribute_value(params, "Description", attribute, "description"),
        imds_support=_attribute_value(params, "ImdsSupport", attribute, "imdsSupport"),
        launch_add=tuple(launch.get("Add") or []), launch_remove=tuple(launch.get("Remove") or []),
        legacy_items=tuple({key: value} for member, key in _LEGACY_LISTS for value in params.get(member) or []),
        operation_type=params.get("OperationType"),
    ))
    return {}


@operation("ec2", "ResetImageAttribute")
def reset_image_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    image_id = image_records.check_image_id(params.get("ImageId"))
    image_permissions.reset_attribute(ctx, image_id, params.get("Attribute"))
    return {}
