"""The block engine's exceptions: misuse by a caller, and the states a copy or a lineage
query can meet, and a stored block that fails its integrity check. None of them is an AWS
error; the layer above (services/ebs.py, the EC2 jobs) maps them."""

from __future__ import annotations


class BlockError(Exception):
    """Misuse of the engine (a programming error in the caller, not an AWS error)."""


class BlockIntegrityError(BlockError):
    """A stored block (or its sealed checksum) failed authentication or its checksum.

    Deliberately carries no detail: which check failed is nobody's business but the log's.
    The layer above answers it as an internal error of its own service.
    """

    def __init__(self) -> None:
        super().__init__("A stored block failed its integrity check.")


class KeyMismatch(BlockError):
    """The key given does not match the owner's data key (or its encryption)."""


class CopyInProgress(BlockError):
    """The owner is the destination of a copy still running: it takes no writes yet."""


class CopyCancelled(BlockError):
    """The copy's destination was released while the copy ran: the copy stopped, and what
    it had stored is reclaimed. Its caller's resource was deleted; nothing failed."""


class UnrelatedLineage(BlockError):
    """changed_blocks between owners that share no lineage (EBS ``UNRELATED_SNAPSHOTS``)."""
