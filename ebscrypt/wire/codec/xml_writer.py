"""Compiled XML writers for the query/ec2 responses: still driven by the service model,
but walked once per shape instead of once per value (issue 15, Describe at scale).

``QueryCodec._write`` reads each member's shape, type and serialization traits for every
value it writes; a DescribeSnapshots page of 1,000 items repeated that ~15,000 times and
was a third of the server's time. Here a structure's shape is turned once into a list of
``(member name, writer, always)`` steps, each writer a closure that knows its tags and its
scalar format; the output is byte-for-byte what ``_write`` produced (the codec tests and
the golden tests compare whole responses).

Writers append strings to ``out``; a structure writer takes the result dict, a list
writer any iterable (``None`` items skipped), a map writer a dict.
"""

from __future__ import annotations

import ast
import re
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol, Sequence

from . import values as V

Writer = Callable[[list[str], Any], None]
# The members of a structure a projection keeps: {member name: None (its value as is) or
# the projection of that member's own structure}.
Projection = Mapping[str, "Projection | None"]
Escape = Callable[[str], str]
# A memo member's holes (RowsPlan ``memo_holes``): (literal before, part pattern, literal after)
Holes = tuple[str, str, str]
_UTC = timezone.utc


# Zero-padded texts of 0..99 and 0..999: a time's fields are looked up, not formatted.
_2D = tuple("%02d" % i for i in range(100))
_3D = tuple("%03d" % i for i in range(1000))


def _iso8601(value: Any) -> str:
    """``values.format_iso8601`` with a fast path for the UTC datetimes records carry: the
    padded fields from tables and joined by one ``%s`` format — 0.45 vs 1.4 µs with
    ``%02d`` widths (issue 15: two times a snapshot were ~8% of a Describe page)."""
    if value.__class__ is datetime and (value.tzinfo is _UTC or value.tzinfo is None) and value.year > 999:
        return "%d-%s-%sT%s:%s:%s.%sZ" % (value.year, _2D[value.month], _2D[value.day], _2D[value.hour],
                                          _2D[value.minute], _2D[value.second], _3D[value.microsecond // 1000])
    return V.format_iso8601(value)


def _joined_texts(pieces: list[str | list[str]]) -> list[str | list[str]]:
    """``pieces`` (texts and blocks of code) with each run of adjacent texts joined."""
    out: list[str | list[str]] = []
    for piece in pieces:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + piece
        else:
            out.append(piece)
    return out


def _exec(lines: list[str], name: str, env: dict[str, Any]) -> Writer:
    """The function ``write`` the source ``lines`` define, compiled with ``env`` as its globals."""
    namespace = dict(env)
    exec(compile("\n".join(lines) + "\n", name, "exec"), namespace)  # noqa: S102 (model-built source)
    write: Writer = namespace["write"]
    return write


class RowsPlan(Protocol):
    """How a list's items are written straight from stored rows (issue 15: a Describe
    page without a record and a view dict per item). ``unpack``: the target list a row is
    unpacked into; ``prelude``: lines computing further locals from those (``extra`` is
    the items' ``extra``); ``members``: {member name: the expression of its value} (a
    member left out is written as a view's ``None`` is); ``env``: the names they use;
    ``key``: tells plans apart (compiled writers are cached by it). The services build
    plans from their view tables (services/ec2/view_table.py), so a value's meaning is
    written once, for the view and for this."""

    @property
    def key(self) -> str: ...
    @property
    def unpack(self) -> str: ...
    @property
    def prelude(self) -> Sequence[str]: ...
    @property
    def members(self) -> Mapping[str, str]: ...
    @property
    def env(self) -> Mapping[str, Any]: ...
    @property
    def iso_times(self) -> Mapping[str, str]:
        """{timestamp member: an expression of its ISO 8601 text (``%Y-%m-%dT%H:%M:%S.mmmZ``,
        UTC), or None to write its value as usual}."""
    @property
    def memo(self) -> Mapping[str, tuple[str, Sequence[str]]]:
        """{member: (the row local its value is a function of, alone; the lines computing
        the locals its expression needs from that one)}: its text is rendered once per
        distinct stored value and kept (:meth:`XmlWriters._memo_miss`)."""
    @property
    def memo_holes(self) -> Mapping[str, "Holes"]:
        """{memo member: (a literal text, a regular expression without groups, a literal
        text) over its stored text: the middle's matches between the two are parts of the
        value the member's text carries as they are (an image's snapshot ids in its
        mappings' JSON)}: the text of a value not kept yet is then filled
        in from the text rendered once for its *shape* — the stored text with those parts
        cut out (:class:`_MemoMiss`). The middle must match only text that the stored form and
        the XML both carry unchanged (no escapes in either)."""
    @property
    def projections(self) -> Mapping[str, tuple[str, "Projection"]]:
        """{memo member, a list of structures: (the expression of the stored list of dicts
        it is, the members of each item it keeps — nested)}: its items written straight from
        those dicts (:meth:`XmlWriters._projected`), no view dict made per item."""


class Collecting(list[str]):
    """The output of writers compiled with ``collect``: the pieces, and the unescaped string
    values written among them (``seen``), to be checked at once."""

    __slots__ = ("seen",)

    def __init__(self, *pieces: str) -> None:
        super().__init__(pieces)
        self.seen: list[str] = []


class XmlWriters:
    """Per-codec cache of compiled writers. ``always(shape)``: members written (as an empty
    list) even when the result has none (``ec2_always``); ``timestamp_format``: the
    protocol's default for timestamps without their own ``timestampFormat``."""

    def __init__(self, always: Callable[[Any], frozenset[str]], escape: Escape,
                 timestamp_format: str = "iso8601", needs_escape: Callable[[str], object] | None = None,
                 collect: bool = False) -> None:
        self._always = always
        self._escape = escape
        # collect: the structures' string members are written unescaped and also appended
        # to ``out.seen`` (``out`` a :class:`Collecting`); the caller checks them all at
        # once and, if one needs escaping, writes the answer again with escaping writers.
        self._collect = collect
        # None for a string ``escape`` would return unchanged (a one-pass C scan), so the
        # common value costs no call of ``escape``; unset: ``escape`` is called for every one.
        self._needs_escape = needs_escape
        self._timestamp_format = timestamp_format
        self._structs: dict[str, Writer] = {}  # complete writers, read without the lock
        # Writers being compiled (a recursive shape finds itself here); published to
        # ``_structs`` only when the outermost compile is done: answers are serialized in
        # several worker threads, and one must never get a writer whose steps are not all
        # there yet (it would leave members out).
        self._pending: dict[str, Writer] = {}
        # Per structure: (head lines, member blocks, env) of its compiled writer, which the
        # writers of stored rows (``_rows_writer``) reuse: the same blocks, the same bytes.
        self._blocks: dict[str, tuple[list[str], list[tuple[str, list[str]]], dict[str, Any]]] = {}
        self._iso_tags: dict[str, dict[str, str]] = {}  # per structure: {ISO 8601 member: its tag}
        self._rows: dict[tuple[str, str, str], Writer] = {}
        # Rendered texts of the plans' memo members, by the stored value they come from
        # (one dict per member and expression, shared by the plans that write it).
        self._memos: dict[tuple[Any, ...], dict[Any, str]] = {}
        # ...and the texts of their shapes split at the holes (RowsPlan ``memo_holes``)
        self._templates: dict[tuple[Any, ...], dict[str, tuple[str, ...]]] = {}
        self._depth = 0
        self._lock = threading.RLock()

    def members(self, shape: Any) -> Writer:
        """The writer of a structure's members (without the structure's own tags)."""
        cached = self._structs.get(shape.name)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._structs.get(shape.name) or self._pending.get(shape.name)
            if cached is not None:
                return cached
            self._depth += 1
            try:
                write = self._compile_members(shape)
            except BaseException:
                self._pending.clear()
                raise
            finally:
                self._depth -= 1
            if self._depth == 0:
                self._structs.update(self._pending)
                self._pending.clear()
            return write

    def _compile_members(self, shape: Any) -> Writer:
        """The structure's members as one generated function: straight-line code, one
        block per member in model order (issue 15: the loop over ``(name, writer, always)``
        steps, a closure call per scalar and an escape call per string were half of a
        DescribeSnapshots page's time). Scalars are written inline; structures, lists, maps
        and the rarer scalar formats call their compiled writer. Everything in the source
        comes from the model through ``repr``: names and tags are literals, never code."""
        # Registered before its members are compiled: a recursive shape finds itself.
        steps: list[Writer] = []
        self._pending[shape.name] = lambda out, value: steps[0](out, value)
        always = self._always(shape)
        env: dict[str, Any] = {"_esc": self._escape, "_ns": self._needs_escape, "_iso": _iso8601}
        head = ["    append = out.append", *(["    seen = out.seen.append"] if self._collect else [])]
        blocks: list[tuple[str, list[str]]] = []  # (member name, the lines writing its value ``v``)
        iso_tags = self._iso_tags[shape.name] = {}
        for i, (name, member) in enumerate(shape.members.items()):
            if member.type_name == "list" and member.serialization.get("flattened"):
                tag = member.member.serialization.get("name") or member.serialization.get("name", name)
                fn = self._flattened(member.member, tag)
            else:
                tag = member.serialization.get("name", name)
                fn = self.value(member, tag)
            env[f"_w{i}"] = fn
            if name in always:  # a list AWS sends even when empty
                if member.type_name == "list" and not member.serialization.get("flattened"):
                    # empty (the common case: a volume's attachments): its two tags, as
                    # the list's writer would append them, without the call
                    blocks.append((name, ["if v is None:", "    v = ()", "if not v:",
                                          f"    append({'<' + tag + '>'!r})", f"    append({'</' + tag + '>'!r})",
                                          "else:", *("    " + line for line in self._inline(member, tag, i, env))]))
                else:
                    blocks.append((name, ["if v is None:", "    v = ()", f"_w{i}(out, v)"]))
            else:
                blocks.append((name, ["if v is not None:", *("    " + line for line in self._inline(member, tag, i, env))]))
                if (member.type_name == "timestamp"
                        and member.serialization.get("timestampFormat", self._timestamp_format) == "iso8601"):
                    iso_tags[name] = tag
        self._blocks[shape.name] = (head, blocks, env)
        special: dict[tuple[Any, ...], Writer | None] = {}
        env["_special"] = special
        env["_specialize"] = lambda keys: self._specialize(shape, head, blocks, env, special, keys)
        lines = ["def write(out, value):",
                 "    keys = tuple(value)",
                 "    w = _special.get(keys, _specialize)",
                 "    if w is _specialize:",
                 "        w = _specialize(keys)",
                 "    if w is not None:",
                 "        return w(out, value)",
                 "    get = value.get", *head]
        for name, block in blocks:
            lines.append(f"    v = get({name!r})")
            lines += ["    " + line for line in block]
        write = _exec(lines, f"<xml writer {shape.name}>", env)
        steps.append(write)
        self._pending[shape.name] = write
        return write

    # Key sets specialized per shape at most: views are dict literals (one or a few key
    # sets each); request-shaped dicts may vary more and then take the general writer.
    MAX_SPECIALIZED = 16

    def _specialize(self, shape: Any, head: list[str], blocks: list[tuple[str, list[str]]], env: dict[str, Any],
                    special: dict[tuple[Any, ...], Writer | None], keys: tuple[Any, ...]) -> Writer | None:
        """The writer of a result with exactly ``keys``, in this order: its values unpacked
        at once, and only its members' blocks, in model order (the general writer's
        ``get`` and ``None`` test of every member of the shape, ~70 an image with its
        mappings, were the largest part of a large, sparse shape's XML). The same blocks,
        so the same bytes. None (the general writer) past ``MAX_SPECIALIZED`` key sets."""
        with self._lock:
            if keys in special:
                return special[keys]
            if len(special) >= self.MAX_SPECIALIZED or not all(k.__class__ is str for k in keys):
                return None  # not remembered: the cache stays bounded
            local = {k: f"_v{i}" for i, k in enumerate(keys)}
            lines = ["def write(out, value):", *head]
            if keys:
                lines.append("    " + ", ".join(local[k] for k in keys) + ", = value.values()")
            for name, block in blocks:
                if name in local:
                    lines.append(f"    v = {local[name]}")
                elif block[0] == "if v is None:":  # a list always sent: written empty
                    lines.append("    v = None")
                else:
                    continue
                lines += ["    " + line for line in block]
            write = _exec(lines, f"<xml writer {shape.name} {len(special)}>", env)
            special[keys] = write
            return write

    def _inline(self, member: Any, tag: str, i: int, env: dict[str, Any]) -> list[str]:
        """The lines writing the non-None value ``v`` of ``member`` inside ``<tag>``:
        inline for strings, booleans, integers and ISO 8601 timestamps (the same text as
        :meth:`_scalar`), else a call of its compiled writer ``_w{i}``."""
        t = member.type_name
        open_, close = f"<{tag}>", f"</{tag}>"
        if member.serialization.get("flattened") and t == "list":
            return [f"_w{i}(out, v)"]
        if t == "structure":  # what its writer does, without the call (a member writer each)
            env[f"_m{i}"] = self.members(member)  # a shape being compiled: its forwarding writer
            return [f"append({open_!r})", f"_m{i}(out, v)", f"append({close!r})"]
        if t == "list" and member.member.type_name == "structure":
            # a plain list of structures (Tags, mappings): its items written here; anything
            # else (rows, an iterable) by the list's writer
            item_tag = member.member.serialization.get("name", "member")
            env[f"_m{i}"] = self.members(member.member)
            return ["if v.__class__ is list:", f"    append({open_!r})", "    for _item in v:",
                    "        if _item is not None:", f"            append({'<' + item_tag + '>'!r})",
                    f"            _m{i}(out, _item)", f"            append({'</' + item_tag + '>'!r})",
                    f"    append({close!r})", "else:", f"    _w{i}(out, v)"]
        if t == "boolean":
            return [f"append({open_ + 'true' + close!r} if v else {open_ + 'false' + close!r})"]
        if t in ("integer", "long"):
            return [f"append({open_!r} + str(int(v)) + {close!r})"]
        if t == "timestamp" and member.serialization.get("timestampFormat", self._timestamp_format) == "iso8601":
            return [f"append({open_!r} + _iso(v) + {close!r})"]
        if t == "string":
            if self._collect:
                check = ["seen(v)"]
            elif self._needs_escape is not None:
                check = ["if _ns(v) is not None:", "    v = _esc(v)"]
            else:
                check = ["v = _esc(v)"]
            return ["if not isinstance(v, str):", "    v = str(v)", *check,
                    f"append({open_!r} + v + {close!r})"]
        return [f"_w{i}(out, v)"]

    def _rows_writer(self, shape: Any, tag: str, plan: RowsPlan) -> Writer:
        """The writer of a list's items, each ``<tag>`` + the structure ``shape``'s members
        + ``</tag>``, from ``value.rows`` unpacked by ``plan`` (:class:`RowsPlan`): per
        row, the plan's prelude, then for each member in model order ``v = <its
        expression>`` and the very block the structure's own writer runs on a view's value
        (so the same bytes, escaping or collecting as this instance does). Compiled once
        per (shape, tag, plan key)."""
        cache_key = (shape.name, tag, plan.key)
        found = self._rows.get(cache_key)
        if found is not None:
            return found
        self.members(shape)  # its blocks
        with self._lock:
            head, blocks, shape_env = self._blocks[shape.name]
            clash = set(plan.env) & set(shape_env)
            if clash:
                raise ValueError(f"names of the rows plan {plan.key} clash with the writer's: {sorted(clash)}")
            env = {**shape_env, **plan.env}
            # Per row: the plan's prelude, then pieces of code and constant texts; adjacent
            # texts are appended as one (the item's tags, the members a constant writes).
            pieces: list[str | list[str]] = ["<" + tag + ">"]
            iso_tags = self._iso_tags[shape.name]
            for name, block in blocks:
                expression = plan.members.get(name)
                memo = plan.memo.get(name)
                if expression is not None and memo is not None:
                    # the text kept for this stored value, else rendered (and kept)
                    projected = plan.projections.get(name)
                    if projected is not None:  # the stored dicts written as the member's items
                        if block[0] != "if v is None:":
                            raise ValueError(f"{shape.name}.{name}: a projection writes a list AWS always sends")
                        items = re.sub(rf"\b{re.escape(memo[0])}\b", "_key", projected[0])
                        block = self._projected(shape.members[name], name, projected[1], items)
                    key, fn = self._memo_miss(shape.name, name, head, block, env,
                                              "None" if projected is not None else expression, memo,
                                              plan.memo_holes.get(name))
                    j = len([k for k in env if k.startswith("_memo_texts")])
                    env[f"_memo_texts{j}"], env[f"_memo_miss{j}"] = fn.texts, fn
                    pieces.append([f"_f = _memo_texts{j}.get({key})", "if _f is None:",
                                   f"    _memo_miss{j}(out, {key})", "else:", "    append(_f)"])
                    continue
                text = plan.iso_times.get(name) if name in iso_tags else None
                if expression is not None and text is not None:  # the text itself, else as usual
                    open_, close = f"<{iso_tags[name]}>", f"</{iso_tags[name]}>"
                    pieces.append([f"t = {text}", "if t is not None:", f"    append({open_!r} + t + {close!r})",
                                   "else:", f"    v = {expression}", *("    " + line for line in block)])
                    continue
                if expression is None and block[0] != "if v is None:":
                    continue  # left out, as a view's None is (a list always sent is written empty)
                constant = self._constant_text(head, block, shape_env, "None" if expression is None else expression)
                if constant is not None:
                    pieces.append(constant)
                else:
                    pieces.append([f"v = {expression}", *block])
            pieces.append("</" + tag + ">")
            lines = ["def write(out, value):", *head, "    extra = value.extra",
                     f"    for {plan.unpack} in value.rows:", *("        " + line for line in plan.prelude)]
            for piece in _joined_texts(pieces):
                if isinstance(piece, str):
                    if piece:
                        lines.append(f"        append({piece!r})")
                else:
                    lines += ["        " + line for line in piece]
            write = _exec(lines, f"<xml rows writer {shape.name} {plan.key}>", env)
            self._rows[cache_key] = write
            return write

    def _projected(self, member: Any, name: str, projection: "Projection", items: str) -> list[str]:
        """The lines writing a list of structures ``member`` (one AWS always sends) from
        ``items``, an expression of the stored list of dicts: each item's members that
        ``projection`` keeps, in model order, each by the very block the structure's own
        writer runs on a view's value (so the same bytes as the view that keeps those
        members, ``None`` ones left out, would give), without making that view."""
        if member.type_name != "list" or member.member.type_name != "structure" or member.serialization.get("flattened"):
            raise ValueError(f"a projection writes a (not flattened) list of structures, not {member.type_name}")
        tag = member.serialization.get("name", name)
        item_tag = member.member.serialization.get("name", "member")
        return ["_l0 = " + items, f"append({'<' + tag + '>'!r})", "if _l0:", "    for _i0 in _l0:",
                "        if _i0 is not None:", f"            append({'<' + item_tag + '>'!r})",
                *("            " + line for line in self._projected_members(member.member, projection, "_i0", 0)),
                f"            append({'</' + item_tag + '>'!r})", f"append({'</' + tag + '>'!r})"]

    def _projected_members(self, shape: Any, projection: "Projection", var: str, depth: int) -> list[str]:
        """The lines writing the members of the dict ``var`` that ``projection`` keeps."""
        unknown = set(projection) - set(shape.members)
        if unknown:
            raise ValueError(f"{shape.name} has no members {sorted(unknown)}")
        self.members(shape)  # its blocks
        blocks = dict(self._blocks[shape.name][1])
        lines: list[str] = []
        for name, member in shape.members.items():
            if name not in projection:
                continue
            inner = projection[name]
            if inner is None:
                block = blocks[name]
                if any("_w" in line or "_m" in line for line in block):
                    raise ValueError(f"{shape.name}.{name}: only scalars written inline are projected as is")
                lines += [f"v = {var}.get({name!r})", *block]
                continue
            if member.type_name != "structure":
                raise ValueError(f"{shape.name}.{name}: a nested projection needs a structure")
            nested, tag = f"_s{depth + 1}", member.serialization.get("name", name)
            lines += [f"{nested} = {var}.get({name!r})", f"if {nested} is not None:", f"    append({'<' + tag + '>'!r})",
                      *("    " + line for line in self._projected_members(member, inner, nested, depth + 1)),
                      f"    append({'</' + tag + '>'!r})"]
        return lines

    # Texts kept per memo member: past this many distinct values the dict starts anew
    # (bounded memory: ~0.6 KB a value for an image's mappings, 80 MB at most; the hashes of
    # values seen once, as many).
    MEMO_ENTRIES = 1 << 17

    def _memo_miss(self, shape_name: str, member: str, head: list[str], block: list[str], env: dict[str, Any],
                   expression: str, memo: tuple[str, Sequence[str]], holes: "Holes | None" = None,
                   ) -> tuple[str, "_MemoMiss"]:
        """(the row local keying it, the function writing a memo member for a stored value
        not seen yet): ``lines`` then ``v = expression`` and the member's very block, into
        the answer; the pieces it wrote joined and kept, unless a string in them needs
        escaping and this instance collects (the strings are in the answer's ``seen``; not
        kept, so the escape check sees them in every answer that holds the text); ``holes``:
        the member's ``RowsPlan.memo_holes`` pattern, if any."""
        key, lines = memo
        local = re.compile(rf"\b{re.escape(key)}\b")
        source = ["def write(out, _key):", *head, *("    " + local.sub("_key", line) for line in lines),
                  f"    v = {local.sub('_key', expression)}", *("    " + line for line in block)]
        ident = (shape_name, member, tuple(source[1:]))
        texts = self._memos.setdefault(ident, {})
        render = _exec(source, f"<xml memo {shape_name}.{member}>", env)
        templates = self._templates.setdefault((*ident, holes), {}) if holes is not None else None
        return key, _MemoMiss(render, texts, self._collect, self._escape, self.MEMO_ENTRIES,
                              _holes_pattern(holes) if holes is not None else None, templates,
                              holes[0] + HOLE + holes[2] if holes is not None else HOLE)

    def _constant_text(self, head: list[str], block: list[str], env: dict[str, Any], expression: str) -> str | None:
        """What ``block`` writes for the value of ``expression`` when that is a literal
        (``'xen'``, ``None``…): run once, here, by the very block (so the same bytes); None
        when the value is not a literal, or when a string it writes needs escaping and this
        instance collects strings (the escaping writers then write it at run time)."""
        try:
            value = ast.literal_eval(expression)
        except (ValueError, SyntaxError):
            return None
        write = _exec(["def write(out, v):", *head, *("    " + line for line in block)], "<xml constant>", env)
        out = Collecting()
        write(out, value)
        if self._collect and any(self._escape(s) != s for s in out.seen):
            return None
        return "".join(out)

    def _flattened(self, item_shape: Any, tag: str) -> Writer:
        item = self.value(item_shape, tag)

        def write(out: list[str], value: Any) -> None:
            for v in value:
                if v is not None:
                    item(out, v)

        return write

    def value(self, shape: Any, tag: str) -> Writer:
        """The writer of one value of ``shape`` inside ``<tag>…</tag>``."""
        t = shape.type_name
        open_, close = f"<{tag}>", f"</{tag}>"
        if t == "structure":
            members: list[Writer] = []

            def write_struct(out: list[str], value: Any) -> None:
                if not members:  # compiled at first use: shapes may refer to themselves
                    members.append(self.members(shape))
                out.append(open_)
                members[0](out, value)
                out.append(close)

            return write_struct
        if t == "list":
            item_tag = shape.member.serialization.get("name", "member")
            item = self.value(shape.member, item_tag)

            def write_list(out: list[str], value: Any) -> None:
                out.append(open_)
                plan = None if value.__class__ is list else getattr(value, "xml_plan", None)
                if plan is not None:  # items still as stored rows: written straight from them
                    self._rows_writer(shape.member, item_tag, plan)(out, value)
                else:
                    for v in value:
                        if v is not None:
                            item(out, v)
                out.append(close)

            return write_list
        if t == "map":
            return self._map(shape, tag)
        return self._scalar(shape, open_, close)

    def _map(self, shape: Any, tag: str) -> Writer:
        key = self.value(shape.key, shape.key.serialization.get("name", "key"))
        val = self.value(shape.value, shape.value.serialization.get("name", "value"))
        flattened = bool(shape.serialization.get("flattened"))
        open_, close = f"<{tag}>", f"</{tag}>"
        entry_open, entry_close = (open_, close) if flattened else ("<entry>", "</entry>")

        def write_map(out: list[str], value: Any) -> None:
            if not flattened:
                out.append(open_)
            for k, v in value.items():
                out.append(entry_open)
                key(out, k)
                if v is not None:
                    val(out, v)
                out.append(entry_close)
            if not flattened:
                out.append(close)

        return write_map

    def _scalar(self, shape: Any, open_: str, close: str) -> Writer:
        t = shape.type_name
        esc = self._escape
        if t == "boolean":
            true, false = f"{open_}true{close}", f"{open_}false{close}"
            return lambda out, v: out.append(true if v else false)
        if t in ("integer", "long"):
            return lambda out, v: out.append(f"{open_}{int(v)}{close}")
        if t == "timestamp":
            fmt = shape.serialization.get("timestampFormat", self._timestamp_format)
            if fmt == "iso8601":
                return lambda out, v: out.append(f"{open_}{_iso8601(v)}{close}")
            return lambda out, v: out.append(f"{open_}{esc(str(V.format_timestamp(v, fmt)))}{close}")
        if t in ("float", "double", "blob"):
            text = V.format_float if t != "blob" else V.b64
            return lambda out, v: out.append(f"{open_}{esc(text(v))}{close}")
        return lambda out, v: out.append(f"{open_}{esc(v if isinstance(v, str) else str(v))}{close}")


# What stands for a hole's part in the text a shape is rendered from (RowsPlan.memo_holes):
# a private-use character, which a stored ``json.dumps`` text never holds raw (ASCII only)
# and which neither JSON nor XML escapes; a value holding it takes no template.
HOLE = "\ue000"


def _holes_pattern(holes: Holes) -> "re.Pattern[str]":
    """``holes`` as one pattern whose only group is the part: splitting a text by it gives
    [text, part, text, …] without the literals around each part (one scan, found from the
    literal before: no look-behind at every position)."""
    before, part, after = holes
    if re.compile(part).groups:
        raise ValueError(f"a memo hole's part pattern has no groups: {part!r}")
    return re.compile(f"{re.escape(before)}({part}){re.escape(after)}")


class _MemoMiss:
    """A memo member's text for a stored value not kept yet (:meth:`XmlWriters._memo_miss`):
    rendered by ``render`` into the answer itself (no list of its own). Kept in ``texts``
    (bounded) only at the value's second sighting (its hash noted at the first): a listing
    read once — the first after a start — then allocates no text per item (on this VM fresh
    memory is dear: ~4 ms more per 1,000 images when every text was kept at first sight),
    and a listing read again is written from the texts from its third reading on. Not kept
    either when one of the strings it collected needs escaping.

    With ``holes`` (RowsPlan ``memo_holes``): values that differ only in the parts the
    pattern's group matches (images registered alike, each with its own snapshot ids) share
    one *shape* — the value with each part replaced by ``HOLE`` — whose text is rendered once
    (at the shape's second sighting), split at the holes and kept in ``templates``; a value
    of a kept shape is then written as the template's pieces with its own parts between them
    (issue 15: the first listing after a start decoded and rendered every image's mappings).
    A shape whose text does not hold exactly one ``HOLE`` per part in order of the stored
    text (a part the text leaves out, or writes twice), or holds a string needing escapes
    while this instance collects, is kept as having no template (``()``)."""

    __slots__ = ("render", "texts", "collect", "escape", "limit", "sighted", "holes", "hole", "templates",
                 "shapes_sighted")

    def __init__(self, render: Writer, texts: dict[Any, str], collect: bool, escape: Escape, limit: int,
                 holes: "re.Pattern[str] | None" = None, templates: dict[str, tuple[str, ...]] | None = None,
                 hole: str = HOLE) -> None:
        self.render, self.texts, self.collect, self.escape, self.limit = render, texts, collect, escape, limit
        self.sighted: set[int] = set()  # hashes of values seen once (a collision only keeps a text early)
        self.holes = holes
        self.hole = hole  # HOLE between the literals around a part: what a shape holds for it
        self.templates: dict[str, tuple[str, ...]] = templates if templates is not None else {}
        self.shapes_sighted: set[int] = set()

    def __call__(self, out: list[str], key: Any) -> None:
        start = len(out)
        if not (self.holes is not None and key.__class__ is str and self._filled(out, key)):
            if self.collect:
                seen: list[str] = out.seen  # type: ignore[attr-defined]
                first = len(seen)
                self.render(out, key)
                if len(seen) > first:
                    strings = "".join(seen[first:])  # one scan of them all (issue 15)
                    if self.escape(strings) != strings:
                        return  # not kept: every answer holding it must collect its strings
            else:
                self.render(out, key)
        sighted, h = self.sighted, hash(key)
        if h not in sighted:
            if len(sighted) >= self.limit:
                sighted.clear()
            sighted.add(h)
            return
        texts = self.texts
        if len(texts) >= self.limit:
            texts.clear()
        texts[key] = "".join(out[start:])

    def _filled(self, out: list[str], key: str) -> bool:
        """Whether ``key``'s text was written from its shape's template (made here at the
        shape's second sighting); False: nothing written, ``render`` it."""
        assert self.holes is not None
        split = self.holes.split(key)  # [text, part, text, part, …, text]: one scan
        if len(split) == 1 or HOLE in key:
            return False
        shape = self.hole.join(split[::2])
        pieces = self.templates.get(shape)
        if pieces is None:
            h = hash(shape)
            if h not in self.shapes_sighted:
                if len(self.shapes_sighted) >= self.limit:
                    self.shapes_sighted.clear()
                self.shapes_sighted.add(h)
                return False
            pieces = self._template(shape, len(split) // 2)
        if not pieces:
            return False
        split[::2] = pieces  # the template's texts between the value's own parts
        # (no literal around them: the template's pieces hold what the text makes of those)
        out.append("".join(split))
        return True

    def _template(self, shape: str, holes: int) -> tuple[str, ...]:
        """The text of ``shape`` split at its holes (kept), or ``()`` when it cannot be one."""
        scratch = Collecting()
        self.render(scratch, shape)
        text = "".join(scratch)
        strings = "".join(scratch.seen)
        pieces = tuple(text.split(HOLE))
        if len(pieces) != holes + 1 or (self.collect and self.escape(strings) != strings):
            pieces = ()
        if len(self.templates) >= self.limit:
            self.templates.clear()
        self.templates[shape] = pieces
        return pieces

