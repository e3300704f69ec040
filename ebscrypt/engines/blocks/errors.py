"""The block engine's exceptions: misuse by a caller, and the states a copy or a lineage
query can meet. None of them is an AWS error; the services map them."""

from __future__ import annotations


class BlockError(Exception):
    """Misuse of the engine (a programming error in the caller, not an AWS error)."""


class KeyMismatch(BlockError):
    """The key given does not match the owner's data key (or its encryption)."""


class CopyInProgress(BlockError):
    """The owner is the destination of a copy still running: it takes no writes yet."""


class CopyCancelled(BlockError):
    """The copy's destination was released while the copy ran: the copy stopped, and what
    it had stored is reclaimed. Its caller's resource was deleted; nothing failed."""


class UnrelatedLineage(BlockError):
    """changed_blocks between owners that share no lineage (EBS ``UNRELATED_SNAPSHOTS``)."""
