"""Instance operations (R-RUN-1..3): thin handlers over :mod:`ebscrypt.engines.ec2.instances`."""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import instance_attributes as attributes
from ebscrypt.engines.ec2 import instances as engine
from ebscrypt.services.ec2.request import dry_run_check
from ebscrypt.services.ec2.paging import page
from ebscrypt.errors import InvalidParameterValue, MissingParameter
from ebscrypt.services.registry import operation

MAX_STATUS_IDS = 100  # DescribeInstanceStatus: "Maximum 100 explicitly specified instance IDs"


@operation("ec2", "RunInstances")
def run_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return engine.run_instances(ctx, engine.LaunchSpec.from_fields(params))


@operation("ec2", "DescribeInstances")
def describe_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    reservations = engine.describe_instances(ctx, params.get("InstanceIds") or [], params.get("Filters"))
    reservations.sort(key=lambda r: r["ReservationId"])  # paging order
    chunk, token = page(reservations, params, lambda r: r["ReservationId"], low=5, high=1000, ids_param="InstanceIds")
    out: dict[str, Any] = {"Reservations": chunk}
    if token:
        out["NextToken"] = token
    return out


@operation("ec2", "StartInstances")
def start_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"StartingInstances": engine.start_instances(ctx, params.get("InstanceIds") or [])}


@operation("ec2", "StopInstances")
def stop_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"StoppingInstances": engine.stop_instances(ctx, params.get("InstanceIds") or [])}


@operation("ec2", "TerminateInstances")
def terminate_instances(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    return {"TerminatingInstances": engine.terminate_instances(ctx, params.get("InstanceIds") or [])}


@operation("ec2", "DescribeInstanceAttribute")
def describe_instance_attribute(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run_check(params)
    if not params.get("InstanceId"):
        raise MissingParameter("InstanceId")
    if not params.get("Attribute"):
        raise MissingParameter("Attribute")
    return attributes.describe_attribute(ctx, params["InstanceId"], params["Attribute"])


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
    statuses = attributes.describe_status(ctx, ids, params.get("Filters"), bool(params.get("IncludeAllInstances")))
    chunk, token = page(statuses, params, lambda s: s["InstanceId"], low=5, high=1000, ids_param="InstanceIds")
    out: dict[str, Any] = {"InstanceStatuses": chunk}
    if token:
        out["NextToken"] = token
    return out
