"""SQLite group commit (storage/db.py WalGroupSync, issue 15): every write transaction is
durable (its WAL fsync'd) before ``Database.begin()`` returns, and concurrent writers
share fsyncs. Durability of acknowledged writes is R-DATA-1's premise."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from ebscrypt.storage import db as db_module
from ebscrypt.storage.db import Database
from ebscrypt.storage.schema import jobs


def _job(i: int) -> dict:
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return dict(id=f"j{i}", kind="k", payload="{}", state="done", progress=0.0, attempts=0, created_at=now,
                updated_at=now)


def test_commits_run_normal_and_each_begin_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert db.group_sync is not None
        with db.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        synced: list[int] = []
        real = os.fdatasync  # the WAL's sync (its frames and size; not its timestamps)
        monkeypatch.setattr(db_module.os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
        with db.begin() as conn:
            conn.execute(insert(jobs).values(**_job(0)))
            assert synced == []  # not inside the transaction (the write lock is held)...
        assert len(synced) == 1  # ...but before begin() returned
        os.fstat(synced[0])  # the WAL's descriptor, still open
        assert os.path.samefile(f"/proc/self/fd/{synced[0]}", tmp_path / "m.db-wal")
    finally:
        db.dispose()


def test_a_failed_fsync_fails_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(db_module.os, "fdatasync", broken)
        with pytest.raises(OSError):
            with db.begin() as conn:
                conn.execute(insert(jobs).values(**_job(1)))
    finally:
        monkeypatch.undo()
        db.dispose()


def test_concurrent_writers_share_fsyncs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        before = db.group_sync.fsyncs
        n_threads, per = 8, 25

        def writer(t: int) -> None:
            for i in range(per):
                with db.begin() as conn:
                    conn.execute(insert(jobs).values(**_job(1000 * t + i)))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        with db.read() as conn:
            assert len(conn.execute(select(jobs.c.id)).all()) == n_threads * per
        made = db.group_sync.fsyncs - before
        assert 1 <= made <= n_threads * per
    finally:
        db.dispose()


def test_opt_out_keeps_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBSCRYPT_SQLITE_GROUP_COMMIT", "0")
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert db.group_sync is None
        with db.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        db.dispose()


def test_memory_database_has_no_group_sync() -> None:
    db = Database("sqlite:///:memory:")
    try:
        assert db.group_sync is None
        with db.begin() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        db.dispose()


def test_a_transaction_that_wrote_nothing_needs_no_fsync(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        before = db.group_sync.fsyncs
        with db.begin() as conn:
            conn.execute(select(jobs.c.id)).all()
        assert db.group_sync.fsyncs == before
        with db.begin() as conn:
            conn.execute(insert(jobs).values(**_job(7)))
        assert db.group_sync.fsyncs == before + 1
    finally:
        db.dispose()
