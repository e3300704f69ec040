"""Some of tests/integration/test_insight.py again: `ebscrypt explain` / `report` reading a
PostgreSQL metadata database (``--db URL``, a READ ONLY transaction). A subset: the
queries are the same SQLAlchemy Core on both; this proves the read-only PostgreSQL path."""

from tests.integration.conftest import acct, ec2, kms  # noqa: F401  (the per-test account fixtures)
from tests.integration.test_insight import (  # noqa: F401
    acct2,
    test_explain_chain_and_shared_data_key,
    test_explain_unknown_provenance_and_missing,
    test_report_keys_pending_deletion_disabled_and_open,
)
