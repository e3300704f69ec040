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

from sqlalchemy import Boolean, Column, ColumnElement, Select, and_, false, literal, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

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


def narrow(q: Select[Any], filters: list[dict[str, Any]] | None, columns: Mapping[str, tuple[Column[Any], Convert | None]],
           id_column: Column[Any], account: str) -> Select[Any]:
    """``q`` narrowed by ``filters``: the column conditions of :func:`narrowing`, and each
    literal ``tag:K`` filter as a join on ``ec2_tags`` (``account``'s tags, as the views
    show only the caller's tags). A join, not ``id IN (subquery)``: SQLite then reads the
    tagged ids through ``ix_ec2_tags_key_value`` and looks each row up by id — O(matches) —
    where the subquery form scanned every row of the account (100,000 snapshots: 80 ms).
    One tag row per (resource, key) (the primary key): the join adds no duplicate."""
    q = q.where(*narrowing(filters, columns))
    for name, values in _literal_filters(filters):
        if name.startswith("tag:") and len(name) > 4:
            tag = ec2_tags.alias()
            q = q.join(tag, and_(tag.c.resource_id == id_column, tag.c.account == account,
                                 tag.c.key == name[4:], tag.c.value.in_(values)))
    return q


def owner_column(column: Column[Any], filters: list[dict[str, Any]] | None) -> ColumnElement[Any]:
    """``column`` (account, region) as the owner terms of a narrowed query should name it.

    With a ``tag:K`` narrowing, the query must be driven from the tags index (the join of
    :func:`narrow`): the owner terms then get no index of their own (``column || ''``, the
    same value), else SQLite — which keeps no statistics — walks the account's rows in id
    order through ``ix_*_page`` and probes each one's tags: O(account) instead of
    O(matches). Without a tag narrowing: ``column`` itself."""
    if any(name.startswith("tag:") and len(name) > 4 for name, _ in _literal_filters(filters)):
        return column.concat("")
    return column


def _literal_filters(filters: list[dict[str, Any]] | None) -> list[tuple[str, list[str]]]:
    """(name, values) of the filters whose values are all literal strings."""
    out: list[tuple[str, list[str]]] = []
    for f in filters or []:
        values = [v for v in f.get("Values") or [] if isinstance(v, str)]
        if not values or len(values) != len(f.get("Values") or []) or not all(_literal(v) for v in values):
            continue
        out.append((f.get("Name", ""), values))
    return out


def _prefix(value: str) -> str | None:
    """``abc`` of a value ``abc*`` (one trailing wildcard, nothing else to interpret): the
    values it matches are the strings starting with it. None for any other value."""
    if value.endswith("*") and _literal(value[:-1]):
        return value[:-1]
    return None


def _like_prefix(column: Column[Any], prefix: str) -> ColumnElement[bool]:
    """``column LIKE 'prefix%'``, the prefix's own ``%`` and ``_`` escaped. LIKE may be
    case-insensitive (SQLite's is, for ASCII): a superset, as a narrowing may be."""
    escaped = prefix.replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped + "%", escape="\\")


class PrefixMatch(ColumnElement[bool]):
    """``column`` starts with ``prefix`` (issue 15: DescribeImages ``name=prefix*``, as
    Packer and the CLI ask). On SQLite, the range ``column >= prefix AND column < the
    prefix with its last character's code point plus one`` — exact, since SQLite's BINARY
    collation compares UTF-8 bytes, whose order is the code points' — which an index on
    the column (after equality on its leading columns) reads as a range: O(matches),
    where SQLite's ``LIKE`` (case-insensitive, so never planned through a BINARY index)
    tested every row of the account (100,000 images: the whole call's cost). Elsewhere
    ``LIKE 'prefix%'``: a database's collation (PostgreSQL's locale) need not order by
    code point, so a range could leave out a match."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a condition itself (no ``= 1`` where booleans are not native)
    _traverse_internals = [("as_like", InternalTraversal.dp_clauseelement),
                           ("as_range", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Column[Any], prefix: str, upper: str) -> None:
        self.as_like = _like_prefix(column, prefix)
        self.as_range = and_(column >= literal(prefix), column < literal(upper))


@compiles(PrefixMatch)
def _prefix_as_like(element: PrefixMatch, compiler: SQLCompiler, **kw: Any) -> str:
    text: str = compiler.process(element.as_like, **kw)
    return text


@compiles(PrefixMatch, "sqlite")
def _prefix_as_range(element: PrefixMatch, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + str(compiler.process(element.as_range, **kw)) + ")"


def prefix_upper(prefix: str) -> str | None:
    """The least string after every string starting with ``prefix``: its last character's
    code point plus one (None for an empty prefix, or where that is no character a
    database can store: a surrogate, past U+10FFFF)."""
    if not prefix:
        return None
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF or last > 0x10FFFF:
        return None
    return prefix[:-1] + chr(last)


def starts_with(column: Column[Any], prefix: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``: :class:`PrefixMatch` where the prefix has an
    upper bound, else ``LIKE``."""
    upper = prefix_upper(prefix)
    return _like_prefix(column, prefix) if upper is None else PrefixMatch(column, prefix, upper)


def narrowing(filters: list[dict[str, Any]] | None, columns: Mapping[str, tuple[Column[Any], Convert | None]]
              ) -> list[ColumnElement[bool]]:
    """SQL conditions implied by ``filters`` (AND). ``columns``: filter name -> (column,
    conversion of a value to the column's type) for filters whose getter returns exactly
    the column's value. A string column's filter whose values are literal or a prefix with
    one trailing ``*`` (``name=ubuntu/images/*``, as DescribeImages is used) narrows by
    ``IN`` and :func:`starts_with` (on SQLite a range an index reads; elsewhere ``LIKE
    'prefix%'``, the rows tested one by one in SQL but not built and matched in Python;
    issue 15: 10,000 images, 580 ms)."""
    out: list[ColumnElement[bool]] = []
    literal_names = set()
    for name, values in _literal_filters(filters):
        literal_names.add(name)
        if name in columns:
            column, convert = columns[name]
            wanted: set[Any] = set()
            for v in values:  # a value the column cannot hold matches nothing; others may
                try:
                    wanted.add(convert(v) if convert else v)
                except ValueError:
                    pass
            out.append(column.in_(sorted(wanted, key=str)) if wanted else false())
    for f in filters or []:
        name, values = f.get("Name", ""), f.get("Values") or []
        if name in literal_names or name not in columns or columns[name][1] is not None or not values:
            continue
        if not all(isinstance(v, str) and (_literal(v) or _prefix(v) is not None) for v in values):
            continue
        column = columns[name][0]
        literals = sorted(v for v in values if _literal(v))
        terms = [starts_with(column, p) for p in sorted({_prefix(v) or "" for v in values if not _literal(v)})]
        out.append(or_(column.in_(literals), *terms) if literals else or_(*terms))
    return out


def exact(filters: list[dict[str, Any]] | None, columns: Mapping[str, tuple[Column[Any], Convert | None]]) -> bool:
    """Whether :func:`narrow` selects on SQLite exactly the rows ``filters`` select (issue
    15: then a filtered Describe needs no record built to test them again): every filter
    is a ``tag:K`` filter or one on a column of ``columns`` (whose getter returns exactly the
    column's value), with literal values (``IN``, a value the column cannot hold matching
    nothing, as :mod:`.filters` finds no match for it either) or, on a string column,
    values each literal or a prefix with one trailing ``*`` that :func:`starts_with` reads
    as a range. Anything else (``tag-key``, other wildcards, a prefix with no upper bound,
    values that are not strings, a filter with no values) is tested in Python."""
    literal = {id(f) for f in filters or [] if _is_literal(f)}
    for f in filters or []:
        name = f.get("Name", "")
        if id(f) in literal and (name in columns or (name.startswith("tag:") and len(name) > 4)):
            continue
        values = f.get("Values") or []
        if name not in columns or columns[name][1] is not None or not values:
            return False
        for v in values:
            if not isinstance(v, str):
                return False
            if not _literal(v) and (_prefix(v) is None or prefix_upper(_prefix(v) or "") is None):
                return False
    return True


def _is_literal(f: dict[str, Any]) -> bool:
    """A filter :func:`_literal_filters` keeps: values, all literal strings."""
    values = f.get("Values") or []
    return bool(values) and all(isinstance(v, str) and _literal(v) for v in values)
