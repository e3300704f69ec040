"""tests/integration/test_ec2_snapshots.py again (snapshots, copies that re-encrypt under another
key, cross-account/region copies), on a server whose block objects are in Ceph RGW."""

from tests.integration.test_ec2_snapshots import *  # noqa: F401,F403  (tests and their fixtures)
