"""CreateTags / DeleteTags / DescribeTags over the generic tag store (``tags``), one
transaction each. Above ``volumes`` and ``snapshots``: a tagged volume or snapshot id must
be the caller's."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import Connection

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.engines.ec2 import volumes as V
from ebscrypt.engines.ec2.snapshot_access import owned_snapshot
from ebscrypt.errors import InvalidID

# Existence checks per id prefix (the caller must own the resource); other prefixes are
# tagged without a check.
_TARGETS: dict[str, Callable[[Connection, Any, str], Any]] = {
    "vol": lambda conn, caller, rid: V.get_volume(conn, caller, rid),
    "snap": lambda conn, caller, rid: owned_snapshot(conn, caller, rid),
}


def _check_targets(conn: Connection, ctx: RequestContext, resources: list[str]) -> None:
    for rid in resources:
        check = _TARGETS.get(rid.split("-", 1)[0])
        if check is not None:
            check(conn, ctx.caller, rid)
        elif "-" not in rid:
            raise InvalidID(f"Invalid id: \"{rid}\"")


def create_tags(ctx: RequestContext, resources: list[str], tags: list[dict[str, Any]]) -> None:
    with ctx.runtime.db.begin() as conn:
        _check_targets(conn, ctx, resources)
        for rid in resources:
            T.put_tags(conn, ctx.caller.account, ctx.caller.region, rid, tags)


def delete_tags(ctx: RequestContext, resources: list[str], tags: list[dict[str, Any]] | None) -> None:
    """Remove ``tags`` (a Key alone matches any value; None: every tag) from ``resources``."""
    with ctx.runtime.db.begin() as conn:
        _check_targets(conn, ctx, resources)
        for rid in resources:
            T.remove_tags(conn, rid, tags)


def all_tags(ctx: RequestContext) -> list[dict[str, str]]:
    """Every tag of the caller's resources in its region, as DescribeTags lists them."""
    with ctx.runtime.db.read() as conn:
        return T.all_tags(conn, ctx.caller.account, ctx.caller.region)
