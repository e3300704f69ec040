"""``ebscrypt serve --workers N``: N API processes on one listening socket, supervised.

One Python process runs its requests on about one core (the GIL), so the parent — which
has bound the port, checked the key store and created or upgraded the database — forks N
workers that inherit the listening socket (the kernel hands each new connection to one of
the processes blocked in ``accept``). They share the data dir, the metadata database
(SQLite in WAL mode, or ``--db``), the block store and the key store, as several
``serve`` processes on PostgreSQL do behind a balancer; what is per host (the NBD server
and attached volumes' keys, the block store's sweeps) is worker 0's (ebscrypt/context.py
``Settings.primary``; engines/attach/remote.py).

The parent only supervises. A worker that exits while the server is not stopping is
started again (after a pause that grows while it keeps dying young: a worker that cannot
start at all stops the server with its status after ``MAX_QUICK_DEATHS``). SIGTERM or
SIGINT to the parent is passed to every worker as SIGTERM (each stops accepting,
finishes its requests and closes its runtime), then the parent exits 0; a worker still
running after ``STOP_SECONDS`` is killed. Each worker asks the kernel for SIGTERM if the
parent dies (``PR_SET_PDEATHSIG``), so a killed parent leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("ebscrypt.supervisor")

# A worker that dies within this many seconds of its start died young: the pause before
# the next start doubles (from RESTART_PAUSE up to MAX_RESTART_PAUSE), and after
# MAX_QUICK_DEATHS such deaths in a row the server stops (it cannot start, e.g. a key store
# that went away), instead of forking forever.
YOUNG_SECONDS = 10.0
RESTART_PAUSE = 0.2
MAX_RESTART_PAUSE = 5.0
MAX_QUICK_DEATHS = 5
STOP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0


@dataclass
class Supervisor:
    """Forks ``count`` workers, each running ``run(index)`` (its exit status), and keeps
    them running until SIGTERM/SIGINT."""

    count: int
    run: Callable[[int], int]
    workers: dict[int, _Worker] = field(default_factory=dict)  # by pid
    stopping: bool = False
    status: int = 0

    def serve(self) -> int:
        """Run until stopped; the exit status (0 after a requested stop)."""
        previous = {sig: signal.signal(sig, self._stop_requested) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._start(_Worker(index))
            while self.workers:
                self._reap_one()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.status

    def pids(self) -> list[int]:
        return sorted(self.workers)

    def _start(self, worker: _Worker) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            os._exit(_worker_main(self.run, worker.index))
        worker.pid, worker.started = pid, time.monotonic()
        self.workers[pid] = worker
        log.info("worker %d started (pid %d)", worker.index, pid)

    def _reap_one(self) -> None:
        """Wait for a worker to exit; start it again unless the server is stopping."""
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:  # none left (not expected: the table says otherwise)
            self.workers.clear()
            return
        worker = self.workers.pop(pid, None)
        if worker is None:  # a child of another kind (none is forked here but workers)
            return
        code = os.waitstatus_to_exitcode(wait_status)
        if self.stopping:
            return
        young = time.monotonic() - worker.started < YOUNG_SECONDS
        worker.quick_deaths = worker.quick_deaths + 1 if young else 0
        print(f"ebscrypt: worker {worker.index} (pid {pid}) exited with status {code}; starting it again",
              file=sys.stderr, flush=True)
        if worker.quick_deaths >= MAX_QUICK_DEATHS:
            print(f"ebscrypt: worker {worker.index} keeps exiting at start; stopping", file=sys.stderr, flush=True)
            self.status = code if code > 0 else 1
            self._stop_all()
            return
        if worker.quick_deaths:
            time.sleep(min(MAX_RESTART_PAUSE, RESTART_PAUSE * 2 ** (worker.quick_deaths - 1)))
            if self.stopping:
                return
        self._start(worker)

    def _stop_requested(self, _signum: int, _frame: object) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        """SIGTERM to every worker (once), and a deadline after which they are killed."""
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.workers):
            _signal(pid, signal.SIGTERM)
        signal.signal(signal.SIGALRM, self._kill_stragglers)
        signal.alarm(int(STOP_SECONDS))

    def _kill_stragglers(self, _signum: int, _frame: object) -> None:
        for pid in list(self.workers):
            print(f"ebscrypt: worker pid {pid} did not stop in {STOP_SECONDS:.0f} s; killing it", file=sys.stderr)
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _worker_main(run: Callable[[int], int], index: int) -> int:
    """A forked worker: default signal dispositions, SIGTERM when the parent dies, then
    ``run(index)``; its exit status (output flushed: ``os._exit`` skips that)."""
    parent = os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the request above took effect
        return 0
    try:
        status = run(index)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        logging.getLogger("ebscrypt").exception("worker %d failed", index)
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return status


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent exits (elsewhere: nothing; a worker then
    outlives a killed parent until it is stopped)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
