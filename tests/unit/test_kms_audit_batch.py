"""The records of one request's KMS uses on a caller's behalf, appended together
(engines/kms/audit.py ``AuditTrail.batch``, entered by ``KeyEngine.key_row_scope``):
every record is still written, in order, before the scope ends — whether its block ends
normally or raises — in one ``write(2)``; a batch that cannot be written is the same
fail-closed 503; nested scopes write once, at the outermost end."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from ebscrypt.clock import Clock
from ebscrypt.context import Caller
from ebscrypt.engines.kms import KeyEngine
from ebscrypt.engines.kms import audit as audit_mod
from ebscrypt.engines.kms.audit import AuditLog, AuditTrail, read_events
from ebscrypt.errors import KmsNotFound
from ebscrypt.storage.space import OutOfSpace, SpaceMonitor
from tests.unit.test_kms_engine import CA, VIA, cmk, make_engine

CALLER = Caller("111111111111", "us-east-1")


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    t = AuditTrail(AuditLog(tmp_path / "audit" / "kms-audit.jsonl"), SpaceMonitor(tmp_path), Clock())
    yield t
    t.close()


def _names(tmp_path: Path) -> list[str]:
    return [e["eventName"] for e in read_events(tmp_path)]


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = os.write

    def counting(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(audit_mod.os, "write", counting)
    return sizes


def test_records_are_appended_together_when_the_batch_ends(
    trail: AuditTrail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _writes(monkeypatch)
    with trail.batch():
        for name in ("DescribeKey", "GenerateDataKeyWithoutPlaintext", "CreateGrant", "Decrypt"):
            with trail.audited(CALLER, name, {"KeyId": "k"}):
                pass
        with trail.batch():  # nested: the outer one writes
            with trail.audited(CALLER, "Encrypt", {}):
                pass
        assert _names(tmp_path) == [] and writes == []
    assert _names(tmp_path) == ["DescribeKey", "GenerateDataKeyWithoutPlaintext", "CreateGrant", "Decrypt", "Encrypt"]
    assert len(writes) == 1
    with trail.audited(CALLER, "Decrypt", {}):  # outside a batch: at once, as before
        pass
    assert len(writes) == 2 and _names(tmp_path)[-1] == "Decrypt"


def test_a_block_that_raises_still_writes_its_records(trail: AuditTrail, tmp_path: Path) -> None:
    with pytest.raises(KmsNotFound):
        with trail.batch():
            with trail.audited(CALLER, "DescribeKey", {}):
                pass
            with trail.audited(CALLER, "Decrypt", {}):
                raise KmsNotFound("gone")
    events = list(read_events(tmp_path))
    assert [(e["eventName"], e.get("errorCode")) for e in events] == [
        ("DescribeKey", None), ("Decrypt", "NotFoundException")]


def test_a_batch_that_cannot_be_written_fails_closed(
    trail: AuditTrail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trail.audited(CALLER, "CreateKey", {}):
        pass
    real = os.write

    def half_then_full(fd: int, data: Any) -> int:
        monkeypatch.setattr(audit_mod.os, "write", full)
        return real(fd, bytes(data[: len(data) // 2]))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.os, "write", half_then_full)
    with pytest.raises(OutOfSpace):
        with trail.batch():
            with trail.audited(CALLER, "GenerateDataKeyWithoutPlaintext", {}):
                pass
            with trail.audited(CALLER, "Decrypt", {}):
                pass
    monkeypatch.setattr(audit_mod.os, "write", real)
    assert _names(tmp_path) == ["CreateKey"]  # the half-written batch was cut off again


def test_a_full_disk_refuses_the_batch_before_its_uses(tmp_path: Path) -> None:
    full = AuditTrail(AuditLog(tmp_path / "a.jsonl"), SpaceMonitor(tmp_path, reserve_bytes=1 << 62), Clock())
    ran = []
    with pytest.raises(OutOfSpace):
        with full.batch():
            ran.append(1)  # pragma: no cover - not reached
    assert ran == []


def test_via_service_uses_in_a_key_row_scope_are_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine: KeyEngine = make_engine(tmp_path)
    try:
        key = cmk(engine, CA)["Arn"]
        writes = _writes(monkeypatch)
        with engine.key_row_scope():
            engine.describe_key(CA, key, via_service=VIA)
            arn, blob = engine.generate_data_key_without_plaintext(CA, key, encryption_context={"a": "b"},
                                                                   via_service=VIA)
            engine.create_grant_for_service(CA, key, via_service=VIA, operations=["Decrypt"])
            engine.decrypt(CA, blob, encryption_context={"a": "b"}, via_service=VIA, key_id=arn)
        assert len(writes) == 1
        events = list(read_events(engine.runtime.settings.data_dir))[-4:]
        assert [e["eventName"] for e in events] == ["DescribeKey", "GenerateDataKeyWithoutPlaintext", "CreateGrant",
                                                    "Decrypt"]
        assert all(e["userIdentity"]["invokedBy"] == "ec2.amazonaws.com" for e in events)
        assert json.dumps(events).count("errorCode") == 0
    finally:
        engine.close()
        engine.db.dispose()
