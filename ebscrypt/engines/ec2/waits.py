"""Fast lifecycles: let a request wait briefly for the job that finishes its resource.

AWS answers CreateSnapshot / CopySnapshot / CreateVolume at once with ``pending`` /
``creating``; boto3's waiters then poll every 15 s. A small resource is finished within
milliseconds here, so a handler may wait (bounded) for its job before answering: the
response still shows the state at creation, and the first DescribeX a waiter makes sees
the final state. In-process only; with several API processes the wait just times out.

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
