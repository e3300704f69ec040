"""Instance operations (R-RUN-1..3): thin handlers over :mod:`ebscrypt.engines.ec2.instances`,
and the ``Reservation`` / ``Instance`` views built from its records (the view convention,
docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Callable

from ebscrypt.context import RequestContext
from ebscrypt.domain import instance_types as it
from ebscrypt.engines.ec2 import instance_attributes as attributes
from ebscrypt.engines.ec2 import instances as engine
from ebscrypt.engines.ec2.filters import select_matching as filter_select
from ebscrypt.engines.ec2.instance_records import Instance
from ebscrypt.engines.ec2.instances import InstanceDetail, Reservation, StateChange
from ebscrypt.engines.ec2.records import Attachment, Volume
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page
from ebscrypt.errors import InvalidParameterValue, MissingParameter
from ebscrypt.services.registry import operation

MAX_STATUS_IDS = 100  # DescribeInstanceStatus: "Maximum 100 explicitly specified instance IDs"


@operation("ec2", "RunInstances")
def run_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return reservation_view(engine.run_instances(ctx, engine.LaunchSpec.from_fields(params)))


@operation("ec2", "DescribeInstances")
def describe_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    reservations = engine.describe_instances(ctx, params.get("InstanceIds") or [], params.get("Filters"))
    reservations.sort(key=lambda r: r.reservation_id)  # paging order
    chunk, token = page(reservations, params, lambda r: r.reservation_id, low=5, high=1000, ids_param="InstanceIds")
    return {"Reservations": [reservation_view(r) for r in chunk], "NextToken": token}


@operation("ec2", "StartInstances")
def start_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"StartingInstances": state_changes_view(engine.start_instances(ctx, params.get("InstanceIds") or []))}


@operation("ec2", "StopInstances")
def stop_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"StoppingInstances": state_changes_view(engine.stop_instances(ctx, params.get("InstanceIds") or []))}


@operation("ec2", "TerminateInstances")
def terminate_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    changes = engine.terminate_instances(ctx, params.get("InstanceIds") or [])
    return {"TerminatingInstances": state_changes_view(changes)}


@operation("ec2", "DescribeInstanceAttribute")
def describe_instance_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if not params.get("InstanceId"):
        raise MissingParameter("InstanceId")
    if not params.get("Attribute"):
        raise MissingParameter("Attribute")
    reading = attributes.read_attribute(ctx, params["InstanceId"], params["Attribute"])
    return attribute_view(params["InstanceId"], params["Attribute"], reading)


@operation("ec2", "ModifyInstanceAttribute")
def modify_instance_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if not params.get("InstanceId"):
        raise MissingParameter("InstanceId")
    request = attributes.AttributeRequest({m: params.get(m) for m in attributes.MEMBERS},
                                          params.get("Attribute"), params.get("Value"))
    attributes.modify_attribute(ctx, params["InstanceId"], request)
    return {}


@operation("ec2", "DescribeInstanceStatus")
def describe_instance_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    ids = params.get("InstanceIds") or []
    if len(ids) > MAX_STATUS_IDS:
        raise InvalidParameterValue(f"The maximum number of instance IDs that can be specified is {MAX_STATUS_IDS}.")
    instances = attributes.describe_status(ctx, ids, bool(params.get("IncludeAllInstances")))
    statuses = filter_select([status_view(i) for i in instances], params.get("Filters"), _STATUS_FILTERS)
    chunk, token = page(statuses, params, lambda s: s["InstanceId"], low=5, high=1000, ids_param="InstanceIds")
    return {"InstanceStatuses": chunk, "NextToken": token}


# ============================================================================ views


def reservation_view(reservation: Reservation) -> dict[str, Any]:
    """The model's ``Reservation`` structure."""
    return {
        "ReservationId": reservation.reservation_id,
        "OwnerId": reservation.owner_id,
        "Groups": [],
        "Instances": [instance_view(d) for d in reservation.instances],
    }


def _private_dns(ip: str, region: str) -> str:
    suffix = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{suffix}"


def mappings_view(attachments: list[tuple[Volume, Attachment]]) -> list[dict[str, Any]]:
    """An instance's ``InstanceBlockDeviceMapping`` list (attachments sorted by device)."""
    return [
        {
            "DeviceName": att.device,
            "Ebs": {
                "AttachTime": att.attach_time,
                "DeleteOnTermination": bool(att.delete_on_termination),
                "Status": att.state,
                "VolumeId": vol.id,
            },
        }
        for vol, att in attachments
    ]


def instance_view(detail: InstanceDetail) -> dict[str, Any]:
    """The model's ``Instance`` structure; a terminated instance has no private address."""
    instance, attrs = detail.instance, detail.attrs
    alive = instance.state != it.TERMINATED
    return {
        "InstanceId": instance.instance_id,
        "ImageId": instance.image_id,
        "State": {"Code": it.STATE_CODES[instance.state], "Name": instance.state},
        "PrivateDnsName": _private_dns(instance.private_ip, instance.region) if alive else "",
        "PublicDnsName": "",
        "StateTransitionReason": instance.state_transition_reason or "",
        "AmiLaunchIndex": instance.ami_launch_index,
        "ProductCodes": [],
        "InstanceType": instance.instance_type,
        "LaunchTime": instance.launch_time,
        "Placement": {"AvailabilityZone": instance.availability_zone, "GroupName": "", "Tenancy": "default"},
        "Monitoring": {"State": "disabled"},
        "Architecture": instance.architecture or "x86_64",
        "RootDeviceType": "ebs",
        "BlockDeviceMappings": mappings_view(detail.attachments),
        "VirtualizationType": instance.virtualization_type or "hvm",
        "Hypervisor": "xen",
        "SecurityGroups": instance.security_groups,
        "SourceDestCheck": attrs.source_dest_check,
        "EbsOptimized": instance.ebs_optimized,
        "PlatformDetails": "Linux/UNIX",
        "UsageOperation": "RunInstances",
        "NetworkInterfaces": [],
        "PrivateIpAddress": instance.private_ip if alive else None,
        "RootDeviceName": instance.root_device_name or None,
        "KeyName": instance.key_name or None,
        "SubnetId": instance.subnet_id or None,
        "VpcId": instance.vpc_id or None,
        "EnaSupport": instance.ena_support,
        "SriovNetSupport": attrs.sriov_net_support or None,
        "KernelId": attrs.kernel_id or None,
        "RamdiskId": attrs.ramdisk_id or None,
        "ClientToken": instance.client_token or None,
        "StateReason": ({"Code": instance.state_reason_code, "Message": instance.state_reason_message or ""}
                        if instance.state_reason_code else None),
        "Tags": detail.tags or None,
    }


def state_changes_view(changes: list[StateChange]) -> list[dict[str, Any]]:
    return [state_change_view(c) for c in changes]


def state_change_view(change: StateChange) -> dict[str, Any]:
    """The model's ``InstanceStateChange``."""
    return {
        "InstanceId": change.instance_id,
        "CurrentState": {"Code": it.STATE_CODES[change.current], "Name": change.current},
        "PreviousState": {"Code": it.STATE_CODES[change.previous], "Name": change.previous},
    }


def _value(value: Any) -> dict[str, Any]:
    """An AttributeValue: ``{}`` when unset, as EC2 answers."""
    return {} if value is None else {"Value": value}


def attribute_view(instance_id: str, attribute: str, reading: attributes.AttributeReading) -> dict[str, Any]:
    """DescribeInstanceAttribute's answer: the instance id and the one member the attribute names."""
    instance, attrs = reading.instance, reading.attrs
    answers: dict[str, Callable[[], tuple[str, Any]]] = {
        "instanceType": lambda: ("InstanceType", _value(instance.instance_type)),
        "kernel": lambda: ("KernelId", _value(attrs.kernel_id)),
        "ramdisk": lambda: ("RamdiskId", _value(attrs.ramdisk_id)),
        "userData": lambda: ("UserData", _value(attrs.user_data)),
        "disableApiTermination": lambda: ("DisableApiTermination", _value(attrs.disable_api_termination)),
        "disableApiStop": lambda: ("DisableApiStop", _value(attrs.disable_api_stop)),
        "instanceInitiatedShutdownBehavior":
            lambda: ("InstanceInitiatedShutdownBehavior", _value(attrs.shutdown_behavior)),
        "rootDeviceName": lambda: ("RootDeviceName", _value(instance.root_device_name)),
        "blockDeviceMapping": lambda: ("BlockDeviceMappings", mappings_view(reading.attached)),
        "productCodes": lambda: ("ProductCodes", []),
        "sourceDestCheck": lambda: ("SourceDestCheck", _value(attrs.source_dest_check)),
        "groupSet": lambda: ("Groups", instance.security_groups),
        "ebsOptimized": lambda: ("EbsOptimized", _value(instance.ebs_optimized)),
        "sriovNetSupport": lambda: ("SriovNetSupport", _value(attrs.sriov_net_support)),
        "enaSupport": lambda: ("EnaSupport", _value(bool(instance.ena_support))),
        "enclaveOptions": lambda: ("EnclaveOptions", {"Enabled": False}),
    }
    key, value = answers[attribute]()
    return {"InstanceId": instance_id, key: value}


_PASSED = [{"Name": "reachability", "Status": "passed"}]


def status_view(instance: Instance) -> dict[str, Any]:
    """The model's ``InstanceStatus`` for one instance."""
    if instance.state == it.RUNNING:
        check = {"Status": "ok", "Details": list(_PASSED)}
    else:
        check = {"Status": "not-applicable"}
    return {
        "InstanceId": instance.instance_id,
        "AvailabilityZone": instance.availability_zone,
        "InstanceState": {"Code": it.STATE_CODES[instance.state], "Name": instance.state},
        "InstanceStatus": dict(check),
        "SystemStatus": dict(check),
        "AttachedEbsStatus": dict(check),
        "Events": [],
    }


def _reachability(key: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda s: [d["Status"] for d in s[key].get("Details", []) if d["Name"] == "reachability"]


_STATUS_FILTERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "availability-zone": lambda s: s["AvailabilityZone"],
    "instance-state-name": lambda s: s["InstanceState"]["Name"],
    "instance-state-code": lambda s: s["InstanceState"]["Code"],
    "instance-status.status": lambda s: s["InstanceStatus"]["Status"],
    "instance-status.reachability": _reachability("InstanceStatus"),
    "system-status.status": lambda s: s["SystemStatus"]["Status"],
    "system-status.reachability": _reachability("SystemStatus"),
    "attached-ebs-status.status": lambda s: s["AttachedEbsStatus"]["Status"],
    # no scheduled events ever exist for these instances
    "event.code": lambda s: [],
    "event.description": lambda s: [],
    "event.instance-event-id": lambda s: [],
    "event.not-after": lambda s: [],
    "event.not-before": lambda s: [],
    "event.not-before-deadline": lambda s: [],
    "operator.managed": lambda s: False,
}
