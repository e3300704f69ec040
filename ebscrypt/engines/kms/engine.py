"""The KMS key engine (``runtime.kms``): the facade that every KMS surface goes through.

:class:`KeyEngine` holds what every operation shares: construction (key store, audit log,
material cache), the audit hook (:meth:`KeyEngine.audited`), the key material (wrapped by
the root of trust, :mod:`.keystore`; unwrapped once and kept in memory while the key is
usable),
resolution of key ids / key ARNs / aliases / alias ARNs (with lazy deletion and
rotation), authorization (key policy, then grants) and the key-state checks.

The operations live in mixins, one module per family, and reach those shared parts
through ``self``:

* the **KMS operations** (``create_key(caller, api.CreateKey) -> dict`` …: typed
  arguments from :mod:`.api`, a result keyed by the model's member names), which the
  handlers of :mod:`ebscrypt.services.kms` call inside :meth:`audited`:
  :mod:`.keys`, :mod:`.rotation`, :mod:`.policies`, :mod:`.aliases`, :mod:`.grants`,
  :mod:`.crypto_ops`, :mod:`.signing`, :mod:`.tags`;
* the **cross-member API** the EC2/EBS side calls on a caller's behalf ("via ec2"):
  :mod:`.via_service`.
"""

from __future__ import annotations

import contextvars
import os
import re
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import Connection, bindparam, insert, select, update

from ebscrypt.blocking import WouldBlock, may_block
from ebscrypt.context import Caller, Runtime
from ebscrypt.domain import grants as grant_rules
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.aliases import EBS_ALIAS, AliasOperations, alias_row
from ebscrypt.engines.kms.audit import (
    CURRENT_EVENT,
    READ_ONLY_EVENTS,
    AuditEvent,
    AuditLog,
    audit_params,
    audit_path,
    cloudtrail_record,
)
from ebscrypt.engines.kms.crypto_ops import CryptoOperations
from ebscrypt.engines.kms.errors import no_policy_allows
from ebscrypt.engines.kms.grants import GrantOperations, grant_of
from ebscrypt.engines.kms.key_rows import KeyRows
from ebscrypt.engines.kms.keys import KeyOperations
from ebscrypt.engines.kms.keystore import KeyStore, KeyStoreUnavailable, RootKeyError, open_key_store
from ebscrypt.engines.kms.metadata import KeyInfo, utc
from ebscrypt.engines.kms.policies import PolicyOperations
from ebscrypt.engines.kms.rotation import RotationOperations
from ebscrypt.engines.kms.signing import SigningOperations
from ebscrypt.engines.kms.tags import TagOperations
from ebscrypt.engines.kms.via_service import ViaServiceApi
from ebscrypt.errors import (
    KmsAccessDenied,
    KmsDisabled,
    KmsInternal,
    KmsInvalidGrantToken,
    KmsInvalidKeyUsage,
    KmsInvalidState,
    KmsKeyUnavailable,
    KmsNotFound,
    KmsValidation,
    ServiceError,
)
from ebscrypt.storage.space import SpaceMonitor, is_out_of_space
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants, kms_key_material

__all__ = ["KeyEngine", "KeyInfo"]

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
_ALIAS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")

# Statements built once (issue 15: building them per call cost more than running them).
_INSERT_MATERIAL = insert(kms_key_material)
_DEMOTE_MATERIAL = (
    update(kms_key_material).where(kms_key_material.c.key_id == bindparam("k")).values(is_current=False)
)


def check_key_store(db: Any, store: KeyStore) -> None:
    """At start: every root key the database's material is wrapped by is held by ``store``,
    so a wrong ``--key-store`` (or a database copied without its token) fails at once with
    the reason instead of at the first Decrypt."""
    with db.read() as conn:
        refs = [r.wrapped_by for r in conn.execute(select(kms_key_material.c.wrapped_by).distinct())]
    missing = sorted((ref or "file:<data dir>/root.key (from before key stores)") for ref in refs if not store.holds(ref))
    if missing:
        raise RootKeyError(
            f"the key store {store.uri} cannot unwrap this database's key material, which is wrapped by "
            f"{', '.join(missing)}: start with the --key-store that holds it (or finish "
            "`ebscrypt keystore migrate`); servers sharing a database are all given the same root of trust "
            "(--key-store, or --root-key-file)"
        )
    # One row per root key really unwrapped: a root key of the same name that is not the
    # one that wrapped them (another file, a token re-made under the same name) fails here.
    with db.read() as conn:
        samples = [
            conn.execute(
                select(kms_key_material).where(
                    kms_key_material.c.wrapped_by.is_(None) if ref is None else kms_key_material.c.wrapped_by == ref
                ).limit(1)
            ).first()
            for ref in refs
        ]
    for row in samples:
        if row is None:
            continue
        try:
            store.unwrap(row.key_id, row.material_id, row.wrapped, row.wrapped_by)
        except RootKeyError:
            raise RootKeyError(
                f"the key store {store.uri} does not unwrap this database's key material wrapped by "
                f"{row.wrapped_by or 'the file store'}: its root key is not the one that wrapped it (servers "
                "sharing a database are all given the same root of trust: --key-store, or --root-key-file)"
            ) from None


# Key rows read in the current key-row scope (see KeyEngine.key_row_scope); None outside one.
_ROW_SCOPE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("kms_key_rows", default=None)


class KeyEngine(
    KeyOperations,
    RotationOperations,
    PolicyOperations,
    AliasOperations,
    GrantOperations,
    CryptoOperations,
    SigningOperations,
    TagOperations,
    ViaServiceApi,
):
    """One per server process (``runtime.kms``)."""

    def __init__(self, runtime: Runtime, key_store: KeyStore | None = None) -> None:
        self.runtime = runtime
        self.db = runtime.db
        self.clock = runtime.clock
        data_dir = runtime.settings.data_dir
        self.key_store = key_store or open_key_store(runtime.settings.key_store, data_dir)
        try:
            check_key_store(self.db, self.key_store)
        except Exception:
            self.key_store.close()
            raise
        self.audit_log = AuditLog(audit_path(data_dir))
        self.key_rows = KeyRows(self.db)
        self.space: SpaceMonitor = runtime.engines.get("space") or SpaceMonitor(data_dir)
        # Plaintext material per (key id, material id): from its first use until the key is
        # disabled, scheduled for deletion or deleted (forget_key), or the process ends.
        # Never written anywhere; a key store round trip per use would cost a token call.
        self._materials: dict[tuple[str, str], bytes] = {}
        self._policies: dict[str, policy_rules.Policy] = {}
        self._ebs_key_ids: dict[tuple[str, str], str] = {}  # (account, region) -> alias/aws/ebs key id
        self._lock = threading.Lock()
        self.sweep_deletions()

    def close(self) -> None:
        self.audit_log.close()
        self.key_rows.close()
        self._materials.clear()
        self.key_store.close()

    def forget_key(self, key_id: str) -> None:
        """Drop a key's unwrapped material from memory (it stopped being usable)."""
        with self._lock:
            for cache_key in [k for k in self._materials if k[0] == key_id]:
                self._materials.pop(cache_key, None)

    # ------------------------------------------------------------------------ audit

    @contextmanager
    def audited(
        self,
        caller: Caller,
        event_name: str,
        request_parameters: Mapping[str, Any] | None = None,
        *,
        via_service: str | None = None,
        request_id: str | None = None,
    ) -> Iterator[AuditEvent]:
        """Run one KMS event; append its CloudTrail record (with errorCode if refused).
        ``request_parameters``: the members as the caller sent them, for the record's
        ``requestParameters`` (secrets and bytes left out).

        Fail closed: an event that cannot be recorded does not happen. With too little
        space left for its record the operation is refused before it runs; a record
        that still cannot be appended turns the answer into the same 503, so no result
        (plaintext, data key) leaves without its record (see README.md, "Audit trail").
        """
        self.space.require(f"the KMS audit record of {event_name}")
        ev = AuditEvent(
            caller=caller,
            name=event_name,
            params=audit_params(request_parameters or {}),
            via_service=via_service,
            request_id=request_id or str(uuid.uuid4()),
            read_only=event_name in READ_ONLY_EVENTS,
            time=self.clock.now(),
        )
        token = CURRENT_EVENT.set(ev)
        record = True
        try:
            yield ev
        except WouldBlock:
            # Not run: the gateway runs the request again in a worker thread, which
            # records it (ebscrypt/blocking.py). One request, one record.
            record = False
            raise
        except ServiceError as exc:
            ev.error = (exc.code, exc.message)
            raise
        except Exception:
            ev.error = ("KMSInternalException", "internal error")
            raise
        finally:
            CURRENT_EVENT.reset(token)
            if record:
                try:
                    self.audit_log.append(cloudtrail_record(ev))
                except OSError as exc:
                    if not is_out_of_space(exc):
                        raise
                    raise self.space.error(f"the KMS audit record of {event_name}", exc) from exc

    @staticmethod
    def _note_resource(arn: str) -> None:
        ev = CURRENT_EVENT.get()
        if ev is not None:
            ev.resources.append(arn)

    # ------------------------------------------------------------ key store / rows

    def _material(self, key_id: str, material_id: str, conn: Connection | None = None) -> bytes:
        cache_key = (key_id, material_id)
        m = self._materials.get(cache_key)
        if m is not None:
            return m
        may_block()  # the key store (a PKCS#11 token) may wait: not on the event loop
        q = select(kms_key_material.c.wrapped, kms_key_material.c.wrapped_by).where(
            kms_key_material.c.key_id == key_id, kms_key_material.c.material_id == material_id
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.db.read() as c:
                row = c.execute(q).first()
        if row is None:
            raise blobfmt.BadCiphertext()
        try:
            m = self.key_store.unwrap(key_id, material_id, row.wrapped, row.wrapped_by)
        except KeyStoreUnavailable as exc:
            raise KmsKeyUnavailable(exc) from None
        self._materials[cache_key] = m
        return m

    def _current_material(self, conn: Connection, key_id: str) -> tuple[str, bytes]:
        row = conn.execute(
            select(kms_key_material.c.material_id).where(
                kms_key_material.c.key_id == key_id, kms_key_material.c.is_current.is_(True)
            )
        ).first()
        if row is None:
            raise KmsInternal("key material is missing")
        return row.material_id, self._material(key_id, row.material_id, conn)

    def _current_key(self, row: Any) -> tuple[str, bytes]:
        """(material id, material) of the key's current backing material: the id the key
        row was read with (no second read), the material from the in-memory store."""
        material_id = getattr(row, "current_material_id", None)
        if material_id is not None:
            return material_id, self._material(row.key_id, material_id)
        with self.db.read() as conn:
            return self._current_material(conn, row.key_id)

    def _add_material(
        self, conn: Connection, key_id: str, material: bytes, *, rotation_type: str | None = None,
        new_key: bool = False,
    ) -> str:
        """Wrap and store ``material`` as the key's current backing material (``new_key``:
        the key was inserted in this transaction, so it has no other material to demote)."""
        material_id = os.urandom(16).hex()
        try:
            wrapped_by, wrapped = self.key_store.wrap(key_id, material_id, material)
        except KeyStoreUnavailable as exc:
            raise KmsKeyUnavailable(exc) from None
        if not new_key:
            conn.execute(_DEMOTE_MATERIAL, {"k": key_id})
        conn.execute(
            _INSERT_MATERIAL,
            {
                "key_id": key_id,
                "material_id": material_id,
                "wrapped": wrapped,
                "wrapped_by": wrapped_by,
                "created_at": self.clock.now(),
                "is_current": True,
                "rotation_type": rotation_type,
            },
        )
        self._materials[(key_id, material_id)] = material
        return material_id

    # --------------------------------------------------------------- resolution

    def _resolve(self, caller: Caller, key_ref: str, *, allow_alias: bool = True, own_account: bool = False) -> Any:
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
                    a = self._ebs_alias(account, region)  # made on first use
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
        row = self._load(key_id)
        foreign = own_account and account != caller.account
        if row is None or row.account != account or row.region != region or foreign:
            raise KmsNotFound(f"Key '{arn}' does not exist")
        self._note_resource(row.arn)
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

    def _load(self, key_id: str) -> Any:
        """The key row, after lazy deletion (past DeletionDate) and automatic rotation."""
        scope = _ROW_SCOPE.get()
        if scope is not None and key_id in scope:
            return scope[key_id]
        row = self._load_fresh(key_id)
        if scope is not None and row is not None:
            scope[key_id] = row
        return row

    def _load_fresh(self, key_id: str) -> Any:
        row = self.key_rows.get(key_id)  # from memory while the database is unchanged
        if row is None:
            return None
        now = self.clock.now()
        if row.state == "PendingDeletion" and utc(row.deletion_date) <= now:
            if self._destroy(key_id):
                return None
            return self._load_fresh(key_id)
        due = row.next_rotation_date
        if row.state == "Enabled" and row.rotation_enabled and due is not None and utc(due) <= now:
            self._auto_rotate(key_id)
            row = self.key_rows.get(key_id)
        return row

    @staticmethod
    def _key_row(conn: Connection, key_id: str) -> Any:
        """The key row plus the id of its current backing material (None if no such key)."""
        return KeyRows.read(conn, key_id)

    # ----------------------------------------------------------- authorization

    def _authorize(
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
        request = policy_rules.Request(
            action=action,
            principal_arn=caller.arn,
            principal_account=caller.account,
            resource=row.arn,
            context=self._condition_context(caller, row, via_service, encryption_context, extra),
        )
        decision = policy_rules.evaluate(self._policy(row.policy), request)
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
                ) and self._grant_covers_new_grant(g, operation, extra):
                    return
        raise no_policy_allows(caller, row, action)

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
        if "kms:resourcealiases" in row.policy.lower():
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

    @staticmethod
    def _grant_covers_new_grant(g: grant_rules.Grant, operation: str, extra: Mapping[str, Any] | None) -> bool:
        """A grant that allows CreateGrant lets its grantee grant only a subset of its own
        operations (and, if it is constrained, only as constrained grants)."""
        if operation != "CreateGrant" or not extra:
            return True
        ops = set(extra.get("kms:GrantOperations") or ())
        if not ops <= set(g.operations):
            return False
        return not g.constraints or bool(extra.get("kms:GrantConstraintType"))

    def _check_grant_tokens(self, tokens: Sequence[str]) -> None:
        if len(tokens) > 10:
            raise KmsValidation("GrantTokens must contain at most 10 tokens")
        with self.db.read() as conn:
            for t in tokens:
                if conn.execute(select(kms_grants.c.grant_id).where(kms_grants.c.token == t)).first() is None:
                    raise KmsInvalidGrantToken("Grant token provided is not valid")

    def _grants_for_key(self, key_id: str) -> list[grant_rules.Grant]:
        with self.db.read() as conn:
            rows = conn.execute(select(kms_grants).where(kms_grants.c.key_id == key_id)).all()
        return [grant_of(r) for r in rows]

    def _key_to_change(self, caller: Caller, key_ref: str, action: str, *, allow_alias: bool = True) -> Any:
        """The caller's own customer managed key that ``action`` (a key management change)
        may change: resolved, authorized, and refused if it is AWS managed."""
        row = self._resolve(caller, key_ref, allow_alias=allow_alias, own_account=True)
        self._authorize(caller, row, action)
        self._require_customer(row, caller, action)
        return row

    # ----------------------------------------------------------- key state checks

    @staticmethod
    def _require_enabled(row: Any) -> None:
        if row.state == "Disabled":
            raise KmsDisabled(f"{row.arn} is disabled.")
        if row.state == "PendingDeletion":
            raise KmsInvalidState(f"{row.arn} is pending deletion.")

    @staticmethod
    def _require_not_pending(row: Any) -> None:
        if row.state == "PendingDeletion":
            raise KmsInvalidState(f"{row.arn} is pending deletion.")

    @staticmethod
    def _require_usage(row: Any, usage: str, operation: str) -> None:
        if row.key_usage != usage:
            raise KmsInvalidKeyUsage(
                f"{row.arn} key usage is {row.key_usage} which is not valid for {operation}."
            )

    @staticmethod
    def _require_symmetric(row: Any, what: str) -> None:
        if row.key_spec != "SYMMETRIC_DEFAULT" or row.key_usage != "ENCRYPT_DECRYPT":
            raise KmsInvalidKeyUsage(
                f"{row.arn} key usage is {row.key_usage} and key spec is {row.key_spec}, "
                f"which is not valid for {what}."
            )

    @staticmethod
    def _require_customer(row: Any, caller: Caller, action: str) -> None:
        """AWS managed keys refuse every change by their owner (their policy does not allow it)."""
        if row.key_manager == "AWS":
            raise no_policy_allows(caller, row, action)
