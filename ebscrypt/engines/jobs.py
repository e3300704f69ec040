"""Durable asynchronous work: snapshot creation, copies, image creation.

A job is a row in the ``jobs`` table (kind, JSON payload, state, progress, checkpoint).
Handlers submit jobs inside their own transaction, so a job exists exactly when the
resource it completes does. Worker threads in the server process claim queued jobs and
run the function registered for their kind.

Crash safety: a job left ``running`` by a killed server is, on the next start, queued
again when its kind is resumable (its function must be idempotent, and may read the last
``checkpoint`` it saved to skip finished work), or failed cleanly through its kind's
``on_fail`` hook (which puts the resource in its ``error``/``failed`` state).
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import Connection, insert, or_, select, update

from ebscrypt.storage.schema import jobs

if TYPE_CHECKING:
    from ebscrypt.context import Runtime

log = logging.getLogger("ebscrypt.jobs")

RESTART_REASON = "interrupted by a server restart"


@dataclass
class JobContext:
    """What a job function sees: its payload, the runtime, and ways to report progress."""

    job_id: str
    kind: str
    payload: dict[str, Any]
    checkpoint: dict[str, Any] | None
    runtime: "Runtime"
    _runner: "JobRunner"

    def progress(self, percent: float, checkpoint: dict[str, Any] | None = None) -> None:
        """Record progress (0–100) and, optionally, a checkpoint to resume from."""
        self._runner._record_progress(self.job_id, percent, checkpoint)


JobFn = Callable[[JobContext], None]
FailFn = Callable[["Runtime", dict[str, Any], str], None]


@dataclass(frozen=True)
class JobKind:
    fn: JobFn
    on_fail: FailFn | None
    resumable: bool


_KINDS: dict[str, JobKind] = {}


def job_kind(kind: str, *, resumable: bool = True, on_fail: FailFn | None = None) -> Callable[[JobFn], JobFn]:
    """Register the function that runs jobs of ``kind``.

    ``on_fail(runtime, payload, reason)`` is called when a job of this kind fails (its
    function raised, or a restart interrupted a non-resumable job): it should move the
    resource to its error state with ``reason``.
    """

    def register(fn: JobFn) -> JobFn:
        _KINDS[kind] = JobKind(fn=fn, on_fail=on_fail, resumable=resumable)
        return fn

    return register


class JobRunner:
    """Worker threads that run queued jobs; ``submit`` enqueues one."""

    def __init__(self, runtime_ref: Callable[[], "Runtime"], workers: int = 2, poll_seconds: float = 0.5) -> None:
        self._runtime_ref = runtime_ref
        self._workers = workers
        self._poll = poll_seconds
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim_lock = threading.Lock()

    # -- submitting -------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        conn: Connection | None = None,
        delay_seconds: float = 0.0,
    ) -> str:
        """Queue a job. With ``conn`` it is inserted in the caller's transaction."""
        if kind not in _KINDS:
            raise KeyError(f"unknown job kind {kind!r}")
        runtime = self._runtime_ref()
        now = runtime.clock.now()
        job_id = uuid.uuid4().hex
        row = dict(
            id=job_id,
            kind=kind,
            payload=json.dumps(payload),
            state="queued",
            progress=0.0,
            attempts=0,
            not_before=now + timedelta(seconds=delay_seconds) if delay_seconds else None,
            created_at=now,
            updated_at=now,
        )
        if conn is not None:
            conn.execute(insert(jobs).values(**row))
        else:
            with runtime.db.begin() as c:
                c.execute(insert(jobs).values(**row))
        self.notify()
        return job_id

    def notify(self) -> None:
        """Wake the workers (call after committing a transaction that submitted jobs)."""
        with self._wake:
            self._wake.notify_all()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._stopping.clear()
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"ebscrypt-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def run_pending(self) -> int:
        """Run queued jobs in this thread until none is due (for tests and tools)."""
        count = 0
        while (job := self._claim()) is not None:
            self._run(job)
            count += 1
        return count

    def state(self, job_id: str) -> dict[str, Any] | None:
        runtime = self._runtime_ref()
        with runtime.db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    # -- internals --------------------------------------------------------------------

    def _recover(self) -> None:
        """Jobs a killed server left running: resume the resumable, fail the others."""
        runtime = self._runtime_ref()
        with runtime.db.begin() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.state == "running")).mappings().all()
            to_fail = []
            for row in rows:
                kind = _KINDS.get(row["kind"])
                if kind is not None and kind.resumable:
                    conn.execute(update(jobs).where(jobs.c.id == row["id"]).values(state="queued", updated_at=runtime.clock.now()))
                    log.info("resuming job %s (%s) after restart", row["id"], row["kind"])
                else:
                    to_fail.append(row)
        for row in to_fail:
            self._fail(row["id"], row["kind"], json.loads(row["payload"]), RESTART_REASON)

    def _claim(self) -> dict[str, Any] | None:
        """Mark the oldest due queued job running and return it (None if none is due).

        Due-ness is decided in SQL, so jobs delayed into the future (``not_before``) never
        hide due jobs queued after them. The select and the update are one transaction:
        SQLite's BEGIN IMMEDIATE holds the write lock across both (other processes
        included); PostgreSQL locks the row (SKIP LOCKED lets other workers pass it).
        """
        runtime = self._runtime_ref()
        now = runtime.clock.now()
        with self._claim_lock:  # in-process: workers do not queue up on the database lock
            with runtime.db.begin() as conn:
                query = (
                    select(jobs)
                    .where(jobs.c.state == "queued", or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now))
                    .order_by(jobs.c.created_at, jobs.c.id)
                    .limit(1)
                )
                if not runtime.db.is_sqlite:
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).mappings().first()
                if row is None:
                    return None
                claimed = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row["id"], jobs.c.state == "queued")
                    .values(state="running", attempts=jobs.c.attempts + 1, updated_at=now)
                ).rowcount
                return dict(row) if claimed == 1 else None

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._claim()
            except Exception:  # the database may be briefly unavailable; try again
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(self._poll)
                continue
            self._run(job)

    def _run(self, row: dict[str, Any]) -> None:
        kind = _KINDS.get(row["kind"])
        payload = json.loads(row["payload"])
        if kind is None:
            self._fail(row["id"], row["kind"], payload, f"no handler for job kind {row['kind']}")
            return
        checkpoint = json.loads(row["checkpoint"]) if row["checkpoint"] else None
        ctx = JobContext(row["id"], row["kind"], payload, checkpoint, self._runtime_ref(), self)
        try:
            kind.fn(ctx)
        except Exception as exc:  # a job's failure is recorded, never fatal to the worker
            log.warning("job %s (%s) failed: %s", row["id"], row["kind"], exc)
            log.debug("%s", traceback.format_exc())
            self._fail(row["id"], row["kind"], payload, _reason(exc))
            return
        self._finish(row["id"])

    def _finish(self, job_id: str) -> None:
        runtime = self._runtime_ref()
        with runtime.db.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(state="done", progress=100.0, updated_at=runtime.clock.now())
            )

    def _fail(self, job_id: str, kind_name: str, payload: dict[str, Any], reason: str) -> None:
        runtime = self._runtime_ref()
        kind = _KINDS.get(kind_name)
        if kind is not None and kind.on_fail is not None:
            try:
                kind.on_fail(runtime, payload, reason)
            except Exception:
                log.exception("on_fail hook of job %s failed", job_id)
        with runtime.db.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(state="failed", error=reason, updated_at=runtime.clock.now())
            )

    def _record_progress(self, job_id: str, percent: float, checkpoint: dict[str, Any] | None) -> None:
        runtime = self._runtime_ref()
        values: dict[str, Any] = dict(progress=float(percent), updated_at=runtime.clock.now())
        if checkpoint is not None:
            values["checkpoint"] = json.dumps(checkpoint)
        with runtime.db.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)

