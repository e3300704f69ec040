"""tests/integration/test_ebs.py again, on a server whose metadata is in PostgreSQL."""

from tests.integration.test_ebs import *  # noqa: F401,F403  (tests and their fixtures)
