"""The gateway's worker threads (ebscrypt/handoff.py; issue 15, bench/README.md T)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from ebscrypt.handoff import WorkerThreads

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("handoff_test", default="unset")


def test_result_exception_thread_and_context() -> None:
    pool = WorkerThreads(max_threads=2)

    def where(x: int) -> tuple[int, str, str]:
        return x * 2, threading.current_thread().name, _VAR.get()

    def fails() -> None:
        raise ValueError("boom")

    def stops() -> None:
        raise StopIteration

    async def main() -> None:
        _VAR.set("caller's")
        doubled, name, seen = await pool.run(where, 21)
        assert (doubled, seen) == (42, "caller's")
        assert name.startswith("ebscrypt-request") and name != threading.current_thread().name
        with pytest.raises(ValueError, match="boom"):
            await pool.run(fails)
        with pytest.raises(RuntimeError):  # a future cannot carry StopIteration
            await pool.run(stops)

    asyncio.run(main())
    pool.close()


def test_at_most_max_threads_and_every_call_answered() -> None:
    pool = WorkerThreads(max_threads=3)
    running = 0
    most = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        return list(await asyncio.gather(*(pool.run(work, i) for i in range(20))))

    assert asyncio.run(main()) == list(range(20))  # calls beyond 3 waited, none lost
    assert most == 3
    assert len(pool._workers) == 3
    pool.close()


def test_idle_thread_reused_last_in_first_out() -> None:
    pool = WorkerThreads(max_threads=8)

    async def main() -> set[str]:
        names = set()
        for _ in range(10):  # one at a time: the thread that just finished takes the next
            names.add(await pool.run(lambda: threading.current_thread().name))
        return names

    assert len(asyncio.run(main())) == 1
    pool.close()


def test_cancelled_task_waits_for_its_call() -> None:
    """As anyio's (abandon_on_cancel=False): a cancelled request's handler is not
    abandoned mid-way — the task ends only after it."""
    pool = WorkerThreads()
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(pool.run(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    asyncio.run(main())
    pool.close()


def test_close_stops_threads_and_refuses_new_calls() -> None:
    pool = WorkerThreads()

    async def main() -> None:
        await pool.run(lambda: None)

    asyncio.run(main())
    pool.close()
    for worker in pool._workers:
        worker.join(5)
        assert not worker.is_alive()
    with pytest.raises(RuntimeError):
        asyncio.run(main())
