"""SPEC §5 R-SHARE-2 / R-SHARE-3: the pure sharing checks."""

import pytest

from ebscrypt.domain.sharing import check_share
from ebscrypt.errors import ServiceError


def test_r_share_2_encrypted_snapshot_cannot_be_public() -> None:
    with pytest.raises(ServiceError) as err:
        check_share(encrypted=True, aws_managed_key=False, add_users=[], add_groups=["all"])
    assert err.value.code == "OperationNotPermitted"


def test_r_share_2_unencrypted_can_be_public() -> None:
    check_share(encrypted=False, aws_managed_key=False, add_users=[], add_groups=["all"])


def test_r_share_3_aws_managed_key_cannot_be_shared() -> None:
    with pytest.raises(ServiceError) as err:
        check_share(encrypted=True, aws_managed_key=True, add_users=["222222222222"], add_groups=[])
    assert err.value.code == "InvalidParameter"
    assert "AWS Managed CMK" in err.value.message


def test_r_share_1_customer_key_can_be_shared_with_accounts() -> None:
    check_share(encrypted=True, aws_managed_key=False, add_users=["222222222222"], add_groups=[])


@pytest.mark.parametrize("user", ["12345", "abcdefghijkl", ""])
def test_malformed_account(user: str) -> None:
    with pytest.raises(ServiceError):
        check_share(encrypted=False, aws_managed_key=False, add_users=[user], add_groups=[])
