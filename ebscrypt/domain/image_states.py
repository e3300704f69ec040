"""The image state machine (pure rules, no I/O): an image is ``pending`` → ``available``
| ``failed``, following its snapshots (R-LIFE-1, R-KEY-6)."""

from __future__ import annotations

IMAGE_PENDING = "pending"
IMAGE_AVAILABLE = "available"
IMAGE_FAILED = "failed"

IMAGE_STATES = (IMAGE_PENDING, IMAGE_AVAILABLE, IMAGE_FAILED)


def image_state_after(snapshot_states: list[str]) -> str:
    """An image's state from its snapshots': all completed → available; any error → failed."""
    if any(s == "error" for s in snapshot_states):
        return IMAGE_FAILED
    if all(s == "completed" for s in snapshot_states):
        return IMAGE_AVAILABLE
    return IMAGE_PENDING
