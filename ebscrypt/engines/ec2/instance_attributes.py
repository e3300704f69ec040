"""ModifyInstanceAttribute, DescribeInstanceAttribute and DescribeInstanceStatus.

ModifyInstanceAttribute changes one attribute per call, named either by ``Attribute`` +
``Value`` or by one structured member (``EnaSupport.Value``, ``BlockDeviceMapping.N`` …);
two attributes in one call are refused as EC2 does (InvalidParameterCombination "Fields
for multiple attribute types specified"). Where each attribute lives:

- instance type, EBS optimization, ENA support, security groups: the instance row
  (CreateImage copies the instance's ENA support into the image, as EC2 does);
- DeleteOnTermination: ec2core's attachment row, which TerminateInstances obeys;
- the rest: ``ec2_instance_attributes`` (instances.py ``InstanceAttrs``).

EC2 changes the instance type, user data, kernel, RAM disk, EBS optimization, ENA and
SR-IOV support only on a stopped instance (IncorrectInstanceState "The instance '…' is
not in the 'stopped' state."); the others also on a running one.

DescribeInstanceStatus (its view is built in services/ec2/instances.py): ebscrypt's
instances run no code, so a running instance's instance, system and attached-EBS checks
pass ("ok"); any other state is "not-applicable", listed only with IncludeAllInstances,
as EC2 does.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, update

from ebscrypt.context import RequestContext
from ebscrypt.domain import instance_types as it
from ebscrypt.engines.ec2 import volumes as core_volumes
from ebscrypt.engines.ec2 import network
from ebscrypt.engines.ec2.instance_records import (
    Instance,
    check_instance_ids,
    get_instance,
    get_instances,
    visible_instances,
)
from ebscrypt.engines.ec2.instances import (
    InstanceAttrs,
    attributes_of,
    check_shutdown_behavior,
    check_user_data,
    known_instance_types,
    model_enum,
    save_attributes,
)
from ebscrypt.engines.ec2.records import Attachment, Volume
from ebscrypt.engines.ec2.volumes import set_delete_on_termination
from ebscrypt.errors import (
    IncorrectInstanceState,
    InvalidInstanceAttributeValue,
    InvalidParameter,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    UnsupportedOperation,
)
from ebscrypt.storage.tables.ec2_images import ec2_instances as instances_t

#: Structured request members → the attribute each one modifies.
MEMBERS = {
    "InstanceType": "instanceType",
    "Kernel": "kernel",
    "Ramdisk": "ramdisk",
    "UserData": "userData",
    "DisableApiTermination": "disableApiTermination",
    "DisableApiStop": "disableApiStop",
    "InstanceInitiatedShutdownBehavior": "instanceInitiatedShutdownBehavior",
    "SourceDestCheck": "sourceDestCheck",
    "EbsOptimized": "ebsOptimized",
    "EnaSupport": "enaSupport",
    "SriovNetSupport": "sriovNetSupport",
    "BlockDeviceMappings": "blockDeviceMapping",
    "Groups": "groupSet",
}
_BOOLEAN = frozenset({"disableApiTermination", "disableApiStop", "sourceDestCheck", "ebsOptimized", "enaSupport"})
_LISTS = frozenset({"blockDeviceMapping", "groupSet"})
_STOPPED_ONLY = frozenset({"instanceType", "userData", "kernel", "ramdisk", "ebsOptimized", "enaSupport",
                           "sriovNetSupport"})
_NOT_MODIFIABLE = frozenset({"rootDeviceName", "productCodes", "enclaveOptions"})


def _attribute_names() -> frozenset[str]:
    """The model's ``InstanceAttributeName`` enum."""
    return model_enum("InstanceAttributeName")


def _unknown_attribute(name: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"Value ({name}) for parameter attribute is invalid. Unknown attribute.")


# ============================================================================ the request


def _parse_boolean(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).lower()
    if lowered not in ("true", "false"):
        raise InvalidParameterValue(f"Value ({text}) for parameter value is invalid. Expected: 'true' or 'false'.")
    return lowered == "true"


def _member_value(member: str, attribute: str, raw: Any) -> Any:
    """A structured member's value (``X.Value``, or the list itself)."""
    if attribute in _LISTS:
        return raw
    value = raw.get("Value") if isinstance(raw, dict) else None
    if value is None:
        raise MissingParameter(f"{member}.Value")
    if attribute == "userData":  # a blob: the codec has already decoded the base64
        return base64.b64encode(value if isinstance(value, bytes) else str(value).encode()).decode()
    return value


@dataclass(frozen=True)
class AttributeRequest:
    """ModifyInstanceAttribute's request: the structured members given (by member name,
    e.g. ``DisableApiTermination``; see ``MEMBERS``), or an ``Attribute`` named with its
    ``Value``."""

    members: Mapping[str, Any]
    attribute: str | None = None
    value: Any = None


def requested_change(req: AttributeRequest) -> tuple[str, Any]:
    """The one (attribute, value) a ModifyInstanceAttribute request asks for."""
    found = {attr: _member_value(member, attr, req.members[member])
             for member, attr in MEMBERS.items() if req.members.get(member) not in (None, [])}
    named = req.attribute
    if named:
        if named not in _attribute_names():
            raise _unknown_attribute(named)
        if named in _NOT_MODIFIABLE:
            raise InvalidParameterValue(f"Value ({named}) for parameter attribute is invalid. The attribute cannot be "
                                        "modified.")
        if named not in found:
            if named in _LISTS:  # a list cannot travel in Value
                member = next(m for m, a in MEMBERS.items() if a == named)
                raise MissingParameter(member)
            if req.value is None:
                raise MissingParameter("value")
            found[named] = req.value
    if not found:
        raise InvalidParameterCombination("No attributes specified.")
    if len(found) > 1:
        raise InvalidParameterCombination(f"Fields for multiple attribute types specified: {', '.join(sorted(found))}")
    attribute, value = next(iter(found.items()))
    if attribute in _BOOLEAN:
        value = _parse_boolean(value)
    elif attribute == "userData":
        value = check_user_data(value)
    elif attribute not in _LISTS and not isinstance(value, str):
        value = str(value)
    return attribute, value


# ============================================================================ ModifyInstanceAttribute


def _check_state(instance: Instance, attribute: str) -> None:
    if attribute in _STOPPED_ONLY and instance.state != it.STOPPED:
        raise IncorrectInstanceState(f"The instance '{instance.instance_id}' is not in the 'stopped' state.")
    if instance.state in (it.SHUTTING_DOWN, it.TERMINATED):
        raise IncorrectInstanceState(f"The instance '{instance.instance_id}' is not in a state from which it can be "
                                     "modified.")


def _set_row(conn: Connection, instance: Instance, **values: Any) -> None:
    conn.execute(update(instances_t).where(instances_t.c.instance_id == instance.instance_id).values(**values))


def _set_attrs(conn: Connection, instance: Instance, **changes: Any) -> None:
    current = attributes_of(conn, [instance.instance_id])[instance.instance_id]
    save_attributes(conn, instance.instance_id, replace(current, **changes))


def _instance_type(conn: Connection, instance: Instance, value: str) -> None:
    if value not in known_instance_types():
        raise InvalidInstanceAttributeValue(f"Value ({value}) for parameter instanceType is invalid. Invalid instance type.")
    # R-RUN-2 after launch: a type that cannot attach encrypted volumes cannot run one.
    encrypted = any(vol.encrypted for vol, _att in core_volumes.volumes_of_instance(conn, instance.instance_id))
    refusal = it.encryption_refusal(value, needs_encryption=encrypted)
    if refusal:
        raise InvalidParameterCombination(refusal)
    _set_row(conn, instance, instance_type=value)


def _sriov(conn: Connection, instance: Instance, value: str) -> None:
    # "simple" is the only value; EC2 offers no way to turn it off again.
    if value != "simple":
        raise InvalidParameterValue(f"Value ({value}) for parameter sriovNetSupport is invalid. Valid values: simple")
    _set_attrs(conn, instance, sriov_net_support=value)


def _kernel_or_ramdisk(conn: Connection, instance: Instance, value: str) -> None:
    raise UnsupportedOperation("Kernels and RAM disks are not supported by ebscrypt: it has no kernel (aki-) or "
                               "RAM disk (ari-) images.")


def _groups(conn: Connection, instance: Instance, group_ids: list[str]) -> None:
    groups: list[dict[str, str]] = []
    for group_id in dict.fromkeys(group_ids):
        group = network.get_group(conn, instance.account, instance.region, group_id)
        if group.vpc_id != instance.vpc_id:
            raise InvalidParameter(f"Security group {group_id} and subnet {instance.subnet_id} belong to different "
                                   "networks.")
        groups.append({"GroupId": group.id, "GroupName": group.name})
    _set_row(conn, instance, security_groups=json.dumps(groups))


def _delete_on_termination(conn: Connection, instance: Instance, mappings: list[dict[str, Any]]) -> None:
    """BlockDeviceMapping.N: DeleteOnTermination (default true) of volumes attached now."""
    attached = {att.device: att for _vol, att in core_volumes.volumes_of_instance(conn, instance.instance_id)}
    changes: dict[str, bool] = {}
    for mapping in mappings:
        device = mapping.get("DeviceName")
        if not device:
            raise MissingParameter("DeviceName")
        if mapping.get("VirtualName") or mapping.get("NoDevice") is not None:
            # Instance store volumes are added at launch only; nothing else can change here.
            raise InvalidInstanceAttributeValue(f"Only DeleteOnTermination of an attached EBS volume can be modified ({device}).")
        if device not in attached:
            raise InvalidInstanceAttributeValue(f"No device is currently mapped at {device}")
        dot = (mapping.get("Ebs") or {}).get("DeleteOnTermination")
        changes[device] = True if dot is None else bool(dot)
    for device, dot in changes.items():
        set_delete_on_termination(conn, attached[device].volume_id, instance.instance_id, dot)


_APPLY: dict[str, Callable[[Connection, Instance, Any], None]] = {
    "instanceType": _instance_type,
    "ebsOptimized": lambda conn, i, v: _set_row(conn, i, ebs_optimized=v),
    "enaSupport": lambda conn, i, v: _set_row(conn, i, ena_support=v),
    "groupSet": _groups,
    "blockDeviceMapping": _delete_on_termination,
    "userData": lambda conn, i, v: _set_attrs(conn, i, user_data=v),
    "disableApiTermination": lambda conn, i, v: _set_attrs(conn, i, disable_api_termination=v),
    "disableApiStop": lambda conn, i, v: _set_attrs(conn, i, disable_api_stop=v),
    "sourceDestCheck": lambda conn, i, v: _set_attrs(conn, i, source_dest_check=v),
    "instanceInitiatedShutdownBehavior":
        lambda conn, i, v: _set_attrs(conn, i, shutdown_behavior=check_shutdown_behavior(v)),
    "sriovNetSupport": _sriov,
    "kernel": _kernel_or_ramdisk,
    "ramdisk": _kernel_or_ramdisk,
}


def modify_attribute(ctx: RequestContext, instance_id: str, req: AttributeRequest) -> None:
    """ModifyInstanceAttribute: validated completely before anything changes."""
    attribute, value = requested_change(req)
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        instance = get_instance(conn, caller.account, caller.region, instance_id, ctx.runtime.clock.now())
        _check_state(instance, attribute)
        _APPLY[attribute](conn, instance, value)


# ============================================================================ DescribeInstanceAttribute


@dataclass(frozen=True)
class AttributeReading:
    """What DescribeInstanceAttribute answers from: the instance, its attributes and (for
    ``blockDeviceMapping`` only) its attached volumes, sorted by device."""

    instance: Instance
    attrs: InstanceAttrs
    attached: list[tuple[Volume, Attachment]]


def read_attribute(ctx: RequestContext, instance_id: str, attribute: str) -> AttributeReading:
    """DescribeInstanceAttribute's read: the attribute name checked, the instance (the
    caller's) and what the answer is built from."""
    caller = ctx.caller
    if attribute not in _attribute_names():
        raise _unknown_attribute(attribute)
    with ctx.runtime.db.read() as conn:
        instance = get_instance(conn, caller.account, caller.region, instance_id, ctx.runtime.clock.now())
        attrs = attributes_of(conn, [instance_id])[instance_id]
        attached = core_volumes.volumes_of_instance(conn, instance_id) if attribute == "blockDeviceMapping" else []
    return AttributeReading(instance, attrs, sorted(attached, key=lambda va: va[1].device))


# ============================================================================ DescribeInstanceStatus

def describe_status(ctx: RequestContext, ids: list[str], include_all: bool) -> list[Instance]:
    """The caller's instances whose status DescribeInstanceStatus shows (the running ones
    unless ``include_all``), ordered by instance id (for paging)."""
    caller = ctx.caller
    check_instance_ids(ids)
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.read() as conn:
        if ids:
            instances = get_instances(conn, caller.account, caller.region, list(dict.fromkeys(ids)), now)
        else:
            instances = visible_instances(conn, caller.account, caller.region, now)
    if not include_all:
        instances = [i for i in instances if i.state == it.RUNNING]
    return sorted(instances, key=lambda i: i.instance_id)


__all__ = ["AttributeReading", "InstanceAttrs", "describe_status", "modify_attribute", "read_attribute",
           "requested_change"]
