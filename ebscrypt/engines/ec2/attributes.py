"""Request forms shared by the EC2 ``Modify*Attribute`` operations of images and snapshots.

Two things real clients send that the model alone does not settle:

- the Attribute value in any case: Ansible's ec2_ami sends ``Attribute=LaunchPermission`` /
  ``Description`` where the model's enum says ``launchPermission`` / ``description``, and
  AWS accepts it;
- the older flat-list form of a permission change (``OperationType`` + ``UserId.N`` /
  ``UserGroup.N`` ...) *without* ``OperationType``: Packer (``ami_users``, ``ami_groups``,
  ``snapshot_users``) sends the flat lists beside the structured ``Add`` list, with neither
  OperationType nor Attribute, and AWS accepts it. An omitted OperationType means add.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ebscrypt.errors import InvalidParameterValue


def canonical_names(names: Iterable[str]) -> dict[str, str]:
    """{lower-case name: the model's spelling} for a case-insensitive lookup."""
    return {name.lower(): name for name in names}


def canonical(attribute: str, names: Mapping[str, str]) -> str:
    """The model's spelling of ``attribute`` (an unknown name comes back unchanged)."""
    return names.get(attribute.lower(), attribute)


def legacy_operation(op: str | None) -> str:
    """OperationType of the flat-list form: ``add`` (also when omitted) or ``remove``."""
    if op is None:
        return "add"
    if op not in ("add", "remove"):
        raise InvalidParameterValue(f"Value ({op}) for parameter operationType is invalid. Valid values: add, remove.")
    return op
