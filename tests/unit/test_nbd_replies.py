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


class _RecordingExport:
    """Just enough of an OpenVolume for a connection: records writes, answers reads with a
    pattern, never from a cache (every request goes the blocking way)."""

    read_only = False
    volume_id = "vol-test"

    def __init__(self) -> None:
        self.activity = 0
        self.writes: list[tuple[int, bytes]] = []
        self.flushes = 0
        self.lock = threading.Lock()

    def check_range(self, offset: int, length: int) -> bool:
        return offset + length <= 1 << 30

    def try_read(self, offset: int, length: int) -> None:
        return None

    def try_write(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        return False

    def read(self, offset: int, length: int) -> bytes:
        return bytes((offset + i) % 251 for i in range(length))

    def write(self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        with self.lock:
            self.writes.append((offset, bytes(data)))

    def flush(self) -> None:
        self.flushes += 1


def test_large_write_payloads_are_received_straight_into_place(monkeypatch) -> None:
    """A stream of large writes mixed with small writes and reads, sent in odd-sized pieces:
    every payload reaches the export whole and in place, every request is answered; and
    after the first large write no large payload goes through the receive buffer (a
    header's receive takes only the header, so the next 1 MiB payload is not received
    into ``_buf`` first and copied again). Fails if a receive after a large write takes
    more than it was asked for, or if a payload is cut or shifted."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from ebscrypt.wire.nbd_server import SPARE_MIN, _Session, _ThreadedConnection

    rng = random.Random(5)
    requests: list[tuple[int, int, bytes]] = []  # (command, offset, payload or b"" with length)
    stream = bytearray()
    offset = 0
    for n in range(40):
        kind = rng.choice(["big", "big", "big", "small", "read"]) if n else "big"
        if kind == "read":
            length = rng.choice([4096, 1 << 20])
            stream += struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_READ, n, offset, length)
            requests.append((nbd.CMD_READ, offset, bytes(length)))
            continue
        length = 1 << 20 if kind == "big" else rng.randrange(1, 9000)
        payload = rng.randbytes(length)
        stream += struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, n, offset, length) + payload
        requests.append((nbd.CMD_WRITE, offset, payload))
        offset += length
    stream += struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_FLUSH, 999, 0, 0)
    stream += struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_DISC, 1000, 0, 0)

    a, b = socket.socketpair()
    export = _RecordingExport()
    pool = ThreadPoolExecutor(4)
    conn = _ThreadedConnection(a, export, _Session(), pool, b"")  # type: ignore[arg-type]
    through_buffer: list[tuple[int, int]] = []  # (payload size, bytes copied from _buf into it)
    buffered = conn._buffered

    def counting(view: memoryview) -> int:
        k = buffered(view)
        if len(view) >= SPARE_MIN:
            through_buffer.append((len(view), k))
        return k

    monkeypatch.setattr(conn, "_buffered", counting)
    got = bytearray()

    def reader() -> None:
        while True:
            chunk = b.recv(1 << 20)
            if not chunk:
                return
            got.extend(chunk)

    def sender() -> None:
        pos = 0
        while pos < len(stream):
            k = rng.choice([7, 28, 1000, 65536, 300_000, 1 << 20])
            b.sendall(stream[pos:pos + k])
            pos += k

    threads = [threading.Thread(target=reader), threading.Thread(target=sender)]
    for t in threads:
        t.start()
    conn.run()  # until the disconnect
    for t in threads:
        t.join(30)
    pool.shutdown()
    b.close()
    writes = sorted(export.writes)
    assert writes == sorted((off, data) for cmd, off, data in requests if cmd == nbd.CMD_WRITE)
    assert export.flushes == 1
    reads = sum(len(data) for cmd, _off, data in requests if cmd == nbd.CMD_READ)
    answered = len(requests) + 1  # and the flush
    assert len(got) == 16 * answered + reads
    # A large payload after another request may be partly in the buffer (received with its
    # header: many small requests come in one receive); one right after a large write never is.
    after_large = [n > 0 and requests[n - 1][0] == nbd.CMD_WRITE and len(requests[n - 1][2]) >= SPARE_MIN
                   for n, (cmd, _off, data) in enumerate(requests) if cmd == nbd.CMD_WRITE and len(data) >= SPARE_MIN]
    assert len(through_buffer) == len(after_large) and sum(after_large) >= 10
    assert all(k == 0 for (_n, k), after in zip(through_buffer, after_large) if after), through_buffer
