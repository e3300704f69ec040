"""Injectable time, so waiting periods (KMS key deletion, snapshot timeouts) are testable."""

from __future__ import annotations

import mmap
import struct
import threading
from datetime import datetime, timedelta, timezone

_SECONDS = struct.Struct("d")


class SharedOffset:
    """An offset in seconds kept in anonymous shared memory: made by ``serve --workers N``'s
    parent before it forks the workers, so an advance (the dev admin route, served by any
    one worker) moves every worker's clock alike."""

    def __init__(self) -> None:
        self._cell = mmap.mmap(-1, _SECONDS.size)  # MAP_SHARED | MAP_ANONYMOUS: inherited by fork

    def get(self) -> float:
        return float(_SECONDS.unpack_from(self._cell)[0])

    def add(self, seconds: float) -> None:
        """Not atomic across processes: advances are a test/dev route, one at a time."""
        _SECONDS.pack_into(self._cell, 0, self.get() + seconds)


class Clock:
    """Wall-clock time plus an offset that tests (and the dev admin route) may advance."""

    def __init__(self, shared: SharedOffset | None = None) -> None:
        self._offset = timedelta()
        self._shared = shared
        # (shared seconds, as a timedelta): rebuilt only when the shared value moves (one
        # tuple, swapped whole: threads never see a value with another value's delta)
        self._seen: tuple[float, timedelta] = (0.0, timedelta())
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        if self._shared is not None:
            seconds = self._shared.get()
            seen = self._seen
            if seen[0] != seconds:
                seen = self._seen = (seconds, timedelta(seconds=seconds))
            return datetime.now(timezone.utc) + seen[1]
        with self._lock:
            return datetime.now(timezone.utc) + self._offset

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            if self._shared is not None:
                self._shared.add(seconds)
            else:
                self._offset += timedelta(seconds=seconds)
        return self.now()
