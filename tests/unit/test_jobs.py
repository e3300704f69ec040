"""The durable job runner: submit, run, progress, failure hooks, recovery after a crash,
leases between runners sharing one database."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from ebscrypt.clock import Clock
from ebscrypt.context import Runtime, Settings
from ebscrypt.engines.jobs import LEASE_REASON, RESTART_REASON, JobRunner, job_kind
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


# Jobs that run until the test opens the gate of the runner they run in (by runner id):
# a long job, or the job of a "dead" runner that never finishes.
GATES: dict[str, threading.Event] = {}
STARTED: list[tuple[str, str]] = []  # (job id, runner id) per run


def _wait_gate(ctx) -> None:  # type: ignore[no-untyped-def]
    STARTED.append((ctx.job_id, ctx._runner.runner_id))
    gate = GATES.get(ctx._runner.runner_id)
    if gate is not None:
        assert gate.wait(30), "the test never opened the gate"
    RAN.append((ctx.job_id, ctx.payload))


job_kind("test_gated", resumable=True)(_wait_gate)
job_kind("test_gated_once", resumable=False, on_fail=lambda runtime, payload, reason: FAILED.append((payload, reason)))(
    _wait_gate
)


def make_runtime(tmp_path: Path, db_url: str, lease_seconds: float = 30.0) -> Runtime:
    runtime: Runtime
    db = Database(db_url)
    runner = JobRunner(lambda: runtime, workers=1, poll_seconds=0.05, lease_seconds=lease_seconds)
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
    rt2.jobs._recover(at_start=True)
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
    # Both start before any job exists (a runner starting beside a live one's running job:
    # test_a_starting_runner_leaves_a_live_runners_job_alone).
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


# ------------------------------------------------------------------ leases between runners

LEASE = 1.0  # seconds: short, so an expiry takes about a second here


def _wait_for(predicate, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _start_gated(tmp_path: Path, db_url: str, kind: str) -> tuple[Runtime, str, threading.Event]:
    """A started runner running a ``kind`` job that waits for the returned gate."""
    RAN.clear()
    STARTED.clear()
    FAILED.clear()
    rt = make_runtime(tmp_path, db_url, lease_seconds=LEASE)
    gate = GATES[rt.jobs.runner_id] = threading.Event()
    rt.jobs.start()
    job_id = rt.jobs.submit(kind, {"long": True})
    assert _wait_for(lambda: STARTED == [(job_id, rt.jobs.runner_id)])
    return rt, job_id, gate


def test_a_starting_runner_leaves_a_live_runners_job_alone(tmp_path: Path, db_url: str) -> None:
    # Two servers on one database: the second starting (and recovering leases for several
    # lease periods) while the first runs a long job must not run that job again; the
    # first's renewals keep it owned past many lease lengths.
    first, job_id, gate = _start_gated(tmp_path, db_url, "test_gated")
    second = make_runtime(tmp_path, db_url, lease_seconds=LEASE)
    second.jobs.start()
    try:
        time.sleep(3 * LEASE)
        state = second.jobs.state(job_id)
        assert state["state"] == "running" and state["runner"] == first.jobs.runner_id
        gate.set()
        assert _wait_for(lambda: first.jobs.state(job_id)["state"] == "done")
    finally:
        gate.set()
        first.jobs.stop()
        second.jobs.stop()
    assert STARTED == [(job_id, first.jobs.runner_id)]  # run once, by the first
    assert RAN == [(job_id, {"long": True})]
    assert first.jobs.state(job_id)["attempts"] == 1


def test_lease_renewal_moves_the_expiry_forward(tmp_path: Path, db_url: str) -> None:
    rt, job_id, gate = _start_gated(tmp_path, db_url, "test_gated")
    try:
        first = rt.jobs.state(job_id)["lease_expires"]
        assert _wait_for(lambda: rt.jobs.state(job_id)["lease_expires"] > first + LEASE / 6)
    finally:
        gate.set()
        rt.jobs.stop()
    done = rt.jobs.state(job_id)
    assert done["state"] == "done" and done["runner"] is None and done["lease_expires"] is None


def test_a_dead_runners_resumable_job_is_taken_over_after_its_lease(tmp_path: Path, db_url: str) -> None:
    dead, job_id, gate = _start_gated(tmp_path, db_url, "test_gated")
    dead.jobs._keeper_stop.set()  # the process is gone: no more renewals (its job never ends)
    survivor = make_runtime(tmp_path, db_url, lease_seconds=LEASE)
    survivor.jobs.start()
    try:
        taken_at = time.monotonic()
        assert _wait_for(lambda: survivor.jobs.state(job_id)["state"] == "done")
        assert time.monotonic() - taken_at < 5 * LEASE
        assert STARTED == [(job_id, dead.jobs.runner_id), (job_id, survivor.jobs.runner_id)]
        gate.set()  # the "dead" run ends late: its outcome must not be recorded over the new one
        assert _wait_for(lambda: len(RAN) == 2)
        dead.jobs.stop()
        state = survivor.jobs.state(job_id)
        assert state["state"] == "done" and state["attempts"] == 2 and state["error"] is None
    finally:
        gate.set()
        dead.jobs.stop()
        survivor.jobs.stop()


def test_a_dead_runners_non_resumable_job_fails_after_its_lease(tmp_path: Path, db_url: str) -> None:
    dead, job_id, gate = _start_gated(tmp_path, db_url, "test_gated_once")
    dead.jobs._keeper_stop.set()
    survivor = make_runtime(tmp_path, db_url, lease_seconds=LEASE)
    survivor.jobs.start()
    try:
        assert _wait_for(lambda: survivor.jobs.state(job_id)["state"] == "failed")
        assert FAILED == [({"long": True}, LEASE_REASON)]
        assert survivor.jobs.state(job_id)["error"] == LEASE_REASON
        gate.set()
        assert _wait_for(lambda: len(RAN) == 1)
        dead.jobs.stop()
        assert survivor.jobs.state(job_id)["state"] == "failed"  # the late end changes nothing
        assert STARTED == [(job_id, dead.jobs.runner_id)]  # never run again
    finally:
        gate.set()
        dead.jobs.stop()
        survivor.jobs.stop()


def test_start_recovers_a_previous_process_job_at_once_on_sqlite_only(tmp_path: Path, db_url: str) -> None:
    # SQLite: one process per database, so a running job of a runner not in this process
    # was left by the previous process: a restart resumes it without waiting for its lease.
    # PostgreSQL: that runner may be another live server; only its lease's expiry counts.
    RAN.clear()
    rt = make_runtime(tmp_path, db_url)
    job_id = rt.jobs.submit("test_ok", {"n": 1})
    with rt.db.begin() as conn:
        conn.execute(update(jobs).values(state="running", runner="otherhost/1/gone",
                                         lease_expires=time.time() + 3600))
    rt2 = make_runtime(tmp_path, db_url)
    rt2.jobs._recover(at_start=True)
    if rt.db.is_sqlite:
        assert rt2.jobs.state(job_id)["state"] == "queued"
        assert rt2.jobs.run_pending() == 1
    else:
        assert rt2.jobs.state(job_id)["state"] == "running"
        with rt.db.begin() as conn:  # the lease runs out
            conn.execute(update(jobs).values(lease_expires=time.time() - 1))
        rt2.jobs._recover()
        assert rt2.jobs.state(job_id)["state"] == "queued"


def test_an_advanced_clock_does_not_expire_leases(tmp_path: Path, db_url: str) -> None:
    # The injectable clock may jump days (KMS deletion tests); leases are on the database's
    # clock, so a running job stays its runner's.
    rt, job_id, gate = _start_gated(tmp_path, db_url, "test_gated")
    other = make_runtime(tmp_path, db_url, lease_seconds=LEASE)
    try:
        rt.clock.advance(30 * 86400)
        other.clock.advance(30 * 86400)
        other.jobs._recover()
        assert other.jobs.state(job_id)["state"] == "running"
    finally:
        gate.set()
        rt.jobs.stop()
    assert STARTED == [(job_id, rt.jobs.runner_id)]
