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
