"""EC2 ``Filters`` pushed down to SQL as a *narrowing*: conditions every matching row meets.

Describe* views still apply every filter exactly (:mod:`.filters`) to the rows these
conditions let through, so a narrowing only ever has to be a superset of the answer: a
filter that cannot be expressed exactly here (a wildcard value, a value the column
cannot hold, a computed field) is simply not pushed down. What is pushed down lets SQL use
the indexes for the filters people use (encrypted, kms-key-id, state, tag:Name, owner)
instead of reading, building and testing every resource of the account.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from sqlalchemy import Column, ColumnElement, false, select

from ebscrypt.storage.tables.ec2 import ec2_tags

# A value -> the column's value, or raise ValueError when the column cannot hold it.
Convert = Callable[[str], Any]


def as_bool(value: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise ValueError(value)


def _literal(value: str) -> bool:
    """No wildcard (``*``, ``?``) nor escape: the filter value matches itself only."""
    return not any(ch in value for ch in "*?\\")


def narrowing(filters: list[dict[str, Any]] | None, columns: Mapping[str, tuple[Column[Any], Convert | None]],
              id_column: Column[Any], account: str) -> list[ColumnElement[bool]]:
    """SQL conditions implied by ``filters`` (AND). ``columns``: filter name -> (column,
    conversion of a value to the column's type) for filters whose getter returns exactly
    the column's value. ``tag:K`` filters narrow to ids with that tag (``account``'s tags,
    as the views show only the caller's tags)."""
    out: list[ColumnElement[bool]] = []
    for f in filters or []:
        name = f.get("Name", "")
        values = [v for v in f.get("Values") or [] if isinstance(v, str)]
        if not values or len(values) != len(f.get("Values") or []) or not all(_literal(v) for v in values):
            continue
        if name in columns:
            column, convert = columns[name]
            wanted = set()
            for v in values:  # a value the column cannot hold matches nothing; others may
                try:
                    wanted.add(convert(v) if convert else v)
                except ValueError:
                    pass
            out.append(column.in_(sorted(wanted, key=str)) if wanted else false())
        elif name.startswith("tag:") and len(name) > 4:
            tagged = select(ec2_tags.c.resource_id).where(
                ec2_tags.c.account == account, ec2_tags.c.key == name[4:], ec2_tags.c.value.in_(values))
            out.append(id_column.in_(tagged))
    return out
