"""JSON documents ↔ plain Python values, walked along a botocore shape.

Shared by the JSON 1.1 (KMS) and rest-json (EBS) codecs. Reading validates as AWS's
JSON services do: a wrong JSON type stops at once; required members and min/max/enum
traits are collected and reported together as
``N validation error(s) detected: Value … at 'member' failed to satisfy constraint: …``
(min/max length or value, enum, and the model's regular expression pattern).
"""

from __future__ import annotations

import math
from typing import Any

from ebscrypt.errors import ValidationError

from . import values as V
from .required import missing as missing_members

_NUMBER_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def camel(name: str) -> str:
    """AWS names members in validation messages lowerCamel: KeyId → keyId."""
    return name[:1].lower() + name[1:]


def _show(shape: Any, value: Any) -> str:
    if value is None:
        return "Value null"
    if shape.metadata.get("sensitive") or shape.type_name == "blob":
        return "Value"
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, list):
        value = "[" + ", ".join(str(v) for v in value) + "]"
    text = str(value)
    if len(text) > 256:
        text = text[:256] + "…"
    return f"Value '{text}'"


def validation_error(
    problems: list[tuple[str, str, str]], *, missing: bool = False, error: type[ValidationError] = ValidationError
) -> ValidationError:
    """One ``error`` for a list of (shown value, path, constraint) triples."""
    n = len(problems)
    head = f"{n} validation error{'s' if n != 1 else ''} detected: "
    body = "; ".join(f"{shown} at '{path}' failed to satisfy constraint: {why}" for shown, path, why in problems)
    return error(head + body, missing=missing)


class JsonReader:
    """Convert one decoded JSON document to Python along ``shape``; raise on bad input."""

    def __init__(
        self, service: str, *, constraints: bool = True, type_error: type[ValidationError] = ValidationError
    ) -> None:
        # The service names the table of members ebscrypt itself requires (.required).
        self.service = service
        self.constraints = constraints
        # JSON 1.1 services (KMS) answer a wrongly typed member with SerializationException
        # rather than ValidationException; rest-json callers keep the default.
        self.type_error_class = type_error
        self.problems: list[tuple[str, str, str]] = []
        self.missing = False

    def finish(self) -> None:
        if self.problems:
            raise validation_error(self.problems, missing=self.missing and all(
                p[0] == "Value null" for p in self.problems))

    def type_error(self, shape: Any, value: Any, path: str, expected: str) -> ValidationError:
        return validation_error([(_show(shape, value), path, f"Member must be {expected}")],
                                error=self.type_error_class)

    def check(self, shape: Any, value: Any, path: str) -> None:
        if self.constraints:
            for why in V.constraint_problems(shape, value):
                self.problems.append((_show(shape, value), path, why))

    def required(self, shape: Any, present: dict[str, Any], path: str) -> None:
        for name in missing_members(self.service, shape, present):
            self.missing = True
            where = f"{path}.{camel(name)}" if path else camel(name)
            self.problems.append(("Value null", where, "Member must not be null"))

    def read(self, shape: Any, value: Any, path: str) -> Any:
        t = shape.type_name
        if t == "structure":
            if shape.metadata.get("document"):
                return value
            if not isinstance(value, dict):
                raise self.type_error(shape, value, path, "a structure")
            return self.read_members(shape, value, path)
        if t == "list":
            if not isinstance(value, list):
                raise self.type_error(shape, value, path, "a list")
            out = []
            for i, item in enumerate(value, 1):
                item_path = f"{path}.{i}.member" if path else f"{i}.member"
                if item is None:
                    # A JSON null inside a list is an absent element, which AWS refuses.
                    self.problems.append(("Value null", item_path, "Member must not be null"))
                    continue
                out.append(self.read(shape.member, item, item_path))
            self.check(shape, out, path)
            return out
        if t == "map":
            if not isinstance(value, dict):
                raise self.type_error(shape, value, path, "a map")
            out_map = {}
            for k, v in value.items():
                key = self.read(shape.key, k, f"{path}.key")
                if v is None:
                    continue
                out_map[key] = self.read(shape.value, v, f"{path}.{k}")
            self.check(shape, out_map, path)
            return out_map
        return self.read_scalar(shape, value, path)

    def read_members(
        self, shape: Any, doc: dict[str, Any], path: str, *, skip_located: bool = False, required: bool = True
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            if skip_located and "location" in member.serialization:
                continue
            raw = doc.get(member.serialization.get("name", name))
            if raw is None:
                continue
            out[name] = self.read(member, raw, f"{path}.{camel(name)}" if path else camel(name))
        if required:
            self.required(shape, out, path)
        return out

    def read_scalar(self, shape: Any, value: Any, path: str) -> Any:
        t = shape.type_name
        if t == "string":
            if not isinstance(value, str):
                raise self.type_error(shape, value, path, "a string")
            out: Any = value
        elif t in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.type_error(shape, value, path, "an integer")
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.type_error(shape, value, path, "an integer")
                value = int(value)
            try:
                out = V.check_int_range(value, t)
            except V.BadValue as exc:
                raise self.type_error(shape, value, path, str(exc).removeprefix("must be ")) from None
        elif t in ("float", "double"):
            if isinstance(value, str) and value in _NUMBER_WORDS:
                value = _NUMBER_WORDS[value]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.type_error(shape, value, path, "a number")
            out = float(value)
        elif t == "boolean":
            if not isinstance(value, bool):
                raise self.type_error(shape, value, path, "a boolean")
            out = value
        elif t == "blob":
            if not isinstance(value, str):
                raise self.type_error(shape, value, path, "base64-encoded binary data")
            try:
                out = V.parse_blob_b64(value)
            except V.BadValue:
                raise self.type_error(shape, value, path, "base64-encoded binary data") from None
        elif t == "timestamp":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise self.type_error(shape, value, path, "a timestamp")
            try:
                out = V.parse_timestamp(value)
            except V.BadValue:
                raise self.type_error(shape, value, path, "a timestamp") from None
        else:  # pragma: no cover - no other scalar types in botocore models
            out = value
        self.check(shape, out, path)
        return out


def write(shape: Any, value: Any) -> Any:
    """Python value → JSON-ready value along ``shape`` (extra dict keys ignored)."""
    t = shape.type_name
    if t == "structure":
        if shape.metadata.get("document"):
            return value
        return write_members(shape, value)
    if t == "list":
        return [write(shape.member, v) for v in value if v is not None]
    if t == "map":
        return {str(k): write(shape.value, v) for k, v in value.items() if v is not None}
    if t == "string":
        return value if isinstance(value, str) else str(value)
    if t in ("integer", "long"):
        return int(value)
    if t in ("float", "double"):
        value = float(value)
        if not math.isfinite(value):
            return V.format_float(value)
        return value
    if t == "boolean":
        return bool(value)
    if t == "blob":
        return V.b64(value)
    if t == "timestamp":
        return V.format_timestamp(value, shape.serialization.get("timestampFormat", "unixTimestamp"))
    return value


def write_members(shape: Any, value: dict[str, Any], *, skip_located: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, member in shape.members.items():
        if skip_located and "location" in member.serialization:
            continue
        v = value.get(name)
        if v is None:
            continue
        out[member.serialization.get("name", name)] = write(member, v)
    return out
