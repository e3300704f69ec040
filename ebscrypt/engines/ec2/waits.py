"""Fast lifecycles: let a request wait briefly for the job that finishes its resource.

AWS answers CreateSnapshot / CopySnapshot / CreateVolume at once with ``pending`` /
``creating``; boto3's waiters then poll every 15 s. A small resource is finished within
milliseconds here, so a handler may wait (bounded) for its job before answering: the
response still shows the state at creation, and the first DescribeX a waiter makes sees
the final state. In-process only; with several API processes the wait just times out.
"""

from __future__ import annotations

import threading

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
