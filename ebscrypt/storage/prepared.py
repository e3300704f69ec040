"""Hot one-row reads by key, compiled once and run on the driver's cursor (issue 15).

Through SQLAlchemy Core a primary-key read costs ~80-90 µs of CPU on this project's VMs
(the execution context, events, result set-up, the compiled cache's lookup) against
~6 µs for SQLite to run it (bench/README.md section E6). The EBS direct APIs make several
such reads per 512 KiB block (the snapshot, its KMS key's authorization generation, the
block's entry), so :class:`PreparedRead` compiles a ``select`` once per dialect and runs
it on the DBAPI connection of the caller's SQLAlchemy connection — inside the caller's
transaction, which SQLAlchemy began (the same snapshot, the same locks) — and converts
the row with the columns' own result processors (SQLite's text timestamps to datetimes,
integers to booleans), so the caller gets what ``conn.execute(stmt).mappings().first()``
would have given.

Only for SQLite, statements with plain positional parameters and no bind processing;
anything else (PostgreSQL, an expanding IN, a type that converts its parameters) runs
through SQLAlchemy as before: the fast path is a cache of work SQLAlchemy would redo on
every call, never a second meaning.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, Select, Table, bindparam, insert
from sqlalchemy.exc import DBAPIError


@dataclass(frozen=True)
class _Plan:
    sql: str
    params: tuple[str, ...]  # parameter names in the order of the statement's placeholders
    keys: tuple[str, ...]  # the result's column keys, as ``.mappings()`` gives them
    processors: tuple[Callable[[Any], Any] | None, ...]


class PreparedRead:
    """A ``select`` that returns at most one row, run by :meth:`first`."""

    def __init__(self, stmt: Select[Any]) -> None:
        self.stmt = stmt
        self._plans: dict[str, _Plan | None] = {}  # by dialect name (None: SQLAlchemy's way)
        self._lock = threading.Lock()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict of column key to value, or None. [conn: a transaction]"""
        plan = self._plan(conn)
        if plan is None:
            row = conn.execute(self.stmt, dict(params)).mappings().first()
            return dict(row) if row is not None else None
        driver: Any = conn.connection.driver_connection
        values = [params[name] for name in plan.params]
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            cur = driver.execute(plan.sql, values)
            try:
                raw = cur.fetchone()
            finally:
                cur.close()
        except dbapi_error as exc:  # wrapped as SQLAlchemy wraps it: callers see one error type
            raise DBAPIError.instance(plan.sql, values, exc, dbapi_error) from exc
        if raw is None:
            return None
        return {key: (value if proc is None or value is None else proc(value))
                for key, proc, value in zip(plan.keys, plan.processors, raw)}

    def _plan(self, conn: Connection) -> _Plan | None:
        dialect = conn.dialect
        try:
            return self._plans[dialect.name]
        except KeyError:
            pass
        plan = _compile(self.stmt, dialect) if dialect.name == "sqlite" else None
        with self._lock:
            self._plans[dialect.name] = plan
        return plan


def _compile(stmt: Select[Any], dialect: Any) -> _Plan | None:
    """The statement's SQL and conversions for ``dialect``; None when the fast path cannot
    reproduce SQLAlchemy's execution exactly (parameters it would expand or convert)."""
    compiled = stmt.compile(dialect=dialect)
    names = compiled.positiontup
    if names is None or compiled.literal_execute_params or compiled.post_compile_params:
        return None
    for bind in compiled.binds.values():
        if bind.expanding or bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            return None
    columns = list(stmt.selected_columns)
    keys = tuple(str(c.key) for c in columns)
    if len(set(keys)) != len(keys):
        return None
    processors = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _Plan(str(compiled), tuple(names), keys, processors)


class PreparedInsert:
    """An INSERT of rows giving every column of ``table``, run by :meth:`run` (the block
    group commit's entries, issue 15, E7): on SQLite, compiled once and run with the
    driver's ``executemany`` inside the caller's transaction; anything else (another
    dialect, a column whose values SQLAlchemy converts) through SQLAlchemy as before.
    Every column given: no default to apply, so the two ways insert the same rows."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.stmt = insert(table)
        self._plans: dict[str, _Plan | None] = {}
        self._lock = threading.Lock()

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (each a dict of every column's value). [conn: a transaction]"""
        if not rows:
            return
        plan = self._plan(conn)
        if plan is None:
            conn.execute(self.stmt, rows)
            return
        driver: Any = conn.connection.driver_connection
        values = [[row[name] for name in plan.params] for row in rows]
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            driver.executemany(plan.sql, values)
        except dbapi_error as exc:  # as SQLAlchemy wraps it (an IntegrityError stays one)
            raise DBAPIError.instance(plan.sql, values, exc, dbapi_error) from exc

    def _plan(self, conn: Connection) -> _Plan | None:
        dialect = conn.dialect
        try:
            return self._plans[dialect.name]
        except KeyError:
            pass
        plan = _compile_insert(self.table, dialect) if dialect.name == "sqlite" else None
        with self._lock:
            self._plans[dialect.name] = plan
        return plan


def _compile_insert(table: Table, dialect: Any) -> _Plan | None:
    """The INSERT of every column of ``table`` as positional SQL for ``dialect``; None when
    a column's values would be converted (a bind processor) on the way in."""
    columns = list(table.columns)
    for column in columns:
        if column.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            return None
    compiled = insert(table).values({c.key: bindparam(c.key) for c in columns}).compile(dialect=dialect)
    names = compiled.positiontup
    if names is None or compiled.post_compile_params or set(names) != {c.key for c in columns}:
        return None
    return _Plan(str(compiled), tuple(names), (), ())
