"""Start-up reconciliation of the block store with the volume and snapshot records.

DeleteVolume, DeleteSnapshot and TerminateInstances delete the record in one transaction
and release its blocks after the commit; a server killed in between leaves a block owner
that no record names. Records are always created before their owner (CreateVolume,
CreateSnapshot, StartSnapshot, copies), so at start-up — before any job or request runs —
an owner whose record is gone can only be such a leftover, and its blocks are released.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from ebscrypt.context import Runtime
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volumes

log = logging.getLogger("ebscrypt.ec2")

# Owners the EC2 side names after its resources; any other owner is not ours to judge.
_RESOURCE_PREFIXES = ("vol-", "snap-")


def release_stray_block_owners(runtime: Runtime) -> list[str]:
    """Release the blocks of owners whose volume/snapshot record no longer exists.

    Call only while nothing else runs (start-up, before the job workers start).
    """
    blocks = runtime.engines.get("blocks")
    if blocks is None:
        return []
    owners = [o for o in blocks.owner_ids() if o.startswith(_RESOURCE_PREFIXES)]
    if not owners:
        return []
    with runtime.db.read() as conn:
        records = {r.id for r in conn.execute(select(ec2_volumes.c.id))}
        records |= {r.id for r in conn.execute(select(ec2_snapshots.c.id))}
    strays = [o for o in owners if o not in records]
    for owner in strays:
        blocks.release(owner)
    if strays:
        log.warning("released the blocks of %d deleted resources left by an interrupted run: %s",
                    len(strays), ", ".join(strays[:10]))
    return strays
