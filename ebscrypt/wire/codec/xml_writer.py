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

import threading
from datetime import datetime, timezone
from typing import Any, Callable

from . import values as V

Writer = Callable[[list[str], Any], None]
Escape = Callable[[str], str]
_UTC = timezone.utc


def _iso8601(value: Any) -> str:
    """``values.format_iso8601`` with a fast path for the UTC datetimes records carry."""
    if value.__class__ is datetime and (value.tzinfo is None or value.tzinfo is _UTC):
        return (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
                f"{value.second:02d}.{value.microsecond // 1000:03d}Z")
    return V.format_iso8601(value)


class XmlWriters:
    """Per-codec cache of compiled writers. ``always(shape)``: members written (as an empty
    list) even when the result has none (``ec2_always``); ``timestamp_format``: the
    protocol's default for timestamps without their own ``timestampFormat``."""

    def __init__(self, always: Callable[[Any], frozenset[str]], escape: Escape,
                 timestamp_format: str = "iso8601") -> None:
        self._always = always
        self._escape = escape
        self._timestamp_format = timestamp_format
        self._structs: dict[str, Writer] = {}  # complete writers, read without the lock
        # Writers being compiled (a recursive shape finds itself here); published to
        # ``_structs`` only when the outermost compile is done: answers are serialized in
        # several worker threads, and one must never get a writer whose steps are not all
        # there yet (it would leave members out).
        self._pending: dict[str, Writer] = {}
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
        steps: list[tuple[str, Writer, bool]] = []

        def write(out: list[str], value: Any) -> None:
            get = value.get
            for name, fn, always in steps:
                v = get(name)
                if v is None:
                    if not always:
                        continue
                    v = ()  # a list AWS sends even when empty
                fn(out, v)

        # Registered before its members are compiled: a recursive shape finds itself.
        self._pending[shape.name] = write
        always = self._always(shape)
        for name, member in shape.members.items():
            if member.type_name == "list" and member.serialization.get("flattened"):
                tag = member.member.serialization.get("name") or member.serialization.get("name", name)
                steps.append((name, self._flattened(member.member, tag), name in always))
            else:
                steps.append((name, self.value(member, member.serialization.get("name", name)), name in always))
        return write

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
            item = self.value(shape.member, shape.member.serialization.get("name", "member"))

            def write_list(out: list[str], value: Any) -> None:
                out.append(open_)
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
