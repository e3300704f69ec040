"""Compiled JSON readers and writers for the ``json`` protocol (KMS): still driven by the
service model, but walked once per shape instead of once per value (issue 15, KMS pairs).

:class:`~ebscrypt.wire.codec.jsonshape.JsonReader` reads each member's shape, type,
traits and path for every value, and ``jsonshape.write_members`` the same on the way
out: 11 µs of a GenerateDataKey's parse and 6 µs of its answer (bench/README.md section
K). Here each structure is turned once into a list of steps, each a closure that knows its
member's wire name, type and constraints.

A compiled reader only **accepts**: a document it has the least doubt about (a wrong JSON
type, a value outside its min/max/enum/pattern, a required member missing, a float where
an integer is expected, a timestamp…) makes it give up (:class:`Doubt`), and the codec
reads the document again with ``JsonReader``, which reports exactly what it always did
(the validation tests define the wording). So a compiled reader is at least as strict as
``JsonReader`` and returns what it would return for every document it accepts
(tests/unit/test_json_plan.py compares both over valid and invalid documents).
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Callable

from . import values as V
from .required import required_groups

Read = Callable[[Any], Any]
Write = Callable[[Any], Any]

# One encoder for every answer (``json.dumps`` with ``separators`` builds one per call).
ENCODER = json.JSONEncoder(separators=(",", ":"))


class Doubt(Exception):
    """The compiled reader does not accept the document: read it with ``JsonReader``."""


_DOUBT = Doubt()  # raised often on bad input: one instance, no traceback to keep


def _doubt() -> Any:
    raise _DOUBT


class JsonPlans:
    """Per-codec cache of compiled readers and writers of structures (by shape name)."""

    def __init__(self, service: str) -> None:
        self.service = service  # the table of members ebscrypt requires (.required)
        self._readers: dict[str, Read] = {}
        self._writers: dict[str, Write] = {}
        # Compiled under a lock and published when the outermost compile is done: a
        # request on another thread never gets a reader or writer missing steps.
        self._pending: dict[tuple[str, str], Callable[[Any], Any]] = {}
        self._depth = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ readers

    def reader(self, shape: Any) -> Read:
        """The reader of a structure's members: the params dict, or :class:`Doubt`."""
        found = self._readers.get(shape.name)
        if found is not None:
            return found
        return self._compiled("r", shape, self._readers, self._compile_reader)

    def writer(self, shape: Any) -> Write:
        """The writer of a structure's members: a JSON-ready dict (as ``write_members``)."""
        found = self._writers.get(shape.name)
        if found is not None:
            return found
        return self._compiled("w", shape, self._writers, self._compile_writer)

    def _compiled(
        self, kind: str, shape: Any, done: dict[str, Any], compile_: Callable[[Any], Callable[[Any], Any]]
    ) -> Callable[[Any], Any]:
        with self._lock:
            found = done.get(shape.name) or self._pending.get((kind, shape.name))
            if found is not None:
                return found
            # Registered before its members are compiled: a recursive shape finds itself.
            steps: list[Callable[[Any], Any]] = []
            self._pending[(kind, shape.name)] = lambda value: steps[0](value)
            self._depth += 1
            try:
                fn = compile_(shape)
            except BaseException:
                self._pending.clear()
                raise
            finally:
                self._depth -= 1
            steps.append(fn)
            self._pending[(kind, shape.name)] = fn
            if self._depth == 0:
                for (k, name), compiled in self._pending.items():
                    (self._readers if k == "r" else self._writers)[name] = compiled
                self._pending.clear()
            return fn

    def _compile_reader(self, shape: Any) -> Read:
        steps = _member_steps(shape, self._read_value)
        groups = required_groups(self.service, shape)

        def read_members(doc: Any) -> dict[str, Any]:
            if doc.__class__ is not dict:
                raise _DOUBT
            out: dict[str, Any] = {}
            get = doc.get
            for name, wire, read in steps:
                raw = get(wire)
                if raw is not None:
                    out[name] = read(raw)
            for group in groups:
                for name in group:
                    if name in out:
                        break
                else:
                    raise _DOUBT
            return out

        return read_members

    def _read_value(self, shape: Any) -> Read:
        t = shape.type_name
        if t == "structure":
            if shape.metadata.get("document"):
                return lambda value: value
            return self.reader(shape)
        if t == "list":
            return self._read_list(shape)
        if t == "map":
            return self._read_map(shape)
        return _read_scalar(shape)

    def _read_list(self, shape: Any) -> Read:
        item = self._read_value(shape.member)
        fits = _length_check(shape)

        def read_list(value: Any) -> list[Any]:
            if value.__class__ is not list:
                raise _DOUBT
            out = []
            for v in value:
                if v is None:
                    raise _DOUBT
                out.append(item(v))
            if fits is not None and not fits(len(out)):
                raise _DOUBT
            return out

        return read_list

    def _read_map(self, shape: Any) -> Read:
        key_of = self._read_value(shape.key)
        value_of = self._read_value(shape.value)
        fits = _length_check(shape)

        def read_map(value: Any) -> dict[Any, Any]:
            if value.__class__ is not dict:
                raise _DOUBT
            out = {}
            for k, v in value.items():
                key = key_of(k)
                if v is not None:
                    out[key] = value_of(v)
            if fits is not None and not fits(len(out)):
                raise _DOUBT
            return out

        return read_map

    # ------------------------------------------------------------------ writers

    def _compile_writer(self, shape: Any) -> Write:
        steps = _member_steps(shape, self._write_value)

        def write_members(value: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            get = value.get
            for name, wire, write in steps:
                v = get(name)
                if v is not None:
                    out[wire] = write(v)
            return out

        return write_members

    def _write_value(self, shape: Any) -> Write:
        """The writer of one value of ``shape``, as ``jsonshape.write`` writes it."""
        t = shape.type_name
        if t == "structure":
            if shape.metadata.get("document"):
                return lambda value: value
            return self.writer(shape)
        if t == "list":
            item = self._write_value(shape.member)
            return lambda value: [item(v) for v in value if v is not None]
        if t == "map":
            val = self._write_value(shape.value)
            return lambda value: {str(k): val(v) for k, v in value.items() if v is not None}
        if t == "string":
            return _str
        if t in ("integer", "long"):
            return int
        if t in ("float", "double"):
            return _float
        if t == "boolean":
            return bool
        if t == "blob":
            return V.b64
        if t == "timestamp":
            fmt = shape.serialization.get("timestampFormat", "unixTimestamp")
            return lambda value: V.format_timestamp(value, fmt)
        return lambda value: value


def _member_steps(shape: Any, compile_value: Callable[[Any], Read]) -> list[tuple[str, str, Read]]:
    """(member name, its name in the document, the compiled reader or writer of its value)
    for each member of a structure: both directions walk the same list."""
    return [(name, member.serialization.get("name", name), compile_value(member))
            for name, member in shape.members.items()]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _float(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else V.format_float(value)


def _length_check(shape: Any) -> Callable[[int], bool] | None:
    """A length within the shape's min/max (None: no bound)."""
    meta = shape.metadata
    low, high = meta.get("min"), meta.get("max")
    if low is None and high is None:
        return None
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    return lambda n: lo <= n <= hi


def _read_scalar(shape: Any) -> Read:
    """A scalar's reader, accepting only what ``JsonReader.read_scalar`` accepts unchanged
    and ``values.constraint_problems`` finds nothing wrong with."""
    t = shape.type_name
    meta = shape.metadata
    if t == "string":
        fits = _length_check(shape)
        enum = frozenset(meta["enum"]) if meta.get("enum") else None
        # JsonReader checks the pattern of a string in its enum too
        pattern = V._pattern(meta["pattern"]) if "pattern" in meta else None

        def read_string(value: Any) -> str:
            if value.__class__ is not str:
                raise _DOUBT
            if fits is not None and not fits(len(value)):
                raise _DOUBT
            if enum is not None and value not in enum:
                raise _DOUBT
            if pattern is not None and not pattern.search(value):
                raise _DOUBT
            return value

        return read_string
    if t == "blob":
        fits = _length_check(shape)

        def read_blob(value: Any) -> bytes:
            if value.__class__ is not str:
                raise _DOUBT
            try:
                out = V.parse_blob_b64(value)
            except V.BadValue:
                raise _DOUBT from None
            if fits is not None and not fits(len(out)):
                raise _DOUBT
            return out

        return read_blob
    if t in ("integer", "long"):
        low, high = V.INT_RANGES.get(t, V.INT_RANGES["long"])
        if "min" in meta:
            low = max(low, meta["min"])
        if "max" in meta:
            high = min(high, meta["max"])

        def read_int(value: Any) -> int:
            if value.__class__ is not int or not low <= value <= high:  # bool, float: JsonReader
                raise _DOUBT
            return value

        return read_int
    if t == "boolean":
        return lambda value: value if value.__class__ is bool else _doubt()
    # float, double, timestamp: rare in requests; JsonReader reads them
    return lambda value: _doubt()
