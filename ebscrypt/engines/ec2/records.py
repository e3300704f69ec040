"""Typed, immutable views of the EC2 rows ec2core owns (built from SQLAlchemy rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from operator import itemgetter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from ebscrypt.storage.db import as_utc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

aware = as_utc  # SQLite times come back naive; every time here is UTC (others import records.aware)

_FIELDS: dict[type, tuple[str, ...]] = {}
_R = TypeVar("_R", bound="DataclassInstance")


def _from_row(cls: type[_R], row: Mapping[Any, Any]) -> _R:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    data = row if isinstance(row, dict) else dict(row)
    values = {}
    for name in names:
        v = data.get(name)
        if v.__class__ is datetime and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        values[name] = v
    return cls(**values)


@lru_cache(maxsize=None)
def _time_fields(cls: type) -> frozenset[str]:
    """Fields annotated as datetimes (SQLite hands them back naive: made UTC-aware)."""
    return frozenset(f.name for f in fields(cls) if "datetime" in str(f.type))


@lru_cache(maxsize=None)
def _bool_fields(cls: type) -> frozenset[str]:
    """Fields annotated as booleans (SQLite hands them back as 0/1: made bools)."""
    return frozenset(f.name for f in fields(cls) if str(f.type) in ("bool", "bool | None"))


_fromiso = datetime.fromisoformat


def _sqlite_time(value: Any) -> Any:
    """A time as SQLAlchemy's SQLite DateTime stores it (``YYYY-MM-DD HH:MM:SS.ffffff``,
    UTC) as an aware UTC datetime; ``datetime.fromisoformat`` of the text with its offset
    appended is one C call (~0.2 µs) and yields the ``timezone.utc`` singleton, where the
    type's own processor and a ``replace(tzinfo=...)`` took ~1.2 µs per time."""
    if value.__class__ is str:
        if len(value) == 26:  # the stored form: no offset
            return _fromiso(value + "+00:00")
        parsed = _fromiso(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if value.__class__ is datetime and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def row_locals(cls: type, keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """How a SQLite cursor row of the columns ``keys`` becomes ``cls``'s fields, as source:
    (the target list unpacking a row into locals ``c0``, ``c1``…, {field: the expression of
    its value over those locals}). The two conversions SQLAlchemy's types did are inline:
    times (stored text, UTC; the 26-character stored form with no offset is one C call) to
    aware datetimes, booleans (0/1) to bools; every other column SQLite returns as the
    Python value itself. One source for the record builder below and the Describe pages
    rendered straight from rows (services/ec2/view_table.py), which may select only the
    fields they read: a field not in ``keys`` has no entry. Names come from the
    dataclass's fields (literals, never code)."""
    names = _FIELDS.get(cls) or tuple(f.name for f in fields(cls))
    times, bools = _time_fields(cls), _bool_fields(cls)
    decoded = _decoders(cls)
    local = {k: f"c{i}" for i, k in enumerate(keys)}
    values: dict[str, str] = {}
    for n in names:
        if n not in local:
            continue
        c = local[n]
        if n in decoded:  # a stored text the record holds decoded (row_env names the function)
            values[n] = f"(None if {c} is None else _decode_{n}({c}))"
        elif n in times:
            values[n] = (f"(None if {c} is None else _fromiso({c} + '+00:00') "
                         f"if {c}.__class__ is str and len({c}) == 26 else _time({c}))")
        elif n in bools:
            values[n] = f"(None if {c} is None else {c} != 0)"  # bool() of 0/1, without the call
        else:
            values[n] = c
    return ", ".join(local[k] for k in keys) + ("," if len(keys) == 1 else ""), values


def row_iso_texts(cls: type, keys: tuple[str, ...]) -> dict[str, str]:
    """{time field: the expression (over ``row_locals``' locals) of its ISO 8601 text in
    UTC with milliseconds — ``YYYY-MM-DDTHH:MM:SS.mmmZ``, what the EC2 XML writes —
    sliced from the stored text; None where the stored text is not the plain 26-character
    form of a year from 1000 (then format the field's value)}. The stored form
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC) holds the same fields in the same order (issue
    15: 0.25 µs a time, where parsing it and formatting the datetime took 0.65)."""
    local = {k: f"c{i}" for i, k in enumerate(keys)}
    return {n: (f"({local[n]}[:10] + 'T' + {local[n]}[11:23] + 'Z' if {local[n]}.__class__ is str "
                f"and len({local[n]}) == 26 and {local[n]}[0] != '0' else None)")
            for n in (_FIELDS.get(cls) or tuple(f.name for f in fields(cls))) if n in _time_fields(cls) and n in local}


# The names the expressions of ``row_locals`` use (with a class's decoders: ``row_env``).
ROW_ENV: dict[str, Any] = {"_fromiso": _fromiso, "_time": _sqlite_time}


def _decoders(cls: type) -> Mapping[str, Callable[[Any], Any]]:
    """``cls.ROW_DECODERS``: {field: the function turning its stored value (not None) into
    the record's} — e.g. an image's block device mappings stored as JSON text."""
    found: Mapping[str, Callable[[Any], Any]] = getattr(cls, "ROW_DECODERS", {})
    return found


def row_env(cls: type) -> dict[str, Any]:
    """The names the expressions of :func:`row_locals` for ``cls`` use."""
    return {**ROW_ENV, **{f"_decode_{n}": f for n, f in _decoders(cls).items()}}


@lru_cache(maxsize=None)
def _sqlite_builder(cls: type, keys: tuple[str, ...]) -> Callable[[list[Any]], list[Any]]:
    """``cls`` records from SQLite cursor rows of the columns ``keys``, as one function
    generated per (record class, column list): each row unpacked into locals and each
    record's ``__dict__`` filled from one dict literal, the two conversions inline
    (:func:`row_locals`; issue 15: the generic loop — ``itemgetter``, a list per row, a
    loop over the time and the boolean positions, ``update(zip(...))`` — was ~2.5 µs of a
    snapshot's ~13)."""
    unpack, values = row_locals(cls, keys)
    missing = [f.name for f in fields(cls) if f.name not in values]
    if missing:
        raise ValueError(f"{cls.__name__} records need the columns {missing}")
    entries = [f"{n!r}: {v}" for n, v in values.items()]
    source = "\n".join([
        "def build(rows):",
        "    out = []",
        "    append = out.append",
        f"    for {unpack} in rows:",
        "        obj = _new(_cls)",
        "        obj.__dict__.update({" + ", ".join(entries) + "})",
        "        append(obj)",
        "    return out",
    ]) + "\n"
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **row_env(cls)}
    exec(compile(source, f"<records of {cls.__name__}>", "exec"), env)  # noqa: S102 (field-built source)
    build: Callable[[list[Any]], list[Any]] = env["build"]
    return build


@dataclass(frozen=True)
class StoredRows:
    """SQLite cursor rows of ``cls``'s columns ``keys``, kept as read (issue 15: a
    Describe page rendered straight from them skips a record and a view per item; it
    selects only the fields its view reads). ``records()``, of rows holding every field,
    builds the records they hold, the same as :func:`from_result` would have."""

    cls: type
    keys: tuple[str, ...]
    rows: list[Any]

    def records(self) -> list[Any]:
        return _sqlite_builder(self.cls, self.keys)(self.rows)

    def column(self, name: str) -> int:
        """The position of column ``name`` in a row."""
        return self.keys.index(name)

    def having(self, rows: list[Any]) -> "StoredRows":
        """The same columns, other rows (a page's slice, a filtered subset)."""
        return StoredRows(self.cls, self.keys, rows)


def stored_rows(cls: type, result: Any) -> "StoredRows | list[Any]":
    """On SQLite, the rows of ``cls``'s columns kept as read (:class:`StoredRows`), for a
    caller that renders them itself; elsewhere :func:`from_result`'s records (then the
    statement must select every field)."""
    keys = tuple(result.keys())
    names = set(_FIELDS.get(cls) or tuple(f.name for f in fields(cls)))
    if not set(keys) <= names:
        raise ValueError(f"columns that are not fields of {cls.__name__}: {sorted(set(keys) - names)}")
    if result.dialect.name != "sqlite":
        return from_result(cls, result)
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    return StoredRows(cls, keys, rows)


def from_result(cls: type, result: Any) -> list[Any]:
    """Build ``cls`` records from a SQLAlchemy Result of full-table rows.

    The Describe fast path (issue 15: a page of 1,000 records was a third of the server's
    time): rows fetched at once, each record's values set into a fresh instance's
    ``__dict__`` — what the frozen dataclass's ``__init__`` does field by field through
    ``object.__setattr__``, without its per-field cost. On SQLite the rows are the DB-API
    cursor's own tuples (SQLAlchemy's per-row processing skipped: the statement is still
    compiled and cached by SQLAlchemy), turned into records by a function generated per
    column list (``_sqlite_builder``) that does the two conversions the types did: times
    (stored text, UTC) to aware datetimes, booleans (0/1) to bools; every other column
    SQLite returns as the Python value itself. Other databases keep SQLAlchemy's rows
    (each record's values picked by one ``itemgetter``; only naive times made UTC)."""
    keys = list(result.keys())
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    if not all(n in keys for n in names):  # a partial select: the general path
        return [_from_row(cls, dict(zip(keys, row))) for row in result]
    if result.dialect.name == "sqlite":
        build = _sqlite_builder(cls, tuple(keys))
        try:
            rows = result.cursor.fetchall()
        finally:
            result.close()
        return build(rows)
    pick = itemgetter(*(keys.index(n) for n in names))
    times = [i for i, n in enumerate(names) if n in _time_fields(cls)]
    new = object.__new__
    out: list[Any] = []
    for row in result.fetchall():
        values = pick(row)
        if times:
            values = list(values)
            for i in times:
                v = values[i]
                if v.__class__ is datetime and v.tzinfo is None:
                    values[i] = v.replace(tzinfo=timezone.utc)
        obj: Any = new(cls)
        obj.__dict__.update(zip(names, values))
        out.append(obj)
    return out


@dataclass(frozen=True)
class Volume:
    id: str
    account: str
    region: str
    availability_zone: str
    size: int
    volume_type: str
    iops: int | None
    throughput: int | None
    multi_attach: bool
    state: str
    state_message: str | None
    encrypted: bool
    kms_key_arn: str | None
    data_key_id: str | None
    data_key_blob: bytes | None
    data_key_context: str | None
    snapshot_id: str | None
    client_token: str | None
    auto_enable_io: bool
    create_time: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Volume":
        return _from_row(cls, row)

    @property
    def encryption_context(self) -> dict[str, str]:
        return json.loads(self.data_key_context) if self.data_key_context else {}


@dataclass(frozen=True)
class Snapshot:
    id: str
    account: str
    region: str
    state: str
    state_message: str | None
    progress: int
    volume_size: int
    encrypted: bool
    kms_key_arn: str | None
    data_key_id: str | None
    data_key_blob: bytes | None
    data_key_context: str | None
    volume_id: str | None
    parent_id: str | None
    source_snapshot_id: str | None
    source_region: str | None
    description: str | None
    origin: str
    client_token: str | None
    start_time: datetime
    completion_time: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Snapshot":
        return _from_row(cls, row)

    @property
    def encryption_context(self) -> dict[str, str]:
        return json.loads(self.data_key_context) if self.data_key_context else {}


@dataclass(frozen=True)
class Attachment:
    volume_id: str
    instance_id: str
    device: str
    state: str
    attach_time: datetime
    delete_on_termination: bool

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Attachment":
        return _from_row(cls, row)


@dataclass(frozen=True)
class Vpc:
    """A VPC (today only the default one, engines/ec2/network.py ``ensure_defaults``)."""

    id: str
    account: str
    region: str
    cidr_block: str
    cidr_association_id: str
    dhcp_options_id: str
    instance_tenancy: str
    is_default: bool
    state: str
    create_time: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Vpc":
        return _from_row(cls, row)


@dataclass(frozen=True)
class Subnet:
    """A subnet (today the default VPC's default subnet of each zone)."""

    id: str
    account: str
    region: str
    vpc_id: str
    availability_zone: str
    availability_zone_id: str
    cidr_block: str
    default_for_az: bool
    map_public_ip_on_launch: bool
    available_ip_count: int
    state: str
    create_time: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Subnet":
        return _from_row(cls, row)


@dataclass(frozen=True)
class SecurityGroup:
    """A VPC security group (its rules: engines/ec2/network.py ``rule_rows``)."""

    id: str
    account: str
    region: str
    vpc_id: str
    name: str
    description: str
    is_default: bool
    create_time: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "SecurityGroup":
        return _from_row(cls, row)


@dataclass(frozen=True)
class SecurityGroupRule:
    """A stored security group rule: one direction, protocol and port range, one peer
    (``network.Rule`` is the same rule before it has an id)."""

    id: str
    group_id: str
    account: str
    region: str
    is_egress: bool
    ip_protocol: str
    from_port: int | None
    to_port: int | None
    cidr_ipv4: str | None
    cidr_ipv6: str | None
    prefix_list_id: str | None
    ref_group_id: str | None
    ref_user_id: str | None
    description: str | None
    position: int  # creation order

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "SecurityGroupRule":
        return _from_row(cls, row)
