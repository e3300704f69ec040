"""Handlers that may run on the event loop, and the steps that must not (issue 15).

A worker-thread hand-off costs a KMS data-key call more than its own work (two thread
switches and a loop wake-up per request). So the gateway runs the handlers registered
with ``@operation(..., inline=True)`` on the event loop itself, inside :func:`on_loop`.
Their common path only reads (SQLite: no lock against writers) and uses key material
already in memory; the rare step that can wait — a write transaction (a lazy key
deletion or rotation, the ``alias/aws/ebs`` key made on first use), a call into the key
store (an uncached unwrap; a PKCS#11 token) — calls :func:`may_block` first, which raises
:class:`WouldBlock` on the loop. Nothing was changed yet, the audit event records
nothing for it, and the gateway runs the request again from the start in a worker
thread, as every other request runs.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

__all__ = ["WouldBlock", "may_block", "on_loop", "running_on_loop"]

_ON_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("ebscrypt_on_loop", default=False)


class WouldBlock(BaseException):
    """A step that can wait was reached on the event loop (before it ran).

    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way may
    take it for the request's own failure."""


def may_block() -> None:
    """Call before a step that can wait (disk sync, lock, network, token)."""
    if _ON_LOOP.get():
        raise WouldBlock()


def running_on_loop() -> bool:
    return _ON_LOOP.get()


@contextmanager
def on_loop() -> Iterator[None]:
    """The block runs on the event loop: :func:`may_block` raises :class:`WouldBlock`."""
    token = _ON_LOOP.set(True)
    try:
        yield
    finally:
        _ON_LOOP.reset(token)
