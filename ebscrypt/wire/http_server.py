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

On httptools, an API request (a GET, PUT or POST with a Content-Length of at most 1 MiB,
no ``Expect: 100-continue``) is not run as an ASGI task: once its body is in, the gateway
answers it on the spot (:meth:`ebscrypt.app.Gateway.answer_whole`) and the answer is
written whole, with no task, ``receive``/``send`` coroutines or message dicts; a handler
that runs in a worker thread gets its task then. That was ~1/5 of a KMS data-key call's
CPU (bench/README.md section K). Its body is gathered as the parser hands it over (no
pause of reading past 64 KiB, which only a running ASGI task would resume; no ``+=`` of
the parts) and joined once: an EBS direct PutSnapshotBlock's 512 KiB arrive in three reads
(bench/README.md section E8). Everything else — other methods, larger or chunked bodies,
100-continue, the console and ``/_ebscrypt/`` routes — goes through uvicorn's ASGI cycle.

``ebscrypt serve --http auto|httptools|h11`` picks among these classes
(:func:`protocol_class`), as uvicorn's own ``auto`` would.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, Sequence, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ebscrypt.wire.http import HttpResponse, asgi_headers

__all__ = ["protocol_class"]


# A body up to this size is joined to its header block (one bytes, one write); a larger
# one goes with it in one writelines (writev on uvloop), not copied.
_JOIN_LIMIT = 16384


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

    def write_whole(self, head: bytes, body: bytes) -> None:
        """A whole response (header block and body) in one write; a large body (a
        Describe page answered from a worker thread) is not copied to join it."""
        self.flush()
        if len(body) <= _JOIN_LIMIT:
            self._transport.write(head + body)
        else:
            self._transport.writelines((head, body))

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


# The largest body gathered whole before the gateway answers (without pausing the
# connection's reading): an EBS direct block (512 KiB) and its framing fit, with room.
WHOLE_BODY_LIMIT = 1024 * 1024

# The methods of the whole-body path: those the AWS APIs served here send (not HEAD,
# whose answer has no body, nor anything the gateway refuses: uvicorn's cycle answers those).
_WHOLE_BODY_METHODS = frozenset(("GET", "PUT", "POST"))


class WholeBodyGateway(Protocol):
    """What the protocol's whole-body path needs of the gateway (ebscrypt/app.py)."""

    def answer_whole(self, scope: Any, body: bytes) -> tuple[Any, Sequence[tuple[str, str]]]: ...

    async def finish(self, deferred: Any) -> Any: ...


def _httptools_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # httptools not installed
        return None

    class HttpToolsOneWrite(_OneWrite, httptools_impl.HttpToolsProtocol):
        """uvicorn's httptools protocol, one write per response; small API requests
        answered by the gateway without an ASGI task once their body is in."""

        _waiting: tuple[Any, WholeBodyGateway] | None = None
        # The waiting request's body as the parser handed it over (joined once at its end).
        _parts: list[bytes]

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            gateway = self._whole_body_gateway(cycle, app)
            if gateway is None:
                super()._start_asgi_task(cycle, app)
            elif cycle.more_body:  # the body is still coming: answer at its end
                self._waiting = (cycle, gateway)
                # (a pipelined request's first parts came while the previous one ran)
                self._parts = [cycle.body] if cycle.body else []
                cycle.body = b""
            else:  # a pipelined request, read whole while the previous one ran
                self._answer_whole(cycle, gateway, bytes(cycle.body))

        def on_body(self, body: bytes) -> None:
            waiting = self._waiting
            if waiting is not None and waiting[0] is self.cycle and not self.parser.should_upgrade():
                # Gathered, not paused: its Content-Length is at most WHOLE_BODY_LIMIT.
                self._parts.append(body)
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            waiting = self._waiting
            if waiting is not None and waiting[0] is self.cycle:
                self._waiting = None
                parts, self._parts = self._parts, []
                # (one part, or none, is not copied: join returns it as it is)
                self._answer_whole(*waiting, b"".join(parts))

        def _whole_body_gateway(self, cycle: Any, app: Any) -> WholeBodyGateway | None:
            """The gateway, when this request takes the whole-body path."""
            scope = cycle.scope
            if (
                app is not self.app
                or scope["method"] not in _WHOLE_BODY_METHODS
                or cycle.waiting_for_100_continue  # the client may wait for it to send the body
                or self.flow.write_paused  # the client is not reading: answer through the task
            ):
                return None
            gateway: WholeBodyGateway | None = getattr(self.app, "whole_body_gateway", lambda _s: None)(scope)
            if gateway is None:
                return None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > WHOLE_BODY_LIMIT:
                        return None
                elif name == b"transfer-encoding":
                    return None
            return gateway

        def _answer_whole(self, cycle: Any, gateway: WholeBodyGateway, body: bytes) -> None:
            try:
                answer, extra = gateway.answer_whole(cycle.scope, body)
            except Exception as exc:  # a bug: answered as uvicorn answers an ASGI app's exception
                self.logger.error("Exception in ASGI application\n", exc_info=exc)
                cycle.keep_alive = False
                self._write_whole(cycle, 500, _PLAIN_500, b"Internal Server Error")
                return
            if isinstance(answer, HttpResponse):
                self._write_whole(cycle, answer.status, asgi_headers(answer, extra), answer.body)
            else:  # its handler runs in a worker thread
                super()._start_asgi_task(cycle, _Finish(gateway, answer, extra, self, cycle))

        def _write_whole(self, cycle: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            """The response in one write, then the cycle's end as uvicorn's ``send`` ends it."""
            cycle.response_started = True
            cycle.waiting_for_100_continue = False
            content = [httptools_impl.STATUS_LINE[status]]
            for name, value in [*self.server_state.default_headers, *headers]:
                if httptools_impl.HEADER_RE.search(name) or httptools_impl.HEADER_VALUE_RE.search(value):
                    self.logger.error("Invalid HTTP header in the answer to %s", cycle.scope["path"])
                    cycle.keep_alive = False
                    self._write_whole(cycle, 500, _PLAIN_500, b"Internal Server Error")
                    return
                if name == b"connection" and b"close" in value.lower():
                    cycle.keep_alive = False
                    continue
                content += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                content.append(b"connection: close\r\n")
            content.append(b"\r\n")
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(cycle.scope),
                    cycle.scope["method"],
                    get_path_with_query_string(cycle.scope),
                    cycle.scope["http_version"],
                    status,
                )
            cast(_OneWriteTransport, self.transport).write_whole(b"".join(content), body)
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()

    return HttpToolsOneWrite


_PLAIN_500 = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]


class _Finish:
    """The ASGI app that finishes a whole-body request whose handler runs in a worker
    thread. Its answer is written as an inline one is (``_write_whole``: no ``send``
    messages, one write) unless the client went away or is not reading (write
    back-pressure: then through uvicorn's ``send``, which waits for the transport to drain)."""

    def __init__(self, gateway: WholeBodyGateway, deferred: Any, extra: Sequence[tuple[str, str]],
                 protocol: Any = None, cycle: Any = None) -> None:
        self.gateway = gateway
        self.deferred = deferred
        self.extra = extra
        self.protocol = protocol
        self.cycle = cycle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        answer = await self.gateway.finish(self.deferred)
        headers = asgi_headers(answer, self.extra)
        protocol, cycle = self.protocol, self.cycle
        if (
            protocol is not None
            and not cycle.disconnected
            and not cycle.response_started
            and not protocol.flow.write_paused
        ):
            protocol._write_whole(cycle, answer.status, headers, answer.body)
            return
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


def protocol_class(http: str) -> type[asyncio.Protocol]:
    """The protocol class for ``--http``: ``auto`` is httptools when installed, else h11."""
    if http in ("auto", "httptools"):
        found = _httptools_class()
        if found is not None:
            return found
        if http == "httptools":
            raise ImportError("--http httptools: the httptools package is not installed")
    return H11OneWrite
