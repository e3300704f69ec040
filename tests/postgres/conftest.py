"""Fixtures that put the tests of this directory on PostgreSQL.

``EBSCRYPT_TEST_PG_URL`` names a PostgreSQL server as a SQLAlchemy URL
(``postgresql+psycopg://user@host:port/db``, as ``bash ci/postgres.sh start`` prints). Every
ebscrypt server started here runs with ``--db`` on a database of its own (CREATE DATABASE
per server, dropped at the end), so tests see the same empty state as on SQLite.

The modules of this directory re-run existing tests (``from tests.integration.test_x import *``)
with the fixtures below in place of tests/conftest.py's: ``server``/``endpoint``/``aws``/
``advance_clock`` (a session server on PostgreSQL), ``server_factory`` (extra servers, each
on a new database) and ``db_url`` (a new database for tests that open ``Database`` directly).
Without the variable — or when ci/postgres.sh could not start a server and put its reason in
the variable instead of a URL — every test here is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ServerProcess, server_bound_fixtures

PG_URL_ENV = "EBSCRYPT_TEST_PG_URL"


def pg_skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        return f"{PG_URL_ENV} is not set (export {PG_URL_ENV}=\"$(bash ci/postgres.sh start)\" to run them)"
    if not url.startswith("postgresql"):
        return f"PostgreSQL not available: {url}"  # ci/postgres.sh's 'unavailable: <why>'
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


class PgDatabases:
    """Creates databases on the server named by the admin URL; drops them all at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin = make_url(admin_url)
        self.created: list[str] = []

    def create(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (for ``--db``)."""
        name = f"ebscrypt_test_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            # FORCE: a server killed with SIGKILL may leave its connections behind for a moment
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def _execute(self, sql: str) -> None:
        import psycopg

        dsn = self.admin.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:  # CREATE DATABASE: no transaction
            conn.execute(sql)  # type: ignore[arg-type]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    reason = pg_skip_reason()
    if reason:
        pytest.skip(reason)
    databases = PgDatabases(os.environ[PG_URL_ENV].strip())
    yield databases
    databases.drop_all()


@pytest.fixture
def db_url(pg_databases: PgDatabases) -> str:
    """A new PostgreSQL database for one test (tests that open ``Database`` themselves)."""
    return pg_databases.create()


# -- the fixtures of tests/conftest.py, on PostgreSQL ----------------------------------------
# All of them are overridden, not only ``server``: a session fixture of tests/conftest.py
# (``aws``) would otherwise keep the client it made for the SQLite server.


@pytest.fixture(scope="session")
def server(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("ebscrypt-pg") / "data", ["--db", pg_databases.create()]).start()
    yield srv
    srv.stop()


endpoint, aws, advance_clock = server_bound_fixtures()


@pytest.fixture
def server_factory(pg_databases: PgDatabases, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Extra servers, each on a database of its own (kept across its kill -9 and restarts)."""
    started: list[ServerProcess] = []
    databases: dict[Path, str] = {}  # a data dir started again finds its database again

    def factory(extra_args: list[str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        data_dir = data_dir or tmp_path / f"srv{len(started)}"
        if data_dir not in databases:
            databases[data_dir] = pg_databases.create()
        srv = ServerProcess(data_dir, ["--db", databases[data_dir], *(extra_args or [])])
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.stop()
