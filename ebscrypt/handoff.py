"""The worker threads that run the gateway's blocking handlers (issue 15, bench/README.md T).

anyio's ``to_thread.run_sync`` (Starlette's ``run_in_threadpool``) cost a small request
about 0.2 ms of CPU more than running the same handler in the calling thread (in process,
a 5-item DescribeVolumes: 1.06 vs 0.84 ms, medians of 5 × 2,000), while a hand-off through
a plain queue and ``loop.call_soon_threadsafe`` cost ~0.0–0.05 ms. So the gateway keeps
its own threads: each has its own ``SimpleQueue``; an idle one is taken last-in first-out
(the thread that just ran a request, its caches warm), a new one is started while fewer
than ``max_threads`` exist, and past that requests wait in arrival order (the
back-pressure anyio's limiter gave: 40 threads, as its default).

As anyio's (``abandon_on_cancel=False``), a call is not abandoned when its task is
cancelled (a shutdown's timeout): the task waits for the handler to finish first, so the
runtime is never closed under a running handler and a commit is never cut off mid-way.
The handler runs in a copy of the caller's context (contextvars), as there.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable, TypeVar, cast

__all__ = ["WorkerThreads"]

T = TypeVar("T")

# One call: the loop to answer on, the future it waits on, the context, the function, its arguments.
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple[Any, ...]]


_IDLE = object()


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """[event loop] The call's outcome to its waiting task."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Worker(threading.Thread):
    def __init__(self, pool: WorkerThreads, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.jobs: SimpleQueue[_Job | None] = SimpleQueue()

    def run(self) -> None:
        job = self.jobs.get()
        while job is not None:
            loop, future, context, fn, args = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(fn, *args)
            except StopIteration as exc:  # a future cannot carry it
                error = RuntimeError("the call raised StopIteration")
                error.__cause__ = exc
            except BaseException as exc:  # every outcome reaches the waiting task
                error = exc
            # idle (or given a waiting call) before the answer leaves: the request that
            # follows it takes this thread, not a new one
            following = self.pool._next(self)
            try:
                loop.call_soon_threadsafe(_deliver, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del result, error, job, future, fn, args, context
            job = self.jobs.get() if following is _IDLE else cast("_Job | None", following)


class WorkerThreads:
    """Threads for blocking calls from the event loop: ``await pool.run(fn, *args)``."""

    def __init__(self, max_threads: int = 40, name: str = "ebscrypt-request") -> None:
        self.max_threads = max_threads
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # last in, first out
        self._waiting: deque[_Job] = deque()  # calls beyond max_threads, in arrival order
        self._workers: list[_Worker] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit((loop, future, contextvars.copy_context(), fn, args))
        try:
            # shield: a cancelled task must not cancel the future before the call ends
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():  # the handler still runs: wait for it, then give up
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker threads are stopped")
            if self._idle:
                worker = self._idle.pop()
            elif len(self._workers) < self.max_threads:
                worker = _Worker(self, f"{self.name}-{len(self._workers)}")
                self._workers.append(worker)
                worker.start()
            else:
                self._waiting.append(job)
                return
        worker.jobs.put(job)

    def _next(self, worker: _Worker) -> _Job | None | object:
        """[worker thread] A waiting call for ``worker``, None (stop), or ``_IDLE``: it is
        on the idle list, its next call comes on its own queue."""
        with self._lock:
            if self._waiting:
                return self._waiting.popleft()
            if self._closed:
                return None
            self._idle.append(worker)
        return _IDLE

    def close(self) -> None:
        """Stop the idle threads now and the busy ones after their call (not waited for:
        the threads are daemons, and the gateway's tasks wait for their calls)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.jobs.put(None)
