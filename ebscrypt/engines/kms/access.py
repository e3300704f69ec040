"""Which key a request names, and whether the caller may use it for what it asks.

:class:`KeyAccess` resolves key ids, key ARNs, aliases and alias ARNs to key rows (with
lazy deletion and automatic rotation when a row is past its date) and authorizes an
action on a key: the key policy first, then the key's grants. Every operation family
goes through it; none reads key rows or evaluates policies on its own.
"""

from __future__ import annotations

import contextvars
import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import bindparam, select

from ebscrypt.clock import Clock
from ebscrypt.context import Caller
from ebscrypt.domain import grants as grant_rules
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms.aliases import EBS_ALIAS, alias_row
from ebscrypt.engines.kms.audit import CURRENT_EVENT
from ebscrypt.engines.kms.checks import note_resource, require_customer
from ebscrypt.engines.kms.errors import no_policy_allows
from ebscrypt.engines.kms.grants import grant_of, pending_grants
from ebscrypt.engines.kms.key_rows import KeyRows
from ebscrypt.engines.kms.lifecycle import KeyLifecycle
from ebscrypt.engines.kms.metadata import utc
from ebscrypt.engines.kms.policy_cache import KeyPolicies
from ebscrypt.errors import KmsAccessDenied, KmsInvalidGrantToken, KmsNotFound, KmsValidation
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants

__all__ = ["KeyAccess"]

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
_ALIAS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")

_KEY_GRANTS = select(kms_grants).where(kms_grants.c.key_id == bindparam("key_id"))  # built once

# Key rows read in the current key-row scope (see KeyAccess.key_row_scope); None outside one.
_ROW_SCOPE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("kms_key_rows", default=None)


class KeyAccess:
    """Resolution and authorization of key uses."""

    def __init__(
        self, db: Database, clock: Clock, rows: KeyRows, lifecycle: KeyLifecycle, policies: KeyPolicies
    ) -> None:
        self.db = db
        self.clock = clock
        self.rows = rows
        self.lifecycle = lifecycle
        self.policies = policies

    # --------------------------------------------------------------- resolution

    def resolve(self, caller: Caller, key_ref: str, *, allow_alias: bool = True, own_account: bool = False) -> Any:
        """The key row ``key_ref`` names for ``caller`` (id, key ARN, alias, alias ARN).

        ``own_account``: the operation has no cross-account use in AWS (key management),
        so a key of another account named by ARN does not exist for it.
        """
        if not isinstance(key_ref, str) or not key_ref:
            raise KmsValidation("KeyId must be a non-empty string")
        account, region = caller.account, caller.region
        alias_name = None
        key_id = None
        m = _KEY_ARN_RE.match(key_ref)
        if m:
            region, account, key_id = m.group(1), m.group(2), m.group(3)
        elif (m := _ALIAS_ARN_RE.match(key_ref)) is not None:
            region, account, alias_name = m.group(1), m.group(2), m.group(3)
        elif key_ref.startswith("alias/"):
            alias_name = key_ref
        elif key_ref.startswith("arn:"):
            raise KmsNotFound(f"Invalid arn {key_ref}")
        else:
            key_id = key_ref
        if alias_name is not None:
            alias_arn = f"arn:aws:kms:{region}:{account}:{alias_name}"
            if not allow_alias:
                raise KmsNotFound(f"Alias {alias_arn} is not found.")
            a = None
            if region == caller.region:
                with self.db.read() as conn:
                    a = alias_row(conn, account, region, alias_name)
                if a is None and alias_name == EBS_ALIAS and account == caller.account:
                    a = self.lifecycle.ebs_alias(account, region)  # made on first use
            if a is None:
                raise KmsNotFound(f"Alias {alias_arn} is not found.")
            key_id = a.target_key_id
            ev = CURRENT_EVENT.get()
            if ev is not None:
                ev.request_aliases[key_id] = alias_name
        assert key_id is not None
        arn = f"arn:aws:kms:{region}:{account}:key/{key_id}"
        if not _UUID_RE.match(key_id):
            raise KmsNotFound(f"Invalid keyId '{key_ref}'")
        if region != caller.region:
            raise KmsNotFound(f"Key '{arn}' does not exist")
        row = self.load(key_id)
        foreign = own_account and account != caller.account
        if row is None or row.account != account or row.region != region or foreign:
            raise KmsNotFound(f"Key '{arn}' does not exist")
        note_resource(row.arn)
        return row

    @contextmanager
    def key_row_scope(self) -> Iterator[None]:
        """Within the block, a key row is read from the store once and reused.

        For one caller request that makes several KMS uses of one key on the caller's
        behalf (CreateVolume: GenerateDataKeyWithoutPlaintext, CreateGrant, Decrypt): each
        use is still authorized and state-checked, against the key row as read once during
        this request rather than re-read between uses microseconds apart. Grants are
        always read afresh. Nested scopes share the outermost one. Never open one around
        an operation that changes key rows.
        """
        if _ROW_SCOPE.get() is not None:
            yield
            return
        token = _ROW_SCOPE.set({})
        try:
            yield
        finally:
            _ROW_SCOPE.reset(token)

    def load(self, key_id: str) -> Any:
        """The key row, after lazy deletion (past DeletionDate) and automatic rotation."""
        scope = _ROW_SCOPE.get()
        if scope is not None and key_id in scope:
            return scope[key_id]
        row = self._load_fresh(key_id)
        if scope is not None and row is not None:
            scope[key_id] = row
        return row

    def _load_fresh(self, key_id: str) -> Any:
        row = self.rows.get(key_id)  # from memory while the database is unchanged
        if row is None:
            return None
        # The clock is read only for a row that has a date to pass (most have none).
        if row.state == "PendingDeletion" and utc(row.deletion_date) <= self.clock.now():
            if self.lifecycle.destroy(key_id):
                return None
            return self._load_fresh(key_id)
        due = row.next_rotation_date
        if row.state == "Enabled" and row.rotation_enabled and due is not None and utc(due) <= self.clock.now():
            self.lifecycle.auto_rotate(key_id)
            row = self.rows.get(key_id)
        return row

    # ----------------------------------------------------------- authorization

    def authorize(
        self,
        caller: Caller,
        row: Any,
        action: str,
        *,
        via_service: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise AccessDeniedException unless the key policy or a grant allows ``action``."""
        if grant_tokens:
            self._check_grant_tokens(grant_tokens)
        conditional, _aliases = self.policies.traits(row.policy)
        if conditional:
            request = policy_rules.Request(
                action=action,
                principal_arn=caller.arn,
                principal_account=caller.account,
                resource=row.arn,
                context=self._condition_context(caller, row, via_service, encryption_context, extra),
            )
            decision = self.policies.conditional_decision(row.policy, request)
        else:  # no condition reads the request's context: the decision is remembered
            decision = self.policies.unconditional_decision(row.policy, action, caller.arn, caller.account, row.arn)
        if decision is policy_rules.Decision.ALLOW:
            return
        if decision is policy_rules.Decision.DENY:
            raise KmsAccessDenied(
                f"User: {caller.arn} is not authorized to perform: {action} on resource: "
                f"{row.arn} with an explicit deny in a resource-based policy"
            )
        operation = action.split(":", 1)[1]
        if operation in grant_rules.GRANT_OPERATIONS:
            for g in self._grants_for_key(row.key_id):
                if grant_rules.grant_allows(
                    g,
                    operation=operation,
                    principal_arn=caller.arn,
                    principal_account=caller.account,
                    encryption_context=encryption_context,
                    via_service=via_service,
                ) and _grant_covers_new_grant(g, operation, extra):
                    return
        raise no_policy_allows(caller, row, action)

    def key_to_change(self, caller: Caller, key_ref: str, action: str, *, allow_alias: bool = True) -> Any:
        """The caller's own customer managed key that ``action`` (a key management change)
        may change: resolved, authorized, and refused if it is AWS managed."""
        row = self.resolve(caller, key_ref, allow_alias=allow_alias, own_account=True)
        self.authorize(caller, row, action)
        require_customer(row, caller, action)
        return row

    def _condition_context(
        self,
        caller: Caller,
        row: Any,
        via_service: str | None,
        encryption_context: Mapping[str, str] | None,
        extra: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The condition keys a key policy is evaluated with for this request."""
        ctx: dict[str, Any] = {
            "kms:CallerAccount": caller.account,
            "aws:PrincipalAccount": caller.account,
            "aws:PrincipalArn": caller.arn,
            "kms:KeySpec": row.key_spec,
            "kms:KeyUsage": row.key_usage,
            "kms:KeyOrigin": "AWS_KMS",
        }
        if via_service:
            ctx["kms:ViaService"] = via_service
        if encryption_context:
            for k, v in encryption_context.items():
                ctx[f"kms:EncryptionContext:{k}"] = v
            ctx["kms:EncryptionContextKeys"] = list(encryption_context)
        ev = CURRENT_EVENT.get()
        if ev is not None and row.key_id in ev.request_aliases:
            ctx["kms:RequestAlias"] = ev.request_aliases[row.key_id]
        if self.policies.traits(row.policy)[1]:
            ctx["kms:ResourceAliases"] = self._aliases_of(row)
        if extra:
            ctx.update(extra)
        return ctx

    def _aliases_of(self, row: Any) -> list[str]:
        with self.db.read() as conn:
            return [
                r.name
                for r in conn.execute(
                    select(kms_aliases.c.name).where(
                        kms_aliases.c.target_key_id == row.key_id,
                        kms_aliases.c.account == row.account,
                        kms_aliases.c.region == row.region,
                    )
                )
            ]

    def _check_grant_tokens(self, tokens: Sequence[str]) -> None:
        if len(tokens) > 10:
            raise KmsValidation("GrantTokens must contain at most 10 tokens")
        with self.db.read() as conn:
            for t in tokens:
                if conn.execute(select(kms_grants.c.grant_id).where(kms_grants.c.token == t)).first() is None:
                    raise KmsInvalidGrantToken("Grant token provided is not valid")

    def _grants_for_key(self, key_id: str) -> list[grant_rules.Grant]:
        """The key's grants: those committed, and those this request made and will store
        in its own transaction (grants.deferring_grants)."""
        with self.db.read() as conn:
            rows = conn.execute(_KEY_GRANTS, {"key_id": key_id}).all()
        return [grant_of(r) for r in rows] + pending_grants(key_id)


def _grant_covers_new_grant(g: grant_rules.Grant, operation: str, extra: Mapping[str, Any] | None) -> bool:
    """A grant that allows CreateGrant lets its grantee grant only a subset of its own
    operations (and, if it is constrained, only as constrained grants)."""
    if operation != "CreateGrant" or not extra:
        return True
    ops = set(extra.get("kms:GrantOperations") or ())
    if not ops <= set(g.operations):
        return False
    return not g.constraints or bool(extra.get("kms:GrantConstraintType"))
