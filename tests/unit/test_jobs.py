"""The durable job runner: submit, run, progress, failure hooks, recovery after a crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select, update

from ebscrypt.clock import Clock
from ebscrypt.context import Runtime, Settings
from ebscrypt.engines.jobs import RESTART_REASON, JobRunner, job_kind
from ebscrypt.storage.db import Database
from ebscrypt.storage.schema import jobs

RAN: list[tuple[str, dict]] = []
FAILED: list[tuple[dict, str]] = []


@job_kind("test_ok", resumable=True)
def _ok(ctx) -> None:  # type: ignore[no-untyped-def]
    ctx.progress(50, {"half": True})
    RAN.append((ctx.job_id, ctx.payload))


@job_kind("test_boom", resumable=True, on_fail=lambda runtime, payload, reason: FAILED.append((payload, reason)))
def _boom(ctx) -> None:  # type: ignore[no-untyped-def]
    raise ValueError("disk on fire")


@job_kind("test_once", resumable=False, on_fail=lambda runtime, payload, reason: FAILED.append((payload, reason)))
def _once(ctx) -> None:  # type: ignore[no-untyped-def]
    RAN.append((ctx.job_id, ctx.payload))


def make_runtime(tmp_path: Path, db_url: str) -> Runtime:
    runtime: Runtime
    db = Database(db_url)
    runner = JobRunner(lambda: runtime, workers=1, poll_seconds=0.05)
    runtime = Runtime(settings=Settings(data_dir=tmp_path), db=db, clock=Clock(), jobs=runner)
    return runtime


def test_submitted_job_runs_and_records_progress(tmp_path: Path, db_url: str) -> None:
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    job_id = rt.jobs.submit("test_ok", {"x": 1})
    assert rt.jobs.run_pending() == 1
    assert RAN == [(job_id, {"x": 1})]
    state = rt.jobs.state(job_id)
    assert state["state"] == "done" and state["progress"] == 100.0
    assert json.loads(state["checkpoint"]) == {"half": True}


def test_failing_job_calls_on_fail_with_reason(tmp_path: Path, db_url: str) -> None:
    FAILED.clear()
    rt = make_runtime(tmp_path, db_url)
    job_id = rt.jobs.submit("test_boom", {"snap": "snap-1"})
    rt.jobs.run_pending()
    assert FAILED == [({"snap": "snap-1"}, "disk on fire")]
    assert rt.jobs.state(job_id)["state"] == "failed"


def test_job_in_rolled_back_transaction_does_not_exist(tmp_path: Path, db_url: str) -> None:
    rt = make_runtime(tmp_path, db_url)
    try:
        with rt.db.begin() as conn:
            rt.jobs.submit("test_ok", {}, conn=conn)
            raise RuntimeError("handler failed after submitting")
    except RuntimeError:
        pass
    assert rt.jobs.run_pending() == 0


def test_delayed_job_waits_for_its_time(tmp_path: Path, db_url: str) -> None:
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    rt.jobs.submit("test_ok", {"later": True}, delay_seconds=3600)
    assert rt.jobs.run_pending() == 0
    rt.clock.advance(3601)
    assert rt.jobs.run_pending() == 1


def test_restart_resumes_resumable_and_fails_others(tmp_path: Path, db_url: str) -> None:
    RAN.clear()
    FAILED.clear()
    rt = make_runtime(tmp_path, db_url)
    resumable = rt.jobs.submit("test_ok", {"n": 1})
    once = rt.jobs.submit("test_once", {"n": 2})
    # A killed server leaves its claimed jobs in state running.
    with rt.db.begin() as conn:
        conn.execute(update(jobs).values(state="running"))
    rt2 = make_runtime(tmp_path, db_url)  # a new process over the same database
    rt2.jobs._recover()
    assert rt2.jobs.state(resumable)["state"] == "queued"
    assert rt2.jobs.state(once)["state"] == "failed"
    assert FAILED == [({"n": 2}, RESTART_REASON)]
    rt2.jobs.run_pending()
    assert [payload for _, payload in RAN] == [{"n": 1}]


def test_worker_threads_pick_up_jobs(tmp_path: Path, db_url: str) -> None:
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    rt.jobs.start()
    try:
        ids = {rt.jobs.submit("test_ok", {"i": i}) for i in range(5)}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ids <= {job_id for job_id, _ in RAN}:
            time.sleep(0.02)
        assert ids <= {job_id for job_id, _ in RAN}
    finally:
        rt.jobs.stop()
    with rt.db.read() as conn:
        states = {row.state for row in conn.execute(select(jobs.c.state))}
    assert states == {"done"}


def test_schema_version_recorded_and_reopen_is_idempotent(tmp_path: Path, db_url: str) -> None:
    from sqlalchemy import text

    Database(db_url).dispose()
    db = Database(db_url)
    with db.read() as conn:
        assert conn.execute(text("select version from schema_version")).scalar() >= 1
        if db.is_sqlite:
            assert conn.execute(text("pragma journal_mode")).scalar() == "wal"


def test_due_job_is_not_stalled_behind_delayed_jobs(tmp_path: Path, db_url: str) -> None:
    # Jobs delayed into the future, queued first, must not hide a due job queued after
    # them (the claim once looked at the 8 oldest queued jobs only).
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    delayed = [rt.jobs.submit("test_ok", {"later": i}, delay_seconds=3600) for i in range(10)]
    rt.jobs.start()
    try:
        due = rt.jobs.submit("test_ok", {"now": True})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and due not in {job_id for job_id, _ in RAN}:
            time.sleep(0.02)
        assert [job_id for job_id, _ in RAN] == [due]
    finally:
        rt.jobs.stop()
    assert {rt.jobs.state(job_id)["state"] for job_id in delayed} == {"queued"}
    rt.clock.advance(3601)
    assert rt.jobs.run_pending() == 10  # and they run once their time has come


def test_claim_takes_due_jobs_oldest_first_and_each_once(tmp_path: Path, db_url: str) -> None:
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    first = rt.jobs.submit("test_ok", {"n": 1})
    rt.jobs.submit("test_ok", {"n": "later"}, delay_seconds=60)
    second = rt.jobs.submit("test_ok", {"n": 2})
    assert rt.jobs.run_pending() == 2
    assert [job_id for job_id, _ in RAN] == [first, second]
    assert rt.jobs.state(first)["attempts"] == 1 and rt.jobs.state(second)["attempts"] == 1
    assert rt.jobs.run_pending() == 0  # done jobs are never claimed again


def test_two_servers_on_one_database_run_each_job_once(tmp_path: Path, db_url: str) -> None:
    # Two runners over one database, as two server processes would be (each has its own
    # in-process claim lock): the claim in the database must hand each job to one of them.
    RAN.clear()
    first, second = make_runtime(tmp_path, db_url), make_runtime(tmp_path, db_url)
    # Both start before any job exists: a start re-queues the jobs it finds running (a
    # killed server's), which assumes no other live server claimed them.
    first.jobs.start()
    second.jobs.start()
    try:
        ids = {first.jobs.submit("test_ok", {"i": i}) for i in range(12)}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ids <= {job_id for job_id, _ in RAN}:
            time.sleep(0.02)
    finally:
        first.jobs.stop()
        second.jobs.stop()
    assert sorted(job_id for job_id, _ in RAN) == sorted(ids)  # every job, each once
    assert {first.jobs.state(job_id)["attempts"] for job_id in ids} == {1}
