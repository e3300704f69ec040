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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above a block with its object's overhead (a 512 KiB block, a sealed object of ~513 KiB,
# a read buffer one byte longer than the largest object): these come from the heap.
MMAP_BYTES = 4 << 20
# Free memory kept at a heap's top before it is given back (per arena: with the worker
# threads' arenas, a few tens of MiB at most; bench/README.md J: RSS after 16 GiB).
TRIM_BYTES = 8 << 20


def reuse_large_buffers() -> bool:
    """Tune glibc's malloc for the server's 512 KiB buffers (see the module docstring).
    True when applied."""
    if os.environ.get("EBSCRYPT_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
