"""The NBD server's reply sending and request parsing on a threaded connection (issue 12):
a reply's parts gathered into ``sendmsg`` calls, resumed after partial sends, in order;
request headers unpacked in place from the receive buffer."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from ebscrypt.wire import nbd
from ebscrypt.wire.nbd_server import IOV_BATCH, _send_all


def test_send_all_sends_every_part_in_order_across_partial_sends() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # forces partial sends of the large parts
    parts: list[bytes | bytearray] = [b"H" * 16, b"", bytearray(os.urandom(1 << 20))]
    parts += [bytes([i % 251]) * (i % 7) for i in range(IOV_BATCH + 100)]  # more buffers than one sendmsg takes
    parts.append(os.urandom(300_000))
    want = b"".join(parts)
    got = bytearray()

    def reader() -> None:
        while len(got) < len(want):
            chunk = b.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    _send_all(a, parts)
    t.join(30)
    a.close()
    b.close()
    assert bytes(got) == want


def test_a_request_is_parsed_in_place_as_from_its_own_bytes() -> None:
    raw = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, nbd.CMD_FLAG_FUA, nbd.CMD_READ, 0xDEADBEEF, 1 << 40, 4096)
    buf = bytearray(b"x" * 5 + raw + b"y" * 3)
    assert nbd.parse_request_from(buf, 5) == nbd.parse_request(raw)
    assert nbd.parse_request(raw).offset == 1 << 40 and nbd.parse_request(raw).length == 4096
    with pytest.raises(nbd.ProtocolError):
        nbd.parse_request_from(bytearray(b"\0" * 40), 2)


def test_spare_buffers_are_bounded_in_count_and_size() -> None:
    """Buffers a connection keeps for reuse (write payloads):
    at most SPARE_BUFFERS, none larger than SPARE_MAX (memory per connection stays
    bounded whatever request sizes a client uses); a buffer is handed out again only
    for a request of its size."""
    from concurrent.futures import ThreadPoolExecutor

    from ebscrypt.wire.nbd_server import SPARE_BUFFERS, SPARE_MAX, SPARE_MIN, _Session, _ThreadedConnection

    a, b = socket.socketpair()
    pool = ThreadPoolExecutor(1)
    conn = _ThreadedConnection(a, None, _Session(), pool, b"")  # type: ignore[arg-type]
    for _ in range(2):
        conn._take(0)
        conn._give(0, bytearray(SPARE_MAX + 4096))  # too large to keep
    conn._take(0)
    conn._give(0, bytearray(SPARE_MIN - 1))  # too small to bother
    assert conn._spare == []
    for _ in range(SPARE_BUFFERS + 3):
        conn._take(0)
        conn._give(0, bytearray(1 << 20))
    assert len(conn._spare) == SPARE_BUFFERS
    assert conn._spare_buffer(2 << 20) is None
    got = conn._spare_buffer(1 << 20)
    assert got is not None and len(got) == 1 << 20 and len(conn._spare) == SPARE_BUFFERS - 1
    pool.shutdown()
    a.close()
    b.close()
