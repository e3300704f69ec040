"""tests/unit/test_db.py again on PostgreSQL: the same transaction model (writers one at a
time from BEGIN, readers on a snapshot without waiting), schema versions and upgrades.
Left out: the SQLite PRAGMA checks."""

from tests.unit.test_db import *  # noqa: F401,F403  (tests and their fixtures)

del test_every_pooled_connection_keeps_the_durability_pragmas  # noqa: F821  (SQLite's PRAGMAs)
