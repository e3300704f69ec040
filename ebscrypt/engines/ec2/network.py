"""EC2 networking records: default VPC and subnets, security groups and their rules.

Also the EC2 ``Filters`` matcher shared by the describe operations of this area.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from ebscrypt.errors import ServiceError

# --------------------------------------------------------------------------- filters

Getter = Callable[[Any], Any]


def _wildcard(pattern: str) -> re.Pattern[str]:
    # EC2 filter values: ``*`` any run, ``?`` one char, ``\`` escapes; case-sensitive.
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _as_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple, set, frozenset)):
        out: list[str] = []
        for v in value:
            out.extend(_as_strings(v))
        return out
    return [str(value)]


def invalid_filter(name: str) -> ServiceError:
    return ServiceError(f"The filter '{name}' is invalid", code="InvalidParameterValue")


def check_filters(filters: list[dict] | None, getters: Mapping[str, Getter], *, tags: bool) -> None:
    """Refuse unknown filter names before anything is read, as EC2 does."""
    for f in filters or []:
        name = f.get("Name", "")
        if name in getters:
            continue
        if tags and (name.startswith("tag:") or name in ("tag-key", "tag-value")):
            continue
        raise invalid_filter(name)


def matches(
    obj: Any,
    filters: list[dict] | None,
    getters: Mapping[str, Getter],
    tag_getter: Callable[[Any], Mapping[str, str]] | None = None,
) -> bool:
    """True if ``obj`` passes every filter (values within one filter are alternatives)."""
    for f in filters or []:
        name = f.get("Name", "")
        patterns = [_wildcard(v) for v in f.get("Values") or []]
        if name in getters:
            candidates = _as_strings(getters[name](obj))
        elif tag_getter is not None and name.startswith("tag:"):
            t = tag_getter(obj)
            key = name[4:]
            candidates = [t[key]] if key in t else []
        elif tag_getter is not None and name == "tag-key":
            candidates = list(tag_getter(obj).keys())
        elif tag_getter is not None and name == "tag-value":
            candidates = list(tag_getter(obj).values())
        else:
            raise invalid_filter(name)
        if not any(p.fullmatch(c) for p in patterns for c in candidates):
            return False
    return True


def select(
    objs: Iterable[Any],
    filters: list[dict] | None,
    getters: Mapping[str, Getter],
    tag_getter: Callable[[Any], Mapping[str, str]] | None = None,
) -> list[Any]:
    check_filters(filters, getters, tags=tag_getter is not None)
    return [o for o in objs if matches(o, filters, getters, tag_getter)]


def dry_run_check(params: Mapping[str, Any]) -> None:
    """EC2's DryRun: the caller is allowed, so answer DryRunOperation (HTTP 412)."""
    if params.get("DryRun"):
        raise ServiceError(
            "Request would have succeeded, but DryRun flag is set.",
            code="DryRunOperation",
            status=412,
        )


__all__ = ["select", "matches", "check_filters", "invalid_filter", "dry_run_check"]
