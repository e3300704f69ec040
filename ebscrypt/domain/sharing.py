"""Who may be given createVolumePermission / launchPermission (SPEC §5), pure.

R-SHARE-2: an encrypted snapshot (or an image with an encrypted snapshot) cannot be made
public. R-SHARE-3: a resource encrypted under the AWS managed key (alias/aws/ebs) cannot
be shared at all; sharing needs a customer managed key.
"""

from __future__ import annotations

import re
from typing import Iterable

from ebscrypt.errors import InvalidParameter, InvalidParameterValue, Malformed, OperationNotPermitted

_ACCOUNT = re.compile(r"^\d{12}$")

AWS_MANAGED_SNAPSHOT_MESSAGE = "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot."
ENCRYPTED_PUBLIC_SNAPSHOT_MESSAGE = "Encrypted snapshots cannot be made public."
ENCRYPTED_PUBLIC_IMAGE_MESSAGE = "Images with encrypted snapshots cannot be made public."


def check_grantees(user_ids: Iterable[str], groups: Iterable[str]) -> None:
    for uid in user_ids:
        if not _ACCOUNT.match(uid or ""):
            raise Malformed("InvalidUserID", uid, f"Invalid user id: '{uid}'")
    for group in groups:
        if group != "all":
            raise InvalidParameterValue(f"Value ({group}) for parameter group is invalid. Valid values are: all.")


def check_share(*, encrypted: bool, aws_managed_key: bool, add_users: Iterable[str],
                add_groups: Iterable[str], resource: str = "snapshot") -> None:
    """Refuse a permission change that §5 forbids (raises the typed error with AWS's code)."""
    add_users, add_groups = list(add_users), list(add_groups)
    check_grantees(add_users, add_groups)
    if encrypted and "all" in add_groups:  # R-SHARE-2
        if resource == "image":
            raise InvalidParameter(ENCRYPTED_PUBLIC_IMAGE_MESSAGE)
        raise OperationNotPermitted(ENCRYPTED_PUBLIC_SNAPSHOT_MESSAGE)
    if encrypted and aws_managed_key and (add_users or add_groups):  # R-SHARE-3
        raise InvalidParameter(AWS_MANAGED_SNAPSHOT_MESSAGE)
