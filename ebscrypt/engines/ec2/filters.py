"""EC2 ``Filters`` (Name + Values, ``*``/``?`` wildcards, ``tag:K``, ``tag-key``, ``tag-value``)
and DryRun, for the ec2core describe operations."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

from ebscrypt.errors import InvalidParameterValue

Getter = Callable[[Any], Any]


@lru_cache(maxsize=512)
def _pattern(value: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(re.escape(value[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def invalid_filter(name: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"The filter '{name}' is invalid")


def check_filters(filters: list[dict[str, Any]] | None, getters: Mapping[str, Getter], *, tags: bool) -> None:
    """Refuse unknown filter names before anything is read, as EC2 does."""
    for f in filters or []:
        name = f.get("Name", "")
        if name in getters:
            continue
        if tags and (name.startswith("tag:") or name in ("tag-key", "tag-value")):
            continue
        raise invalid_filter(name)


def matches(obj: Any, filters: list[dict[str, Any]] | None, getters: Mapping[str, Getter],
            tag_getter: Callable[[Any], Mapping[str, str]] | None = None) -> bool:
    """True if ``obj`` passes every filter (values within one filter are alternatives)."""
    for f in filters or []:
        name = f.get("Name", "")
        patterns = [_pattern(v) for v in f.get("Values") or []]
        if name in getters:
            candidates = _strings(getters[name](obj))
        elif tag_getter is not None and name.startswith("tag:"):
            t = tag_getter(obj)
            candidates = [t[name[4:]]] if name[4:] in t else []
        elif tag_getter is not None and name == "tag-key":
            candidates = list(tag_getter(obj).keys())
        elif tag_getter is not None and name == "tag-value":
            candidates = list(tag_getter(obj).values())
        else:
            raise invalid_filter(name)
        if not any(p.fullmatch(c) for p in patterns for c in candidates):
            return False
    return True


def _test(f: dict[str, Any], getters: Mapping[str, Getter],
          tag_getter: Callable[[Any], Mapping[str, str]] | None) -> Callable[[Any], bool]:
    """One filter as a test of an item, with :func:`matches`' semantics: its values are
    compared as strings when none has a wildcard or escape (a literal pattern matches
    itself only), else as patterns; built once per request, not once per item."""
    name = f.get("Name", "")
    values = list(f.get("Values") or [])
    literal = all(isinstance(v, str) and not any(ch in v for ch in "*?\\") for v in values)
    wanted = frozenset(values) if literal else frozenset()
    patterns = [] if literal else [_pattern(v) for v in values]

    def hit(candidates: list[str]) -> bool:
        if literal:
            return any(c in wanted for c in candidates)
        return any(p.fullmatch(c) for p in patterns for c in candidates)

    if name in getters:
        getter = getters[name]
        return lambda obj: hit(_strings(getter(obj)))
    if tag_getter is not None and name.startswith("tag:"):
        key = name[4:]

        def tag_test(obj: Any) -> bool:
            t = tag_getter(obj)
            return key in t and hit([t[key]])

        return tag_test
    if tag_getter is not None and name == "tag-key":
        return lambda obj: hit(list(tag_getter(obj).keys()))
    if tag_getter is not None and name == "tag-value":
        return lambda obj: hit(list(tag_getter(obj).values()))
    raise invalid_filter(name)


def apply_filters(items: Iterable[Any], filters: list[dict[str, Any]] | None, getters: Mapping[str, Getter],
                  tags: Callable[[Any], Mapping[str, str]] | None = None) -> list[Any]:
    """Items passing every filter; unknown filter names are refused before any is tried."""
    check_filters(filters, getters, tags=tags is not None)
    if not filters:
        return list(items)
    tests = [_test(f, getters, tags) for f in filters]
    return [item for item in items if all(test(item) for test in tests)]


def select_matching(objs: Iterable[Any], filters: list[dict[str, Any]] | None, getters: Mapping[str, Getter],
                    tag_getter: Callable[[Any], Mapping[str, str]] | None = None) -> list[Any]:
    """``apply_filters`` with the tag getter named as the network and image modules name it."""
    return apply_filters(objs, filters, getters, tag_getter)
