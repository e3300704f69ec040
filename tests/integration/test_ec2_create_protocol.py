"""The one create protocol (engines/ec2/creation.py; issue 11 item 3, issue 15): a creation
whose work is metadata only is stored final in ONE durable transaction, with no job —

- CreateVolume of an empty volume (plain or encrypted): ``available``;
- CreateSnapshot of a volume (R-SNAP-1): ``completed``, its blocks a lineage reference;
- CopySnapshot with the same key in the same region (R-SNAP-2): ``completed``, the same
  data key (R-KEY-2), the source's blocks shared;
- CreateVolume from a snapshot under the same key: ``available``, the blocks shared;
- an encrypted CreateVolume whose key has no grant for EC2 yet: the grant (R-KEY-3) is
  written in the volume's transaction, not in one of its own (issue 15);
- KMS CreateKey and CreateGrant: one durable transaction each —

while a copy that must re-encrypt (another key) is stored ``pending`` with its job, which
then finishes it. Durable commits are counted by the SQLite group commit's WAL syncs
(``Database.group_sync.fsyncs``: one per acknowledged write transaction when alone), jobs
by the jobs table. In process (a runtime without job workers), so nothing else commits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import func, select

from tests.conftest import DEFAULT_ACCOUNT

REGION, ZONE = "us-east-1", "us-east-1a"
BLOCK = 524288


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    from ebscrypt.context import Settings
    from ebscrypt.runtime import build_runtime, close_runtime

    rt = build_runtime(Settings(data_dir=tmp_path / "data"), start_jobs=False)
    try:
        yield rt
    finally:
        close_runtime(rt)


def _ctx(runtime: Any) -> Any:
    from ebscrypt.engines.ec2.ids import job_ctx

    return job_ctx(runtime, DEFAULT_ACCOUNT, REGION, "Test")


def _jobs(runtime: Any) -> int:
    from ebscrypt.storage.schema import jobs

    with runtime.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar() or 0)


def _commits(runtime: Any, call: Callable[[], Any]) -> tuple[Any, int, int]:
    """(what ``call`` returned, durable commits it made, jobs it submitted)."""
    sync = runtime.db.group_sync
    assert sync is not None, "these counts need the SQLite group commit"
    before, jobs_before = sync.fsyncs, _jobs(runtime)
    out = call()
    return out, sync.fsyncs - before, _jobs(runtime) - jobs_before


def _state(runtime: Any, resource_id: str) -> tuple[str, str | None]:
    from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volumes

    table = ec2_volumes if resource_id.startswith("vol-") else ec2_snapshots
    with runtime.db.read() as conn:
        row = conn.execute(select(table.c.state, table.c.state_message).where(table.c.id == resource_id)).first()
    assert row is not None
    return row.state, row.state_message


def _key(runtime: Any, ctx: Any) -> str:
    from ebscrypt.engines.kms import api

    made = runtime.kms.create_key(ctx.caller, api.from_members(api.CreateKey, {}))
    return str(made["KeyMetadata"]["Arn"])


def test_metadata_only_creations_are_one_durable_transaction_and_no_job(runtime: Any) -> None:
    from ebscrypt.engines.ec2 import snapshots, volumes

    ctx = _ctx(runtime)
    # An empty volume, plain then encrypted (the KMS work happens before the transaction).
    vol, commits, jobs = _commits(runtime, lambda: volumes.create_volume(ctx, availability_zone=ZONE, size=1))
    assert (commits, jobs) == (1, 0)
    assert vol.state == "creating" and _state(runtime, vol.id) == ("available", None)  # R-LIFE-1
    volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True)  # the key's grant exists now
    enc, commits, jobs = _commits(runtime, lambda: volumes.create_volume(ctx, availability_zone=ZONE, size=1,
                                                                         encrypted=True))
    assert (commits, jobs) == (1, 0)  # the grant for EC2 exists: reused, nothing more written
    assert _state(runtime, enc.id) == ("available", None)

    # CreateSnapshot of the (empty) encrypted volume: a lineage reference, no data moved.
    snap, commits, jobs = _commits(runtime, lambda: snapshots.create_snapshot(ctx, enc.id, "s", []))
    assert (commits, jobs) == (1, 0)
    assert snap.state == "pending" and _state(runtime, snap.id) == ("completed", None)

    # CopySnapshot, same key: one commit, no job, the same data key (R-KEY-2).
    snapshots.copy_snapshot(ctx, snap.id, REGION)  # the first use may add the service grant
    copy, commits, jobs = _commits(runtime, lambda: snapshots.copy_snapshot(ctx, snap.id, REGION))
    assert (commits, jobs) == (1, 0)
    assert _state(runtime, copy.id) == ("completed", None)
    from ebscrypt.engines.ec2.snapshot_access import snapshot_row

    with runtime.db.read() as conn:
        src_row, copy_row = snapshot_row(conn, snap.id), snapshot_row(conn, copy.id)
    assert src_row is not None and copy_row is not None
    assert copy_row.data_key_id == src_row.data_key_id  # shared blocks, R-SNAP-2
    assert runtime.blocks.list_block_refs(copy.id) == runtime.blocks.list_block_refs(snap.id)

    # CreateVolume from it (same key): one commit, no job, available.
    restored, commits, jobs = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, snapshot_id=copy.id))
    assert (commits, jobs) == (1, 0)
    assert _state(runtime, restored.id) == ("available", None)


def test_a_copy_that_must_re_encrypt_is_stored_pending_with_its_job(runtime: Any) -> None:
    from ebscrypt.engines.ec2 import snapshots, volumes

    ctx = _ctx(runtime)
    vol = volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True)
    snap = snapshots.create_snapshot(ctx, vol.id, None, [])
    other = _key(runtime, ctx)
    copy, _commits_made, jobs = _commits(runtime, lambda: snapshots.copy_snapshot(
        ctx, snap.id, REGION, encrypted=True, kms_key_id=other, wait_seconds=0))
    assert jobs == 1 and _state(runtime, copy.id) == ("pending", None)
    runtime.jobs.run_pending()
    assert _state(runtime, copy.id) == ("completed", None)


def test_a_copy_whose_source_was_deleted_first_is_stored_in_error(runtime: Any, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """The source is re-read, locked, in the creating transaction: a DeleteSnapshot that
    committed after the copy was prepared leaves the copy ``error`` naming the cause."""
    from ebscrypt.engines.ec2 import snapshots, volumes

    ctx = _ctx(runtime)
    vol = volumes.create_volume(ctx, availability_zone=ZONE, size=1)
    snap = snapshots.create_snapshot(ctx, vol.id, None, [])
    prepare = snapshots.prepare_copy

    def prepared_then_deleted(*args: Any, **kwargs: Any) -> Any:
        plan = prepare(*args, **kwargs)
        snapshots.delete_snapshot(ctx, snap.id)
        return plan

    monkeypatch.setattr(snapshots, "prepare_copy", prepared_then_deleted)
    copy, commits, jobs = _commits(runtime, lambda: snapshots.copy_snapshot(ctx, snap.id, REGION))
    assert jobs == 0
    assert _state(runtime, copy.id) == ("error", f"The source snapshot {snap.id} no longer exists.")


def test_the_first_encrypted_volume_of_a_key_stores_its_grant_in_the_volume_transaction(runtime: Any) -> None:
    """R-KEY-3: the grant for EC2 is made (authorized, audited) while the volume is
    prepared, and written with the volume: one durable commit for both."""
    from ebscrypt.engines.ec2 import volumes
    from ebscrypt.engines.kms import api

    ctx = _ctx(runtime)
    key = _key(runtime, ctx)

    def grants() -> list[dict[str, Any]]:
        listed = runtime.kms.list_grants(ctx.caller, api.from_members(api.ListGrants, {"KeyId": key}))
        return list(listed["Grants"])

    assert grants() == []
    vol, commits, jobs = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key))
    assert (commits, jobs) == (1, 0)
    assert _state(runtime, vol.id) == ("available", None)
    made = grants()
    assert [(g["GranteePrincipal"], g["Operations"]) for g in made] == [("ec2.us-east-1.amazonaws.com", ["Decrypt"])]
    # The next volume under the key reuses that grant: still one commit, no second grant.
    again, commits, jobs = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key))
    assert (commits, jobs) == (1, 0) and _state(runtime, again.id) == ("available", None)
    assert grants() == made


def test_a_volume_that_fails_to_store_leaves_no_grant(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deferred grant is written in the volume's transaction: when that transaction
    fails, neither exists (and the next attempt makes the grant with its volume)."""
    from ebscrypt.engines.ec2 import volumes
    from ebscrypt.engines.kms import api

    ctx = _ctx(runtime)
    key = _key(runtime, ctx)
    real = volumes.insert_volume

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(volumes, "insert_volume", failing)
    with pytest.raises(RuntimeError):
        volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key)
    listed = runtime.kms.list_grants(ctx.caller, api.from_members(api.ListGrants, {"KeyId": key}))
    assert listed["Grants"] == []
    monkeypatch.setattr(volumes, "insert_volume", real)
    vol = volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key)
    assert _state(runtime, vol.id) == ("available", None)
    listed = runtime.kms.list_grants(ctx.caller, api.from_members(api.ListGrants, {"KeyId": key}))
    assert len(listed["Grants"]) == 1


def test_kms_create_key_and_create_grant_are_one_durable_transaction_each(runtime: Any) -> None:
    from ebscrypt.engines.kms import api

    ctx = _ctx(runtime)
    _key(runtime, ctx)  # the first key of the account may set up more than the key itself
    made, commits, _ = _commits(runtime, lambda: runtime.kms.create_key(ctx.caller, api.from_members(
        api.CreateKey, {"Description": "one transaction"})))
    assert commits == 1
    key = made["KeyMetadata"]["KeyId"]
    grant = api.from_members(api.CreateGrant, {
        "KeyId": key, "GranteePrincipal": "arn:aws:iam::123456789012:role/r", "Operations": ["Decrypt"]})
    _, commits, _ = _commits(runtime, lambda: runtime.kms.create_grant(ctx.caller, grant))
    assert commits == 1


def test_concurrent_creations_share_wal_syncs(runtime: Any) -> None:
    """Group commit (storage/db.py WalGroupSync): 16 threads creating volumes at once are
    each acknowledged only after a sync that covers their commit, and share those syncs —
    fewer syncs than creations; every volume is stored final."""
    import threading

    from ebscrypt.engines.ec2 import volumes

    ctx = _ctx(runtime)
    volumes.create_volume(ctx, availability_zone=ZONE, size=1)  # warm (pool, statements)
    made: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def writer() -> None:
        try:
            start.wait()
            for _ in range(8):
                made.append(volumes.create_volume(ctx, availability_zone=ZONE, size=1).id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def all_of_them() -> None:
        threads = [threading.Thread(target=writer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _, syncs, jobs = _commits(runtime, all_of_them)
    assert not errors and len(made) == 128 and jobs == 0
    assert 1 <= syncs < 128, syncs
    assert {_state(runtime, v)[0] for v in made} == {"available"}


def test_a_revoked_service_grant_is_not_reused(runtime: Any) -> None:
    """The KMS engine remembers the EC2 grant it found (no read per create) only while the
    key's authorization generation is unchanged: RevokeGrant bumps it, so the next
    encrypted volume makes (and stores with itself) a new grant rather than naming the
    revoked one (R-KEY-3)."""
    from ebscrypt.engines.ec2 import volumes
    from ebscrypt.engines.kms import api

    ctx = _ctx(runtime)
    key = _key(runtime, ctx)

    def grant_ids() -> list[str]:
        listed = runtime.kms.list_grants(ctx.caller, api.from_members(api.ListGrants, {"KeyId": key}))
        return [g["GrantId"] for g in listed["Grants"]]

    for _ in range(2):
        volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key)
    [first] = grant_ids()
    runtime.kms.revoke_grant(ctx.caller, api.from_members(api.RevokeGrant, {"KeyId": key, "GrantId": first}))
    vol, commits, _ = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, size=1, encrypted=True, kms_key_id=key))
    assert commits == 1 and _state(runtime, vol.id) == ("available", None)
    [second] = grant_ids()
    assert second != first


def test_a_plain_volume_is_one_transaction_and_encryption_by_default_still_applies(runtime: Any) -> None:
    """An empty volume that needs no KMS reads the settings and its ClientToken in the
    transaction that stores it; encryption by default (R-OUT-5, R-OUT-7) sends the request
    to the KMS path — nothing written by the attempt — and turning it off again brings
    plain volumes back."""
    from ebscrypt.engines.ec2 import account, volumes

    ctx = _ctx(runtime)
    vol, commits, jobs = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, size=1, client_token="tok-1"))
    assert (commits, jobs) == (1, 0) and not vol.encrypted and _state(runtime, vol.id) == ("available", None)
    again, commits, _ = _commits(runtime, lambda: volumes.create_volume(
        ctx, availability_zone=ZONE, size=1, client_token="tok-1"))
    assert again.id == vol.id and commits == 0  # a replay writes nothing

    account.store_ebd(ctx, True)
    volumes.create_volume(ctx, availability_zone=ZONE, size=1)  # the EBS key and its grant exist now
    for asked in (None, False):  # R-OUT-5; R-OUT-7: Encrypted=false cannot switch it off
        enc, commits, jobs = _commits(runtime, lambda: volumes.create_volume(
            ctx, availability_zone=ZONE, size=1, encrypted=asked))
        assert enc.encrypted and (commits, jobs) == (1, 0)
        assert _state(runtime, enc.id) == ("available", None)

    account.store_ebd(ctx, False)
    for _ in range(2):  # the first notices the change, the next takes the one-transaction path again
        plain, commits, _ = _commits(runtime, lambda: volumes.create_volume(ctx, availability_zone=ZONE, size=1))
        assert not plain.encrypted and commits == 1


def test_a_same_key_copys_kms_uses_are_audited_in_one_write_before_it_is_stored(
        runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CopySnapshot's two KMS steps (the plan's key check, the source key's grant and
    Decrypt) run in one key-row scope: their records are appended in ONE write, every use
    still recorded, and the write comes before the copy's commit (audited before used)."""
    import os

    from ebscrypt.engines.ec2 import snapshots, volumes
    from ebscrypt.engines.kms import audit as audit_mod
    from ebscrypt.engines.kms.audit import read_events

    ctx = _ctx(runtime)
    vol = volumes.create_volume(ctx, availability_zone=ZONE, size=1, encrypted=True)
    snap = snapshots.create_snapshot(ctx, vol.id, None, [])
    snapshots.copy_snapshot(ctx, snap.id, REGION)  # the first use may add the service grant
    order: list[str] = []
    real_write, real_fsync = os.write, runtime.db.group_sync._fsync

    def write(fd: int, data: Any) -> int:
        order.append("audit")
        return real_write(fd, data)

    def fsync() -> None:
        order.append("commit")
        real_fsync()

    monkeypatch.setattr(audit_mod.os, "write", write)
    monkeypatch.setattr(runtime.db.group_sync, "_fsync", fsync)
    seen = len(list(read_events(runtime.settings.data_dir)))
    copy = snapshots.copy_snapshot(ctx, snap.id, REGION)
    assert order == ["audit", "commit"]
    events = list(read_events(runtime.settings.data_dir))[seen:]
    names = [e["eventName"] for e in events]
    assert "Decrypt" in names and "CreateGrant" in names  # the source key checked for the caller
    assert json.dumps(events).count("errorCode") == 0
    assert _state(runtime, copy.id) == ("completed", None)
