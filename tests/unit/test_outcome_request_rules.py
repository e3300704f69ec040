"""The request-level encryption rules kept in domain/outcome.py beside ``decide`` (issue 11:
one home per rule), called by CopyImage, RunInstances, launch templates and StartSnapshot."""

from __future__ import annotations

import pytest

from ebscrypt.domain.outcome import check_key_dependency, key_implies_encrypted, refuses_unencrypted
from ebscrypt.errors import InvalidParameterDependency


@pytest.mark.parametrize("encrypted", [None, False])
def test_r_out_1_key_without_encrypted_is_refused(encrypted: bool | None) -> None:
    with pytest.raises(InvalidParameterDependency) as exc:
        check_key_dependency(encrypted, "alias/k")
    assert exc.value.code == "InvalidParameterDependency"
    assert exc.value.message == "The parameter KmsKeyId requires the parameter Encrypted to be set."


@pytest.mark.parametrize("encrypted,key", [(True, "alias/k"), (None, None), (False, None), (True, None),
                                           (None, "")])
def test_r_out_1_allowed(encrypted: bool | None, key: str | None) -> None:
    check_key_dependency(encrypted, key)


def test_r_out_7_unencrypted_refused_only_with_ebd() -> None:
    assert refuses_unencrypted(False, True)
    assert not refuses_unencrypted(False, False)
    assert not refuses_unencrypted(None, True)
    assert not refuses_unencrypted(True, True)


def test_start_snapshot_key_implies_encryption() -> None:
    assert key_implies_encrypted(None, "arn:aws:kms:us-east-1:111122223333:key/x") is True
    assert key_implies_encrypted(None, None) is None
    assert key_implies_encrypted(False, "k") is False  # left to R-OUT-1
    assert key_implies_encrypted(True, None) is True
