"""Builds the process-wide :class:`Runtime`: database, clock, engines, job runner."""

from __future__ import annotations

import os

from ebscrypt.clock import Clock
from ebscrypt.context import Runtime, Settings
from ebscrypt.engines import attach as attach_engine
from ebscrypt.engines import blocks as blocks_engine
from ebscrypt.engines import ebs as ebs_engine
from ebscrypt.engines import kms as kms_engine
from ebscrypt.engines.ec2.reconcile import release_stray_block_owners
from ebscrypt.engines.jobs import LEASE_SECONDS, JobRunner
from ebscrypt.services import registry
from ebscrypt.storage.db import Database
from ebscrypt.storage.space import SpaceMonitor


def build_runtime(settings: Settings, *, start_jobs: bool = True) -> Runtime:
    """Open (or create) everything under ``settings.data_dir`` and start the job workers."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    db = Database(settings.database_url)
    if settings.workers > 1:  # serve --workers N: sibling processes write the same database
        db.shared = True
    runtime: Runtime
    # Test knob: a short job lease, so that a killed server's jobs are taken over quickly.
    lease = float(os.environ.get("EBSCRYPT_JOB_LEASE_SECONDS", "0") or 0) or LEASE_SECONDS
    jobs = JobRunner(lambda: runtime, workers=settings.job_workers, lease_seconds=lease)
    runtime = Runtime(settings=settings, db=db, clock=Clock(settings.clock_offset), jobs=jobs)
    runtime.engines["space"] = SpaceMonitor(settings.data_dir)  # before the engines that write
    runtime.engines["kms"] = kms_engine.open_engine(runtime)
    runtime.engines["blocks"] = blocks_engine.open_engine(runtime)
    ebs_engine.schedule_timeouts(runtime)
    runtime.engines["attach"] = attach_engine.open_engine(runtime)  # open volumes: keys in memory
    registry.load_all()  # handlers and the job kinds they register
    if settings.primary:  # deletes cut short by a kill, before any job runs (one worker of several)
        release_stray_block_owners(runtime)
    if start_jobs:
        jobs.start()
    return runtime


def close_runtime(runtime: Runtime) -> None:
    runtime.jobs.stop()
    # Newest first: attached volumes flush into the block engine before it closes.
    for engine in reversed(list(runtime.engines.values())):
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    runtime.db.dispose()
