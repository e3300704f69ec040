"""tests/integration/test_kms_api.py again, on a server whose metadata is in PostgreSQL."""

from tests.integration.test_kms_api import *  # noqa: F401,F403  (tests and their fixtures)
