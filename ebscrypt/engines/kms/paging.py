"""Limit/Marker paging of the KMS List* operations."""

from __future__ import annotations

import base64
from typing import Any, Sequence

from ebscrypt.errors import KmsInvalidMarker, KmsValidation


def page(
    items: Sequence[Any], limit: Any, marker: str | None, *, default: int, max_limit: int
) -> tuple[list[Any], dict[str, Any]]:
    """One page of ``items`` per Limit (None: ``default``) and Marker; returns
    (page, {Truncated, NextMarker?})."""
    if limit is None:
        limit = default
    if not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise KmsValidation.out_of_range(limit, "limit", 1, max_limit)
    start = 0
    if marker:
        try:
            start = int(base64.urlsafe_b64decode(marker.encode()).decode().split(":", 1)[1])
            if start < 0:
                raise ValueError
        except (ValueError, IndexError, UnicodeDecodeError):
            raise KmsInvalidMarker("Invalid marker") from None
    items_page = list(items[start : start + limit])
    out: dict[str, Any] = {"Truncated": start + limit < len(items)}
    if out["Truncated"]:
        out["NextMarker"] = base64.urlsafe_b64encode(f"ebscrypt:{start + limit}".encode()).decode()
    return items_page, out
