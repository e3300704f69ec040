"""The KMS fast path of issue 15 keeps every check (SPEC R-KEY-3: every key use is checked
against the key's state, key policy and grants, and recorded in the audit log):

* key rows reused from memory (engines/kms/key_rows.py) are never older than the last
  commit, whoever made it (this process or another on the same file);
* handlers run on the event loop (ebscrypt/blocking.py) give up before a step that can
  wait, leaving no audit record, and the same request run in a worker thread succeeds
  with exactly one record.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import update

from ebscrypt.app import _DEFER, _run_on_loop
from ebscrypt.blocking import WouldBlock, may_block, on_loop
from ebscrypt.clock import Clock
from ebscrypt.context import Caller, RequestContext, Runtime, Settings
from ebscrypt.engines.kms import KeyEngine, open_engine
from ebscrypt.engines.kms.audit import read_events
from ebscrypt.errors import KmsDisabled, KmsNotFound, ServiceError
from ebscrypt.services import registry
from ebscrypt.storage.db import Database
from ebscrypt.storage.tables.kms import kms_key_material, kms_keys
from tests.helpers import kms_op

A, REGION = "111111111111", "us-east-1"
CA = Caller(A, REGION)


def _engine(data_dir: Path) -> KeyEngine:
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime(settings=settings, db=Database(settings.database_url), clock=Clock(), jobs=None)  # type: ignore[arg-type]
    return open_engine(rt)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[KeyEngine]:
    eng = _engine(tmp_path / "data")
    yield eng
    eng.close()
    eng.db.dispose()


def _key(engine: KeyEngine) -> str:
    return str(kms_op(engine, "CreateKey", CA, {})["KeyMetadata"]["KeyId"])


def _encrypt(engine: KeyEngine, key_id: str) -> dict[str, Any]:
    return kms_op(engine, "Encrypt", CA, {"KeyId": key_id, "Plaintext": b"x"})


def test_a_key_disabled_through_the_api_is_refused_at_once(engine: KeyEngine) -> None:
    key_id = _key(engine)
    for _ in range(3):  # the row is in memory now
        _encrypt(engine, key_id)
    kms_op(engine, "DisableKey", CA, {"KeyId": key_id})
    with pytest.raises(KmsDisabled):
        _encrypt(engine, key_id)
    kms_op(engine, "EnableKey", CA, {"KeyId": key_id})
    _encrypt(engine, key_id)


def test_a_change_committed_by_another_connection_is_seen(engine: KeyEngine, tmp_path: Path) -> None:
    """Another process on the same SQLite file (here: another Database, its own pool)
    disables the key and then deletes it: the next use sees each change."""
    key_id = _key(engine)
    _encrypt(engine, key_id)
    other = Database(engine.runtime.settings.database_url)
    try:
        with other.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(state="Disabled"))
        with pytest.raises(KmsDisabled):
            _encrypt(engine, key_id)
        with other.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(state="Enabled"))
        _encrypt(engine, key_id)
        with other.begin() as conn:
            conn.execute(kms_keys.delete().where(kms_keys.c.key_id == key_id))
        with pytest.raises(KmsNotFound):
            _encrypt(engine, key_id)
    finally:
        other.dispose()


def _pooled_reads(engine: KeyEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key ids whose rows are read through the pool from now on."""
    seen: list[str] = []
    original = engine.key_rows.read

    def counting(conn: Any, key_id: str) -> Any:
        seen.append(key_id)
        return original(conn, key_id)

    monkeypatch.setattr(engine.key_rows, "read", counting)
    return seen


def test_a_commit_that_leaves_the_key_unchanged_keeps_its_row(
    engine: KeyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits of other rows (another key, an EC2 volume) move data_version but leave the
    key's stored columns as they were: its row is kept without a pooled read; a change of
    any of its columns, or of its current material, by another connection, is seen."""
    key_id, other_key = _key(engine), _key(engine)
    _encrypt(engine, key_id)
    reads = _pooled_reads(engine, monkeypatch)
    other = Database(engine.runtime.settings.database_url)
    try:
        with other.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == other_key).values(description="x"))
        _encrypt(engine, key_id)
        assert reads == []  # revalidated on the probe connection
        with other.begin() as conn:
            conn.execute(update(kms_keys).where(kms_keys.c.key_id == key_id).values(description="changed"))
        meta = kms_op(engine, "DescribeKey", CA, {"KeyId": key_id})["KeyMetadata"]
        assert meta["Description"] == "changed" and reads == [key_id]
        with other.begin() as conn:  # a new current material (as a rotation commits it)
            conn.execute(update(kms_key_material).where(kms_key_material.c.key_id == key_id)
                         .values(is_current=False))
        with pytest.raises(ServiceError):  # no current material: the row read again says so
            _encrypt(engine, key_id)
        assert reads == [key_id, key_id]
    finally:
        other.dispose()


def test_a_policy_change_is_evaluated_at_the_next_use(engine: KeyEngine) -> None:
    key_id = _key(engine)
    _encrypt(engine, key_id)
    deny = (
        '{"Version":"2012-10-17","Statement":['
        '{"Sid":"admin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"kms:*","Resource":"*"},'
        '{"Sid":"no","Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:Encrypt","Resource":"*"}]}' % A
    )
    kms_op(engine, "PutKeyPolicy", CA, {"KeyId": key_id, "PolicyName": "default", "Policy": deny})
    with pytest.raises(ServiceError) as exc:
        _encrypt(engine, key_id)
    assert exc.value.code == "AccessDeniedException"


def test_a_write_transaction_refuses_to_start_on_the_loop(engine: KeyEngine) -> None:
    may_block()  # in a thread: nothing
    with on_loop():
        with pytest.raises(WouldBlock):
            may_block()
        with pytest.raises(WouldBlock):
            with engine.db.begin():
                pass  # pragma: no cover - not reached


def _ctx(engine: KeyEngine) -> RequestContext:
    rt = engine.runtime
    rt.engines["space"] = engine.space
    return RequestContext(CA, rt, str(uuid.uuid4()), "kms", "Decrypt")


def test_an_uncached_key_goes_to_a_thread_with_one_audit_record(tmp_path: Path) -> None:
    """After a restart the key material is not in memory: its unwrap (a key store call)
    may wait, so the Decrypt run on the loop gives up before it, records nothing, and
    the same request run as every other request succeeds and is recorded once."""
    data = tmp_path / "data"
    first = _engine(data)
    key_id = _key(first)
    out = kms_op(first, "GenerateDataKey", CA, {"KeyId": key_id, "KeySpec": "AES_256"})
    first.close()
    first.db.dispose()

    engine = _engine(data)  # a new process: nothing unwrapped yet
    try:
        registry.load_all()
        handler = registry.handler_for("kms", "Decrypt")
        assert handler is not None and registry.is_inline(handler)
        ctx = _ctx(engine)
        params = {"CiphertextBlob": out["CiphertextBlob"]}
        before = len(list(read_events(data)))
        assert _run_on_loop(handler, ctx, params) is _DEFER
        assert len(list(read_events(data))) == before  # not run: not recorded
        result = handler(ctx, params)  # what the gateway does next, in a worker thread
        assert result["Plaintext"] == out["Plaintext"]
        events = [e for e in read_events(data) if e["requestID"] == ctx.request_id]
        assert [e["eventName"] for e in events] == ["Decrypt"]
        # now in memory: the next one completes on the loop, recorded once
        ctx2 = _ctx(engine)
        result = _run_on_loop(handler, ctx2, params)
        assert result is not _DEFER and result["Plaintext"] == out["Plaintext"]
        assert [e["eventName"] for e in read_events(data) if e["requestID"] == ctx2.request_id] == ["Decrypt"]
    finally:
        engine.close()
        engine.db.dispose()


def test_a_refusal_on_the_loop_is_recorded_once(engine: KeyEngine) -> None:
    key_id = _key(engine)
    _encrypt(engine, key_id)
    kms_op(engine, "DisableKey", CA, {"KeyId": key_id})
    registry.load_all()
    handler = registry.handler_for("kms", "Encrypt")
    assert handler is not None and registry.is_inline(handler)
    ctx = _ctx(engine)
    with pytest.raises(KmsDisabled):
        _run_on_loop(handler, ctx, {"KeyId": key_id, "Plaintext": b"x"})
    events = [e for e in read_events(engine.runtime.settings.data_dir) if e["requestID"] == ctx.request_id]
    assert [(e["eventName"], e["errorCode"]) for e in events] == [("Encrypt", "DisabledException")]


def test_only_calls_that_neither_write_nor_wait_are_inline() -> None:
    registry.load_all()
    inline = {op for op in registry.operations("kms") if registry.is_inline(registry.handler_for("kms", op))}  # type: ignore[arg-type]
    assert inline == {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
                      "GenerateRandom", "DescribeKey"}
