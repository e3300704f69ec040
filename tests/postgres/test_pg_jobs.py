"""tests/unit/test_jobs.py again on PostgreSQL (claim, delays, restart recovery, two runners
on one database, leases: renewal, take-over after expiry), and the claim's SKIP LOCKED."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import select

from ebscrypt.storage.schema import jobs
from tests.unit.test_jobs import *  # noqa: F401,F403  (tests and their fixtures)
from tests.unit.test_jobs import RAN, make_runtime


def test_claim_passes_a_job_locked_by_another_transaction(tmp_path: Path, db_url: str) -> None:
    # FOR UPDATE SKIP LOCKED: a queued job whose row another transaction holds (another
    # process claiming it) is passed over, not waited for; once released it is claimed.
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    held = rt.jobs.submit("test_ok", {"n": "held"})
    free = rt.jobs.submit("test_ok", {"n": "free"})
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        with rt.db.engine.begin() as conn:  # a plain transaction: no write lock of Database.begin
            conn.execute(select(jobs).where(jobs.c.id == held).with_for_update()).all()
            locked.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert locked.wait(10)
        claimed = rt.jobs._claim()  # would wait 30 s (lock_timeout) without SKIP LOCKED
        assert claimed is not None and claimed["id"] == free
        assert rt.jobs._claim() is None  # the held job is skipped, not taken twice
    finally:
        release.set()
        t.join()
    claimed = rt.jobs._claim()
    assert claimed is not None and claimed["id"] == held
