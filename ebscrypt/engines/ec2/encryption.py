"""Which key encrypts a new resource (SPEC §2 via domain/outcome.py), key checks, data keys.

Key checks (R-KEY-5, R-KEY-6, R-KEY-7): the chosen key is described *as the caller*, so a
key the caller may not use (key policy) is as unusable as one that does not exist. A key
problem never raises here: it is returned in ``EncryptionPlan.problem`` and the resource
built from the plan ends in its error state with that message.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.domain.outcome import Source, decide, reuses_data_key
from ebscrypt.engines.blocks.engine import DataKey
from ebscrypt.engines.ec2.account import AWS_EBS_ALIAS, alias_arn, get_settings
from ebscrypt.engines.ec2.ids import via_ec2
from ebscrypt.engines.ec2.records import Snapshot, Volume
from ebscrypt.errors import IncorrectState, ServiceError

GRANT_OPERATIONS = ["Decrypt"]


@dataclass(frozen=True)
class EncryptionPlan:
    encrypted: bool
    key_arn: str | None
    reuse_source_data_key: bool
    rule: str
    problem: str | None = None  # R-KEY-6: the resource must end in error with this message
    key_manager: str | None = None  # "AWS" for alias/aws/ebs, "CUSTOMER" otherwise
    # What the rule saw, recorded with the resource (engines/ec2/provenance.py): the
    # request's Encrypted/KmsKeyId, encryption by default and the default key then.
    requested_encrypted: bool | None = None
    requested_kms_key_id: str | None = None
    ebd: bool | None = None
    default_key: str | None = None

    def failed(self, problem: str) -> "EncryptionPlan":
        """This plan, doomed by a key problem (R-KEY-6): no data key is reused."""
        return replace(self, reuse_source_data_key=False, problem=problem)


@dataclass(frozen=True)
class WrappedDataKey:
    key_arn: str
    data_key_id: str
    blob: bytes
    context: dict[str, str]

    @property
    def context_json(self) -> str:
        return json.dumps(self.context, sort_keys=True)


def source_of(snapshot: Snapshot | None, account: str) -> Source | None:
    if snapshot is None:
        return None
    return Source(encrypted=bool(snapshot.encrypted), key=snapshot.kms_key_arn, owned=snapshot.account == account)


def _is_aws_ebs_alias(key: str, account: str, region: str) -> bool:
    return key == AWS_EBS_ALIAS or key == alias_arn(account, region)


def key_problem(info: Any, region: str) -> str | None:
    """Why a described key cannot encrypt EBS resources in ``region`` (None: it can)."""
    if info.state == "Disabled":
        return f"Client.InvalidKMSKey.InvalidState: The KMS key {info.arn} is disabled."
    if info.state == "PendingDeletion":
        return f"Client.InvalidKMSKey.InvalidState: The KMS key {info.arn} is pending deletion."
    if info.state not in ("Enabled",):
        return f"Client.InvalidKMSKey.InvalidState: The KMS key {info.arn} is in state {info.state}."
    if info.key_spec != "SYMMETRIC_DEFAULT" or info.key_usage != "ENCRYPT_DECRYPT":  # R-KEY-5
        return (f"Client.InvalidKMSKey.InvalidState: The KMS key {info.arn} is asymmetric "
                f"({info.key_spec}); EBS supports only symmetric encryption keys.")
    if info.region != region:
        return f"Client.InvalidKMSKey.InvalidState: The KMS key {info.arn} is not in region {region}."
    return None


def describe_for_ebs(ctx: RequestContext, key: str) -> tuple[str, str | None, str | None]:
    """(key ARN, problem, key manager) of ``key`` as the caller sees it. [KMS, no conn]"""
    caller = ctx.caller
    kms = ctx.runtime.kms
    try:
        if _is_aws_ebs_alias(key, caller.account, caller.region):
            info = kms.default_ebs_key(caller.account, caller.region)
        else:
            info = kms.describe_key(caller, key)
    except ServiceError as err:
        if err.status >= 500:  # our fault (e.g. the data dir is full), not the key's: retryable
            raise
        # The key as the request named it (an id, alias or ARN): it could not be resolved.
        return key, (f"Client.InvalidKMSKey.NotFound: The KMS key {key} does not exist or is "
                     f"not accessible ({err.code}: {err.message})"), None
    return info.arn, key_problem(info, caller.region), info.key_manager


def resolve_encryption(
    ctx: RequestContext,
    source: Snapshot | None,
    encrypted: bool | None,
    kms_key_id: str | None,
    *,
    cross_region: bool = False,
    settings: Any = None,
) -> EncryptionPlan:
    """Apply the outcome rule for ``ctx.caller`` in its region and check the chosen key.

    [KMS, no conn]. Raises InvalidParameterDependency (R-OUT-1) only. ``settings``: the
    caller's AccountSettings when already read (saves a transaction).
    """
    caller = ctx.caller
    if settings is None:
        with ctx.runtime.db.read() as conn:
            settings = get_settings(conn, caller.account, caller.region)
    src = source_of(source, caller.account)
    default = settings.default_key or AWS_EBS_ALIAS
    outcome = decide(src, encrypted=encrypted, kms_key_id=kms_key_id or None, ebd=settings.ebd,
                     default_key=default, cross_region=cross_region)
    seen = EncryptionPlan(False, None, False, outcome.rule, requested_encrypted=encrypted,
                          requested_kms_key_id=kms_key_id or None, ebd=bool(settings.ebd), default_key=default)
    if not outcome.encrypted or outcome.key is None:
        return seen
    key_arn, problem, manager = describe_for_ebs(ctx, outcome.key)
    reuse = problem is None and reuses_data_key(src, key_arn, cross_region=cross_region)
    return replace(seen, encrypted=True, key_arn=key_arn, reuse_source_data_key=reuse, problem=problem,
                   key_manager=manager)


def new_data_key(ctx: RequestContext, key_arn: str, resource_id: str) -> WrappedDataKey:
    """R-KEY-1: GenerateDataKeyWithoutPlaintext on the caller's behalf, via EC2. [KMS, no conn]"""
    context = {"aws:ebs:id": resource_id}
    arn, blob = ctx.runtime.kms.generate_data_key_without_plaintext(
        ctx.caller, key_arn, encryption_context=context, via_service=via_ec2(ctx.caller.region)
    )
    return WrappedDataKey(arn, uuid.uuid4().hex, blob, context)


def prepare_data_key(ctx: RequestContext, plan: EncryptionPlan, source: Snapshot | None, resource_id: str,
                     *, prove: bool = False, refusal_fails_plan: bool = True
                     ) -> tuple[EncryptionPlan, WrappedDataKey | None]:
    """The data key of a new volume or snapshot (None when it is unencrypted or the plan has
    already failed): the source snapshot's own when the plan reuses it (R-KEY-2), else a new
    one under the plan's key (R-KEY-1). The one data-key step of every create path
    (CreateVolume, CopySnapshot, RunInstances, EBS StartSnapshot). [KMS, no conn]

    ``prove``: a new key is also unwrapped once, so an empty volume (ready as soon as it is
    inserted) never exists under a key KMS would not decrypt with. A key KMS refuses fails
    the plan (R-KEY-6: the resource ends in error) rather than the request — unless
    ``refusal_fails_plan`` is False (StartSnapshot: the refusal is the request's error)."""
    if not plan.encrypted or plan.problem is not None:
        return plan, None
    if plan.reuse_source_data_key and source is not None:
        return plan, WrappedDataKey(source.kms_key_arn or "", source.data_key_id or "",
                                    source.data_key_blob or b"", source.encryption_context)
    try:
        data_key = new_data_key(ctx, plan.key_arn or "", resource_id)
        if prove:
            unwrap(ctx, data_key.key_arn, data_key.blob, data_key.context, data_key.data_key_id,
                   region=ctx.caller.region)
        return plan, data_key
    except ServiceError as err:
        if err.status >= 500 or not refusal_fails_plan:  # 5xx: our fault (e.g. the data dir is full), retryable
            raise
        return plan.failed(f"Client.InvalidKMSKey.InvalidState: The KMS key {plan.key_arn} cannot be "
                           f"used ({err.code}: {err.message})"), None


def unwrap(ctx: RequestContext, key_arn: str, blob: bytes, context: dict[str, str], data_key_id: str,
           *, region: str, grant: bool = True) -> Any:
    """R-KEY-3: grant for EC2, then Decrypt the wrapped data key. Returns a blocks DataKey."""
    kms = ctx.runtime.kms
    via = via_ec2(region)
    # The key lives in the resource's region: a cross-region copy reads its source there.
    caller = ctx.caller if ctx.caller.region == region else replace(ctx.caller, region=region)
    with kms.key_row_scope():  # both uses checked against one read of the key row
        if grant:
            kms.create_grant_for_service(caller, key_arn, via_service=via, operations=GRANT_OPERATIONS)
        _arn, plaintext = kms.decrypt(caller, blob, encryption_context=context, via_service=via, key_id=key_arn)
    return DataKey(data_key_id, plaintext)


def source_key_refusal(ctx: RequestContext, source: Snapshot) -> str | None:
    """Before a metadata-only creation from ``source`` (a volume or a same-key copy) is
    stored: the source key checked for the caller as the creation job would (R-KEY-3,
    R-SHARE-4: grant + Decrypt, audited). The refusal's message if the caller may not use
    it (the resource is then stored ``error`` with the cause, R-KEY-6), else None; a fault
    of ours (5xx) is raised: nothing stored, retryable. [KMS, no conn]"""
    if not source.encrypted:
        return None
    try:
        data_key_for(ctx, source)
    except ServiceError as err:
        if err.status >= 500:
            raise
        return err.message
    return None


def data_key_for(ctx: RequestContext, resource: Volume | Snapshot, *, grant: bool = True) -> Any:
    """The plaintext data key of ``resource`` for a data operation (None if unencrypted)."""
    if not resource.encrypted:
        return None
    if resource.data_key_blob is None or resource.kms_key_arn is None or resource.data_key_id is None:
        raise IncorrectState(f"The data key of {resource.id} is not available (state {resource.state}).")
    return unwrap(ctx, resource.kms_key_arn, resource.data_key_blob, resource.encryption_context,
                  resource.data_key_id, region=resource.region, grant=grant)
