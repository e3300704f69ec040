"""EC2 ``Filters`` (Name + Values, ``*``/``?`` wildcards, ``tag:K``, ``tag-key``, ``tag-value``)
and DryRun, for the ec2core describe operations."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

from ebscrypt.errors import ServiceError

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
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def apply_filters(items: Iterable[Any], filters: list[dict] | None, getters: Mapping[str, Getter],
                  tags: Callable[[Any], Mapping[str, str]] | None = None) -> list[Any]:
    """Items passing every filter (the values of one filter are alternatives)."""
    filters = filters or []
    for f in filters:
        name = f.get("Name", "")
        if name not in getters and not (tags and (name.startswith("tag:") or name in ("tag-key", "tag-value"))):
            raise ServiceError(f"The filter '{name}' is invalid", code="InvalidParameterValue")
    if not filters:
        return list(items)
    compiled = [(f["Name"], [_pattern(v) for v in f.get("Values") or []]) for f in filters]
    out = []
    for item in items:
        for name, patterns in compiled:
            if name in getters:
                candidates = _strings(getters[name](item))
            elif name.startswith("tag:"):
                t = tags(item) if tags else {}
                candidates = [t[name[4:]]] if name[4:] in t else []
            elif name == "tag-key":
                candidates = list((tags(item) if tags else {}).keys())
            else:
                candidates = list((tags(item) if tags else {}).values())
            if not any(p.fullmatch(c) for p in patterns for c in candidates):
                break
        else:
            out.append(item)
    return out


def dry_run_check(params: Mapping[str, Any]) -> None:
    """EC2 DryRun: the caller is allowed, so answer DryRunOperation (HTTP 412)."""
    if params.get("DryRun"):
        raise ServiceError("Request would have succeeded, but DryRun flag is set.", code="DryRunOperation",
                           status=412)
