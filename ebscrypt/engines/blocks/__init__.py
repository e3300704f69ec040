"""Block engine (being built under issue 5)."""

from __future__ import annotations

from typing import Any


def open_engine(runtime: Any) -> Any:
    # Replaced by the block engine; returns nothing until it lands.
    return None
