"""The server process's limit of open file descriptors, raised to what the system allows.

An attached volume's random reads keep the objects they come back to open
(``LocalDirStore``'s bounded descriptor cache, sized from this limit); with the usual soft
limit of 1,024 only 256 stay open and a 1 GiB volume (2,048 objects) thrashes, an
``open``/``close`` per read. Servers commonly raise the soft limit to the hard one at
start: it needs no privilege.
"""

from __future__ import annotations

import resource

# Enough for the descriptor cache's own bound (8,192) four times over; no need for more.
WANTED = 65536


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards ``WANTED`` (never above the hard limit, never
    lowered); the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED if hard == resource.RLIM_INFINITY else min(WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):  # a container that forbids it: keep what we have
            pass
    return soft
