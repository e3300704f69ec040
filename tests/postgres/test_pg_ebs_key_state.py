"""tests/integration/test_ebs_key_state.py again, on PostgreSQL: the session server's
metadata there, and the two-process test with both processes on one PostgreSQL database."""

import pytest

from tests.integration.test_ebs_key_state import *  # noqa: F401,F403  (tests and their fixtures)


@pytest.fixture
def shared_metadata_args(db_url: str) -> list[str]:  # noqa: F811  (overrides the SQLite one)
    return ["--db", db_url]
