"""Record why a new volume or snapshot got its encryption (table ``ec2_provenance``).

Written in the same transaction as the resource's row, by the functions that insert
volumes and snapshots (volumes.insert_volume, snapshots.create_snapshot_from_volume /
insert_copy / new_snapshot_record), so a resource never exists without its record once
this release runs. The decision inputs come from the :class:`EncryptionPlan` the outcome
rule produced (engines/ec2/encryption.py); a snapshot of a volume records R-SNAP-1
(no decision: the volume's key and data key are kept).
"""

from __future__ import annotations


from sqlalchemy import Connection, delete, insert

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2.encryption import EncryptionPlan
from ebscrypt.storage.prepared import PreparedWrite
from ebscrypt.storage.tables.provenance import ec2_provenance


# Built once: ``insert(...).values(**row)`` per call cost ~0.3 ms of SQLAlchemy statement
# building and cache-key work, more than running it (issue 15); the row goes as parameters.
_INSERT = PreparedWrite(insert(ec2_provenance))  # every create: on the driver (storage/prepared.py)


def record(conn: Connection, ctx: RequestContext, resource_id: str, *, plan: EncryptionPlan | None, rule: str | None = None,
           key_arn: str | None, source_type: str, source_id: str | None = None,
           source_region: str | None = None, data_key_shared: bool = False) -> None:
    """Insert the provenance row of ``resource_id`` (owned by ``ctx.caller``). [conn]

    ``plan``: the outcome of §2 (None for R-SNAP-1, where ``rule`` is given instead).
    ``source_type``: ``empty`` (new volume), ``volume``, ``snapshot`` or ``upload`` (EBS
    direct APIs without a parent).
    """
    caller = ctx.caller
    _INSERT.run(conn, dict(
        resource_id=resource_id, account=caller.account, region=caller.region,
        operation=getattr(ctx, "operation", None) or "unknown",
        rule=rule or (plan.rule if plan else "unknown"),
        requested_encrypted=plan.requested_encrypted if plan else None,
        requested_kms_key_id=plan.requested_kms_key_id if plan else None,
        ebd=plan.ebd if plan else None,
        default_key=plan.default_key if plan else None,
        kms_key_arn=key_arn, source_type=source_type, source_id=source_id,
        source_region=source_region or caller.region, data_key_shared=bool(data_key_shared),
        problem=plan.problem[:512] if plan and plan.problem else None,
        created_at=ctx.runtime.clock.now(),
    ))


def forget(conn: Connection, resource_id: str) -> None:
    """Delete the record with its resource (a deleted resource explains nothing). [conn]"""
    conn.execute(delete(ec2_provenance).where(ec2_provenance.c.resource_id == resource_id))
