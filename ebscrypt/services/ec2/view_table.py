"""Response views written once as a table of expressions, compiled two ways (issue 15,
Describe at scale).

A view (the view convention, docs/architecture.md) is a dict keyed by the output shape's
member names, built from an engine's record. A table here holds, per member, the Python
expression of its value over the record ``s`` and the item's ``tags``; from it are
generated:

- :meth:`ViewTable.view`, the view function ``(s, tags) -> dict`` (one dict literal, as
  the hand-written views are);
- :meth:`ViewTable.rows_plan`, for a Describe page still held as stored rows
  (``records.StoredRows``): the same expressions with each ``s.<field>`` replaced by the
  field's value computed from the row (``records.row_locals``: the record builder's own
  conversions) and ``tags`` by the item's entry of the page's tags; the XML writers
  (wire/codec/xml_writer.py ``_rows_writer``) write each member from it with the blocks
  they write a view's value with. A page of 1,000 snapshots then costs no record and no
  view dict per item, and each value's meaning stays in this one table.

Expressions are source text written in the services (never from a request); names they use
besides ``s`` and ``tags`` come from ``env``. They must be pure: the rows plan computes a
field once per item even when several members read it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Callable, Iterator, Mapping, Sequence, overload

from ebscrypt.engines.ec2.records import StoredRows, row_env, row_iso_texts, row_locals

View = dict[str, Any]


@dataclass(frozen=True)
class RowsPlan:
    """wire/codec/xml_writer.py ``RowsPlan``: how the rows of one column list become one
    view table's members."""

    key: str
    unpack: str
    prelude: tuple[str, ...]
    members: Mapping[str, str]
    env: Mapping[str, Any] = field(repr=False)
    iso_times: Mapping[str, str] = field(default_factory=dict)
    # {member: (its key: the row local of the one stored field it reads, the prelude lines
    # its expression needs)}: the XML writers keep such a member's rendered text by key
    memo: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # {memo member: (the expression of the stored list of dicts it is, the members of each
    # item it keeps)}: written from those dicts, no view per item (xml_writer ``_projected``)
    projections: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    # {memo member: a pattern of the parts of its stored value its text carries as they are}:
    # the XML writers render such a value's text from its shape's (xml_writer ``_MemoMiss``)
    memo_holes: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)
    # ``views(rows, extra)``: the view dicts of the rows, from the same expressions
    views: Callable[[Sequence[Any], Sequence[Mapping[str, Any]]], list[View]] = field(
        default=lambda rows, extra: [], repr=False, compare=False)


class _Fields(ast.NodeTransformer):
    """``s.<name>`` → the row's local when the field is stored as is (``plain``), else the
    local ``f_<name>`` the prelude computes (names collected in ``used``); the item's
    extras (``tags``…) keep their names (the prelude binds those in ``extras_used``)."""

    def __init__(self, record: str, fields: Sequence[str], plain: Mapping[str, str], extras: Sequence[str]) -> None:
        self.record = record
        self.fields = set(fields)
        self.plain = plain
        self.extras = set(extras)
        self.used: set[str] = set()
        self.extras_used: set[str] = set()

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == self.record:
            if node.attr not in self.fields:
                raise ValueError(f"{self.record}.{node.attr} is not a field of the record")
            self.used.add(node.attr)
            name = self.plain.get(node.attr) or f"f_{node.attr}"
            return ast.copy_location(ast.Name(name, ast.Load()), node)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.record:
            raise ValueError(f"{self.record} used other than as {self.record}.<field>")
        if node.id in self.extras:
            self.extras_used.add(node.id)
        return node


class ViewTable:
    """A view as ``{member name: expression over s and the item's extras}`` (in the
    view's key order); ``extras``: the names of the view's arguments after the record
    (each a page-wide mapping by the record's ``key_field`` in a :class:`RowsPage`);
    ``env``: the other names the expressions use; ``text_forms``: {name of an ``env``
    function of one time: the function giving the same string from that time's ISO 8601
    text} — a member ``fn(s.<time field>)`` of a rows plan is then computed from the text
    sliced from the stored time (``records.row_iso_texts``), the datetime made only where
    the stored text is not the plain form; ``memo``: members whose value is a function of
    one stored field alone (an image's block device mappings, fixed once the image is
    made): a page from rows computes such a member only for a stored value the XML writers
    have not rendered yet (:class:`RowsPlan` ``memo``); ``projections``: {memo member: (an
    expression ``s.<field>`` of a stored list of dicts, the members of each item the
    member's expression keeps — nested: ``{name: None or the projection of its
    structure}``)} where the member's expression is that list with each item restricted so
    (``None`` members left out): the XML writers then write the stored dicts themselves;
    ``memo_holes``: {memo member: (literal, pattern, literal) of the parts of its stored
    text that its text carries unchanged (xml_writer ``RowsPlan``)}."""

    def __init__(self, name: str, members: Mapping[str, str], env: Mapping[str, Any] | None = None,
                 extras: Sequence[str] = ("tags",), key_field: str = "id",
                 text_forms: Mapping[str, Callable[[str], Any]] | None = None, memo: Sequence[str] = (),
                 projections: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
                 memo_holes: Mapping[str, tuple[str, str, str]] | None = None) -> None:
        self.name = name
        self.members = dict(members)
        self.env = dict(env or {})
        self.text_forms = dict(text_forms or {})
        if set(self.text_forms) - set(self.env):
            raise ValueError(f"text forms of functions not in {name}'s env: {sorted(set(self.text_forms) - set(self.env))}")
        self.extras = tuple(extras)
        self.key_field = key_field
        self.memo = tuple(memo)
        if set(self.memo) - set(self.members):
            raise ValueError(f"memo of members not in {name}: {sorted(set(self.memo) - set(self.members))}")
        self.projections = dict(projections or {})
        if set(self.projections) - set(self.memo):
            raise ValueError(f"projections of members not memo in {name}: {sorted(set(self.projections) - set(self.memo))}")
        self.memo_holes = dict(memo_holes or {})
        if set(self.memo_holes) - set(self.memo):
            raise ValueError(f"memo holes of members not memo in {name}: {sorted(set(self.memo_holes) - set(self.memo))}")
        for reserved in ("s", *self.extras, "extra", "v", "t", "_t", "_item", "out", "append", "seen", "value"):
            if reserved in self.env:
                raise ValueError(f"{reserved!r} is reserved in view tables")
        entries = ", ".join(f"{m!r}: {e}" for m, e in self.members.items())
        namespace: dict[str, Any] = dict(self.env)
        source = f"def view(s, {', '.join(self.extras)}):\n    return {{{entries}}}\n"
        exec(compile(source, f"<view {name}>", "exec"), namespace)  # noqa: S102 (service-written source)
        self.view: Callable[..., View] = namespace["view"]
        self._plans: dict[tuple[type, tuple[str, ...]], RowsPlan] = {}

    def rows_plan(self, cls: type, keys: tuple[str, ...]) -> RowsPlan:
        """The plan writing this view's members from SQLite rows of ``cls`` with the columns
        ``keys`` (cached per column list)."""
        found = self._plans.get((cls, keys))
        if found is not None:
            return found
        unpack, values = row_locals(cls, keys)
        texts = row_iso_texts(cls, keys)
        # A field stored as is is its row local itself; the others get a prelude line.
        plain = {n: v for n, v in values.items() if v.isidentifier()}
        members: dict[str, str] = {}
        iso_times: dict[str, str] = {}
        memo: dict[str, tuple[str, tuple[str, ...]]] = {}
        projections: dict[str, tuple[str, Mapping[str, Any]]] = {}
        used: set[str] = {self.key_field}
        extras: set[str] = set()
        for member, expression in self.members.items():
            bare = ast.parse(expression, mode="eval").body
            if (isinstance(bare, ast.Attribute) and isinstance(bare.value, ast.Name) and bare.value.id == "s"
                    and bare.attr in texts):
                # A bare time field: its text sliced from the row; the datetime only where
                # the text is not the plain stored form (inline: no prelude line per row).
                iso_times[member] = texts[bare.attr]
                members[member] = values[bare.attr]
                continue
            timed = self._time_argument(bare, texts)
            if timed is not None:
                # fn(s.<time>) with a text form: from the sliced text, else as written
                fn, time_field = timed
                members[member] = (f"(_text_{fn}(_t) if (_t := {texts[time_field]}) is not None "
                                   f"else {fn}({values[time_field]}))")
                continue
            rewrite = _Fields("s", list(values), plain, self.extras)
            tree = rewrite.visit(ast.parse(expression, mode="eval"))
            members[member] = ast.unparse(tree)
            if member in self.memo:
                memo[member] = self._memo_entry(member, rewrite, keys, unpack, values, plain)
                if member in self.projections:
                    source, projection = self.projections[member]
                    items = _Fields("s", list(values), plain, self.extras)
                    tree = items.visit(ast.parse(source, mode="eval"))
                    if items.used != rewrite.used or items.extras_used:
                        raise ValueError(f"{self.name}.{member}: a projection reads the memo member's field")
                    projections[member] = (ast.unparse(tree), projection)
                continue  # its field computed only where the writers have no text for it
            used |= rewrite.used
            extras |= rewrite.extras_used
        # Fields in the record's order: one line each, computed once per row.
        prelude = [f"f_{n} = {values[n]}" for n in values if n in used and n not in plain]
        key = plain.get(self.key_field) or f"f_{self.key_field}"
        prelude += [f"{name} = extra[{i}][{key}]" for i, name in enumerate(self.extras) if name in extras]
        conversions = row_env(cls)
        env = {**conversions, **self.env, **{f"_text_{n}": f for n, f in self.text_forms.items()}}
        if set(conversions) & set(self.env):
            raise ValueError(f"names of {self.name}'s env clash with the row conversions'")
        entries = ", ".join(f"{m!r}: {e}" for m, e in members.items())  # the table's order
        namespace = dict(env)
        # the views compute every member (a memo member's field too)
        computed = [*prelude, *(line for _, lines in memo.values() for line in lines if line not in prelude)]
        source = "\n".join(["def views(rows, extra):", "    out = []", f"    for {unpack} in rows:",
                            *("        " + line for line in dict.fromkeys(computed)),
                            f"        out.append({{{entries}}})", "    return out"]) + "\n"
        exec(compile(source, f"<views {self.name} from rows>", "exec"), namespace)  # noqa: S102 (table-built)
        plan = RowsPlan(f"{self.name}/{cls.__name__}/{','.join(keys)}", unpack, tuple(prelude), members, env,
                        iso_times, memo, projections, {m: self.memo_holes[m] for m in memo if m in self.memo_holes},
                        namespace["views"])
        self._plans[(cls, keys)] = plan
        return plan

    def _memo_entry(self, member: str, rewrite: "_Fields", keys: tuple[str, ...], unpack: str,
                    values: Mapping[str, str], plain: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
        """(key, prelude lines) of a memo member (:class:`RowsPlan` ``memo``): it must read
        one field and nothing else of the item, so the field's stored value determines it."""
        if len(rewrite.used) != 1 or rewrite.extras_used:
            raise ValueError(f"{self.name}.{member}: a memo member reads one field of the record and nothing else")
        (name,) = rewrite.used
        local = [n.strip() for n in unpack.split(",")][keys.index(name)]  # the stored column's local
        return local, (() if name in plain else (f"f_{name} = {values[name]}",))

    def _time_argument(self, node: ast.expr, texts: Mapping[str, str]) -> tuple[str, str] | None:
        """``(fn, t)`` of a member ``fn(s.t)`` whose ``fn`` has a text form (and ``t`` an ISO
        text in these rows), else None."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.text_forms
                and len(node.args) == 1 and not node.keywords):
            return None
        arg = node.args[0]
        if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "s" \
                and arg.attr in texts:
            return node.func.id, arg.attr
        return None

    def fields_read(self, cls: type) -> tuple[str, ...]:
        """The fields of ``cls`` this table's expressions read (and its key field), in the
        record's order: the columns a page rendered from its rows selects."""
        names = [f.name for f in dataclass_fields(cls)]
        used = {self.key_field}
        for expression in self.members.values():
            rewrite = _Fields("s", names, {}, self.extras)
            rewrite.visit(ast.parse(expression, mode="eval"))
            used |= rewrite.used
        return tuple(n for n in names if n in used)

    def page(self, stored: StoredRows, *extras: Mapping[str, Any], views: list[View] | None = None) -> "RowsPage":
        """The items of a page held as stored rows, for a view's list member; ``extras``:
        the view's further arguments, each a mapping by the record's ``key_field``;
        ``views``: the rows' views when already built (by this table's plan)."""
        return RowsPage(self, stored, extras, views)


class RowsPage(Sequence[View]):
    """A Describe page's items still as stored rows: the XML writers render them straight
    from the rows (``xml_plan``, ``rows``, ``extra``); anything else sees the list of
    views they stand for (built on first use)."""

    def __init__(self, table: ViewTable, stored: StoredRows, extras: tuple[Mapping[str, Any], ...],
                 views: list[View] | None = None) -> None:
        if len(extras) != len(table.extras):
            raise TypeError(f"{table.name}: {len(table.extras)} extras expected")
        self.table = table
        self.stored = stored
        self.xml_plan = table.rows_plan(stored.cls, stored.keys)
        self.rows = stored.rows
        self.extra = extras
        self._views: list[View] | None = views

    def views(self) -> list[View]:
        if self._views is None:
            self._views = self.xml_plan.views(self.rows, self.extra)
        return self._views

    def subset(self, chosen: Sequence[View]) -> "RowsPage":
        """The page of the items whose views (the objects :meth:`views` returned, e.g.
        those a Describe's filters passed, in any order) are ``chosen``: still written
        straight from their rows, and seen as ``chosen`` by anything else."""
        row_of = {id(v): r for v, r in zip(self.views(), self.rows)}
        return RowsPage(self.table, self.stored.having([row_of[id(v)] for v in chosen]), self.extra, list(chosen))

    @overload
    def __getitem__(self, index: int) -> View: ...
    @overload
    def __getitem__(self, index: slice) -> list[View]: ...

    def __getitem__(self, index: int | slice) -> View | list[View]:
        return self.views()[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[View]:
        return iter(self.views())

    def __eq__(self, other: object) -> bool:
        return self.views() == (other.views() if isinstance(other, RowsPage) else other)

    __hash__ = None  # type: ignore[assignment]
