"""Hot statements by key, compiled once and run on the driver's cursor (issue 15).

Through SQLAlchemy Core one statement costs ~60-90 µs of CPU on this project's VMs (the
execution context, events, parameter processing, result set-up, the compiled cache's
lookup) against ~6 µs for SQLite to run it (bench/README.md sections E6, M7). The EBS
direct APIs make several one-row reads per 512 KiB block, and the create calls
(CreateVolume, CreateSnapshot, CopySnapshot) ~5-10 statements each, so:

- :class:`PreparedRead` compiles a ``select`` once per dialect and returns its first row;
- :class:`PreparedWrite` compiles an ``insert``/``update``/``delete`` once per dialect and
  set of parameter names and returns the rows it changed.

Both run on the DBAPI connection of the caller's SQLAlchemy connection — inside the
caller's transaction, which SQLAlchemy (or ``Database``) began: the same snapshot, the same
locks — with the parameters converted by the columns' own bind processors (datetimes to
SQLite's text, booleans to integers) and the row converted by their result processors, so
the caller gets what ``conn.execute(stmt, params)`` would have given.

Only for SQLite and statements SQLAlchemy would run as one plain execution: no expanding
IN, no literal-execute or post-compile parameters, no Python-side column defaults
(``insert_prefetch``), no RETURNING. Anything else (PostgreSQL included) runs through
SQLAlchemy as before: the fast path is a cache of work SQLAlchemy would redo on every
call, never a second meaning. Driver errors are wrapped as SQLAlchemy wraps them
(``IntegrityError`` of a duplicate ClientToken stays one, for ``db.is_conflict``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, Delete, Insert, Select, Update
from sqlalchemy.exc import DBAPIError

_REQUIRED = object()  # a placeholder whose value the caller must give


@dataclass(frozen=True)
class _Plan:
    sql: str
    # per placeholder, in order: (parameter name, its constant when the caller does not
    # give it — a literal of the statement — or _REQUIRED, the bind processor or None)
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    keys: tuple[str, ...]  # the result's column keys, as ``.mappings()`` gives them (reads)
    processors: tuple[Callable[[Any], Any] | None, ...]

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, const, proc in self.binds:
            value = params[name] if const is _REQUIRED or name in params else const
            out.append(value if proc is None else proc(value))
        return out


def _run(conn: Connection, plan: _Plan, params: Mapping[str, Any]) -> Any:
    """The plan's statement executed on the driver: its cursor (the caller closes it)."""
    driver: Any = conn.connection.driver_connection
    values = plan.values(params)
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        return driver.execute(plan.sql, values)
    except dbapi_error as exc:  # wrapped as SQLAlchemy wraps it: callers see one error type
        raise DBAPIError.instance(plan.sql, values, exc, dbapi_error) from exc


class _Plans:
    """A statement's plans by (dialect name, parameter names): compiled on first use, on
    SQLite only; None — also cached — means SQLAlchemy's own execution."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, tuple[str, ...] | None], _Plan | None] = {}
        self._lock = threading.Lock()

    def get(self, conn: Connection, stmt: Select[Any] | Insert | Update | Delete,
            names: tuple[str, ...] | None) -> _Plan | None:
        dialect = conn.dialect
        key = (dialect.name, names)
        try:
            return self._by[key]
        except KeyError:
            pass
        plan = _compile(stmt, dialect, names) if dialect.name == "sqlite" else None
        with self._lock:
            self._by[key] = plan
        return plan


class PreparedRead:
    """A ``select`` that returns at most one row, run by :meth:`first`."""

    def __init__(self, stmt: Select[Any]) -> None:
        self.stmt = stmt
        self._plans = _Plans()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict of column key to value, or None. [conn: a transaction]"""
        plan = self._plan(conn)
        if plan is None:
            row = conn.execute(self.stmt, dict(params)).mappings().first()
            return dict(row) if row is not None else None
        cur = _run(conn, plan, params)
        try:
            raw = cur.fetchone()
        finally:
            cur.close()
        if raw is None:
            return None
        return {key: (value if proc is None or value is None else proc(value))
                for key, proc, value in zip(plan.keys, plan.processors, raw)}

    def exists(self, conn: Connection, params: Mapping[str, Any]) -> bool:
        """Whether the statement returns a row. [conn: a transaction]"""
        plan = self._plan(conn)
        if plan is None:
            return conn.execute(self.stmt, dict(params)).first() is not None
        cur = _run(conn, plan, params)
        try:
            return cur.fetchone() is not None
        finally:
            cur.close()

    def _plan(self, conn: Connection) -> _Plan | None:
        return self._plans.get(conn, self.stmt, None)


class PreparedWrite:
    """An ``insert``, ``update`` or ``delete`` run by :meth:`run`, parameters by name (an
    ``insert(table)`` takes its columns from the parameters' names, as
    ``conn.execute(insert(table), values)`` does)."""

    def __init__(self, stmt: Insert | Update | Delete) -> None:
        self.stmt = stmt
        self._plans = _Plans()  # one per set of parameter names (the caller's order)

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute it once with ``params``; the number of rows it changed. [conn: a transaction]"""
        plan = self._plan(conn, tuple(params))
        if plan is None:
            return int(conn.execute(self.stmt, dict(params)).rowcount)
        cur = _run(conn, plan, params)
        try:
            return int(cur.rowcount)
        finally:
            cur.close()

    def run_many(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Execute it once per row, every row with the first row's parameter names, in one
        driver ``executemany`` (the block group commit's entries, E7). [conn: a transaction]"""
        if not rows:
            return
        plan = self._plan(conn, tuple(rows[0]))
        if plan is None:
            conn.execute(self.stmt, rows)
            return
        driver: Any = conn.connection.driver_connection
        values = [plan.values(row) for row in rows]
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            driver.executemany(plan.sql, values)
        except dbapi_error as exc:  # as SQLAlchemy wraps it (an IntegrityError stays one)
            raise DBAPIError.instance(plan.sql, values, exc, dbapi_error) from exc

    def _plan(self, conn: Connection, names: tuple[str, ...]) -> _Plan | None:
        return self._plans.get(conn, self.stmt, names)


def _compile(stmt: Select[Any] | Insert | Update | Delete, dialect: Any,
             column_keys: tuple[str, ...] | None = None) -> _Plan | None:
    """The statement's SQL and conversions for ``dialect``; None when the fast path cannot
    reproduce SQLAlchemy's execution exactly. ``column_keys``: the parameters' names (a
    write's columns to set), None for a ``select``."""
    try:
        compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None)
    except Exception:
        return None  # SQLAlchemy's own execution raises its error, as it would have
    names = compiled.positiontup
    if names is None or compiled.literal_execute_params or compiled.post_compile_params:
        return None
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        return None  # Python-side defaults SQLAlchemy computes per execution
    if compiled.effective_returning:
        return None
    binds = []
    for name in names:
        bind = compiled.binds[name]
        if bind.expanding or bind.callable is not None:
            return None
        if column_keys is not None and name not in column_keys and bind.required:
            return None  # SQLAlchemy would refuse the execution: let it say so
        const = _REQUIRED if bind.required else bind.value
        binds.append((name, const, bind.type.dialect_impl(dialect).bind_processor(dialect)))
    keys: tuple[str, ...] = ()
    processors: tuple[Callable[[Any], Any] | None, ...] = ()
    if isinstance(stmt, Select):
        columns = list(stmt.selected_columns)
        keys = tuple(str(c.key) for c in columns)
        if len(set(keys)) != len(keys):
            return None
        processors = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _Plan(str(compiled), tuple(binds), keys, processors)
