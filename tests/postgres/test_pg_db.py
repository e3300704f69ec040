"""tests/unit/test_db.py again on PostgreSQL: readers on a snapshot without waiting, schema
versions and upgrades. Left out: the SQLite PRAGMA checks, and writers waiting for each
other at BEGIN (SQLite's model; PostgreSQL's writers run concurrently, serializable: see
tests/postgres/test_pg_concurrency.py)."""

from tests.unit.test_db import *  # noqa: F401,F403  (tests and their fixtures)

del test_every_pooled_connection_keeps_the_durability_pragmas  # noqa: F821  (SQLite's PRAGMAs)
del test_writers_take_the_lock_at_begin  # noqa: F821  (SQLite's BEGIN IMMEDIATE)
