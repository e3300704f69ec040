"""tests/integration/test_ec2_golden.py again, on a server whose metadata is in PostgreSQL."""

from tests.integration.test_ec2_golden import *  # noqa: F401,F403  (tests and their fixtures)
