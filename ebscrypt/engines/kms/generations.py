"""Authorization generations: one counter per KMS key (``kms_keys.auth_generation``).

A use of a key authorized once may be remembered (the EBS direct APIs keep unwrapped data
keys for a short while) only as long as nothing that could take that use away has
changed. Every such change — key state (Enable/Disable, ScheduleKeyDeletion,
CancelKeyDeletion), key policy, a grant retired or revoked, an alias created, moved or
deleted (``kms:ResourceAliases`` conditions) — bumps the key's generation *in the same
transaction* as the change. Whoever remembers an authorization records the generation it
read before authorizing and compares it with the current one (one primary-key read) before
each reuse: unequal, or the key gone, means authorize afresh. The counter lives in the
shared metadata, so a change made through one server process is seen by every other at
its next read — no message to lose, whatever the database.

Grants created do not bump: they only ever add permissions. Reading the generation
*before* authorizing makes a change that races with the authorization invalidate it.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select, update

from ebscrypt.storage.prepared import PreparedRead
from ebscrypt.storage.tables.kms import kms_keys

_READ = select(kms_keys.c.auth_generation).where(kms_keys.c.key_id == bindparam("key_id"))
# Read before every reuse of a remembered key (each EBS direct block): on the driver (storage/prepared.py).
_READ_FAST = PreparedRead(_READ)


def bump(conn: Connection, key_id: str) -> None:
    """Invalidate every remembered authorization of ``key_id``. [conn: the change's own
    write transaction]"""
    conn.execute(
        update(kms_keys)
        .where(kms_keys.c.key_id == key_id)
        .values(auth_generation=func.coalesce(kms_keys.c.auth_generation, 0) + 1)
    )


def read(conn: Connection, key_id: str) -> int | None:
    """The current generation of ``key_id``; None when there is no such key (deleted)."""
    row = _READ_FAST.first(conn, {"key_id": key_id})
    if row is None:
        return None
    return int(row["auth_generation"] or 0)


def key_id_of(key_ref: str) -> str:
    """The key id of a key ARN (``arn:aws:kms:…:key/<id>``) or of a bare key id."""
    return key_ref.rsplit("/", 1)[-1] if key_ref.startswith("arn:") else key_ref
