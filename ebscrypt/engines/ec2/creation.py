"""The one create protocol of volumes and snapshots (issue 11 item 3; issue 15's one
durable transaction per metadata-only call).

CreateVolume, CreateSnapshot(s) and CopySnapshot all go:

1. **prepare** (the caller, no transaction open): validate, apply §2, make or reuse the
   data key and prove the source key usable — KMS is never called inside a write
   transaction; the grant for EC2 those uses may make (R-KEY-3) is authorized and audited
   then, but written in step 2 (:func:`deferring_grants`);
2. **store**, in one write transaction: the deferred grant, the resource row, its tags and
   provenance, and either
   - *metadata only* (an empty volume, a same-data-key share of a snapshot's blocks, a
     snapshot of a volume, a key problem that dooms it): the work itself — a block-lineage
     reference (``blocks.share_in``) — and the resource's final state, all in that one
     durable commit, no job; or
   - *data to move* (a re-encryption): the resource in its transitional state and its job
     (``jobs.submit(..., conn=conn)``), so a crash after commit resumes it;
3. after commit, for a job: wake the runner and wait (bounded) for it, so boto3's waiters
   see the resource final on their first poll (R-LIFE-1). A resource finished in its
   creating transaction needs nothing after commit: no one can wait on, or refer to, an id
   no answer has shown yet.

The answer shows the resource as AWS's does at creation (``creating`` / ``pending`` 0%).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ContextManager, TypeVar

from sqlalchemy import Connection, Table, bindparam, select

from ebscrypt.context import RequestContext, Runtime
from ebscrypt.engines.ec2 import waits
from ebscrypt.storage.prepared import PreparedRead

if TYPE_CHECKING:
    from ebscrypt.engines.kms.grants import DeferredGrants

R = TypeVar("R")

# store(conn, metadata_only) -> the record as the answer shows it
Store = Callable[[Connection, bool], R]


def deferring_grants(ctx: RequestContext) -> ContextManager[DeferredGrants | None]:
    """Around step 1 and :func:`create`: the EC2 service grants KMS makes for the request
    are stored in the creating transaction (``create(..., grants=...)``), so an encrypted
    resource and its first grant are one durable commit, not two (issue 15). None when no
    KMS engine runs (a partial runtime: nothing to defer)."""
    engines = ctx.runtime.engines
    if "kms" not in engines:
        return contextlib.nullcontext()
    return ctx.runtime.kms.deferring_grants()


def create(ctx: RequestContext, resource_id: str, store: Store[R], *, metadata_only: bool, table: Table,
           transitional: str, wait_seconds: float = 3.0, hold: ContextManager[Any] | None = None,
           grants: DeferredGrants | None = None) -> R:
    """Run steps 2 and 3 of the protocol for a prepared resource. ``resource_id``: the id
    its job finishes (waited for; unused when ``metadata_only``). ``table`` and
    ``transitional`` (its ``creating``/``pending`` state) let a waiter poll the row when
    another process may run the job; ``hold`` is entered around the transaction (the
    quiesce of an attached volume: R-ATTACH-4); ``grants``: the grants step 1 deferred
    (:func:`deferring_grants`), stored first in the transaction."""
    runtime = ctx.runtime
    event = None if metadata_only else waits.expect(resource_id)
    with hold or contextlib.nullcontext(), runtime.db.begin() as conn:
        if grants is not None:
            grants.store(conn)
        record = store(conn, metadata_only)
    if event is not None:
        runtime.jobs.notify()
        waits.wait_settled(event, wait_seconds, settled_reader(runtime, table, resource_id, transitional))
    return record


def settled_reader(runtime: Runtime, table: Table, resource_id: str, transitional: str) -> Callable[[], bool] | None:
    """When other processes share the database (the job may run there): a read of whether
    the resource left its transitional state. None when this process alone writes the
    database (SQLite, one worker: the job's event is enough)."""
    if not runtime.db.shared:
        return None

    def settled() -> bool:
        with runtime.db.read() as conn:
            state = conn.execute(select(table.c.state).where(table.c.id == resource_id)).scalar()
        return bool(state != transitional)

    return settled


def source_present(conn: Connection, table: Table, source_id: str) -> bool:
    """Whether the source row still exists, locked (PostgreSQL) until this transaction
    ends: a DeleteSnapshot then commits after the share, so it releases its blocks only
    once the new resource holds its reference. (SQLite: one writer at a time already.)"""
    query = _LOCK_SOURCE.get(table.name)
    if query is None:  # built once per table (building it per call cost more than running it)
        query = _LOCK_SOURCE[table.name] = PreparedRead(
            select(table.c.id).where(table.c.id == bindparam("id")).with_for_update())
    return query.exists(conn, {"id": source_id})  # SQLite: on the driver (storage/prepared.py)


_LOCK_SOURCE: dict[str, PreparedRead] = {}
