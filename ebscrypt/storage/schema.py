"""The one SQLAlchemy ``MetaData`` every table is declared on, and the core tables.

Each area declares its tables in its own module under ``ebscrypt.storage.tables``
(``kms.py``, ``blocks.py``, ``ec2.py`` …) on this ``metadata``; :func:`load_tables`
imports them all so ``create_all`` and migrations see the whole schema.
"""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("state", String(16), nullable=False, index=True),  # queued|running|done|failed
    Column("progress", Float, nullable=False, default=0.0),
    Column("checkpoint", Text, nullable=True),  # JSON, for resumable jobs
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The runner (one per server process) that claimed a running job, and when its lease
    # ends, in seconds since the epoch on the database's clock (see engines/jobs.py).
    Column("runner", String(128), nullable=True),
    Column("lease_expires", Float, nullable=True),
)


def load_tables() -> MetaData:
    """Import every table module so all tables are registered on ``metadata``."""
    import ebscrypt.storage.tables as pkg

    for info in pkgutil.iter_modules(pkg.__path__, prefix="ebscrypt.storage.tables."):
        importlib.import_module(info.name)
    return metadata
