"""The encryption outcome rule (SPEC §2, R-OUT-1…7): one pure function.

Every new volume or snapshot — CreateVolume, CopySnapshot, CopyImage (per snapshot),
RunInstances / launch templates (per block device mapping) — asks :func:`decide` which
encryption it gets. Nothing here touches storage or KMS: keys are plain strings (an id,
ARN, alias name or alias ARN as the caller gave it, or the resolved ARN); the engine
resolves and validates the chosen key afterwards (R-KEY-6).

Not covered here, by design: CreateSnapshot of a volume (R-SNAP-1) and CreateImage
(R-IMG-2) always keep the volume's own key and data key, whatever EBD says.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebscrypt.errors import InvalidParameterDependency

KMS_DEPENDENCY_MESSAGE = "The parameter KmsKeyId requires the parameter Encrypted to be set."


@dataclass(frozen=True)
class Source:
    """The snapshot a new volume/snapshot is made from (``None`` for a new empty volume)."""

    encrypted: bool
    key: str | None = None  # the source's KMS key ARN when encrypted
    owned: bool = True  # False: shared with the caller by another account


@dataclass(frozen=True)
class Outcome:
    encrypted: bool
    key: str | None  # None when unencrypted
    reuse_source_data_key: bool  # R-KEY-2: same key, same region -> the source's data key
    rule: str  # the rule id that decided, e.g. "R-OUT-3"


def reuses_data_key(source: Source | None, key: str | None, *, cross_region: bool = False) -> bool:
    """R-KEY-2: the source's data key is reused only under the very same key, same region."""
    return (
        source is not None
        and source.encrypted
        and key is not None
        and source.key is not None
        and source.key == key
        and not cross_region
    )


def decide(
    source: Source | None,
    *,
    encrypted: bool | None,
    kms_key_id: str | None,
    ebd: bool,
    default_key: str,
    cross_region: bool = False,
) -> Outcome:
    """Decide the encryption of a new volume or snapshot.

    ``source``: ``None`` (new empty volume) or the source snapshot. ``encrypted`` /
    ``kms_key_id``: the request's parameters (``None`` = absent). ``ebd``: encryption by
    default for the caller in the destination region; ``default_key``: the caller's default
    EBS key there. ``cross_region``: a copy into another region.

    Raises :class:`~ebscrypt.errors.InvalidParameterDependency` for R-OUT-1.
    """
    if kms_key_id and encrypted is not True:  # R-OUT-1
        raise InvalidParameterDependency(KMS_DEPENDENCY_MESSAGE)
    if kms_key_id:  # R-OUT-2 (re-encryption when the source has another key)
        return Outcome(True, kms_key_id, reuses_data_key(source, kms_key_id, cross_region=cross_region), "R-OUT-2")
    if source is not None and source.encrypted:
        # R-OUT-7: Encrypted=False cannot remove encryption; only the key choice remains.
        if source.owned and not cross_region and source.key:  # R-OUT-3
            return Outcome(True, source.key, True, "R-OUT-3")
        # R-OUT-4: shared with the caller, or copied into another region.
        return Outcome(True, default_key, reuses_data_key(source, default_key, cross_region=cross_region), "R-OUT-4")
    if encrypted is True or ebd:  # R-OUT-5 (R-OUT-7: EBD wins over Encrypted=False)
        return Outcome(True, default_key, False, "R-OUT-5")
    return Outcome(False, None, False, "R-OUT-6")
