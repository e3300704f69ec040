"""EC2 ``MaxResults`` / ``NextToken`` paging (request parsing and response building, so a
service-side module). One token format for every EC2 Describe: ``v1:`` + the sort key of
the last item returned, base64url; a token this server did not issue is
``InvalidNextToken``. Lists are paged by their sort key, not by offset, so a resource
created or deleted between two calls neither repeats nor hides another one. A list ordered
by more than its id (VPCs and groups by creation time, subnets by zone, rules by position)
pages by :func:`sort_key` of the columns it is ordered by.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ebscrypt.errors import InvalidNextToken, InvalidParameterCombination, InvalidParameterValue

T = TypeVar("T")


def _encode(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode()


def _decode(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except Exception:
        raw = ""
    if not raw.startswith("v1:"):
        raise InvalidNextToken(token)
    return raw[3:]


def encode_token(last_id: str) -> str:
    return _encode(last_id)


def page_after(token: str | None) -> str | None:
    """The last id of the previous page (validated), or None for the first page."""
    return _decode(token) if token else None


def page_size(params: Mapping[str, Any], *, low: int, high: int, ids_param: str | None = None,
              clamp: bool = False) -> int | None:
    """The validated MaxResults of a request (None when absent); see ``page``."""
    max_results = params.get("MaxResults")
    if max_results is None:
        return None
    if ids_param and params.get(ids_param):
        raise InvalidParameterCombination(f"The parameter {ids_param} cannot be used with the parameter maxResults")
    if clamp and max_results > high:
        return high
    if not low <= max_results <= high:
        raise InvalidParameterValue(f"Value ( {max_results} ) for parameter maxResults is invalid. Expecting a value "
                                    f"between {low} and {high}.")
    return int(max_results)


def page(items: Sequence[T], params: dict[str, Any], key: Callable[[T], str], *,
         low: int = 5, high: int = 1000, ids_param: str | None = None,
         clamp: bool = False) -> tuple[list[T], str | None]:
    """One page of ``items`` (already in the order of ``key``: a unique string per item,
    its id or a :func:`sort_key`) and the NextToken, if more remain.

    ``clamp``: a MaxResults above ``high`` returns ``high`` items instead of being refused
    (DescribeVolumes does this; the AWS CLI sends MaxResults=1000 to it by default).
    """
    max_results = page_size(params, low=low, high=high, ids_param=ids_param, clamp=clamp)
    token = params.get("NextToken")
    start = 0
    if token:
        after = _decode(token)
        start = next((i for i, item in enumerate(items) if key(item) > after), len(items))
    if max_results is None:
        return list(items[start:]), None
    chunk = list(items[start:start + max_results])
    more = start + max_results < len(items)
    return chunk, (_encode(key(chunk[-1])) if more and chunk else None)


def sort_key(*parts: str | int | datetime) -> str:
    """A string that sorts as the tuple ``parts`` does (the key :func:`page` compares):
    times and numbers at a fixed width, parts joined by NUL (which no id or name holds)."""
    out = []
    for part in parts:
        if isinstance(part, datetime):
            out.append(part.strftime("%Y%m%d%H%M%S%f"))
        elif isinstance(part, int):
            out.append(f"{part:020d}")
        else:
            out.append(part)
    return "\x00".join(out)
