"""tests/integration/test_ec2_snapshots.py again, on a server whose metadata is in PostgreSQL."""

from tests.integration.test_ec2_snapshots import *  # noqa: F401,F403  (tests and their fixtures)
