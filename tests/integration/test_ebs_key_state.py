"""Key state is enforced at once for every read of data through the EBS direct APIs
(issue 10 item 5; R-KEY-7, R-KEY-8, R-SHARE-4).

The EBS side keeps unwrapped data keys for a short while (a write session would otherwise
Decrypt per block); a key disabled, scheduled for deletion, re-policied or with a grant
revoked must stop every read at the next request — in every server process sharing the
metadata, not only the one that saw the change. Refusals are EBS's
``AccessDeniedException`` (403) with Reason ``DEPENDENCY_ACCESS_DENIED``: the dependency
(KMS) denied access, as AWS answers when the snapshot's key cannot be used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import ServerProcess
from tests.integration.test_ebs import BLOCK, _accounts, error_of, list_all, upload

DENIED = ("AccessDeniedException", "DEPENDENCY_ACCESS_DENIED", 403)


def _policy(*accounts: str) -> str:
    """A key policy: the first account administers the key, every other may use it for EBS."""
    owner, *users = accounts
    statements: list[dict[str, Any]] = [
        {"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{owner}:root"},
         "Action": "kms:*", "Resource": "*"},
    ]
    if users:
        statements.append(
            {"Sid": "users", "Effect": "Allow", "Principal": {"AWS": [f"arn:aws:iam::{u}:root" for u in users]},
             "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext",
                        "kms:ReEncryptFrom", "kms:ReEncryptTo"], "Resource": "*"}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class Reader:
    """GetSnapshotBlock of one block of one snapshot, as one account."""

    def __init__(self, ebs: Any, snapshot_id: str) -> None:
        self.ebs, self.sid = ebs, snapshot_id
        block = list_all(ebs, snapshot_id)[0]
        self.index, self.token = block["BlockIndex"], block["BlockToken"]

    def read(self) -> bytes:
        got = self.ebs.get_snapshot_block(SnapshotId=self.sid, BlockIndex=self.index, BlockToken=self.token)
        return got["BlockData"].read()

    def refusal(self) -> tuple[str, str | None, int]:
        return error_of(self.read)


@pytest.fixture
def owner(aws: Callable[..., Any]) -> dict[str, Any]:
    account = next(_accounts)
    return {"account": account, "ebs": aws("ebs", account=account), "kms": aws("kms", account=account),
            "ec2": aws("ec2", account=account)}


def _snapshot_under_cmk(owner: dict[str, Any], policy: str | None = None) -> tuple[str, str, bytes]:
    kms = owner["kms"]
    key = kms.create_key(**({"Policy": policy} if policy else {}))["KeyMetadata"]["Arn"]
    data = os.urandom(BLOCK)
    sid = upload(owner["ebs"], {5: data}, Encrypted=True, KmsKeyArn=key)
    return key, sid, data


def test_disable_key_refuses_reads_at_once_and_enable_restores_them(owner: dict[str, Any]) -> None:
    key, sid, data = _snapshot_under_cmk(owner)
    reader = Reader(owner["ebs"], sid)
    assert reader.read() == data  # the data key is now cached
    owner["kms"].disable_key(KeyId=key)
    assert reader.refusal() == DENIED
    assert reader.refusal() == DENIED  # and stays refused (nothing cached by a refusal)
    owner["kms"].enable_key(KeyId=key)
    assert reader.read() == data


def test_schedule_key_deletion_refuses_reads_at_once(owner: dict[str, Any]) -> None:
    key, sid, data = _snapshot_under_cmk(owner)
    reader = Reader(owner["ebs"], sid)
    assert reader.read() == data
    owner["kms"].schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert reader.refusal() == DENIED
    owner["kms"].cancel_key_deletion(KeyId=key)  # -> Disabled
    assert reader.refusal() == DENIED
    owner["kms"].enable_key(KeyId=key)
    assert reader.read() == data


def test_key_policy_no_longer_naming_a_sharing_account_refuses_it_at_once(
    owner: dict[str, Any], aws: Callable[..., Any]
) -> None:
    """R-SHARE-4: the recipient of a shared snapshot reads while the key policy names it;
    a PutKeyPolicy dropping it stops its next read (the owner still reads)."""
    other = next(_accounts)
    key, sid, data = _snapshot_under_cmk(owner, _policy(owner["account"], other))
    owner["ec2"].modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                           OperationType="add", UserIds=[other])
    theirs, mine = Reader(aws("ebs", account=other), sid), Reader(owner["ebs"], sid)
    assert mine.read() == data and theirs.read() == data  # both cached
    owner["kms"].put_key_policy(KeyId=key, PolicyName="default", Policy=_policy(owner["account"]))
    assert theirs.refusal() == DENIED
    assert mine.read() == data
    owner["kms"].put_key_policy(KeyId=key, PolicyName="default", Policy=_policy(owner["account"], other))
    assert theirs.read() == data


@pytest.mark.parametrize("how", ["revoke", "retire"])
def test_grant_revoked_or_retired_refuses_its_grantee_at_once(
    owner: dict[str, Any], aws: Callable[..., Any], how: str
) -> None:
    """A shared snapshot read through a grant (the key policy names only the owner): once
    the grant is revoked (by the owner) or retired (by its retiring principal), the next
    read is refused."""
    other = next(_accounts)
    key, sid, data = _snapshot_under_cmk(owner)
    owner["ec2"].modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                           OperationType="add", UserIds=[other])
    theirs = Reader(aws("ebs", account=other), sid)
    assert theirs.refusal() == DENIED  # neither policy nor grant lets it use the key yet
    grant = owner["kms"].create_grant(
        KeyId=key, GranteePrincipal=f"arn:aws:iam::{other}:root", RetiringPrincipal=f"arn:aws:iam::{owner['account']}:root",
        Operations=["Decrypt", "CreateGrant", "DescribeKey"],
    )
    assert theirs.read() == data
    if how == "revoke":
        owner["kms"].revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    else:
        owner["kms"].retire_grant(GrantToken=grant["GrantToken"])
    assert theirs.refusal() == DENIED


@pytest.fixture
def shared_metadata_args() -> list[str]:
    """``serve`` arguments that put two processes on one metadata store: none here (the
    SQLite file of their common data dir); tests/postgres overrides it with ``--db``."""
    return []


def test_a_change_made_in_one_server_process_refuses_reads_in_another_at_once(
    tmp_path: Path, shared_metadata_args: list[str]
) -> None:
    """Two ``ebscrypt serve`` processes on one data dir and one metadata store (SQLite file,
    or PostgreSQL under tests/postgres): the key is disabled through the first while the
    second holds the data key in its cache."""
    data_dir = tmp_path / "shared"
    first = ServerProcess(data_dir, shared_metadata_args).start()
    try:
        second = ServerProcess(data_dir, shared_metadata_args).start()
        try:
            account = next(_accounts)
            kms, ebs_1 = first.client("kms", account), first.client("ebs", account)
            key = kms.create_key()["KeyMetadata"]["Arn"]
            data = os.urandom(BLOCK)
            sid = upload(ebs_1, {9: data}, Encrypted=True, KmsKeyArn=key)
            reader = Reader(second.client("ebs", account), sid)
            assert reader.read() == data  # cached in the second process
            kms.disable_key(KeyId=key)  # through the first
            assert reader.refusal() == DENIED
            kms.enable_key(KeyId=key)
            assert reader.read() == data
            kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
            assert reader.refusal() == DENIED
        finally:
            second.stop()
    finally:
        first.stop()
