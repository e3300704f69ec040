"""Plain HTTP request/response values exchanged between the ASGI app and the codecs.

No HTTP library here on purpose: the codecs take and return these dataclasses, so they
can be tested without a server (the same habit as botocore's request dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


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


def asgi_headers(response: HttpResponse, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[bytes, bytes]]:
    """The response's headers as ASGI sends them: Content-Length first (none on 1xx, 204,
    304), names lower-cased, a name given twice keeping its last value (as Starlette's
    ``MutableHeaders`` did)."""
    out: dict[bytes, bytes] = {}
    if not (response.status < 200 or response.status in (204, 304)):
        out[b"content-length"] = str(len(response.body)).encode()
    for name, value in [*response.headers, *extra]:
        out[name.lower().encode("latin-1")] = value.encode("latin-1")
    return list(out.items())
