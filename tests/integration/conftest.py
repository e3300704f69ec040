"""Per-test account fixtures shared by the EC2 integration modules: a fresh account (so
account settings such as encryption by default never leak between tests) and its ec2/kms
clients. A module that needs its own account range defines ``acct`` itself."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.helpers import new_account


@pytest.fixture
def acct() -> str:
    return new_account()


@pytest.fixture
def ec2(aws: Callable[..., Any], acct: str) -> Any:
    return aws("ec2", account=acct)


@pytest.fixture
def kms(aws: Callable[..., Any], acct: str) -> Any:
    return aws("kms", account=acct)
