"""Instance records and lookups (below ``volumes``, which asks an instance's zone and root
device; ``instances`` builds RunInstances and the life cycle on them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from ebscrypt.context import Caller
from ebscrypt.domain import instance_types as it
from ebscrypt.engines.ec2.ids import is_well_formed
from ebscrypt.engines.ec2.records import aware
from ebscrypt.errors import IncorrectState, Malformed, NotFound
from ebscrypt.storage.tables.ec2_images import ec2_instances as instances_t

TERMINATED_VISIBLE_FOR = timedelta(hours=1)  # EC2 keeps terminated instances visible ~1 h


@dataclass(frozen=True)
class Instance:
    instance_id: str
    reservation_id: str
    account: str
    region: str
    image_id: str
    instance_type: str
    state: str
    state_reason_code: str | None
    state_reason_message: str | None
    state_transition_reason: str | None
    launch_time: datetime
    key_name: str | None
    subnet_id: str | None
    vpc_id: str | None
    security_groups: list[dict[str, str]]
    availability_zone: str
    private_ip: str
    ami_launch_index: int
    root_device_name: str | None
    architecture: str | None
    virtualization_type: str | None
    ena_support: bool | None
    ebs_optimized: bool
    client_token: str | None
    launch_plan: list[dict[str, Any]]
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> "Instance":
        values = dict(row)
        values["security_groups"] = json.loads(values["security_groups"] or "[]")
        values["launch_plan"] = json.loads(values["launch_plan"] or "[]")
        values["launch_time"] = aware(values["launch_time"])
        values["updated_at"] = aware(values["updated_at"])
        values["ebs_optimized"] = bool(values["ebs_optimized"])
        return cls(**values)


def malformed(instance_id: str) -> Malformed:
    return Malformed("InvalidInstanceID", instance_id)


def not_found(ids: list[str]) -> NotFound:
    if len(ids) == 1:
        return NotFound("InvalidInstanceID", ids[0])
    return NotFound("InvalidInstanceID", ", ".join(ids), f"The instance IDs '{', '.join(ids)}' do not exist")


def check_instance_ids(ids: list[str]) -> None:
    for instance_id in ids:
        if not is_well_formed(instance_id, "i"):
            raise malformed(instance_id)


def is_visible(instance: Instance, now: datetime) -> bool:
    return not (instance.state == it.TERMINATED and now - instance.updated_at > TERMINATED_VISIBLE_FOR)


def get_instance(conn: Connection, account: str, region: str, instance_id: str, now: datetime | None = None) -> Instance:
    """The caller's instance (InvalidInstanceID.Malformed / .NotFound otherwise). [conn]"""
    check_instance_ids([instance_id])
    row = conn.execute(
        select(instances_t).where(instances_t.c.instance_id == instance_id, instances_t.c.account == account,
                                  instances_t.c.region == region)
    ).mappings().first()
    if row is None:
        raise not_found([instance_id])
    instance = Instance.from_row(row)
    if now is not None and not is_visible(instance, now):
        raise not_found([instance_id])
    return instance


def get_instances(conn: Connection, account: str, region: str, ids: list[str], now: datetime) -> list[Instance]:
    """The caller's instances named by ``ids`` (well-formed, checked first), in that order, in
    one query; every unknown one named in a single InvalidInstanceID.NotFound. [conn]"""
    if not ids:
        return []
    found = {i.instance_id: i for i in visible_instances(conn, account, region, now, ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise not_found(missing)
    return [found[i] for i in ids]


def visible_instances(conn: Connection, account: str, region: str, now: datetime,
                      ids: list[str] | None = None) -> list[Instance]:
    """The caller's visible instances (only ``ids`` if given), in launch order. [conn]"""
    query = select(instances_t).where(instances_t.c.account == account, instances_t.c.region == region)
    if ids:
        query = query.where(instances_t.c.instance_id.in_(ids))
    rows = conn.execute(query.order_by(instances_t.c.launch_time, instances_t.c.reservation_id,
                                       instances_t.c.ami_launch_index)).mappings()
    return [i for i in (Instance.from_row(r) for r in rows) if is_visible(i, now)]


def lookup(conn: Connection, caller: Caller, instance_id: str) -> dict[str, Any]:
    """AttachVolume / CreateSnapshots (``volumes``) ask this for the instance's zone and root
    device (and its existence: InvalidInstanceID.NotFound / .Malformed; IncorrectState
    unless running or stopped)."""
    instance = get_instance(conn, caller.account, caller.region, instance_id)
    if instance.state not in (it.RUNNING, it.STOPPED):
        raise IncorrectState(f"Instance '{instance_id}' is not 'running'.")
    return {"availability_zone": instance.availability_zone, "root_device_name": instance.root_device_name,
            "state": instance.state}



# ============================================================================ views
