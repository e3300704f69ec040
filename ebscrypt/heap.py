"""The C allocator's settings for the server process: large buffers reused, not returned.

Every EBS direct request moves 512 KiB blocks through several buffers (the body as the
HTTP protocol delivers it, joined, sealed, read back, the response). glibc serves a
request of more than ``M_MMAP_THRESHOLD`` (dynamic, from 128 KiB) with a fresh ``mmap``
and gives it back with ``munmap`` when freed, and trims its heaps back to the system
once more than ``M_TRIM_THRESHOLD`` is free at their top: each fresh 512 KiB then costs
128 page faults on first touch. On this project's 2-core VM that is ~0.45 ms of system
CPU per 512 KiB allocated (a join of eight 64 KiB pieces: 0.55 ms, 0.04 ms once the
memory is reused; bench/README.md, section J) — more than the SHA-256 of the block.

:func:`reuse_large_buffers` raises both thresholds (``mallopt``) so blocks come from the
heaps and go back to them: memory freed is kept for the next request (at most
``TRIM_BYTES`` above each heap's top stays mapped, and only what the server once used at
the same time). A no-op where the C library is not glibc, and with
``EBSCRYPT_MALLOC_TUNE=0``.

What that keeps is the most the server once used at the same time, per arena (glibc
gives each busy thread an arena of its own: up to 8 per core), holes included: after an
attached volume's I/O it was 160–300 MiB beyond what the server still holds (its
per-volume caches; bench/README.md W6). :class:`IdleTrim` gives that free memory back
(``malloc_trim``) once the I/O that used it has stopped — never while it goes on, where
every buffer given back would cost its page faults again (issue 12, "memory stays flat").
(Capping the arenas, ``M_ARENA_MAX`` 2, was measured too: no lower RSS after the NBD
runs, so not kept.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any, Callable, Hashable

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above a block with its object's overhead (a 512 KiB block, a sealed object of ~513 KiB,
# a read buffer one byte longer than the largest object): these come from the heap.
MMAP_BYTES = 4 << 20
# Free memory kept at a heap's top before it is given back (per arena: with the worker
# threads' arenas, a few tens of MiB at most; bench/README.md J: RSS after 16 GiB).
TRIM_BYTES = 8 << 20


def _libc() -> Any:
    """glibc (ctypes), or None: another C library, or not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of)
        return None
    return libc


def reuse_large_buffers() -> bool:
    """Tune glibc's malloc for the server's 512 KiB buffers (see the module docstring).
    True when applied."""
    if os.environ.get("EBSCRYPT_MALLOC_TUNE", "1") == "0":
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))


def give_back() -> bool:
    """``malloc_trim(0)``: the free memory of every arena (whole free pages, holes too)
    returned to the system. True if any was. Costs a walk of the arenas (milliseconds),
    and the page faults of whatever is allocated again afterwards: see :class:`IdleTrim`."""
    if os.environ.get("EBSCRYPT_MALLOC_TUNE", "1") == "0":
        return False
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class IdleTrim:
    """When to give the allocator's free memory back: once per quiet spell. ``tick`` is
    called periodically with a counter that moves while I/O goes on (requests served);
    the first tick that finds it where the previous one left it trims, and no later
    tick trims again until it has moved. So memory kept for a busy volume's buffers
    stays (no page faults per buffer while I/O goes on) and goes back within two
    periods of the last request."""

    def __init__(self, trim: Callable[[], bool] = give_back) -> None:
        self._trim = trim
        self._last: Any = None
        self._trimmed = True  # nothing used yet: nothing to give back
        self.trims = 0  # how many times it trimmed (observability, tests)

    def tick(self, activity: Hashable) -> bool:
        """True when it trimmed now."""
        moved, self._last = activity != self._last, activity
        if moved:
            self._trimmed = False
            return False
        if self._trimmed:
            return False
        self._trimmed = True
        self.trims += 1
        self._trim()
        return True
