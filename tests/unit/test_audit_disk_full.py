"""The audit trail survives a full disk (issue 10, item 7): a record cut short by ENOSPC
is removed again, so the records before it and after it stay whole lines."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ebscrypt.engines.kms import audit as audit_mod
from ebscrypt.engines.kms.audit import AuditLog
from ebscrypt.storage.space import OutOfSpace, SpaceMonitor, is_out_of_space


def test_a_partly_written_record_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit" / "kms-audit.jsonl"
    log = AuditLog(path)
    log.append({"eventName": "CreateKey"})
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # the disk had room for half
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.os, "write", half_then_full)
    with pytest.raises(OSError) as err:
        log.append({"eventName": "Encrypt", "padding": "x" * 200})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(audit_mod.os, "write", real_write)
    log.append({"eventName": "Decrypt"})
    log.close()
    names = [json.loads(line)["eventName"] for line in path.read_text().splitlines()]
    assert names == ["CreateKey", "Decrypt"]


def test_out_of_space_is_recognised_through_wrappers() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    wrapped = OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    assert is_out_of_space(wrapped)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("while committing")
    except RuntimeError as exc:
        assert is_out_of_space(exc)
    assert not is_out_of_space(ValueError("nope"))


def test_monitor_refuses_below_the_reserve_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = SpaceMonitor(tmp_path, reserve_bytes=1 << 62)  # more than any disk has
    for _ in range(3):
        with pytest.raises(OutOfSpace) as err:
            monitor.require("a record")
        assert err.value.status == 503 and err.value.code == "ServiceUnavailable"
    assert sum("is full" in r.getMessage() for r in caplog.records) == 1
    monitor.reserve_bytes = 0
    monitor.note_success()
    monitor.note_success()
    assert sum("available again" in r.getMessage() for r in caplog.records) == 1
