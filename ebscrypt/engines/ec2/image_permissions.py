"""Image attributes and sharing: DescribeImageAttribute, ModifyImageAttribute,
ResetImageAttribute.

Launch permissions come in two forms, the structured ``LaunchPermission`` (Add/Remove
items) and the older flat lists with ``OperationType``; both end as (add, remove) items.
The sharing rules: R-SHARE-2 an image with an encrypted snapshot cannot be made public;
R-SHARE-3 one with a snapshot under the AWS managed key ``alias/aws/ebs`` cannot be
shared at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2.attributes import canonical, canonical_names, legacy_operation
from ebscrypt.engines.ec2.image_records import (
    ACCOUNT_RE,
    Image,
    check_image_id,
    get_image,
    launch_permissions,
)
from ebscrypt.errors import (
    InvalidAMIAttributeItemValue,
    InvalidParameter,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    ServiceError,
    UnsupportedOperation,
)
from ebscrypt.storage.tables.ec2 import ec2_snapshots
from ebscrypt.storage.tables.ec2_images import ec2_image_launch_permissions as perms_t
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t

PUBLIC_ENCRYPTED_MESSAGE = "Encrypted snapshots can\u2019t be shared publicly. Specify another snapshot."
AWS_MANAGED_SHARE_MESSAGE = "Snapshots encrypted with the AWS Managed CMK can\u2019t be shared. Specify another snapshot."


# ImageAttributeName, matched without regard to case (engines.ec2.attributes).
_IMAGE_ATTRIBUTES = canonical_names((
    "description", "kernel", "ramdisk", "launchPermission", "productCodes", "blockDeviceMapping",
    "sriovNetSupport", "bootMode", "tpmSupport", "uefiData", "lastLaunchedTime", "imdsSupport",
    "deregistrationProtection"))

# What ModifyImageAttribute can change (its Attribute: "description | imdsSupport | launchPermission").
_MODIFIABLE = ("description", "imdsSupport", "launchPermission")



@dataclass(frozen=True)
class ImageAttributeChange:
    """ModifyImageAttribute's request, its forms told apart by the service: a new
    description / IMDS support, launch permission items to add and remove (structured),
    and the older flat-list items with their OperationType (None: add)."""

    image_id: str | None
    attribute: str | None  # the model's spelling (canonical_attribute)
    description: str | None = None
    imds_support: str | None = None
    launch_add: tuple[dict[str, str], ...] = ()
    launch_remove: tuple[dict[str, str], ...] = ()
    legacy_items: tuple[dict[str, str], ...] = ()
    operation_type: str | None = None


def canonical_attribute(attribute: str | None) -> str | None:
    """The model's spelling of an image attribute name (unknown names come back unchanged)."""
    return None if attribute is None else canonical(attribute, _IMAGE_ATTRIBUTES)


def unknown_attribute(attribute: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute.")


@dataclass(frozen=True)
class ImageAttributeReading:
    """What DescribeImageAttribute answers from (the view: services/ec2/images.py): the
    attribute in the model's spelling, the image, and (``launchPermission`` only) the
    accounts it is shared with."""

    attribute: str
    image: Image
    launch_permissions: list[str]


def read_attribute(ctx: RequestContext, image_id: str, attribute: str) -> ImageAttributeReading:
    """DescribeImageAttribute's read: the image (the caller's own for ``launchPermission``),
    then the attribute name checked — an unknown image is reported before an unknown name."""
    caller = ctx.caller
    name = canonical_attribute(attribute) or ""
    with ctx.runtime.db.read() as conn:
        image = get_image(conn, caller.account, caller.region, image_id, owner_only=name == "launchPermission")
        if name not in _IMAGE_ATTRIBUTES.values():
            raise unknown_attribute(name)
        users = launch_permissions(conn, image_id) if name == "launchPermission" else []
    return ImageAttributeReading(name, image, users)


def _permission_changes(change: ImageAttributeChange) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(add, remove) LaunchPermission items from the structured and the flat-list forms."""
    add: list[dict[str, str]] = list(change.launch_add)
    remove: list[dict[str, str]] = list(change.launch_remove)
    legacy = list(change.legacy_items)
    if legacy:
        (add if legacy_operation(change.operation_type) == "add" else remove).extend(legacy)
    for item in add + remove:
        if item.get("OrganizationArn") or item.get("OrganizationalUnitArn"):
            raise UnsupportedOperation("Sharing with organizations is not supported by ebscrypt.")
        if "UserId" in item and item["UserId"] is not None and not ACCOUNT_RE.match(item["UserId"]):
            raise InvalidAMIAttributeItemValue(f'Invalid attribute item value "{item["UserId"]}" for userId item type.')
        if "Group" in item and item["Group"] is not None and item["Group"] != "all":
            raise InvalidAMIAttributeItemValue(f'Invalid attribute item value "{item["Group"]}" for group item type.')
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


def modify_attribute(ctx: RequestContext, change: ImageAttributeChange) -> None:
    caller = ctx.caller
    image_id = check_image_id(change.image_id)
    attribute = change.attribute
    if attribute is not None and attribute not in _MODIFIABLE:
        raise InvalidParameterValue(f"Value ({attribute}) for parameter attribute is invalid.")
    description = change.description
    imds = change.imds_support
    if imds is not None and imds != "v2.0":
        raise InvalidParameterValue(f"Value ({imds}) for parameter imdsSupport is invalid. The only valid value is v2.0.")
    add, remove = _permission_changes(change)
    if not add and not remove and description is None and imds is None:
        raise InvalidParameterCombination("No attributes specified.")
    with ctx.runtime.db.read() as conn:
        image = get_image(conn, caller.account, caller.region, image_id, owner_only=True)
    adds_public = any(i.get("Group") == "all" for i in add)
    adds_users = [i["UserId"] for i in add if i.get("UserId")]
    if adds_public and image.has_encrypted_snapshot:  # R-SHARE-2
        raise UnsupportedOperation(PUBLIC_ENCRYPTED_MESSAGE)
    if adds_users and image.has_encrypted_snapshot and _uses_aws_managed_key(ctx, image):  # R-SHARE-3
        raise InvalidParameter(AWS_MANAGED_SHARE_MESSAGE)
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
        raise MissingParameter("Attribute")
    attribute = canonical_attribute(attribute)
    if attribute != "launchPermission":
        raise InvalidParameterValue(f"Value ({attribute}) for parameter attribute is invalid. Only launchPermission can be reset.")
    with ctx.runtime.db.begin() as conn:
        get_image(conn, caller.account, caller.region, image_id, owner_only=True)
        conn.execute(delete(perms_t).where(perms_t.c.image_id == image_id))
        conn.execute(update(images_t).where(images_t.c.image_id == image_id).values(public=False))
