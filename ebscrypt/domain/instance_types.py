"""Instance types and the instance / image state machines (pure rules, no I/O).

R-RUN-2: with EBS encryption by default on, instance types that cannot attach encrypted
volumes are refused. Every current-generation type supports EBS encryption; of the
previous generation only A1, C3, cr1.8xlarge, G2, I2, M3 and R3 do. So t1, m1, m2, c1,
cc1, cc2, cg1, hi1 and hs1 are refused.

The states follow EC2: an instance is ``pending`` (0) → ``running`` (16); ``stopping``
(64) → ``stopped`` (80) → ``pending``; ``shutting-down`` (32) → ``terminated`` (48). An
image is ``pending`` → ``available`` | ``failed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- instance types -------------------------------------------------------------------

#: Previous-generation families (the EC2 "previous generation instances" list the spec
#: restates). Anything else with a well-formed name is treated as current generation.
PREVIOUS_GENERATION_FAMILIES = frozenset(
    {"a1", "c1", "c3", "cc1", "cc2", "cg1", "cr1", "g2", "hi1", "hs1", "i2", "m1", "m2", "m3", "r3", "t1"}
)

#: Of the previous generation, these support EBS encryption (whole families)…
_PREVIOUS_WITH_ENCRYPTION_FAMILIES = frozenset({"a1", "c3", "g2", "i2", "m3", "r3"})
#: …and these single types.
_PREVIOUS_WITH_ENCRYPTION_TYPES = frozenset({"cr1.8xlarge"})

#: RunInstances' documented default when InstanceType is omitted.
DEFAULT_INSTANCE_TYPE = "m1.small"

_TYPE_RE = re.compile(r"^(?P<family>[a-z][a-z0-9-]*)\.(?P<size>[a-z0-9-]+)$")


def family_of(instance_type: str) -> str | None:
    """``"m5.large"`` → ``"m5"``; ``None`` for a malformed name."""
    match = _TYPE_RE.match(instance_type or "")
    return match.group("family") if match else None


def supports_ebs_encryption(instance_type: str) -> bool:
    """Whether ``instance_type`` can attach encrypted EBS volumes (R-RUN-2)."""
    family = family_of(instance_type)
    if family is None:
        return False
    if family not in PREVIOUS_GENERATION_FAMILIES:
        return True
    return family in _PREVIOUS_WITH_ENCRYPTION_FAMILIES or instance_type in _PREVIOUS_WITH_ENCRYPTION_TYPES


def encryption_refusal(instance_type: str, *, needs_encryption: bool) -> str | None:
    """The reason a launch of ``instance_type`` is refused, or ``None`` if it may proceed.

    ``needs_encryption`` is true when encryption by default is on, or when any volume of
    the launch will be encrypted.
    """
    if needs_encryption and not supports_ebs_encryption(instance_type):
        return (
            f"The instance type '{instance_type}' does not support encrypted EBS volumes, "
            "and EBS encryption is required for this launch (encryption by default is "
            "enabled or a block device mapping is encrypted). Choose a current generation "
            "instance type."
        )
    return None


# -- instance states ------------------------------------------------------------------

PENDING = "pending"
RUNNING = "running"
SHUTTING_DOWN = "shutting-down"
TERMINATED = "terminated"
STOPPING = "stopping"
STOPPED = "stopped"

STATE_CODES: dict[str, int] = {
    PENDING: 0,
    RUNNING: 16,
    SHUTTING_DOWN: 32,
    TERMINATED: 48,
    STOPPING: 64,
    STOPPED: 80,
}


@dataclass(frozen=True)
class Transition:
    """What an instance request does to an instance in a given state.

    ``to`` is the state the instance enters at once (``None``: unchanged, the request is a
    no-op for it); ``then`` is the state a background job later moves it to; ``error``
    is set when the request is refused for this state.
    """

    to: str | None = None
    then: str | None = None
    error: str | None = None


def start(state: str) -> Transition:
    if state == STOPPED:
        return Transition(to=PENDING, then=RUNNING)
    if state in (PENDING, RUNNING):
        return Transition()
    return Transition(error=_incorrect_state("start", state))


def stop(state: str) -> Transition:
    if state in (PENDING, RUNNING):
        return Transition(to=STOPPING, then=STOPPED)
    if state in (STOPPING, STOPPED):
        return Transition()
    return Transition(error=_incorrect_state("stop", state))


def terminate(state: str) -> Transition:
    if state in (SHUTTING_DOWN, TERMINATED):
        return Transition()
    return Transition(to=SHUTTING_DOWN, then=TERMINATED)


def _incorrect_state(verb: str, state: str) -> str:
    return "started" if verb == "start" else "stopped"


def incorrect_state_message(instance_id: str, error: str) -> str:
    """EC2's ``IncorrectInstanceState`` wording for a refused start/stop."""
    return f"The instance '{instance_id}' is not in a state from which it can be {error}."


# -- image states ---------------------------------------------------------------------

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
