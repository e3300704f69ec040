"""Grants: CreateGrant (also for the EC2 side's service grants), ListGrants,
ListRetirableGrants, RetireGrant, RevokeGrant. Validation and evaluation are the pure
rules of :mod:`ebscrypt.domain.grants`; the engine's authorization consults the grants
of a key after its policy.
"""

from __future__ import annotations

import base64
import contextvars
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from sqlalchemy import Connection, bindparam, delete, insert, select

from ebscrypt.context import Caller
from ebscrypt.domain import grants as grant_rules
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import api, checks, generations
from ebscrypt.engines.kms.errors import stop_if_dry_run
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsAccessDenied, KmsInvalidGrantId, KmsInvalidGrantToken, KmsNotFound, KmsValidation
from ebscrypt.storage.prepared import PreparedWrite
from ebscrypt.storage.tables.kms import kms_grants, kms_keys

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.clock import Clock
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.storage.db import Database

_GRANT_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def grant_of(r: Any) -> grant_rules.Grant:
    """The grant a ``kms_grants`` row holds, as the pure rules take it."""
    return grant_rules.Grant(
        grant_id=r.grant_id,
        key_id=r.key_id,
        grantee=r.grantee,
        operations=frozenset(json.loads(r.operations)),
        issuing_account=r.issuing_account,
        retiring=r.retiring,
        constraints=json.loads(r.constraints) if r.constraints else None,
        for_aws_resource=bool(r.for_aws_resource),
        name=r.name,
    )


def _check_grant_id(grant_id: Any) -> None:
    if not isinstance(grant_id, str) or not _GRANT_ID_RE.match(grant_id):
        raise KmsInvalidGrantId(f"Invalid grant ID {grant_id!r}")


# The grants of a key to one grantee under one name (or none), built once (statement
# construction cost more than running it).
_SAME_GRANTEE = select(kms_grants).where(
    kms_grants.c.key_id == bindparam("key_id"), kms_grants.c.grantee == bindparam("grantee")
)
_SAME_NAMED = _SAME_GRANTEE.where(kms_grants.c.name == bindparam("name"))
_SAME_UNNAMED = _SAME_GRANTEE.where(kms_grants.c.name.is_(None))



def _grant_error(exc: grant_rules.GrantError) -> KmsValidation:
    """The KMS error of a grant the domain rules refuse: every GrantError the rules raise
    is a ValidationException (none sets another ``code``)."""
    return KmsValidation(str(exc))


def _grant_conditions(
    grantee: str,
    operations: list[str],
    retiring: str | None,
    constraints: dict[str, dict[str, str]] | None,
    for_aws_resource: bool,
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """The CreateGrant condition keys of the new grant, and the encryption context its
    constraint names (authorized as the request's, as AWS does)."""
    extra: dict[str, Any] = {
        "kms:GrantOperations": list(operations),
        "kms:GranteePrincipal": grantee,
        "kms:GrantIsForAWSResource": for_aws_resource,
    }
    if retiring:
        extra["kms:RetiringPrincipal"] = retiring
    if constraints:
        extra["kms:GrantConstraintType"] = sorted(constraints)
    ec = None
    if constraints:
        ec = constraints.get("EncryptionContextEquals") or constraints.get("EncryptionContextSubset")
    return extra, ec


# built once; the values go as parameters; on the driver where plain (storage/prepared.py)
_INSERT_GRANT = PreparedWrite(insert(kms_grants))


@dataclass
class DeferredGrants:
    """Grants made inside :func:`deferring_grants`: authorized and audited when asked for,
    written by :meth:`store` in the caller's own write transaction (issue 15: an encrypted
    CreateVolume's grant for EC2 and the volume in ONE durable commit, not two). Until then
    they exist for this context only: :func:`pending_grants` lets the authorization of the
    request's later uses (the Decrypt that proves a new data key) count them, as it would
    count them committed. Dropped if the caller's transaction never commits — the resource
    that needed them does not exist either."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def store(self, conn: Connection) -> None:
        """Write the deferred grants in ``conn`` (the caller's write transaction on the KMS
        database), each unless an identical one was committed meanwhile. [conn]"""
        for row in self.rows:
            same = (row["retiring"], row["operations"], row["constraints"], row["issuing_account"],
                    row["for_aws_resource"])
            if _identical_grant(conn, row["key_id"], row["grantee"], row["name"], same) is None:
                _INSERT_GRANT.run(conn, row)
        self.rows.clear()


_DEFERRED: contextvars.ContextVar[DeferredGrants | None] = contextvars.ContextVar("kms_deferred_grants",
                                                                                  default=None)


@contextmanager
def deferring_grants() -> Iterator[DeferredGrants]:
    """Within the block, grants that reuse an identical grant when one exists (the EC2
    side's service grants) are not written at once but collected, to be stored with
    :meth:`DeferredGrants.store` in the caller's write transaction. Nested blocks share the
    outermost one."""
    outer = _DEFERRED.get()
    if outer is not None:
        yield outer
        return
    mine = DeferredGrants()
    token = _DEFERRED.set(mine)
    try:
        yield mine
    finally:
        _DEFERRED.reset(token)


def pending_grants(key_id: str) -> list[grant_rules.Grant]:
    """The grants of ``key_id`` made in this context and not yet stored (see
    :class:`DeferredGrants`)."""
    deferred = _DEFERRED.get()
    if deferred is None or not deferred.rows:
        return []
    return [grant_of(_RowView(r)) for r in deferred.rows if r["key_id"] == key_id]


class _RowView:
    """A grant's insert values read as a ``kms_grants`` row (attribute access)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _identical_grant(conn: Connection, key_id: str, grantee: str, name: str | None, same: tuple[Any, ...]) -> Any:
    """The key's grant to ``grantee`` (named ``name``, or unnamed) whose (retiring
    principal, operations, constraints, issuing account, for-AWS-resource) are ``same``."""
    q = _SAME_NAMED if name else _SAME_UNNAMED
    for g in conn.execute(q, {"key_id": key_id, "grantee": grantee, "name": name}).all():
        if (g.retiring, g.operations, g.constraints, g.issuing_account, bool(g.for_aws_resource)) == same:
            return g
    return None


class GrantOperations:
    """CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant."""

    def __init__(self, db: Database, clock: Clock, access: KeyAccess) -> None:
        self.db = db
        self.clock = clock
        self.access = access
        # Identical grants found committed: (key id, grantee, name, same) -> (the key's
        # authorization generation then, grant id, token). Valid while the key row read
        # for the request still carries that generation: removing a grant (Retire/Revoke)
        # bumps it in the same transaction (generations.py), and the key row is read afresh
        # after any commit (KeyRows), so a removed grant is never reused; saves a read
        # transaction per encrypted create or attach (issue 15).
        self._known: dict[tuple[Any, ...], tuple[int, str, str]] = {}

    def make_grant(
        self,
        caller: Caller,
        row: Any,
        *,
        grantee: str,
        operations: list[str],
        retiring: str | None,
        constraints: dict[str, dict[str, str]] | None,
        name: str | None,
        via_service: str | None = None,
        for_aws_resource: bool = False,
        grant_tokens: Sequence[str] | None = None,
        dry_run: bool = False,
        reuse_identical: bool = False,
    ) -> tuple[str, str]:
        try:
            grant_rules.validate_grant(operations, constraints, grantee, retiring)
        except grant_rules.GrantError as exc:
            raise _grant_error(exc) from None
        extra, ec = _grant_conditions(grantee, operations, retiring, constraints, for_aws_resource)
        self.access.authorize(
            caller,
            row,
            "kms:CreateGrant",
            via_service=via_service,
            encryption_context=ec,
            grant_tokens=grant_tokens,
            extra=extra,
        )
        checks.require_not_pending(row)
        stop_if_dry_run(dry_run)
        ops_json = json.dumps(sorted(set(operations)))
        cons_json = json.dumps(constraints, sort_keys=True) if constraints else None
        reuse = name or reuse_identical
        same = (retiring, ops_json, cons_json, caller.account, for_aws_resource)
        deferred = _DEFERRED.get() if reuse_identical else None
        known_key = (row.key_id, grantee, name, same)
        generation = int(row.auth_generation or 0)
        if reuse:  # the common case (a repeated attach): found without taking the write lock
            known = self._known.get(known_key)
            if known is not None and known[0] == generation:
                return known[1], known[2]
            with self.db.read() as conn:
                g = _identical_grant(conn, row.key_id, grantee, name, same)
            if g is not None:
                self._remember(known_key, generation, g.grant_id, g.token)
                return g.grant_id, g.token
            for pending in deferred.rows if deferred is not None else ():
                if (pending["key_id"], pending["grantee"], pending["name"]) == (row.key_id, grantee, name) and (
                        pending["retiring"], pending["operations"], pending["constraints"],
                        pending["issuing_account"], pending["for_aws_resource"]) == same:
                    return pending["grant_id"], pending["token"]
        values = {
            "grant_id": os.urandom(32).hex(), "key_id": row.key_id, "name": name, "grantee": grantee,
            "retiring": retiring, "operations": ops_json, "constraints": cons_json,
            "issuing_account": caller.account, "for_aws_resource": for_aws_resource,
            "token": base64.urlsafe_b64encode(b"ebscrypt-grant:" + os.urandom(48)).decode().rstrip("="),
            "creation_date": self.clock.now(),
        }
        if deferred is not None:  # stored in the caller's transaction (DeferredGrants.store)
            deferred.rows.append(values)
            return values["grant_id"], values["token"]
        with self.db.begin() as conn:
            if reuse and (g := _identical_grant(conn, row.key_id, grantee, name, same)) is not None:
                return g.grant_id, g.token  # made meanwhile by another writer
            _INSERT_GRANT.run(conn, values)
        if reuse:
            self._remember(known_key, generation, values["grant_id"], values["token"])
        return values["grant_id"], values["token"]

    def _remember(self, known_key: tuple[Any, ...], generation: int, grant_id: str, token: str) -> None:
        if len(self._known) >= 10_000:  # bounded (a process with more keys reads the rest)
            self._known.clear()
        self._known[known_key] = (generation, grant_id, token)

    def create_grant(self, caller: Caller, args: api.CreateGrant) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id)
        grant_id, token = self.make_grant(
            caller,
            row,
            grantee=args.grantee_principal,
            operations=list(args.operations or []),
            retiring=args.retiring_principal,
            constraints=args.constraints,  # type: ignore[arg-type]
            name=args.name,
            grant_tokens=args.grant_tokens,
            dry_run=bool(args.dry_run),
        )
        return {"GrantToken": token, "GrantId": grant_id}

    def _grant_list(self, rows: Sequence[Any], limit: int | None, marker: str | None) -> dict[str, Any]:
        items, out = page(rows, limit, marker, default=50, max_limit=100)
        arns: dict[str, str] = {}
        grants = []
        for r in items:
            if r.key_id not in arns:
                k = self.access.load(r.key_id)
                arns[r.key_id] = k.arn if k is not None else r.key_id
            g: dict[str, Any] = {
                "KeyId": arns[r.key_id],
                "GrantId": r.grant_id,
                "CreationDate": utc(r.creation_date),
                "GranteePrincipal": r.grantee,
                "IssuingAccount": f"arn:aws:iam::{r.issuing_account}:root",
                "Operations": json.loads(r.operations),
                # AWS lists an unnamed grant with "Name": "" (tools index it: Ansible kms_key).
                "Name": r.name or "",
            }
            if r.retiring:
                g["RetiringPrincipal"] = r.retiring
            if r.constraints:
                g["Constraints"] = json.loads(r.constraints)
            grants.append(g)
        out["Grants"] = grants
        return out

    def list_grants(self, caller: Caller, args: api.ListGrants) -> dict[str, Any]:
        row = self.access.resolve(caller, args.key_id)
        self.access.authorize(caller, row, "kms:ListGrants")
        q = select(kms_grants).where(kms_grants.c.key_id == row.key_id)
        if args.grant_id:
            q = q.where(kms_grants.c.grant_id == args.grant_id)
        if args.grantee_principal:
            q = q.where(kms_grants.c.grantee == args.grantee_principal)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(kms_grants.c.creation_date, kms_grants.c.grant_id)).all()
        return self._grant_list(rows, args.limit, args.marker)

    def list_retirable_grants(self, caller: Caller, args: api.ListRetirableGrants) -> dict[str, Any]:
        principal = args.retiring_principal
        try:
            grant_rules.validate_principal(principal, "RetiringPrincipal")
        except grant_rules.GrantError as exc:
            raise KmsValidation(str(exc)) from None
        if not policy_rules.principal_matches(principal, caller.arn, caller.account):
            raise KmsAccessDenied(
                f"User: {caller.arn} is not authorized to perform: kms:ListRetirableGrants for "
                f"retiring principal {principal} of another account"
            )
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_grants)
                .join(kms_keys, kms_keys.c.key_id == kms_grants.c.key_id)
                .where(kms_grants.c.retiring == principal, kms_keys.c.region == caller.region)
                .order_by(kms_grants.c.creation_date, kms_grants.c.grant_id)
            ).all()
        return self._grant_list(rows, args.limit, args.marker)

    def retire_grant(self, caller: Caller, args: api.RetireGrant) -> dict[str, Any]:
        token, key_ref, grant_id = args.grant_token, args.key_id, args.grant_id
        if token:
            with self.db.read() as conn:
                g = conn.execute(select(kms_grants).where(kms_grants.c.token == token)).first()
            if g is None:
                raise KmsInvalidGrantToken("Grant token provided is not valid")
        elif key_ref and grant_id:
            _check_grant_id(grant_id)
            row = self.access.resolve(caller, key_ref)
            with self.db.read() as conn:
                g = conn.execute(
                    select(kms_grants).where(kms_grants.c.key_id == row.key_id, kms_grants.c.grant_id == grant_id)
                ).first()
            if g is None:
                raise KmsNotFound.grant(grant_id)
        else:
            raise KmsValidation("Either GrantToken, or GrantId and KeyId, must be specified.")
        key = self.access.load(g.key_id)
        if key is not None:
            checks.note_resource(key.arn)
        if not grant_rules.may_retire(grant_of(g), caller.arn, caller.account):
            arn = key.arn if key is not None else g.key_id
            raise KmsAccessDenied(
                f"User: {caller.arn} is not authorized to perform: kms:RetireGrant on resource: {arn} "
                "because it is neither the retiring principal nor a grantee allowed to retire the grant"
            )
        with self.db.begin() as conn:
            if conn.execute(delete(kms_grants).where(kms_grants.c.grant_id == g.grant_id)).rowcount:
                generations.bump(conn, g.key_id)  # uses it allowed are authorized afresh
        return {}

    def revoke_grant(self, caller: Caller, args: api.RevokeGrant) -> dict[str, Any]:
        _check_grant_id(args.grant_id)
        row = self.access.resolve(caller, args.key_id)
        self.access.authorize(caller, row, "kms:RevokeGrant")
        with self.db.begin() as conn:
            n = conn.execute(
                delete(kms_grants).where(kms_grants.c.key_id == row.key_id, kms_grants.c.grant_id == args.grant_id)
            ).rowcount
            if n:
                generations.bump(conn, row.key_id)  # uses it allowed are authorized afresh
        if not n:
            raise KmsNotFound.grant(args.grant_id)
        return {}
