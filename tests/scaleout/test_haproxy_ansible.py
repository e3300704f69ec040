"""tests/integration/test_tools_ansible.py again, through HAProxy over three servers (PostgreSQL,
shared block store and root key): consecutive calls land on different processes."""

from tests.integration.test_tools_ansible import *  # noqa: F401,F403  (tests and their fixtures; endpoint/aws: tests/scaleout/conftest.py)
