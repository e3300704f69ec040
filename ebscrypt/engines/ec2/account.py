"""Account settings per account and region (R-ACC): encryption by default, default EBS key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from ebscrypt.context import RequestContext
from ebscrypt.storage.prepared import PreparedRead
from ebscrypt.storage.tables.ec2 import ec2_account_settings

AWS_EBS_ALIAS = "alias/aws/ebs"


@dataclass(frozen=True)
class AccountSettings:
    ebd: bool
    default_key: str | None  # a key ARN; None = the AWS managed alias/aws/ebs


def alias_arn(account: str, region: str, alias: str = AWS_EBS_ALIAS) -> str:
    return f"arn:aws:kms:{region}:{account}:{alias}"


# Built once (read by every create call: building it cost more than running it).
# Run on the driver where plain (storage/prepared.py).
_SETTINGS = PreparedRead(select(ec2_account_settings).where(
    ec2_account_settings.c.account == bindparam("account"), ec2_account_settings.c.region == bindparam("region")))


def get_settings(conn: Connection, account: str, region: str) -> AccountSettings:
    row = _SETTINGS.first(conn, {"account": account, "region": region})
    if row is None:
        return AccountSettings(ebd=False, default_key=None)
    return AccountSettings(ebd=bool(row["ebs_encryption_by_default"]), default_key=row["default_kms_key"])


def _upsert(conn: Connection, account: str, region: str, **values: Any) -> None:
    where = (ec2_account_settings.c.account == account, ec2_account_settings.c.region == region)
    if conn.execute(select(ec2_account_settings.c.account).where(*where)).first() is None:
        base = dict(account=account, region=region, ebs_encryption_by_default=False, default_kms_key=None)
        base.update(values)
        conn.execute(insert(ec2_account_settings).values(**base))
    else:
        conn.execute(update(ec2_account_settings).where(*where).values(**values))


def set_ebd(conn: Connection, account: str, region: str, enabled: bool) -> None:
    _upsert(conn, account, region, ebs_encryption_by_default=enabled)


def set_default_key(conn: Connection, account: str, region: str, key_arn: str | None) -> None:
    _upsert(conn, account, region, default_kms_key=key_arn)


# --------------------------------------------------------------------------- operations
# One transaction each, for services/ec2/account.py.


def settings_of(ctx: RequestContext) -> AccountSettings:
    """The caller's settings in its region."""
    with ctx.runtime.db.read() as conn:
        return get_settings(conn, ctx.caller.account, ctx.caller.region)


def shown_default_key(ctx: RequestContext) -> str:
    """GetEbsDefaultKmsKeyId's answer: the key set, or the AWS managed alias (not created)."""
    return settings_of(ctx).default_key or alias_arn(ctx.caller.account, ctx.caller.region)


def store_ebd(ctx: RequestContext, enabled: bool) -> None:
    with ctx.runtime.db.begin() as conn:
        set_ebd(conn, ctx.caller.account, ctx.caller.region, enabled)


def store_default_key(ctx: RequestContext, key_arn: str | None) -> str:
    """Set (a key ARN) or reset (None) the default key; the answer's KmsKeyId."""
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        set_default_key(conn, caller.account, caller.region, key_arn)
    return key_arn or alias_arn(caller.account, caller.region)
