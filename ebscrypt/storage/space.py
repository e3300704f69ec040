"""A full data directory: a clear, retryable error, and one log line per episode.

When the filesystem of the data directory (metadata, block objects, KMS audit trail)
runs out of space, every write that cannot be stored fails with
``ServiceUnavailable`` (HTTP 503, the cause in the message), which AWS SDKs retry.
Nothing already stored is touched: SQLite rolls the transaction back, block objects are
written to temp files and renamed only once complete, and a partly appended audit
record is cut off again (:class:`ebscrypt.engines.kms.audit.AuditLog`).

:class:`SpaceMonitor` logs one WARNING when the condition starts (not a traceback per
request) and one INFO line when space is available again; the service resumes by
itself, since every request tries again. KMS calls :meth:`SpaceMonitor.require` before
each operation: an operation that could not be audited is refused before it runs.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

from ebscrypt.errors import ServiceError

log = logging.getLogger("ebscrypt.storage.space")

# Below this much free space KMS refuses to start an operation (its audit record, a few
# KiB, must still fit after whatever the operation itself writes).
AUDIT_RESERVE_BYTES = 1024 * 1024
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_PG_DISK_FULL = "53100"  # PostgreSQL SQLSTATE disk_full


class OutOfSpace(ServiceError):
    """Retryable: the request was not carried out because the data directory is full."""

    code = "ServiceUnavailable"
    status = 503


def is_out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it, or the driver error it wraps) is a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
        ):
            return True
        if getattr(exc, "sqlstate", None) == _PG_DISK_FULL or getattr(exc, "pgcode", None) == _PG_DISK_FULL:
            return True
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        if isinstance(orig, BaseException) and is_out_of_space(orig):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class SpaceMonitor:
    """Free space of the data directory's filesystem, and the log of running out of it."""

    def __init__(self, path: Path | str, reserve_bytes: int = AUDIT_RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.reserve_bytes = reserve_bytes
        self._full = False
        self._lock = threading.Lock()
        # root may write into the blocks reserved for it (ext4); others may not.
        self._is_root = os.geteuid() == 0

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_bfree if self._is_root else st.f_bavail) * st.f_frsize

    def require(self, what: str) -> None:
        """Raise :class:`OutOfSpace` unless ``what`` can still be stored (fail closed)."""
        try:
            free = self.free_bytes()
        except OSError:
            return  # the directory cannot be examined: let the write itself decide
        if free < self.reserve_bytes:
            raise self.error(what, f"only {free} bytes free", before=True)

    def error(self, what: str, cause: BaseException | str, *, before: bool = False) -> OutOfSpace:
        """The caller's error for a write that could not be stored; logs the episode once."""
        reason = cause if isinstance(cause, str) else (getattr(cause, "strerror", None) or str(cause) or "disk full")
        with self._lock:
            first, self._full = not self._full, True
        if first:
            log.warning(
                "the data directory %s is full (%s, %s): writes and KMS operations are refused with "
                "503 ServiceUnavailable until space is freed",
                self.path, reason, what,
            )
        outcome = "Nothing was changed" if before else "The request was not completed"
        return OutOfSpace(
            f"The service cannot store {what}: its data directory is out of space ({reason}). "
            f"{outcome}; retry after space is freed."
        )

    def note_success(self) -> None:
        """Called after a request succeeded: log once when the condition has cleared."""
        if not self._full:
            return
        try:
            free = self.free_bytes()
        except OSError:
            return
        if free < self.reserve_bytes:
            return
        with self._lock:
            was, self._full = self._full, False
        if was:
            log.warning("space is available again in %s (%d MiB free): service resumed", self.path, free >> 20)
