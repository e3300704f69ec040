"""Fast lifecycles: let a request wait briefly for the job that finishes its resource.

AWS answers CreateSnapshot / CopySnapshot / CreateVolume at once with ``pending`` /
``creating``; boto3's waiters then poll every 15 s. A small resource is finished within
milliseconds here, so a handler may wait (bounded) for its job before answering: the
response still shows the state at creation, and the first DescribeX a waiter makes sees
the final state. The job may run in this process (its end sets the event at once) or, with
several API processes on one database, in another: ``wait_settled`` then also polls the
resource's row, with a short backoff, until its state is final.

``settle`` is the polling form, for Describe calls that see a resource still transitional.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

_lock = threading.Lock()
_events: dict[str, threading.Event] = {}


def expect(resource_id: str) -> threading.Event:
    with _lock:
        return _events.setdefault(resource_id, threading.Event())


def done(resource_id: str) -> None:
    with _lock:
        ev = _events.pop(resource_id, None)
    if ev is not None:
        ev.set()


def wait(resource_id: str, timeout: float) -> bool:
    ev = expect(resource_id)
    finished = ev.wait(timeout)
    with _lock:
        if _events.get(resource_id) is ev:
            _events.pop(resource_id, None)
    return finished


def wait_settled(event: threading.Event, timeout: float, settled: Callable[[], bool] | None, *,
                 first: float = 0.02, cap: float = 0.25) -> bool:
    """Wait up to ``timeout`` for ``event`` (the job ran here), or — when ``settled`` is
    given (other processes may run the job) — until ``settled()`` reads the resource final,
    polling after 20 ms, then at doubling intervals up to 250 ms. True if it settled."""
    deadline = time.monotonic() + timeout
    step = first
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if event.wait(min(step, left)):
            return True
        if settled is not None and settled():
            return True
        step = min(step * 2, cap)


def settle(read_states: Callable[[], list[str]], transitional: Iterable[str], *, timeout: float = 2.5,
           interval: float = 0.05) -> None:
    """Wait (briefly) while any state ``read_states()`` returns is transitional.

    Describe calls use this so that a resource whose background job finishes within a
    moment is reported in its final state: boto3 waiters (delay 15 s) then succeed on
    their first poll (R-LIFE-1) instead of sleeping.
    """
    transitional = set(transitional)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not transitional.intersection(read_states()):
            return
        time.sleep(interval)
