"""Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases, and the alias lookup key
resolution uses. ``alias/aws/...`` names belong to AWS managed keys (``alias/aws/ebs``,
made on first use by :mod:`.lifecycle`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.context import Caller
from ebscrypt.engines.kms import api, checks, generations
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.engines.kms.paging import page
from ebscrypt.errors import KmsAlreadyExists, KmsNotAuthorized, KmsNotFound, KmsValidation, ServiceError
from ebscrypt.storage.tables.kms import kms_aliases

if TYPE_CHECKING:  # the collaborators, given by the engine (no import cycle)
    from ebscrypt.clock import Clock
    from ebscrypt.engines.kms.access import KeyAccess
    from ebscrypt.engines.kms.lifecycle import KeyLifecycle
    from ebscrypt.storage.db import Database

EBS_ALIAS = "alias/aws/ebs"

# Aliases AWS predefines in every account and region for its services' managed keys.
# ListAliases lists one that has no key yet without a TargetKeyId (API reference,
# ListAliases: "predefined aliases that AWS has created but has not yet associated with a
# KMS key"); the key is made on first use, as alias/aws/ebs is here (.keys). The names are
# those moto and LocalStack return (AWS adds more per service over time).
PREDEFINED_ALIASES = (
    "alias/aws/acm", "alias/aws/dynamodb", "alias/aws/ebs", "alias/aws/elasticfilesystem", "alias/aws/es",
    "alias/aws/glue", "alias/aws/kinesisvideo", "alias/aws/lambda", "alias/aws/rds", "alias/aws/redshift",
    "alias/aws/s3", "alias/aws/secretsmanager", "alias/aws/ssm", "alias/aws/xray",
)
_ALIAS_NAME_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")


def _named(account: str, region: str, name: str) -> tuple[Any, ...]:
    """The WHERE clause of the alias ``name`` of ``account`` in ``region``."""
    return (kms_aliases.c.account == account, kms_aliases.c.region == region, kms_aliases.c.name == name)


def alias_row(conn: Connection, account: str, region: str, name: str) -> Any:
    return conn.execute(select(kms_aliases).where(*_named(account, region, name))).first()


def insert_alias(conn: Connection, account: str, region: str, name: str, key_id: str, now: datetime) -> None:
    conn.execute(
        insert(kms_aliases).values(
            account=account, region=region, name=name, target_key_id=key_id, creation_date=now, last_updated=now
        )
    )


def _alias_not_found(caller: Caller, name: str) -> ServiceError:
    return KmsNotFound(f"Alias arn:aws:kms:{caller.region}:{caller.account}:{name} is not found.")


def _check_alias_name(name: Any) -> None:
    if not isinstance(name, str) or not _ALIAS_NAME_RE.match(name) or len(name) > 256:
        raise KmsValidation(
            f"1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$"
        )
    if name.startswith("alias/aws/"):
        raise KmsNotAuthorized(
            "Alias names that begin with alias/aws/ are reserved for AWS managed keys."
        )


class AliasOperations:
    """CreateAlias, UpdateAlias, DeleteAlias, ListAliases."""

    def __init__(self, db: Database, clock: Clock, access: KeyAccess, lifecycle: KeyLifecycle) -> None:
        self.db = db
        self.clock = clock
        self.access = access
        self.lifecycle = lifecycle

    def _own_target(self, caller: Caller, key_ref: str) -> Any:
        """The key an alias of the caller may point to: named by key id or key ARN, and
        of the caller's own account."""
        row = self.access.resolve(caller, key_ref, allow_alias=False)
        if row.account != caller.account:
            raise KmsNotFound.key(row.arn)
        return row

    def _existing_alias(self, caller: Caller, name: Any) -> Any:
        _check_alias_name(name)
        with self.db.read() as conn:
            alias = alias_row(conn, caller.account, caller.region, name)
        if alias is None:
            raise _alias_not_found(caller, name)
        return alias

    def create_alias(self, caller: Caller, args: api.AliasTarget) -> dict[str, Any]:
        name = args.alias_name
        _check_alias_name(name)
        row = self._own_target(caller, args.target_key_id)
        self.access.authorize(caller, row, "kms:CreateAlias")
        checks.require_customer(row, caller, "kms:CreateAlias")
        checks.require_not_pending(row)
        now = self.clock.now()
        with self.db.begin() as conn:
            if alias_row(conn, caller.account, caller.region, name) is not None:
                raise KmsAlreadyExists(
                    f"An alias with the name arn:aws:kms:{caller.region}:{caller.account}:{name} already exists"
                )
            insert_alias(conn, caller.account, caller.region, name, row.key_id, now)
            generations.bump(conn, row.key_id)  # kms:ResourceAliases conditions may change
        return {}

    def update_alias(self, caller: Caller, args: api.AliasTarget) -> dict[str, Any]:
        name = args.alias_name
        alias = self._existing_alias(caller, name)
        old = self.access.load(alias.target_key_id)
        new = self._own_target(caller, args.target_key_id)
        if old is not None:
            checks.note_resource(old.arn)
            self.access.authorize(caller, old, "kms:UpdateAlias")
        self.access.authorize(caller, new, "kms:UpdateAlias")
        checks.require_customer(new, caller, "kms:UpdateAlias")
        checks.require_not_pending(new)
        if old is not None and (old.key_spec, old.key_usage) != (new.key_spec, new.key_usage):
            raise KmsValidation(
                "The new target key must have the same key spec and key usage as the current target key."
            )
        with self.db.begin() as conn:
            conn.execute(
                update(kms_aliases)
                .where(*_named(caller.account, caller.region, name))
                .values(target_key_id=new.key_id, last_updated=self.clock.now())
            )
            for key_id in {alias.target_key_id, new.key_id}:  # kms:ResourceAliases of both change
                generations.bump(conn, key_id)
        return {}

    def delete_alias(self, caller: Caller, args: api.DeleteAlias) -> dict[str, Any]:
        name = args.alias_name
        alias = self._existing_alias(caller, name)
        row = self.access.load(alias.target_key_id)
        if row is not None:
            checks.note_resource(row.arn)
            self.access.authorize(caller, row, "kms:DeleteAlias")
        with self.db.begin() as conn:
            conn.execute(delete(kms_aliases).where(*_named(caller.account, caller.region, name)))
            generations.bump(conn, alias.target_key_id)  # kms:ResourceAliases conditions may change
        return {}

    def list_aliases(self, caller: Caller, args: api.ListAliases) -> dict[str, Any]:
        self.lifecycle.sweep_deletions()
        q = select(kms_aliases).where(kms_aliases.c.account == caller.account, kms_aliases.c.region == caller.region)
        if args.key_id:
            row = self._own_target(caller, args.key_id)
            q = q.where(kms_aliases.c.target_key_id == row.key_id)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(kms_aliases.c.name)).all()
        arn = f"arn:aws:kms:{caller.region}:{caller.account}:"
        aliases = [
            {
                "AliasName": r.name,
                "AliasArn": arn + r.name,
                "TargetKeyId": r.target_key_id,
                "CreationDate": utc(r.creation_date),
                "LastUpdatedDate": utc(r.last_updated),
            }
            for r in rows
        ]
        if not args.key_id:  # a predefined alias without a key belongs to no key
            made = {r.name for r in rows}
            aliases += [{"AliasName": n, "AliasArn": arn + n} for n in PREDEFINED_ALIASES if n not in made]
            aliases.sort(key=lambda a: a["AliasName"])
        items, out = page(aliases, args.limit, args.marker, default=50, max_limit=100)
        out["Aliases"] = items
        return out
