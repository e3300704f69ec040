"""The KMS key engine: key store, envelope encryption, policies and grants, audit.

Two surfaces:

* The **cross-member API** the EC2/EBS side calls on a caller's behalf ("via ec2"):
  :meth:`KeyEngine.describe_key`, :meth:`KeyEngine.default_ebs_key`,
  :meth:`KeyEngine.create_grant_for_service`,
  :meth:`KeyEngine.generate_data_key_without_plaintext`, :meth:`KeyEngine.decrypt`.
  Each is checked exactly as the direct KMS call would be (key state, key policy with
  ``kms:ViaService``, grants) and recorded in the audit trail with ``invokedBy``.
* The **KMS operations** (``op_<Name>(caller, params) -> dict``, model member names) the
  thin handlers in ``ebscrypt.services.kms`` call inside :meth:`KeyEngine.audited`.

Key material is random, kept in memory only after unwrapping, stored only wrapped by the
root key (see :mod:`.keystore`).
"""

from __future__ import annotations

import base64
import contextvars
import json
import os
import re
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import Connection, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ebscrypt.context import Caller
from ebscrypt.domain import grants as grant_rules
from ebscrypt.domain import policy as policy_rules
from ebscrypt.engines.kms import asym
from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.audit import AuditLog, audit_path
from ebscrypt.engines.kms.keystore import FileRootKeySource, KeyWrapper, RootKeySource
from ebscrypt.errors import ServiceError
from ebscrypt.storage.tables.kms import kms_aliases, kms_grants, kms_key_material, kms_keys, kms_tags

EBS_ALIAS = "alias/aws/ebs"
MAX_PLAINTEXT = 4096
POLICY_NAME = "default"
MAX_POLICY_CHARS = 32768
MAX_ON_DEMAND_ROTATIONS = 10
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
_ALIAS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")
_ALIAS_NAME_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")


def kms_error(code: str, message: str, status: int = 400) -> ServiceError:
    return ServiceError(message, code=code, status=status)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    arn: str
    account: str
    region: str
    state: str
    key_spec: str
    key_usage: str
    key_manager: str
    creation_date: datetime
    description: str


@dataclass
class _Event:
    caller: Caller
    name: str
    params: dict[str, Any]
    via_service: str | None
    request_id: str
    read_only: bool
    time: datetime
    resources: list[str] = field(default_factory=list)
    # key id -> the alias the request named it by (condition key kms:RequestAlias)
    request_aliases: dict[str, str] = field(default_factory=dict)
    error: tuple[str, str] | None = None


_CURRENT: contextvars.ContextVar[_Event | None] = contextvars.ContextVar("kms_audit_event", default=None)

_READ_ONLY = {
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GetKeyPolicy",
    "ListKeyPolicies",
    "GetKeyRotationStatus",
    "ListKeyRotations",
    "ListGrants",
    "ListRetirableGrants",
    "ListResourceTags",
    "GetPublicKey",
}
# Request members never written to the audit trail (secrets, or bulky/irrelevant bytes).
_SECRET_MEMBERS = {"Plaintext", "CiphertextBlob", "Message", "Signature", "GrantTokens"}


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _audit_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if k in _SECRET_MEMBERS or isinstance(v, (bytes, bytearray)):
            continue
        if isinstance(v, datetime):
            v = v.isoformat()
        out[_camel(k)] = v
    return out


class KeyEngine:
    """One per server process (``runtime.kms``)."""

    def __init__(self, runtime: Any, root_source: RootKeySource | None = None) -> None:
        self.runtime = runtime
        self.db = runtime.db
        self.clock = runtime.clock
        data_dir = runtime.settings.data_dir
        source = root_source or FileRootKeySource(data_dir / "root.key")
        self._wrapper = KeyWrapper(source.load())
        self.audit_log = AuditLog(audit_path(data_dir))
        self._materials: dict[tuple[str, str], bytes] = {}
        self._policies: dict[str, policy_rules.Policy] = {}
        self._lock = threading.Lock()
        self.sweep_deletions()

    def close(self) -> None:
        self.audit_log.close()
        self._materials.clear()

    # ------------------------------------------------------------------------ audit

    @contextmanager
    def audited(
        self,
        caller: Caller,
        event_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        via_service: str | None = None,
        request_id: str | None = None,
    ) -> Iterator[_Event]:
        """Run one KMS event; append its CloudTrail record (with errorCode if refused)."""
        ev = _Event(
            caller=caller,
            name=event_name,
            params=_audit_params(params or {}),
            via_service=via_service,
            request_id=request_id or str(uuid.uuid4()),
            read_only=event_name in _READ_ONLY,
            time=self.clock.now(),
        )
        token = _CURRENT.set(ev)
        try:
            yield ev
        except ServiceError as exc:
            ev.error = (exc.code, exc.message)
            raise
        except Exception:
            ev.error = ("KMSInternalException", "internal error")
            raise
        finally:
            _CURRENT.reset(token)
            self.audit_log.append(self._record(ev))

    def _record(self, ev: _Event) -> dict[str, Any]:
        c = ev.caller
        ident: dict[str, Any] = {
            "type": "Root" if c.arn.endswith(":root") else ("AssumedRole" if ":assumed-role/" in c.arn else "IAMUser"),
            "principalId": c.user_id,
            "arn": c.arn,
            "accountId": c.account,
        }
        if c.access_key:
            ident["accessKeyId"] = c.access_key
        if ev.via_service:
            ident["invokedBy"] = ev.via_service.split(".")[0] + ".amazonaws.com"
        rec: dict[str, Any] = {
            "eventVersion": "1.08",
            "userIdentity": ident,
            "eventTime": ev.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": "kms.amazonaws.com",
            "eventName": ev.name,
            "awsRegion": c.region,
            "sourceIPAddress": ident.get("invokedBy", "ebscrypt-client"),
            "userAgent": ident.get("invokedBy", "ebscrypt"),
            "requestParameters": ev.params or None,
            "responseElements": None,
            "requestID": ev.request_id,
            "eventID": str(uuid.uuid4()),
            "readOnly": ev.read_only,
            "resources": [
                {"accountId": arn.split(":")[4], "type": "AWS::KMS::Key", "ARN": arn}
                for arn in dict.fromkeys(ev.resources)
            ],
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": c.account,
            "eventCategory": "Management",
        }
        if ev.error:
            rec["errorCode"], rec["errorMessage"] = ev.error
        return rec

    @staticmethod
    def _note_resource(arn: str) -> None:
        ev = _CURRENT.get()
        if ev is not None:
            ev.resources.append(arn)

    # ------------------------------------------------------------ key store / rows

    def _material(self, key_id: str, material_id: str, conn: Connection | None = None) -> bytes:
        cache_key = (key_id, material_id)
        m = self._materials.get(cache_key)
        if m is not None:
            return m
        q = select(kms_key_material.c.wrapped).where(
            kms_key_material.c.key_id == key_id, kms_key_material.c.material_id == material_id
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.db.read() as c:
                row = c.execute(q).first()
        if row is None:
            raise blobfmt.BadCiphertext()
        m = self._wrapper.unwrap(key_id, material_id, row.wrapped)
        self._materials[cache_key] = m
        return m

    def _current_material(self, conn: Connection, key_id: str) -> tuple[str, bytes]:
        row = conn.execute(
            select(kms_key_material.c.material_id).where(
                kms_key_material.c.key_id == key_id, kms_key_material.c.is_current.is_(True)
            )
        ).first()
        if row is None:
            raise kms_error("KMSInternalException", "key material is missing", 500)
        return row.material_id, self._material(key_id, row.material_id, conn)

    def _add_material(
        self, conn: Connection, key_id: str, material: bytes, *, rotation_type: str | None = None
    ) -> str:
        material_id = os.urandom(16).hex()
        conn.execute(
            update(kms_key_material).where(kms_key_material.c.key_id == key_id).values(is_current=False)
        )
        conn.execute(
            insert(kms_key_material).values(
                key_id=key_id,
                material_id=material_id,
                wrapped=self._wrapper.wrap(key_id, material_id, material),
                created_at=self.clock.now(),
                is_current=True,
                rotation_type=rotation_type,
            )
        )
        self._materials[(key_id, material_id)] = material
        return material_id

    def _policy(self, text: str) -> policy_rules.Policy:
        p = self._policies.get(text)
        if p is None:
            p = policy_rules.parse_policy(text)
            if len(self._policies) > 1024:
                self._policies.clear()
            self._policies[text] = p
        return p

    # ------------------------------------------------------------- key creation

    def _insert_key(
        self,
        conn: Connection,
        *,
        account: str,
        region: str,
        key_spec: str,
        key_usage: str,
        key_manager: str,
        policy: str,
        description: str,
        rotation: bool = False,
    ) -> Any:
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{region}:{account}:key/{key_id}"
        now = self.clock.now()
        public = None
        if key_spec == "SYMMETRIC_DEFAULT":
            material = os.urandom(32)
        else:
            material, public = asym.generate(key_spec)
        conn.execute(
            insert(kms_keys).values(
                key_id=key_id,
                account=account,
                region=region,
                arn=arn,
                key_spec=key_spec,
                key_usage=key_usage,
                key_manager=key_manager,
                state="Enabled",
                description=description,
                policy=policy,
                creation_date=now,
                deletion_date=None,
                rotation_enabled=rotation,
                rotation_period_days=365 if rotation else None,
                next_rotation_date=now + timedelta(days=365) if rotation else None,
                public_key=public,
            )
        )
        self._add_material(conn, key_id, material)
        return conn.execute(self._key_query(key_id)).one()

    def _ensure_ebs_key(self, account: str, region: str) -> None:
        with self.db.read() as conn:
            if self._alias_row(conn, account, region, EBS_ALIAS) is not None:
                return
        try:
            self._create_ebs_key(account, region)
        except IntegrityError:
            # Another server process (scale-out) created it first: use theirs.
            with self.db.read() as conn:
                if self._alias_row(conn, account, region, EBS_ALIAS) is None:
                    raise

    def _create_ebs_key(self, account: str, region: str) -> None:
        with self._lock:
            with self.db.begin() as conn:
                if self._alias_row(conn, account, region, EBS_ALIAS) is not None:
                    return
                row = self._insert_key(
                    conn,
                    account=account,
                    region=region,
                    key_spec="SYMMETRIC_DEFAULT",
                    key_usage="ENCRYPT_DECRYPT",
                    key_manager="AWS",
                    policy=policy_rules.aws_managed_policy(account, region),
                    description="Default key that protects my EBS volumes when no other key is defined",
                    rotation=True,
                )
                now = self.clock.now()
                conn.execute(
                    insert(kms_aliases).values(
                        account=account,
                        region=region,
                        name=EBS_ALIAS,
                        target_key_id=row.key_id,
                        creation_date=now,
                        last_updated=now,
                    )
                )

    # --------------------------------------------------------------- resolution

    @staticmethod
    def _alias_row(conn: Connection, account: str, region: str, name: str) -> Any:
        return conn.execute(
            select(kms_aliases).where(
                kms_aliases.c.account == account, kms_aliases.c.region == region, kms_aliases.c.name == name
            )
        ).first()

    def _resolve(self, caller: Caller, key_ref: str, *, allow_alias: bool = True, own_account: bool = False) -> Any:
        """The key row ``key_ref`` names for ``caller`` (id, key ARN, alias, alias ARN).

        ``own_account``: the operation has no cross-account use in AWS (key management),
        so a key of another account named by ARN does not exist for it.
        """
        if not isinstance(key_ref, str) or not key_ref:
            raise kms_error("ValidationException", "KeyId must be a non-empty string")
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
            raise kms_error("NotFoundException", f"Invalid arn {key_ref}")
        else:
            key_id = key_ref
        if alias_name is not None:
            alias_arn = f"arn:aws:kms:{region}:{account}:{alias_name}"
            if not allow_alias:
                raise kms_error("NotFoundException", f"Alias {alias_arn} is not found.")
            if alias_name == EBS_ALIAS and region == caller.region and account == caller.account:
                self._ensure_ebs_key(account, region)
            with self.db.read() as conn:
                a = self._alias_row(conn, account, region, alias_name) if region == caller.region else None
            if a is None:
                raise kms_error("NotFoundException", f"Alias {alias_arn} is not found.")
            key_id = a.target_key_id
            ev = _CURRENT.get()
            if ev is not None:
                ev.request_aliases[key_id] = alias_name
        assert key_id is not None
        arn = f"arn:aws:kms:{region}:{account}:key/{key_id}"
        if not _UUID_RE.match(key_id):
            raise kms_error("NotFoundException", f"Invalid keyId '{key_ref}'")
        if region != caller.region:
            raise kms_error("NotFoundException", f"Key '{arn}' does not exist")
        row = self._load(key_id)
        foreign = own_account and account != caller.account
        if row is None or row.account != account or row.region != region or foreign:
            raise kms_error("NotFoundException", f"Key '{arn}' does not exist")
        self._note_resource(row.arn)
        return row

    def _load(self, key_id: str) -> Any:
        """The key row, after lazy deletion (past DeletionDate) and automatic rotation."""
        with self.db.read() as conn:
            row = conn.execute(self._key_query(key_id)).first()
        if row is None:
            return None
        now = self.clock.now()
        if row.state == "PendingDeletion" and _utc(row.deletion_date) <= now:
            if self._destroy(key_id):
                return None
            return self._load(key_id)
        due = row.next_rotation_date
        if row.state == "Enabled" and row.rotation_enabled and due is not None and _utc(due) <= now:
            self._auto_rotate(key_id)
            with self.db.read() as conn:
                row = conn.execute(self._key_query(key_id)).first()
        return row

    @staticmethod
    def _key_query(key_id: str) -> Any:
        """The key row plus the id of its current backing material (one round trip)."""
        current = and_(kms_key_material.c.key_id == kms_keys.c.key_id, kms_key_material.c.is_current.is_(True))
        return (
            select(kms_keys, kms_key_material.c.material_id.label("current_material_id"))
            .outerjoin(kms_key_material, current)
            .where(kms_keys.c.key_id == key_id)
        )

    def _auto_rotate(self, key_id: str) -> None:
        with self.db.begin() as conn:
            row = conn.execute(select(kms_keys).where(kms_keys.c.key_id == key_id)).first()
            if row is None or row.state != "Enabled" or not row.rotation_enabled or row.next_rotation_date is None:
                return
            now = self.clock.now()
            due = _utc(row.next_rotation_date)
            period = timedelta(days=row.rotation_period_days or 365)
            if due > now:
                return
            self._add_material(conn, key_id, os.urandom(32), rotation_type="AUTOMATIC")
            while due <= now:
                due += period
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(next_rotation_date=due))

    def _destroy(self, key_id: str) -> bool:
        """Crypto-shred a key whose deletion date has passed: delete its wrapped material
        and every record of it. Re-checked inside the transaction (a concurrent
        CancelKeyDeletion wins). SQLite overwrites the freed pages (secure_delete)."""
        with self.db.begin() as conn:
            if self.db.is_sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            row = conn.execute(
                select(kms_keys.c.state, kms_keys.c.deletion_date).where(kms_keys.c.key_id == key_id)
            ).first()
            if row is None or row.state != "PendingDeletion" or _utc(row.deletion_date) > self.clock.now():
                return False
            for table in (kms_key_material, kms_aliases, kms_grants, kms_tags):
                col = table.c.target_key_id if table is kms_aliases else table.c.key_id
                conn.execute(delete(table).where(col == key_id))
            conn.execute(delete(kms_keys).where(kms_keys.c.key_id == key_id))
        for k in [k for k in self._materials if k[0] == key_id]:
            self._materials.pop(k, None)
        return True

    def sweep_deletions(self) -> int:
        """Destroy every key whose deletion date has passed; return how many."""
        now = self.clock.now()
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_keys.c.key_id, kms_keys.c.deletion_date).where(kms_keys.c.state == "PendingDeletion")
            ).all()
        n = 0
        for r in rows:
            if _utc(r.deletion_date) <= now and self._destroy(r.key_id):
                n += 1
        return n

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
        ev = _CURRENT.get()
        if ev is not None and row.key_id in ev.request_aliases:
            ctx["kms:RequestAlias"] = ev.request_aliases[row.key_id]
        if "kms:resourcealiases" in row.policy.lower():
            ctx["kms:ResourceAliases"] = self._aliases_of(row)
        if extra:
            ctx.update(extra)
        request = policy_rules.Request(
            action=action,
            principal_arn=caller.arn,
            principal_account=caller.account,
            resource=row.arn,
            context=ctx,
        )
        decision = policy_rules.evaluate(self._policy(row.policy), request)
        if decision is policy_rules.Decision.ALLOW:
            return
        if decision is policy_rules.Decision.DENY:
            raise kms_error(
                "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: {action} on resource: "
                f"{row.arn} with an explicit deny in a resource-based policy",
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
        raise kms_error(
            "AccessDeniedException",
            f"User: {caller.arn} is not authorized to perform: {action} on resource: "
            f"{row.arn} because no resource-based policy allows the {action} action.",
        )

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
            raise kms_error("ValidationException", "GrantTokens must contain at most 10 tokens")
        with self.db.read() as conn:
            for t in tokens:
                if conn.execute(select(kms_grants.c.grant_id).where(kms_grants.c.token == t)).first() is None:
                    raise kms_error("InvalidGrantTokenException", "Grant token provided is not valid")

    def _grants_for_key(self, key_id: str) -> list[grant_rules.Grant]:
        with self.db.read() as conn:
            rows = conn.execute(select(kms_grants).where(kms_grants.c.key_id == key_id)).all()
        return [_grant_of(r) for r in rows]

    @staticmethod
    def _require_enabled(row: Any) -> None:
        if row.state == "Disabled":
            raise kms_error("DisabledException", f"{row.arn} is disabled.")
        if row.state == "PendingDeletion":
            raise kms_error("KMSInvalidStateException", f"{row.arn} is pending deletion.")

    @staticmethod
    def _require_not_pending(row: Any) -> None:
        if row.state == "PendingDeletion":
            raise kms_error("KMSInvalidStateException", f"{row.arn} is pending deletion.")

    @staticmethod
    def _require_symmetric(row: Any, what: str) -> None:
        if row.key_spec != "SYMMETRIC_DEFAULT" or row.key_usage != "ENCRYPT_DECRYPT":
            raise kms_error(
                "InvalidKeyUsageException",
                f"{row.arn} key usage is {row.key_usage} and key spec is {row.key_spec}, "
                f"which is not valid for {what}.",
            )

    @staticmethod
    def _require_customer(row: Any, caller: Caller, action: str) -> None:
        """AWS managed keys refuse every change by their owner (their policy does not allow it)."""
        if row.key_manager == "AWS":
            raise kms_error(
                "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: {action} on resource: "
                f"{row.arn} because no resource-based policy allows the {action} action.",
            )

    # ------------------------------------------------------- symmetric crypto core

    def _seal(self, row: Any, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
        material_id = getattr(row, "current_material_id", None)
        if material_id is not None:
            material = self._material(row.key_id, material_id)
        else:
            with self.db.read() as conn:
                material_id, material = self._current_material(conn, row.key_id)
        return blobfmt.seal(row.key_id, material_id, material, plaintext, context)

    def _blob_key(self, caller: Caller, blob: bytes, key_ref: str | None, algorithm: str | None) -> tuple[Any, Any]:
        """(key row, parsed header or None for asymmetric) that ``blob`` is encrypted under."""
        if not isinstance(blob, (bytes, bytearray)) or not blob:
            raise kms_error("ValidationException", "CiphertextBlob must be 1 to 6144 bytes")
        if algorithm not in (None, "SYMMETRIC_DEFAULT"):
            if not key_ref:
                raise kms_error(
                    "ValidationException",
                    "KeyId is required when decrypting with an asymmetric KMS key",
                )
            row = self._resolve(caller, key_ref)
            return row, None
        try:
            header = blobfmt.parse_header(bytes(blob))
        except (blobfmt.BadCiphertext, ValueError):
            raise _invalid_ciphertext() from None
        if key_ref:
            row = self._resolve(caller, key_ref)
            if row.key_id != header.key_id:
                raise kms_error(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a KMS key that can perform this operation.",
                )
            return row, header
        row = self._load(header.key_id)
        if row is None or row.region != caller.region:
            raise _invalid_ciphertext()
        self._note_resource(row.arn)
        return row, header

    def _open(self, row: Any, header: Any, blob: bytes, context: Mapping[str, str] | None) -> bytes:
        try:
            material = self._material(row.key_id, header.material_id)
            return blobfmt.open_blob(header, bytes(blob), material, context)
        except blobfmt.BadCiphertext:
            raise _invalid_ciphertext() from None

    # ==================================================== cross-member engine API

    def describe_key(self, caller: Caller, key_id: str, *, via_service: str | None = None) -> KeyInfo:
        """Key metadata for ``key_id`` (id, ARN, alias, alias ARN); checks kms:DescribeKey."""
        with self.audited(caller, "DescribeKey", {"KeyId": key_id}, via_service=via_service):
            row = self._resolve(caller, key_id)
            self._authorize(caller, row, "kms:DescribeKey", via_service=via_service)
            return _info(row)

    def default_ebs_key(self, account: str, region: str) -> KeyInfo:
        """The AWS managed ``alias/aws/ebs`` key of ``account`` in ``region`` (made on first use)."""
        self._ensure_ebs_key(account, region)
        with self.db.read() as conn:
            alias = self._alias_row(conn, account, region, EBS_ALIAS)
        row = self._load(alias.target_key_id)
        return _info(row)

    def create_grant_for_service(
        self,
        caller: Caller,
        key_id: str,
        *,
        via_service: str,
        operations: Sequence[str],
        encryption_context_subset: Mapping[str, str] | None = None,
    ) -> str:
        """A grant to the service principal (GrantIsForAWSResource=true); returns the grant id.

        Idempotent: the same caller account asking again for the same service, operations
        and constraints on the same key gets the existing grant (still checked and audited),
        so repeated attaches do not pile up grants.
        """
        params = {"KeyId": key_id, "GranteePrincipal": via_service, "Operations": list(operations)}
        with self.audited(caller, "CreateGrant", params, via_service=via_service):
            row = self._resolve(caller, key_id)
            constraints = (
                {"EncryptionContextSubset": dict(encryption_context_subset)} if encryption_context_subset else None
            )
            grant_id, _token = self._create_grant(
                caller,
                row,
                grantee=via_service,
                operations=list(operations),
                retiring=None,
                constraints=constraints,
                name=None,
                via_service=via_service,
                for_aws_resource=True,
                reuse_identical=True,
            )
            return grant_id

    def generate_data_key_without_plaintext(
        self,
        caller: Caller,
        key_id: str,
        *,
        encryption_context: Mapping[str, str] | None,
        via_service: str | None,
    ) -> tuple[str, bytes]:
        """A fresh AES-256 data key, wrapped under ``key_id``: (key ARN, ciphertext blob)."""
        params = {"KeyId": key_id, "EncryptionContext": dict(encryption_context or {}), "KeySpec": "AES_256"}
        with self.audited(caller, "GenerateDataKeyWithoutPlaintext", params, via_service=via_service):
            row = self._resolve(caller, key_id)
            self._authorize(
                caller,
                row,
                "kms:GenerateDataKeyWithoutPlaintext",
                via_service=via_service,
                encryption_context=encryption_context,
            )
            self._require_enabled(row)
            self._require_symmetric(row, "GenerateDataKeyWithoutPlaintext")
            return row.arn, self._seal(row, os.urandom(32), encryption_context)

    def decrypt(
        self,
        caller: Caller,
        blob: bytes,
        *,
        encryption_context: Mapping[str, str] | None,
        via_service: str | None,
        key_id: str | None = None,
    ) -> tuple[str, bytes]:
        """Unwrap a data key: (key ARN, plaintext). Checks kms:Decrypt as a direct call would."""
        params: dict[str, Any] = {"EncryptionContext": dict(encryption_context or {})}
        if key_id:
            params["KeyId"] = key_id
        with self.audited(caller, "Decrypt", params, via_service=via_service):
            row, header = self._blob_key(caller, blob, key_id, None)
            self._authorize(caller, row, "kms:Decrypt", via_service=via_service, encryption_context=encryption_context)
            self._require_enabled(row)
            return row.arn, self._open(row, header, blob, encryption_context)

    # ============================================================ KMS operations
    # Each op_* takes the operation's input (model member names) and returns its output.

    # ---- keys

    def op_CreateKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        key_spec = p.get("KeySpec") or p.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
        if "KeySpec" in p and "CustomerMasterKeySpec" in p:
            raise kms_error(
                "ValidationException", "You cannot specify KeySpec and CustomerMasterKeySpec in the same request."
            )
        key_usage = p.get("KeyUsage") or (
            "SIGN_VERIFY" if key_spec.startswith("ECC_")
            else "GENERATE_VERIFY_MAC" if key_spec.startswith("HMAC_") else "ENCRYPT_DECRYPT"
        )
        if key_spec not in asym.SUPPORTED_SPECS:
            raise kms_error("UnsupportedOperationException", f"KeySpec {key_spec} is not supported by ebscrypt.")
        if key_usage not in asym.USAGES[key_spec]:
            raise kms_error(
                "ValidationException", f"KeyUsage {key_usage} is not compatible with KeySpec {key_spec}"
            )
        origin = p.get("Origin", "AWS_KMS")
        if origin != "AWS_KMS":
            raise kms_error("UnsupportedOperationException", f"Origin {origin} is not supported by ebscrypt.")
        if p.get("MultiRegion"):
            raise kms_error("UnsupportedOperationException", "Multi-Region keys are not supported by ebscrypt.")
        description = p.get("Description", "")
        if len(description) > 8192:
            raise kms_error("ValidationException", "Description must be at most 8192 characters")
        tags = _validate_tags(p.get("Tags") or [])
        if "Policy" in p:
            policy_text = p["Policy"]
            self._validate_policy(policy_text)
        else:
            policy_text = policy_rules.default_key_policy(caller.account)
        with self.db.begin() as conn:
            # The lockout check needs the ARN, known only once the key row exists.
            row = self._insert_key(
                conn,
                account=caller.account,
                region=caller.region,
                key_spec=key_spec,
                key_usage=key_usage,
                key_manager="CUSTOMER",
                policy=policy_text,
                description=description,
            )
            if "Policy" in p and not p.get("BypassPolicyLockoutSafetyCheck"):
                self._lockout_check(caller, row, policy_text)
            for k, v in tags.items():
                conn.execute(insert(kms_tags).values(key_id=row.key_id, tag_key=k, tag_value=v))
        self._note_resource(row.arn)
        return {"KeyMetadata": _metadata(row)}

    def _validate_policy(self, text: Any) -> policy_rules.Policy:
        if not isinstance(text, str) or not text:
            raise kms_error("ValidationException", "Policy must be a non-empty string")
        if len(text) > MAX_POLICY_CHARS:
            raise kms_error(
                "LimitExceededException", f"The key policy exceeds the maximum size of {MAX_POLICY_CHARS} characters."
            )
        try:
            return self._policy(text)
        except policy_rules.PolicyError as exc:
            raise kms_error("MalformedPolicyDocumentException", str(exc)) from None

    def _lockout_check(self, caller: Caller, row: Any, text: str) -> None:
        req = policy_rules.Request(
            action="kms:PutKeyPolicy",
            principal_arn=caller.arn,
            principal_account=caller.account,
            resource=row.arn,
            context={"kms:CallerAccount": caller.account, "aws:PrincipalAccount": caller.account},
        )
        if policy_rules.evaluate(self._policy(text), req) is not policy_rules.Decision.ALLOW:
            raise kms_error(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )

    def op_DescribeKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:DescribeKey", grant_tokens=p.get("GrantTokens"))
        return {"KeyMetadata": _metadata(row)}

    def op_ListKeys(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        self.sweep_deletions()
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_keys.c.key_id, kms_keys.c.arn)
                .where(kms_keys.c.account == caller.account, kms_keys.c.region == caller.region)
                .order_by(kms_keys.c.creation_date, kms_keys.c.key_id)
            ).all()
        page, out = _page(rows, p, default=100, max_limit=1000)
        out["Keys"] = [{"KeyId": r.key_id, "KeyArn": r.arn} for r in page]
        return out

    def op_UpdateKeyDescription(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:UpdateKeyDescription")
        self._require_customer(row, caller, "kms:UpdateKeyDescription")
        self._require_not_pending(row)
        desc = p.get("Description", "")
        if len(desc) > 8192:
            raise kms_error("ValidationException", "Description must be at most 8192 characters")
        self._update(row.key_id, description=desc)
        return {}

    def _update(self, key_id: str, **values: Any) -> None:
        with self.db.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(**values))

    def op_EnableKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:EnableKey")
        self._require_customer(row, caller, "kms:EnableKey")
        self._require_not_pending(row)
        self._update(row.key_id, state="Enabled")
        return {}

    def op_DisableKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:DisableKey")
        self._require_customer(row, caller, "kms:DisableKey")
        self._require_not_pending(row)
        self._update(row.key_id, state="Disabled")
        return {}

    def op_ScheduleKeyDeletion(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:ScheduleKeyDeletion")
        self._require_customer(row, caller, "kms:ScheduleKeyDeletion")
        days = p.get("PendingWindowInDays", 30)
        if not isinstance(days, int) or not 7 <= days <= 30:
            raise kms_error(
                "ValidationException",
                f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy "
                "constraint: Member must have value between 7 and 30",
            )
        self._require_not_pending(row)
        when = self.clock.now() + timedelta(days=days)
        self._update(row.key_id, state="PendingDeletion", deletion_date=when)
        return {"KeyId": row.arn, "DeletionDate": when, "KeyState": "PendingDeletion", "PendingWindowInDays": days}

    def op_CancelKeyDeletion(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:CancelKeyDeletion")
        self._require_customer(row, caller, "kms:CancelKeyDeletion")
        if row.state != "PendingDeletion":
            raise kms_error("KMSInvalidStateException", f"{row.arn} is not pending deletion.")
        self._update(row.key_id, state="Disabled", deletion_date=None)
        return {"KeyId": row.arn}

    # ---- rotation

    def op_EnableKeyRotation(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:EnableKeyRotation")
        self._require_customer(row, caller, "kms:EnableKeyRotation")
        self._require_rotatable(row)
        period = p.get("RotationPeriodInDays", 365)
        if not isinstance(period, int) or not 90 <= period <= 2560:
            raise kms_error(
                "ValidationException",
                f"1 validation error detected: Value '{period}' at 'rotationPeriodInDays' failed to "
                "satisfy constraint: Member must have value between 90 and 2560",
            )
        self._require_enabled(row)
        self._update(
            row.key_id,
            rotation_enabled=True,
            rotation_period_days=period,
            next_rotation_date=self.clock.now() + timedelta(days=period),
        )
        return {}

    def op_DisableKeyRotation(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:DisableKeyRotation")
        self._require_customer(row, caller, "kms:DisableKeyRotation")
        self._require_rotatable(row)
        self._require_enabled(row)
        self._update(row.key_id, rotation_enabled=False, next_rotation_date=None)
        return {}

    def _require_rotatable(self, row: Any) -> None:
        if row.key_spec != "SYMMETRIC_DEFAULT":
            raise kms_error(
                "UnsupportedOperationException",
                f"{row.arn} key spec is {row.key_spec}: automatic and on-demand rotation are "
                "supported only for symmetric encryption KMS keys.",
            )

    def op_GetKeyRotationStatus(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:GetKeyRotationStatus")
        self._require_not_pending(row)
        out: dict[str, Any] = {"KeyRotationEnabled": bool(row.rotation_enabled), "KeyId": row.arn}
        if row.rotation_enabled:
            out["RotationPeriodInDays"] = row.rotation_period_days
            out["NextRotationDate"] = _utc(row.next_rotation_date)
        return out

    def op_RotateKeyOnDemand(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:RotateKeyOnDemand")
        self._require_customer(row, caller, "kms:RotateKeyOnDemand")
        self._require_rotatable(row)
        self._require_enabled(row)
        with self.db.begin() as conn:
            n = len(
                conn.execute(
                    select(kms_key_material.c.material_id).where(
                        kms_key_material.c.key_id == row.key_id, kms_key_material.c.rotation_type == "ON_DEMAND"
                    )
                ).all()
            )
            if n >= MAX_ON_DEMAND_ROTATIONS:
                raise kms_error(
                    "LimitExceededException",
                    f"{row.arn} has reached the maximum of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                )
            self._add_material(conn, row.key_id, os.urandom(32), rotation_type="ON_DEMAND")
        return {"KeyId": row.arn}

    def op_ListKeyRotations(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:ListKeyRotations")
        self._require_rotatable(row)
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_key_material)
                .where(kms_key_material.c.key_id == row.key_id, kms_key_material.c.rotation_type.is_not(None))
                .order_by(kms_key_material.c.created_at)
            ).all()
        page, out = _page(rows, p, default=100, max_limit=1000)
        out["Rotations"] = [
            {
                "KeyId": row.arn,
                "KeyMaterialId": r.material_id,
                "KeyMaterialState": "CURRENT" if r.is_current else "NON_CURRENT",
                "RotationDate": _utc(r.created_at),
                "RotationType": r.rotation_type,
            }
            for r in page
        ]
        return out

    # ---- policies

    def op_GetKeyPolicy(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:GetKeyPolicy")
        self._check_policy_name(p.get("PolicyName", POLICY_NAME))
        return {"Policy": row.policy, "PolicyName": POLICY_NAME}

    @staticmethod
    def _check_policy_name(name: str) -> None:
        if name != POLICY_NAME:
            raise kms_error("NotFoundException", f"No such policy exists: {name}")

    def op_ListKeyPolicies(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:ListKeyPolicies")
        page, out = _page([POLICY_NAME], p, default=100, max_limit=1000)
        out["PolicyNames"] = page
        return out

    def op_PutKeyPolicy(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], own_account=True)
        self._authorize(caller, row, "kms:PutKeyPolicy")
        self._require_customer(row, caller, "kms:PutKeyPolicy")
        self._check_policy_name(p.get("PolicyName", POLICY_NAME))
        text = p["Policy"]
        self._validate_policy(text)
        if not p.get("BypassPolicyLockoutSafetyCheck"):
            self._lockout_check(caller, row, text)
        self._require_not_pending(row)
        self._update(row.key_id, policy=text)
        return {}

    # ---- aliases

    def op_CreateAlias(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        name = p["AliasName"]
        self._check_alias_name(name)
        row = self._resolve(caller, p["TargetKeyId"], allow_alias=False)
        if row.account != caller.account:
            raise kms_error("NotFoundException", f"Key '{row.arn}' does not exist")
        self._authorize(caller, row, "kms:CreateAlias")
        self._require_customer(row, caller, "kms:CreateAlias")
        self._require_not_pending(row)
        now = self.clock.now()
        with self.db.begin() as conn:
            if self._alias_row(conn, caller.account, caller.region, name) is not None:
                raise kms_error(
                    "AlreadyExistsException",
                    f"An alias with the name arn:aws:kms:{caller.region}:{caller.account}:{name} already exists",
                )
            conn.execute(
                insert(kms_aliases).values(
                    account=caller.account,
                    region=caller.region,
                    name=name,
                    target_key_id=row.key_id,
                    creation_date=now,
                    last_updated=now,
                )
            )
        return {}

    @staticmethod
    def _check_alias_name(name: Any) -> None:
        if not isinstance(name, str) or not _ALIAS_NAME_RE.match(name) or len(name) > 256:
            raise kms_error(
                "ValidationException",
                f"1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$",
            )
        if name.startswith("alias/aws/"):
            raise kms_error(
                "NotAuthorizedException", "Alias names that begin with alias/aws/ are reserved for AWS managed keys."
            )

    def op_UpdateAlias(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        name = p["AliasName"]
        self._check_alias_name(name)
        with self.db.read() as conn:
            alias = self._alias_row(conn, caller.account, caller.region, name)
        if alias is None:
            raise _alias_not_found(caller, name)
        old = self._load(alias.target_key_id)
        new = self._resolve(caller, p["TargetKeyId"], allow_alias=False)
        if new.account != caller.account:
            raise kms_error("NotFoundException", f"Key '{new.arn}' does not exist")
        if old is not None:
            self._note_resource(old.arn)
            self._authorize(caller, old, "kms:UpdateAlias")
        self._authorize(caller, new, "kms:UpdateAlias")
        self._require_customer(new, caller, "kms:UpdateAlias")
        self._require_not_pending(new)
        if old is not None and (old.key_spec, old.key_usage) != (new.key_spec, new.key_usage):
            raise kms_error(
                "ValidationException",
                "The new target key must have the same key spec and key usage as the current target key.",
            )
        with self.db.begin() as conn:
            conn.execute(
                update(kms_aliases)
                .where(
                    kms_aliases.c.account == caller.account,
                    kms_aliases.c.region == caller.region,
                    kms_aliases.c.name == name,
                )
                .values(target_key_id=new.key_id, last_updated=self.clock.now())
            )
        return {}

    def op_DeleteAlias(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        name = p["AliasName"]
        self._check_alias_name(name)
        with self.db.read() as conn:
            alias = self._alias_row(conn, caller.account, caller.region, name)
        if alias is None:
            raise _alias_not_found(caller, name)
        row = self._load(alias.target_key_id)
        if row is not None:
            self._note_resource(row.arn)
            self._authorize(caller, row, "kms:DeleteAlias")
        with self.db.begin() as conn:
            conn.execute(
                delete(kms_aliases).where(
                    kms_aliases.c.account == caller.account,
                    kms_aliases.c.region == caller.region,
                    kms_aliases.c.name == name,
                )
            )
        return {}

    def op_ListAliases(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        self.sweep_deletions()
        q = select(kms_aliases).where(kms_aliases.c.account == caller.account, kms_aliases.c.region == caller.region)
        if p.get("KeyId"):
            row = self._resolve(caller, p["KeyId"], allow_alias=False)
            if row.account != caller.account:
                raise kms_error("NotFoundException", f"Key '{row.arn}' does not exist")
            q = q.where(kms_aliases.c.target_key_id == row.key_id)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(kms_aliases.c.name)).all()
        page, out = _page(rows, p, default=50, max_limit=100)
        out["Aliases"] = [
            {
                "AliasName": r.name,
                "AliasArn": f"arn:aws:kms:{r.region}:{r.account}:{r.name}",
                "TargetKeyId": r.target_key_id,
                "CreationDate": _utc(r.creation_date),
                "LastUpdatedDate": _utc(r.last_updated),
            }
            for r in page
        ]
        return out

    # ---- grants

    def _create_grant(
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
            raise kms_error(exc.code, str(exc)) from None
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
        self._authorize(
            caller,
            row,
            "kms:CreateGrant",
            via_service=via_service,
            encryption_context=ec,
            grant_tokens=grant_tokens,
            extra=extra,
        )
        self._require_not_pending(row)
        if dry_run:
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        ops_json = json.dumps(sorted(set(operations)))
        cons_json = json.dumps(constraints, sort_keys=True) if constraints else None
        with self.db.begin() as conn:
            if name or reuse_identical:
                q = select(kms_grants).where(kms_grants.c.key_id == row.key_id, kms_grants.c.grantee == grantee)
                q = q.where(kms_grants.c.name == name) if name else q.where(kms_grants.c.name.is_(None))
                for g in conn.execute(q).all():
                    same = (g.retiring, g.operations, g.constraints, g.issuing_account, bool(g.for_aws_resource)) == (
                        retiring, ops_json, cons_json, caller.account, for_aws_resource
                    )
                    if same:
                        return g.grant_id, g.token
            grant_id = os.urandom(32).hex()
            token = base64.urlsafe_b64encode(b"ebscrypt-grant:" + os.urandom(48)).decode().rstrip("=")
            conn.execute(
                insert(kms_grants).values(
                    grant_id=grant_id,
                    key_id=row.key_id,
                    name=name,
                    grantee=grantee,
                    retiring=retiring,
                    operations=ops_json,
                    constraints=cons_json,
                    issuing_account=caller.account,
                    for_aws_resource=for_aws_resource,
                    token=token,
                    creation_date=self.clock.now(),
                )
            )
        return grant_id, token

    def op_CreateGrant(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        grant_id, token = self._create_grant(
            caller,
            row,
            grantee=p["GranteePrincipal"],
            operations=list(p.get("Operations") or []),
            retiring=p.get("RetiringPrincipal"),
            constraints=p.get("Constraints"),
            name=p.get("Name"),
            grant_tokens=p.get("GrantTokens"),
            dry_run=bool(p.get("DryRun")),
        )
        return {"GrantToken": token, "GrantId": grant_id}

    def _grant_list(self, rows: Sequence[Any], p: dict[str, Any]) -> dict[str, Any]:
        page, out = _page(rows, p, default=50, max_limit=100)
        arns: dict[str, str] = {}
        grants = []
        for r in page:
            if r.key_id not in arns:
                k = self._load(r.key_id)
                arns[r.key_id] = k.arn if k is not None else r.key_id
            g: dict[str, Any] = {
                "KeyId": arns[r.key_id],
                "GrantId": r.grant_id,
                "CreationDate": _utc(r.creation_date),
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

    def op_ListGrants(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:ListGrants")
        q = select(kms_grants).where(kms_grants.c.key_id == row.key_id)
        if p.get("GrantId"):
            q = q.where(kms_grants.c.grant_id == p["GrantId"])
        if p.get("GranteePrincipal"):
            q = q.where(kms_grants.c.grantee == p["GranteePrincipal"])
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(kms_grants.c.creation_date, kms_grants.c.grant_id)).all()
        return self._grant_list(rows, p)

    def op_ListRetirableGrants(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        principal = p["RetiringPrincipal"]
        try:
            grant_rules.validate_principal(principal, "RetiringPrincipal")
        except grant_rules.GrantError as exc:
            raise kms_error("ValidationException", str(exc)) from None
        if not policy_rules.principal_matches(principal, caller.arn, caller.account):
            raise kms_error(
                "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: kms:ListRetirableGrants for "
                f"retiring principal {principal} of another account",
            )
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_grants)
                .join(kms_keys, kms_keys.c.key_id == kms_grants.c.key_id)
                .where(kms_grants.c.retiring == principal, kms_keys.c.region == caller.region)
                .order_by(kms_grants.c.creation_date, kms_grants.c.grant_id)
            ).all()
        return self._grant_list(rows, p)

    def op_RetireGrant(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        token, key_ref, grant_id = p.get("GrantToken"), p.get("KeyId"), p.get("GrantId")
        if token:
            with self.db.read() as conn:
                g = conn.execute(select(kms_grants).where(kms_grants.c.token == token)).first()
            if g is None:
                raise kms_error("InvalidGrantTokenException", "Grant token provided is not valid")
        elif key_ref and grant_id:
            _check_grant_id(grant_id)
            row = self._resolve(caller, key_ref)
            with self.db.read() as conn:
                g = conn.execute(
                    select(kms_grants).where(kms_grants.c.key_id == row.key_id, kms_grants.c.grant_id == grant_id)
                ).first()
            if g is None:
                raise kms_error("NotFoundException", f"Grant ID {grant_id} not found")
        else:
            raise kms_error("ValidationException", "Either GrantToken, or GrantId and KeyId, must be specified.")
        key = self._load(g.key_id)
        if key is not None:
            self._note_resource(key.arn)
        if not grant_rules.may_retire(_grant_of(g), caller.arn, caller.account):
            arn = key.arn if key is not None else g.key_id
            raise kms_error(
                "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: kms:RetireGrant on resource: {arn} "
                "because it is neither the retiring principal nor a grantee allowed to retire the grant",
            )
        with self.db.begin() as conn:
            conn.execute(delete(kms_grants).where(kms_grants.c.grant_id == g.grant_id))
        return {}

    def op_RevokeGrant(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        _check_grant_id(p["GrantId"])
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:RevokeGrant")
        with self.db.begin() as conn:
            n = conn.execute(
                delete(kms_grants).where(kms_grants.c.key_id == row.key_id, kms_grants.c.grant_id == p["GrantId"])
            ).rowcount
        if not n:
            raise kms_error("NotFoundException", f"Grant ID {p['GrantId']} not found")
        return {}

    # ---- cryptographic operations

    def op_Encrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        ec = _context(p.get("EncryptionContext"))
        self._authorize(caller, row, "kms:Encrypt", encryption_context=ec, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        plaintext = _plaintext(p.get("Plaintext"))
        alg = p.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        blob = self._encrypt(row, plaintext, ec, alg)
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        return {"CiphertextBlob": blob, "KeyId": row.arn, "EncryptionAlgorithm": alg}

    def _encrypt(self, row: Any, plaintext: bytes, ec: Mapping[str, str] | None, alg: str) -> bytes:
        if row.key_usage != "ENCRYPT_DECRYPT":
            raise kms_error(
                "InvalidKeyUsageException", f"{row.arn} key usage is {row.key_usage} which is not valid for Encrypt."
            )
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise kms_error(
                "InvalidKeyUsageException",
                f"Algorithm {alg} is incompatible with key spec {row.key_spec}.",
            )
        if row.key_spec == "SYMMETRIC_DEFAULT":
            return self._seal(row, plaintext, ec)
        if ec:
            raise kms_error("ValidationException", "EncryptionContext is not supported with asymmetric KMS keys")
        limit = asym.max_plaintext(row.key_spec, alg)
        if len(plaintext) > limit:
            raise kms_error(
                "ValidationException",
                f"Algorithm {alg} and key spec {row.key_spec} cannot encrypt data larger than {limit} bytes.",
            )
        return asym.rsa_encrypt(row.public_key, plaintext, alg)

    def _decrypt_blob(
        self, caller: Caller, blob: Any, key_ref: str | None, ec: Mapping[str, str] | None, alg: str | None,
        action: str, grant_tokens: Sequence[str] | None = None,
    ) -> tuple[Any, bytes]:
        row, header = self._blob_key(caller, blob, key_ref, alg)
        self._authorize(caller, row, action, encryption_context=ec, grant_tokens=grant_tokens)
        self._require_enabled(row)
        if row.key_usage != "ENCRYPT_DECRYPT":
            raise kms_error(
                "InvalidKeyUsageException", f"{row.arn} key usage is {row.key_usage} which is not valid for Decrypt."
            )
        if header is not None:
            if row.key_spec != "SYMMETRIC_DEFAULT":
                raise _invalid_ciphertext()
            return row, self._open(row, header, blob, ec)
        if alg not in asym.encryption_algorithms(row.key_spec, row.key_usage):
            raise kms_error("InvalidKeyUsageException", f"Algorithm {alg} is incompatible with key spec {row.key_spec}.")
        with self.db.read() as conn:
            _mid, material = self._current_material(conn, row.key_id)
        try:
            return row, asym.rsa_decrypt(material, bytes(blob), alg)
        except ValueError:
            raise _invalid_ciphertext() from None

    def op_Decrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        ec = _context(p.get("EncryptionContext"))
        alg = p.get("EncryptionAlgorithm")
        if "Recipient" in p:
            raise kms_error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported by ebscrypt.")
        row, plaintext = self._decrypt_blob(
            caller, p.get("CiphertextBlob"), p.get("KeyId"), ec, alg, "kms:Decrypt", p.get("GrantTokens")
        )
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        out = {"KeyId": row.arn, "Plaintext": plaintext, "EncryptionAlgorithm": alg or "SYMMETRIC_DEFAULT"}
        material_id = _blob_material_id(p.get("CiphertextBlob"), row)
        if material_id:
            out["KeyMaterialId"] = material_id
        return out

    def op_ReEncrypt(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        src_ec = _context(p.get("SourceEncryptionContext"))
        dst_ec = _context(p.get("DestinationEncryptionContext"))
        src_alg = p.get("SourceEncryptionAlgorithm")
        dst_alg = p.get("DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        src, plaintext = self._decrypt_blob(
            caller, p.get("CiphertextBlob"), p.get("SourceKeyId"), src_ec, src_alg, "kms:ReEncryptFrom",
            p.get("GrantTokens"),
        )
        dst = self._resolve(caller, p["DestinationKeyId"])
        self._authorize(caller, dst, "kms:ReEncryptTo", encryption_context=dst_ec)
        self._require_enabled(dst)
        blob = self._encrypt(dst, plaintext, dst_ec, dst_alg)
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        return {
            "CiphertextBlob": blob,
            "SourceKeyId": src.arn,
            "KeyId": dst.arn,
            "SourceEncryptionAlgorithm": src_alg or "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": dst_alg,
            **_present(
                SourceKeyMaterialId=_blob_material_id(p.get("CiphertextBlob"), src),
                DestinationKeyMaterialId=_blob_material_id(blob, dst),
            ),
        }

    def _data_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, bytes]:
        row = self._resolve(caller, p["KeyId"])
        ec = _context(p.get("EncryptionContext"))
        self._authorize(caller, row, action, encryption_context=ec, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        self._require_symmetric(row, action.split(":")[1])
        spec, nbytes = p.get("KeySpec"), p.get("NumberOfBytes")
        if spec is None and nbytes is None:
            raise kms_error("ValidationException", "Please specify either number of bytes or key spec.")
        if spec is not None and nbytes is not None:
            raise kms_error("ValidationException", "Please specify either number of bytes or key spec, not both.")
        if spec is not None:
            if spec not in ("AES_256", "AES_128"):
                raise kms_error(
                    "ValidationException",
                    f"1 validation error detected: Value '{spec}' at 'keySpec' failed to satisfy constraint: "
                    "Member must satisfy enum value set: [AES_256, AES_128]",
                )
            nbytes = 32 if spec == "AES_256" else 16
        if not isinstance(nbytes, int) or not 1 <= nbytes <= 1024:
            raise kms_error(
                "ValidationException",
                f"1 validation error detected: Value '{nbytes}' at 'numberOfBytes' failed to satisfy "
                "constraint: Member must have value between 1 and 1024",
            )
        plaintext = os.urandom(nbytes)
        blob = self._seal(row, plaintext, ec)
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        return row, plaintext, blob

    def op_GenerateDataKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        if "Recipient" in p:
            raise kms_error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported by ebscrypt.")
        row, plaintext, blob = self._data_key(caller, p, "kms:GenerateDataKey")
        return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": row.arn,
                "KeyMaterialId": _blob_material_id(blob, row)}

    def op_GenerateDataKeyWithoutPlaintext(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, _plaintext, blob = self._data_key(caller, p, "kms:GenerateDataKeyWithoutPlaintext")
        return {"CiphertextBlob": blob, "KeyId": row.arn}

    def op_GenerateRandom(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        n = p.get("NumberOfBytes")
        if n is None or not isinstance(n, int) or not 1 <= n <= 1024:
            raise kms_error(
                "ValidationException",
                f"1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy "
                "constraint: Member must have value between 1 and 1024",
            )
        if p.get("CustomKeyStoreId"):
            raise kms_error("CustomKeyStoreNotFoundException", "Custom key stores are not supported by ebscrypt.")
        return {"Plaintext": os.urandom(n)}

    def op_GetPublicKey(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, "kms:GetPublicKey", grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        if row.public_key is None:
            raise kms_error(
                "UnsupportedOperationException",
                f"{row.arn} key spec is {row.key_spec}: GetPublicKey is supported only for asymmetric KMS keys.",
            )
        out: dict[str, Any] = {
            "KeyId": row.arn,
            "PublicKey": row.public_key,
            "CustomerMasterKeySpec": row.key_spec,
            "KeySpec": row.key_spec,
            "KeyUsage": row.key_usage,
        }
        out.update(_algorithms(row))
        return out

    def _signing_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, str, str]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, action, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        if row.key_usage != "SIGN_VERIFY":
            raise kms_error(
                "InvalidKeyUsageException",
                f"{row.arn} key usage is {row.key_usage} which is not valid for {action.split(':')[1]}.",
            )
        alg = p["SigningAlgorithm"]
        if alg not in asym.signing_algorithms(row.key_spec):
            raise kms_error(
                "InvalidKeyUsageException", f"Algorithm {alg} is incompatible with key spec {row.key_spec}."
            )
        msg_type = p.get("MessageType", "RAW")
        message = p.get("Message")
        if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= 4096:
            raise kms_error("ValidationException", "Message must be between 1 and 4096 bytes")
        if msg_type == "DIGEST" and len(message) != asym.digest_size(alg):
            raise kms_error(
                "ValidationException",
                f"Digest is invalid length for algorithm {alg}: expected {asym.digest_size(alg)} bytes.",
            )
        return row, bytes(message), alg, msg_type

    def op_Sign(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, p, "kms:Sign")
        with self.db.read() as conn:
            _mid, material = self._current_material(conn, row.key_id)
        sig = asym.sign(material, message, alg, digest=msg_type == "DIGEST")
        return {"KeyId": row.arn, "Signature": sig, "SigningAlgorithm": alg}

    def op_Verify(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg, msg_type = self._signing_key(caller, p, "kms:Verify")
        sig = p.get("Signature") or b""
        if not asym.verify(row.public_key, message, bytes(sig), alg, digest=msg_type == "DIGEST"):
            raise kms_error("KMSInvalidSignatureException", "The signature is not valid for this message.")
        return {"KeyId": row.arn, "SignatureValid": True, "SigningAlgorithm": alg}

    # ---- HMAC keys

    def _mac_key(self, caller: Caller, p: dict[str, Any], action: str) -> tuple[Any, bytes, str]:
        row = self._resolve(caller, p["KeyId"])
        self._authorize(caller, row, action, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        if row.key_usage != "GENERATE_VERIFY_MAC":
            raise kms_error(
                "InvalidKeyUsageException",
                f"{row.arn} key usage is {row.key_usage} which is not valid for {action.split(':')[1]}.",
            )
        alg = p["MacAlgorithm"]
        if alg not in asym.mac_algorithms(row.key_spec):
            raise kms_error("InvalidKeyUsageException", f"Algorithm {alg} is incompatible with key spec {row.key_spec}.")
        message = p.get("Message")
        if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= 4096:
            raise kms_error("ValidationException", "Message must be between 1 and 4096 bytes")
        return row, bytes(message), alg

    def op_GenerateMac(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, p, "kms:GenerateMac")
        with self.db.read() as conn:
            _mid, key = self._current_material(conn, row.key_id)
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        return {"Mac": asym.generate_mac(key, message, alg), "MacAlgorithm": alg, "KeyId": row.arn}

    def op_VerifyMac(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row, message, alg = self._mac_key(caller, p, "kms:VerifyMac")
        with self.db.read() as conn:
            _mid, key = self._current_material(conn, row.key_id)
        if not asym.verify_mac(key, message, bytes(p.get("Mac") or b""), alg):
            raise kms_error("KMSInvalidMacException", "The MAC is not valid for this message and key.")
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        return {"KeyId": row.arn, "MacValid": True, "MacAlgorithm": alg}

    # ---- data key pairs

    def _data_key_pair(self, caller: Caller, p: dict[str, Any], action: str) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"])
        ec = _context(p.get("EncryptionContext"))
        self._authorize(caller, row, action, encryption_context=ec, grant_tokens=p.get("GrantTokens"))
        self._require_enabled(row)
        self._require_symmetric(row, action.split(":")[1])
        spec = p["KeyPairSpec"]
        if spec not in asym.KEY_PAIR_SPECS:
            raise kms_error("UnsupportedOperationException", f"KeyPairSpec {spec} is not supported by ebscrypt.")
        private_der, public_der = asym.generate(spec)
        blob = self._seal(row, private_der, ec)
        if p.get("DryRun"):
            raise kms_error("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")
        out = {
            "PrivateKeyCiphertextBlob": blob,
            "PrivateKeyPlaintext": private_der,
            "PublicKey": public_der,
            "KeyId": row.arn,
            "KeyPairSpec": spec,
            "KeyMaterialId": _blob_material_id(blob, row),
        }
        return out

    def op_GenerateDataKeyPair(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        if "Recipient" in p:
            raise kms_error("UnsupportedOperationException", "Recipient (Nitro Enclaves) is not supported by ebscrypt.")
        return self._data_key_pair(caller, p, "kms:GenerateDataKeyPair")

    def op_GenerateDataKeyPairWithoutPlaintext(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        out = self._data_key_pair(caller, p, "kms:GenerateDataKeyPairWithoutPlaintext")
        del out["PrivateKeyPlaintext"]
        return out

    # ---- tags

    def op_TagResource(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], allow_alias=False, own_account=True)
        self._authorize(caller, row, "kms:TagResource")
        self._require_customer(row, caller, "kms:TagResource")
        self._require_not_pending(row)
        tags = _validate_tags(p.get("Tags") or [])
        with self.db.begin() as conn:
            existing = {
                r.tag_key for r in conn.execute(select(kms_tags.c.tag_key).where(kms_tags.c.key_id == row.key_id))
            }
            if len(existing | set(tags)) > 50:
                raise kms_error("LimitExceededException", "A KMS key can have at most 50 tags.")
            for k, v in tags.items():
                if k in existing:
                    conn.execute(
                        update(kms_tags)
                        .where(kms_tags.c.key_id == row.key_id, kms_tags.c.tag_key == k)
                        .values(tag_value=v)
                    )
                else:
                    conn.execute(insert(kms_tags).values(key_id=row.key_id, tag_key=k, tag_value=v))
        return {}

    def op_UntagResource(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], allow_alias=False, own_account=True)
        self._authorize(caller, row, "kms:UntagResource")
        self._require_customer(row, caller, "kms:UntagResource")
        self._require_not_pending(row)
        keys = p.get("TagKeys") or []
        with self.db.begin() as conn:
            for k in keys:
                conn.execute(delete(kms_tags).where(and_(kms_tags.c.key_id == row.key_id, kms_tags.c.tag_key == k)))
        return {}

    def op_ListResourceTags(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        row = self._resolve(caller, p["KeyId"], allow_alias=False, own_account=True)
        self._authorize(caller, row, "kms:ListResourceTags")
        with self.db.read() as conn:
            rows = conn.execute(
                select(kms_tags).where(kms_tags.c.key_id == row.key_id).order_by(kms_tags.c.tag_key)
            ).all()
        page, out = _page(rows, p, default=50, max_limit=50)
        out["Tags"] = [{"TagKey": r.tag_key, "TagValue": r.tag_value} for r in page]
        return out


# ------------------------------------------------------------------------ helpers


def _invalid_ciphertext() -> ServiceError:
    return kms_error(
        "InvalidCiphertextException",
        "The ciphertext is invalid, was tampered with, or its encryption context does not match.",
    )


def _alias_not_found(caller: Caller, name: str) -> ServiceError:
    return kms_error("NotFoundException", f"Alias arn:aws:kms:{caller.region}:{caller.account}:{name} is not found.")


def _grant_of(r: Any) -> grant_rules.Grant:
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


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        arn=row.arn,
        account=row.account,
        region=row.region,
        state=row.state,
        key_spec=row.key_spec,
        key_usage=row.key_usage,
        key_manager=row.key_manager,
        creation_date=_utc(row.creation_date),
        description=row.description,
    )


def _algorithms(row: Any) -> dict[str, Any]:
    if row.key_usage == "GENERATE_VERIFY_MAC":
        return {"MacAlgorithms": list(asym.mac_algorithms(row.key_spec))}
    if row.key_usage == "ENCRYPT_DECRYPT":
        return {"EncryptionAlgorithms": list(asym.encryption_algorithms(row.key_spec, row.key_usage))}
    return {"SigningAlgorithms": list(asym.signing_algorithms(row.key_spec))}


def _metadata(row: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "AWSAccountId": row.account,
        "KeyId": row.key_id,
        "Arn": row.arn,
        "CreationDate": _utc(row.creation_date),
        "Enabled": row.state == "Enabled",
        "Description": row.description,
        "KeyUsage": row.key_usage,
        "KeyState": row.state,
        "Origin": "AWS_KMS",
        "KeyManager": row.key_manager,
        "CustomerMasterKeySpec": row.key_spec,
        "KeySpec": row.key_spec,
        "MultiRegion": False,
    }
    if row.state == "PendingDeletion" and row.deletion_date is not None:
        md["DeletionDate"] = _utc(row.deletion_date)
    if row.key_spec == "SYMMETRIC_DEFAULT" and getattr(row, "current_material_id", None):
        md["CurrentKeyMaterialId"] = row.current_material_id
    md.update(_algorithms(row))
    return md


_GRANT_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_grant_id(grant_id: Any) -> None:
    if not isinstance(grant_id, str) or not _GRANT_ID_RE.match(grant_id):
        raise kms_error("InvalidGrantIdException", f"Invalid grant ID {grant_id!r}")


def _present(**members: Any) -> dict[str, Any]:
    """Only the members that have a value (absent members are omitted, never None)."""
    return {k: v for k, v in members.items() if v is not None}


def _blob_material_id(blob: Any, row: Any) -> str | None:
    """The backing material id a symmetric blob names (None for asymmetric keys)."""
    if row.key_spec != "SYMMETRIC_DEFAULT" or not isinstance(blob, (bytes, bytearray)):
        return None
    try:
        return blobfmt.parse_header(bytes(blob)).material_id
    except (blobfmt.BadCiphertext, ValueError):
        return None


def _context(ec: Any) -> dict[str, str] | None:
    if ec is None:
        return None
    if not isinstance(ec, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ec.items()):
        raise kms_error("ValidationException", "EncryptionContext must map strings to strings")
    return ec


def _plaintext(pt: Any) -> bytes:
    if not isinstance(pt, (bytes, bytearray)) or not 1 <= len(pt) <= MAX_PLAINTEXT:
        n = len(pt) if isinstance(pt, (bytes, bytearray)) else 0
        raise kms_error(
            "ValidationException",
            f"1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
            f"Member must have length between 1 and {MAX_PLAINTEXT} (got {n})",
        )
    return bytes(pt)


def _validate_tags(tags: Sequence[Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        k, v = t.get("TagKey"), t.get("TagValue")
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str) or len(v) > 256:
            raise kms_error("TagException", "Tag keys must be 1-128 characters and tag values 0-256 characters.")
        if k.startswith("aws:"):
            raise kms_error("TagException", "Tag keys beginning with aws: are reserved.")
        out[k] = v
    if len(out) > 50:
        raise kms_error("LimitExceededException", "A KMS key can have at most 50 tags.")
    return out


def _page(items: Sequence[Any], p: Mapping[str, Any], *, default: int, max_limit: int) -> tuple[list[Any], dict[str, Any]]:
    """One page of ``items`` per Limit/Marker; returns (page, {Truncated, NextMarker?})."""
    limit = p.get("Limit", default)
    if not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise kms_error(
            "ValidationException",
            f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: "
            f"Member must have value between 1 and {max_limit}",
        )
    start = 0
    marker = p.get("Marker")
    if marker:
        try:
            start = int(base64.urlsafe_b64decode(marker.encode()).decode().split(":", 1)[1])
            if start < 0:
                raise ValueError
        except (ValueError, IndexError, UnicodeDecodeError):
            raise kms_error("InvalidMarkerException", "Invalid marker") from None
    page = list(items[start : start + limit])
    out: dict[str, Any] = {"Truncated": start + limit < len(items)}
    if out["Truncated"]:
        out["NextMarker"] = base64.urlsafe_b64encode(f"ebscrypt:{start + limit}".encode()).decode()
    return page, out
