"""The KMS audit trail: one CloudTrail-format JSON record per line.

Every KMS API call and every key use the EC2/EBS side makes on a caller's behalf is
appended to ``<data_dir>/audit/kms-audit.jsonl`` (written through per record, a lock
for threads). Records hold no secrets: no plaintext, no key material, no ciphertext.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, TextIO

AUDIT_RELATIVE = Path("audit") / "kms-audit.jsonl"


def audit_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / AUDIT_RELATIVE


class AuditLog:
    """Appends records; each record is one ``write(2)`` on an ``O_APPEND`` descriptor, so
    lines from threads (a lock) and from several server processes never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            view = memoryview(line)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_events(data_dir: Path | str) -> Iterator[dict[str, Any]]:
    path = audit_path(data_dir)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


def print_log(data_dir: Path | str, out: TextIO | None = None) -> int:
    """Print the audit trail (one JSON record per line); return the number of records."""
    out = out or sys.stdout
    n = 0
    for event in read_events(data_dir):
        out.write(json.dumps(event, sort_keys=False) + "\n")
        n += 1
    return n
