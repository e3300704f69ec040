"""Durable asynchronous work: snapshot creation, copies, image creation.

A job is a row in the ``jobs`` table (kind, JSON payload, state, progress, checkpoint).
Handlers submit jobs inside their own transaction, so a job exists exactly when the
resource it completes does. Worker threads in the server process claim queued jobs and
run the function registered for their kind.

Crash safety: a job left ``running`` by a dead server is queued again when its kind is
resumable (its function must be idempotent, and may read the last ``checkpoint`` it saved
to skip finished work), or failed cleanly through its kind's ``on_fail`` hook (which puts
the resource in its ``error``/``failed`` state).

Which running jobs are a dead server's: several servers may share one PostgreSQL
database, so a claim records the claiming runner (one per process) and a lease; each
runner's keeper thread renews the leases of its jobs and, periodically, recovers the
running jobs whose lease has expired (their runner stopped renewing: killed or hung). On
SQLite — the embedded default, one process per database — a start also recovers at once
every running job not owned by a runner of this process, so a restart resumes work
without waiting for leases to expire. With ``serve --workers N`` several processes of one
host share the SQLite file: a runner is then dead when its lease expired or its process
(the pid in its id, on this host) is gone, so a killed worker's jobs are taken over at the
next start or keeper pass, and a live sibling's never.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import traceback
import uuid
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import ColumnElement, Connection, Float, insert, literal_column, or_, select, update

from ebscrypt.storage.db import conflict_backoff, is_conflict
from ebscrypt.storage.schema import jobs
from ebscrypt.storage.space import is_out_of_space

if TYPE_CHECKING:
    from ebscrypt.context import Runtime

log = logging.getLogger("ebscrypt.jobs")

RESTART_REASON = "interrupted by a server restart"
LEASE_REASON = "interrupted: the server running it stopped"

# How long a claim lasts without renewal. The keeper renews every third of it, so a
# runner misses two renewals (a stalled database, a long pause) before losing its jobs.
LEASE_SECONDS = 30.0

# The isolation of the runner's own row updates (claims, leases, outcomes) on PostgreSQL:
# each is one conditional UPDATE of rows it names (or locks SKIP LOCKED), correct under row
# locks alone, so it never fails on a serialization conflict with other transactions.
_ROW = "READ COMMITTED"

# Runners of this process that have not been stopped, by id: the SQLite start-up recovery
# leaves their jobs alone (tests run several runners in one process).
_LIVE_RUNNERS: "weakref.WeakValueDictionary[str, JobRunner]" = weakref.WeakValueDictionary()


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

    def __init__(
        self,
        runtime_ref: Callable[[], "Runtime"],
        workers: int = 2,
        poll_seconds: float = 0.5,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._runtime_ref = runtime_ref
        self._workers = workers
        self._poll = poll_seconds
        self._lease = lease_seconds
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._keeper_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim_lock = threading.Lock()
        self._running: set[str] = set()  # ids of the jobs this runner's threads are in (_run)
        # host/pid/random: unique per runner, and readable when a person inspects a job
        self.runner_id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        _LIVE_RUNNERS[self.runner_id] = self

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
        _LIVE_RUNNERS[self.runner_id] = self
        self._recover(at_start=True)
        self._stopping.clear()
        self._keeper_stop.clear()
        keeper = threading.Thread(target=self._keep, name="ebscrypt-job-keeper", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"ebscrypt-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._keeper_stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        _LIVE_RUNNERS.pop(self.runner_id, None)

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

    def _keep(self) -> None:
        """Renew this runner's leases and recover expired ones, every third of a lease."""
        while not self._keeper_stop.wait(self._lease / 3):
            try:
                self._renew()
                self._recover()
            except Exception as exc:  # the database may be briefly unavailable; try again
                self._log_fault(exc, "renewing or recovering job leases failed")

    def _log_fault(self, exc: Exception, what: str) -> None:
        """A full disk is logged once per episode (by the space monitor), not per retry."""
        runtime = self._runtime_ref()
        space = getattr(runtime, "engines", {}).get("space") if runtime is not None else None
        if space is not None and is_out_of_space(exc):
            space.error("job state", exc)
        else:
            log.exception(what)

    def _renew(self) -> None:
        if not self._running:  # no job of ours runs: no lease to renew, no write lock taken
            return
        runtime = self._runtime_ref()
        with runtime.db.begin(isolation=_ROW) as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.runner == self.runner_id, jobs.c.state == "running")
                .values(lease_expires=self._lease_end())
            )

    def _recover(self, *, at_start: bool = False) -> None:
        for attempt in range(8):
            try:
                return self._recover_once(at_start=at_start)
            except Exception as exc:  # several runners recovering at once: one wins, retry
                if not is_conflict(exc) or attempt == 7:
                    raise
            conflict_backoff(attempt)

    def _recover_once(self, *, at_start: bool = False) -> None:
        """Running jobs of a dead runner: resume the resumable, fail the others.

        A runner is dead when its lease expired; on SQLite, at start, also when it is not
        a runner of this process (one process per SQLite database: it was the last one's).
        """
        runtime = self._runtime_ref()
        expired = or_(jobs.c.lease_expires.is_(None), jobs.c.lease_expires < db_epoch(runtime))
        if runtime.db.is_sqlite and runtime.db.shared:  # one host's workers: gone processes too
            expired = or_(expired, jobs.c.runner.in_(self._gone_runners(runtime)))
        elif at_start and runtime.db.is_sqlite:
            expired = or_(jobs.c.runner.is_(None), jobs.c.runner.not_in(list(_LIVE_RUNNERS.keys())))
        dead = select(jobs).where(jobs.c.state == "running", expired)
        with runtime.db.read() as conn:  # the usual case, none: no write lock taken
            if conn.execute(dead.with_only_columns(jobs.c.id).limit(1)).first() is None:
                return
        with runtime.db.begin() as conn:  # serializable: a claim or renewal in between is a conflict (retried)
            rows = conn.execute(dead).mappings().all()
            to_fail = []
            for row in rows:
                kind = _KINDS.get(row["kind"])
                if kind is not None and kind.resumable:
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == row["id"])
                        .values(state="queued", runner=None, lease_expires=None, updated_at=runtime.clock.now())
                    )
                    log.info("resuming job %s (%s) of runner %s", row["id"], row["kind"], row["runner"])
                else:
                    # Taken over (still running) while its on_fail hook runs: if this
                    # process dies meanwhile, the lease expires and another one fails it.
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == row["id"])
                        .values(runner=self.runner_id, lease_expires=self._lease_end())
                    )
                    to_fail.append(row)
        reason = RESTART_REASON if at_start else LEASE_REASON
        for row in to_fail:
            self._fail(row["id"], row["kind"], json.loads(row["payload"]), reason)

    @staticmethod
    def _gone_runners(runtime: "Runtime") -> list[str]:
        """Runners of running jobs whose process is gone (a SQLite file shared by this host's
        workers: every runner is on this host). Never a runner of this process that runs."""
        with runtime.db.read() as conn:
            runners = {r for (r,) in conn.execute(
                select(jobs.c.runner).where(jobs.c.state == "running", jobs.c.runner.is_not(None)).distinct())}
        return [r for r in runners if r not in _LIVE_RUNNERS and not runner_process_alive(r)]

    def _lease_end(self) -> ColumnElement[float]:
        return db_epoch(self._runtime_ref()) + self._lease

    def _claim(self) -> dict[str, Any] | None:
        """Mark the oldest due queued job running (leased to this runner) and return it
        (None if none is due).

        Due-ness is decided in SQL, so jobs delayed into the future (``not_before``) never
        hide due jobs queued after them. The select and the update are one transaction:
        SQLite's BEGIN IMMEDIATE holds the write lock across both (other processes
        included); PostgreSQL locks the row (SKIP LOCKED lets other workers pass it) at
        READ COMMITTED: claims in several processes never conflict, each takes another job.
        """
        runtime = self._runtime_ref()
        now = runtime.clock.now()
        query = (
            select(jobs)
            .where(jobs.c.state == "queued", or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now))
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(1)
        )
        # The usual case, nothing due: a read (no write lock) says so. Polling workers
        # otherwise take the write lock several times a second, and a request's write
        # transaction that meets it waits in SQLite's busy handler (sleeps of 1–10 ms).
        # A job committed after this read wakes the workers (submit -> notify).
        with runtime.db.read() as conn:
            if conn.execute(query.with_only_columns(jobs.c.id)).first() is None:
                return None
        with self._claim_lock:  # in-process: workers do not queue up on the database lock
            with runtime.db.begin(isolation=_ROW) as conn:
                if not runtime.db.is_sqlite:
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).mappings().first()
                if row is None:
                    return None
                claimed = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row["id"], jobs.c.state == "queued")
                    .values(
                        state="running",
                        attempts=jobs.c.attempts + 1,
                        runner=self.runner_id,
                        lease_expires=self._lease_end(),
                        updated_at=now,
                    )
                ).rowcount
                return dict(row) if claimed == 1 else None

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._claim()
            except Exception as exc:  # the database may be briefly unavailable; try again
                self._log_fault(exc, "claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(self._poll)
                continue
            self._run(job)

    def _run(self, row: dict[str, Any]) -> None:
        self._running.add(row["id"])
        try:
            self._run_held(row)
        finally:
            self._running.discard(row["id"])

    def _run_held(self, row: dict[str, Any]) -> None:
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
            if is_conflict(exc) and kind.resumable and self._requeue(row["id"]):
                # Lost a race with a concurrent transaction (PostgreSQL): that changed
                # nothing, and the job is idempotent: queued again, run from its checkpoint.
                log.info("job %s (%s) conflicted with a concurrent transaction; queued again", row["id"], row["kind"])
                conflict_backoff(min(int(row.get("attempts") or 0), 5))
                return
            log.warning("job %s (%s) failed: %s", row["id"], row["kind"], exc)
            log.debug("%s", traceback.format_exc())
            self._fail(row["id"], row["kind"], payload, _reason(exc))
            return
        self._finish(row["id"])

    def _owned(self, job_id: str) -> ColumnElement[bool]:
        """This runner still holds the job: a runner that lost it (its lease expired, another
        runner took the job over) must not write its outcome over the new owner's."""
        return (jobs.c.id == job_id) & (jobs.c.runner == self.runner_id) & (jobs.c.state == "running")

    def _finish(self, job_id: str) -> None:
        runtime = self._runtime_ref()
        with runtime.db.begin(isolation=_ROW) as conn:
            done = conn.execute(
                update(jobs)
                .where(self._owned(job_id))
                .values(state="done", progress=100.0, runner=None, lease_expires=None, updated_at=runtime.clock.now())
            ).rowcount
        if done != 1:
            log.warning("job %s finished after another runner took it over; its outcome is not recorded", job_id)

    def _fail(self, job_id: str, kind_name: str, payload: dict[str, Any], reason: str) -> None:
        runtime = self._runtime_ref()
        if not self._hold(job_id):
            log.warning("job %s failed (%s) after another runner took it over; left to that runner", job_id, reason)
            return
        kind = _KINDS.get(kind_name)
        if kind is not None and kind.on_fail is not None:
            for attempt in range(8):
                try:
                    kind.on_fail(runtime, payload, reason)
                except Exception as exc:
                    if is_conflict(exc) and attempt < 7:  # lost a race (PostgreSQL): run it again
                        conflict_backoff(attempt)
                        continue
                    log.exception("on_fail hook of job %s failed", job_id)
                break
        with runtime.db.begin(isolation=_ROW) as conn:
            conn.execute(
                update(jobs)
                .where(self._owned(job_id))
                .values(state="failed", error=reason, runner=None, lease_expires=None, updated_at=runtime.clock.now())
            )

    def _requeue(self, job_id: str) -> bool:
        """Put a job this runner holds back in the queue (False: not held any more)."""
        runtime = self._runtime_ref()
        with runtime.db.begin(isolation=_ROW) as conn:
            return conn.execute(
                update(jobs)
                .where(self._owned(job_id))
                .values(state="queued", runner=None, lease_expires=None, updated_at=runtime.clock.now())
            ).rowcount == 1

    def _hold(self, job_id: str) -> bool:
        """Renew the lease of one job this runner holds (before a failure hook runs, which
        must not run for a job another runner has taken over); False if it is not held."""
        runtime = self._runtime_ref()
        with runtime.db.begin(isolation=_ROW) as conn:
            held = conn.execute(update(jobs).where(self._owned(job_id)).values(lease_expires=self._lease_end()))
            return held.rowcount == 1

    def _record_progress(self, job_id: str, percent: float, checkpoint: dict[str, Any] | None) -> None:
        runtime = self._runtime_ref()
        values: dict[str, Any] = dict(progress=float(percent), updated_at=runtime.clock.now())
        if checkpoint is not None:
            values["checkpoint"] = json.dumps(checkpoint)
        with runtime.db.begin(isolation=_ROW) as conn:
            recorded = conn.execute(update(jobs).where(self._owned(job_id)).values(**values)).rowcount
        if recorded != 1:
            # Not raised into the job: its function would run its own failure path (some
            # delete the blocks of the batch in hand) against the new owner's work. Jobs are
            # idempotent; this run goes on to its end and its outcome is dropped (_finish).
            log.warning("job %s: progress not recorded, another runner took the job over", job_id)


def runner_process_alive(runner_id: str) -> bool:
    """Whether the process of a runner id (``host/pid/random``) may still run: True unless it
    names this host and a pid that is not another live process. This process's pid is not
    alive as another runner's (that runner was an earlier process's: this pid was reused),
    and a pid reused by an unrelated process reads as alive: its jobs then wait for their
    lease to expire — late, never early."""
    host, _sep, rest = runner_id.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def db_epoch(runtime: "Runtime") -> ColumnElement[float]:
    """The database server's current time, in seconds since the epoch, as SQL.

    Leases are on this clock, not on ``runtime.clock``: that one is per process and may be
    advanced by days (tests, the dev admin route), which would expire every lease at once
    or make this process's leases outlive it. The database's clock is also one clock for
    all servers sharing it, so clock skew between their machines does not shorten or
    stretch a lease. (A step of the database host's clock would; leases are far longer
    than NTP corrections.) PostgreSQL: clock_timestamp(), not now() (the transaction's
    start, which may precede a wait for the write lock). SQLite: this machine's clock.
    """
    if runtime.db.is_sqlite:
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", Float)


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)

