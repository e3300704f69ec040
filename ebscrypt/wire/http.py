"""Plain HTTP request/response values exchanged between the ASGI app and the codecs.

No HTTP library here on purpose: the codecs take and return these dataclasses, so they
can be tested without a server (the same habit as botocore's request dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HttpRequest:
    method: str
    path: str  # raw path, percent-encoded as received
    query: str  # raw query string, without the '?'
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None
