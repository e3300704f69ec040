"""EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot, GetSnapshotBlock,
ListSnapshotBlocks, ListChangedBlocks): an engine above both ``ec2`` (the snapshot
records, their keys) and ``blocks`` (the encrypted block store).

``direct`` holds the machinery (write sessions and their Timeout, block and page tokens,
the data-key cache, the LINEAR checksum, EBS's error shapes); ``snapshots`` the
operations, with typed arguments, that ``services/ebs.py`` calls.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.engines.ebs import direct


def schedule_timeouts(runtime: Any) -> None:
    """Write sessions past their Timeout go to ``error`` (also those a restart interrupted):
    checked every few seconds in the block engine's maintenance thread."""
    blocks = getattr(runtime, "blocks", None)
    if blocks is not None and runtime.settings.primary:  # serve --workers N: one process reaps
        blocks.add_periodic("ebs-timeouts", lambda: direct.reap_timed_out(runtime), 2.0)
