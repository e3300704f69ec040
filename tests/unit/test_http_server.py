"""The HTTP protocols' one-write transport (ebscrypt/wire/http_server.py, issue 15): a
response's header block goes out with its body in one write; nothing is held past the
response, and a 100 Continue is never held."""

from __future__ import annotations

from typing import Any

from ebscrypt.wire.http_server import _OneWriteTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(bytes(p) for p in parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_header_block_and_body_leave_in_one_write() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    t.write(HEAD)
    assert fake.writes == []
    t.write(b"{}")
    assert fake.writes == [HEAD + b"{}"]


def test_header_block_alone_is_sent_when_the_response_ends() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # a HEAD answer: no body write
    t.flush()
    assert fake.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]
    t.flush()  # nothing held any more
    assert len(fake.writes) == 1


def test_close_sends_what_is_held_first() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    t.write(HEAD)
    t.close()
    assert fake.writes == [HEAD] and fake.closed


def test_continue_and_body_chunks_are_never_held() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert fake.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(b"some body bytes")
    assert fake.writes[-1] == b"some body bytes"


def test_an_empty_body_write_sends_the_held_header_block() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    t.write(HEAD)
    t.write(b"")
    assert fake.writes == [HEAD]


def test_other_attributes_reach_the_real_transport() -> None:
    fake = FakeTransport()
    t = _OneWriteTransport(fake)  # type: ignore[arg-type]
    assert t.is_closing() is False


# --- the whole-body path for large bodies (httptools: an EBS direct block, issue 15) ---

import asyncio  # noqa: E402

import pytest  # noqa: E402

from ebscrypt.wire.http import HttpResponse  # noqa: E402
from ebscrypt.wire.http_server import protocol_class  # noqa: E402


class _ReadingTransport(FakeTransport):
    """A transport that counts the protocol's pauses of reading."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default


class _WholeBodyApp:
    """An app whose gateway answers each whole body at once, noting what it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.asgi_calls = 0

    def whole_body_gateway(self, scope: Any) -> "_WholeBodyApp":
        return self

    def answer_whole(self, scope: Any, body: bytes) -> tuple[HttpResponse, list[tuple[str, str]]]:
        self.bodies.append(body)
        return HttpResponse(201, [("Content-Type", "application/json")], b"{}"), []

    async def finish(self, deferred: Any) -> Any:
        raise AssertionError("answered inline")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.asgi_calls += 1
        raise AssertionError("the whole-body path runs no ASGI task")


def _protocol(app: _WholeBodyApp) -> tuple[Any, _ReadingTransport]:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    pytest.importorskip("httptools")
    config = Config(app=app, http="httptools", lifespan="off", access_log=False)
    config.load()
    config.loaded_app = app
    proto = protocol_class("httptools")(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    transport = _ReadingTransport()
    proto.connection_made(transport)
    return proto, transport


def _put(body: bytes, index: int) -> bytes:
    return (b"PUT /snapshots/snap-0/blocks/%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (index, len(body))) + body


def test_a_block_sized_put_is_gathered_whole_without_pausing_reading() -> None:
    """A 512 KiB PUT body arriving in pieces (uvloop reads 256 KiB at a time) reaches the
    gateway once, whole and in order; reading is never paused (uvicorn's ASGI cycle pauses
    past 64 KiB until a task reads) and no ASGI task runs."""
    async def run() -> None:
        app = _WholeBodyApp()
        proto, transport = _protocol(app)
        block = bytes(range(256)) * 2048  # 512 KiB
        wire = _put(block, 1)
        for at in range(0, len(wire), 256000):
            proto.data_received(wire[at:at + 256000])
        assert app.bodies == [block] and app.asgi_calls == 0
        assert transport.pauses == 0
        assert transport.writes and transport.writes[-1].startswith(b"HTTP/1.1 201")
        # the next request on the connection: its own body, nothing of the first
        second = b"x" * 70000
        proto.data_received(_put(second, 2))
        assert app.bodies == [block, second] and transport.pauses == 0

    asyncio.run(run())


def test_a_put_over_the_whole_body_limit_goes_through_the_asgi_cycle() -> None:
    from ebscrypt.wire.http_server import WHOLE_BODY_LIMIT

    async def run() -> None:
        app = _WholeBodyApp()
        proto, _transport = _protocol(app)
        proto.data_received(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (WHOLE_BODY_LIMIT + 1))
        await asyncio.sleep(0)  # the ASGI task starts
        assert app.bodies == [] and app.asgi_calls == 1

    asyncio.run(run())
