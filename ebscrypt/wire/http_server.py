"""uvicorn's HTTP/1.1 protocols, sending each response in one write (issue 15).

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two
``write``s, so two ``send(2)`` calls (and two TCP segments) per response. On a KMS
data-key call that was the largest single cost of the server (py-spy: ~28% of the event
loop's CPU in ``RequestResponseCycle.send``, bench/README.md section A). Here the
protocol's transport holds the header block until the next write (the body's first
bytes) and sends both together (``writelines``: one ``writev`` on uvloop); whatever ends
the response (its completion, a close) sends what is held first. A ``100 Continue``
interim answer is never held: a client may wait for it before sending its body.

``ebscrypt serve --http auto|httptools|h11`` picks among these classes
(:func:`protocol_class`), as uvicorn's own ``auto`` would.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["protocol_class"]


class _OneWriteTransport:
    """A transport holding a response's header block until its body is written."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if data:
                self._transport.writelines((held, data))
            else:
                self._transport.write(held)
            return
        if _is_header_block(data):
            self._held = bytes(data)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held (the response ends: its header block alone, e.g. a HEAD)."""
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, …
        return getattr(self._transport, name)


def _is_header_block(data: bytes | bytearray | memoryview) -> bool:
    """A final response's status line and headers (not a 1xx interim answer)."""
    head = bytes(data[:10])
    return head.startswith(b"HTTP/1.1 ") and not head.startswith(b"HTTP/1.1 1") and bytes(data[-4:]) == b"\r\n\r\n"


class _OneWrite:
    """Mixed into one of uvicorn's protocols (before it): its transport holds each
    response's header block for the body; the end of a response sends what is held."""

    transport: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        held = _OneWriteTransport(cast(asyncio.Transport, transport))
        super().connection_made(cast(asyncio.Transport, held))  # type: ignore[misc]

    def on_response_complete(self) -> None:
        cast(_OneWriteTransport, self.transport).flush()
        super().on_response_complete()  # type: ignore[misc]


class H11OneWrite(_OneWrite, H11Protocol):
    """uvicorn's h11 protocol, one write per response."""


def _httptools_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed
        return None

    class HttpToolsOneWrite(_OneWrite, HttpToolsProtocol):
        """uvicorn's httptools protocol, one write per response."""

    return HttpToolsOneWrite


def protocol_class(http: str) -> type[asyncio.Protocol]:
    """The protocol class for ``--http``: ``auto`` is httptools when installed, else h11."""
    if http in ("auto", "httptools"):
        found = _httptools_class()
        if found is not None:
            return found
        if http == "httptools":
            raise ImportError("--http httptools: the httptools package is not installed")
    return H11OneWrite
