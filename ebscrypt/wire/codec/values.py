"""Scalar conversions and model constraints shared by every protocol.

Wire text → Python (``parse_*``) raises :class:`BadValue` with a short reason; each
protocol turns that into its own error message. Python → wire text (``format_*``)
is tolerant of the obvious equivalents a handler may return (an ``int`` for a
float member, a naive datetime meaning UTC).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as _dt
import email.utils
import functools
import math
import re
from typing import Any

UTC = _dt.timezone.utc


class BadValue(ValueError):
    """A wire value that does not fit its shape's type (reason is human readable)."""


# -- wire text → Python ---------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d+\Z")
_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2})?\Z"
)


# A model ``integer`` is 32-bit and a ``long`` 64-bit (Smithy); AWS refuses a value outside
# the type. Checked here, once for every protocol, so no handler or SQL statement ever
# meets an integer wider than its member's type (2**63 overflowed SQLite: a 500).
INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def check_int_range(value: int, type_name: str) -> int:
    low, high = INT_RANGES.get(type_name, INT_RANGES["long"])
    if not low <= value <= high:
        raise BadValue(f"must be an integer between {low} and {high}")
    return value


def parse_int(text: str, type_name: str = "long") -> int:
    text = text.strip()
    if not _INT_RE.match(text) or len(text) > 40:
        raise BadValue("must be an integer")
    return check_int_range(int(text), type_name)


def parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise BadValue("must be a number") from None
    return value


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise BadValue("must be true or false")


def parse_blob_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadValue("must be base64-encoded") from None


def parse_scalar(type_name: str, text: str) -> Any:
    """A scalar member sent as text (a query field, a URI label, a header) → Python, per
    the model's type; BadValue when it does not parse. Unknown types stay text."""
    if type_name in ("integer", "long"):
        return parse_int(text, type_name)
    if type_name in ("float", "double"):
        return parse_float(text)
    if type_name == "boolean":
        return parse_bool(text)
    if type_name == "timestamp":
        return parse_timestamp(text)
    if type_name == "blob":
        return parse_blob_b64(text)
    return text  # string (and anything else)


def parse_timestamp(text: str | int | float) -> _dt.datetime:
    """ISO 8601, epoch seconds or RFC 822 → aware UTC datetime."""
    if isinstance(text, bool):
        raise BadValue("must be a timestamp")
    if isinstance(text, (int, float)):
        return _from_epoch(text)
    text = text.strip()
    m = _ISO_RE.match(text)
    if m:
        year, month, day, hour, minute, sec, frac, tz = m.groups()
        micro = int((frac or "0")[:6].ljust(6, "0"))
        try:
            value = _dt.datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(sec or 0), micro,
                tzinfo=UTC,
            )
        except ValueError:
            raise BadValue("must be a valid timestamp") from None
        if tz and tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            offset = _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            try:
                value = value - sign * offset
            except OverflowError:
                raise BadValue("is out of range for a timestamp") from None
        return value
    try:
        return _from_epoch(float(text))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise BadValue("must be a timestamp (ISO 8601 or epoch seconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _from_epoch(value: float) -> _dt.datetime:
    if not math.isfinite(value):
        raise BadValue("must be a finite timestamp")
    try:
        return _dt.datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise BadValue("is out of range for a timestamp") from None


# -- Python → wire text ---------------------------------------------------------------


def as_aware(value: Any) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return parse_timestamp(value)
    raise TypeError(f"not a timestamp: {value!r}")


def format_iso8601(value: Any) -> str:
    """ISO 8601 with milliseconds and Z, as AWS XML responses carry them."""
    v = as_aware(value)
    # one f-string, not strftime: a Describe of 1,000 resources formats thousands of these
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z")


def format_epoch(value: Any) -> int | float:
    v = as_aware(value)
    seconds = calendar.timegm(v.utctimetuple())
    if v.microsecond // 1000:
        return seconds + (v.microsecond // 1000) / 1000.0
    return seconds


def format_rfc822(value: Any) -> str:
    return email.utils.formatdate(calendar.timegm(as_aware(value).utctimetuple()), usegmt=True)


def format_timestamp(value: Any, fmt: str) -> Any:
    fmt = fmt.lower()
    if fmt == "iso8601":
        return format_iso8601(value)
    if fmt == "rfc822":
        return format_rfc822(value)
    return format_epoch(value)


def b64(value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return base64.b64encode(bytes(value)).decode("ascii")


def format_float(value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def format_bool(value: Any) -> str:
    return "true" if value else "false"


def scalar_text(shape: Any, value: Any, timestamp_format: str) -> str:
    """A scalar member as protocol text (query XML values, REST headers), timestamps in
    the member's own format or else ``timestamp_format``."""
    t = shape.type_name
    if t == "boolean":
        return format_bool(value)
    if t in ("integer", "long"):
        return str(int(value))
    if t in ("float", "double"):
        return format_float(value)
    if t == "timestamp":
        return str(format_timestamp(value, shape.serialization.get("timestampFormat", timestamp_format)))
    if t == "blob":
        return b64(value)
    return value if isinstance(value, str) else str(value)


# -- model constraints ----------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _pattern(regex: str) -> re.Pattern[str] | None:
    # Model patterns are Java/ECMA regexes, not implicitly anchored (Smithy @pattern);
    # ASCII classes as in Java. One Python cannot compile is simply not enforced.
    try:
        return re.compile(regex, re.ASCII)
    except re.error:
        return None


def constraint_problems(shape: Any, value: Any, *, enums: bool = True, patterns: bool = True) -> list[str]:
    """Reasons ``value`` breaks the shape's min/max/enum/pattern traits, AWS-worded."""
    meta = shape.metadata
    problems: list[str] = []
    type_name = shape.type_name
    if type_name in ("string", "blob", "list", "map"):
        size = len(value)
        if "min" in meta and size < meta["min"]:
            problems.append(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and size > meta["max"]:
            problems.append(f"Member must have length less than or equal to {meta['max']}")
        if enums and type_name == "string" and meta.get("enum") and value not in meta["enum"]:
            problems.append("Member must satisfy enum value set: [" + ", ".join(meta["enum"]) + "]")
        elif patterns and type_name == "string" and "pattern" in meta:
            compiled = _pattern(meta["pattern"])
            if compiled is not None and not compiled.search(value):
                problems.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif type_name in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            problems.append(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            problems.append(f"Member must have value less than or equal to {meta['max']}")
    return problems
