"""tests/integration/test_tools_ansible.py again, through HAProxy over three servers (PostgreSQL,
shared block store and root key): consecutive calls land on different processes."""

from typing import Any, Callable

import pytest

from tests.conftest import client_factory
from tests.integration.test_tools_ansible import *  # noqa: F401,F403  (tests and their fixtures)
from tests.scaleout.conftest import Cluster


@pytest.fixture(scope="module")
def endpoint(cluster: Cluster) -> str:
    return cluster.url


@pytest.fixture(scope="module")
def aws(endpoint: str) -> Callable[..., Any]:
    return client_factory(endpoint)
