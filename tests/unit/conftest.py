"""Unit-test fixtures. ``db_url``: the metadata database a test opens itself — a SQLite file
here; tests/postgres/conftest.py gives a new PostgreSQL database instead when those tests
re-run there."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"
