"""Bad input on the NBD server, from a raw socket (R-ATTACH-3): clients that lie about
lengths or offsets, read past the end, break the protocol or disconnect mid-request get
an error (or lose their connection); nothing is written; the server and other
connections carry on."""

from __future__ import annotations

import socket
import struct
from typing import Any, Iterator

import pytest

from ebscrypt.wire import nbd
from tests.integration.test_nbd_support import attach_new, launch

GIB = 1024 ** 3


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        greeting = self.recv(18)
        assert greeting[:8] == b"NBDMAGIC"
        assert struct.unpack(">QH", greeting[8:]) == (nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES)
        self.sock.sendall(struct.pack(">I", nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES))

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return True

    def option(self, option: int, data: bytes) -> None:
        self.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, option, len(data)) + data)

    def reply(self) -> tuple[int, int, bytes]:
        magic, option, kind, length = struct.unpack(">QIII", self.recv(20))
        assert magic == nbd.OPTION_REPLY_MAGIC
        return option, kind, self.recv(length)

    def go(self, name: str) -> tuple[int, bytes]:
        raw = name.encode()
        self.option(nbd.OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        replies = []
        while True:
            _opt, kind, data = self.reply()
            replies.append((kind, data))
            if kind != nbd.REP_INFO:
                return kind, b"".join(d for k, d in replies if k == nbd.REP_INFO)

    def request(self, command: int, offset: int, length: int, payload: bytes = b"", handle: int = 7,
                flags: int = 0) -> None:
        self.sock.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, flags, command, handle, offset, length) + payload)

    def simple_reply(self, data_length: int = 0) -> tuple[int, int, bytes]:
        magic, error, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == nbd.SIMPLE_REPLY_MAGIC
        return error, handle, self.recv(data_length) if error == 0 else b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def export(server: Any, aws: Any) -> Iterator[tuple[int, str]]:
    from tests.helpers import new_account

    ec2 = aws("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    yield server.nbd_port, vol


def connected(export: tuple[int, str]) -> RawClient:
    port, vol = export
    client = RawClient(port)
    kind, info = client.go(vol)
    assert kind == nbd.REP_ACK
    assert struct.unpack(">HQH", info[:12])[:2] == (nbd.INFO_EXPORT, GIB)
    return client


def read(export: tuple[int, str], offset: int, length: int) -> bytes:
    client = connected(export)
    try:
        client.request(nbd.CMD_READ, offset, length)
        error, _h, data = client.simple_reply(length)
        assert error == 0
        return data
    finally:
        client.close()


def test_unknown_exports_are_refused_at_negotiation(export: tuple[int, str]) -> None:
    port, _vol = export
    client = RawClient(port)
    for name in ("vol-0123456789abcdef0", "not-a-volume", "../../etc/passwd", ""):
        kind, _ = client.go(name)
        assert kind == nbd.REP_ERR_UNKNOWN, name
    client.option(nbd.OPT_LIST, b"")
    assert client.reply()[1] == nbd.REP_ACK  # lists nothing: names are other accounts' business
    client.option(nbd.OPT_STARTTLS, b"")
    assert client.reply()[1] == nbd.REP_ERR_UNSUP
    client.option(nbd.OPT_ABORT, b"")
    assert client.reply()[1] == nbd.REP_ACK
    client.close()
    old_style = RawClient(port)
    old_style.option(nbd.OPT_EXPORT_NAME, b"vol-0123456789abcdef0")
    assert old_style.closed()  # NBD_OPT_EXPORT_NAME has no error reply: a hang-up


def test_broken_negotiation_drops_only_that_client(export: tuple[int, str]) -> None:
    port, _vol = export
    lying = RawClient(port)
    lying.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, 0xFFFFFFF0))  # a 4 GiB option
    assert lying.closed()
    bad_magic = RawClient(port)
    bad_magic.sock.sendall(struct.pack(">QII", 0x1234, nbd.OPT_GO, 0))
    assert bad_magic.closed()
    short = RawClient(port)
    short.option(nbd.OPT_GO, struct.pack(">I", 999) + b"vol-")  # name length beyond the data
    assert short.reply()[1] == nbd.REP_ERR_INVALID
    short.close()
    connected(export).close()  # the server is fine


def test_out_of_range_requests_get_errors_and_write_nothing(export: tuple[int, str]) -> None:
    client = connected(export)
    client.request(nbd.CMD_READ, GIB - 100, 200, handle=1)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 1)
    client.request(nbd.CMD_READ, 2 ** 63, 512, handle=2)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 2)
    client.request(nbd.CMD_WRITE, GIB - 4096, 8192, b"\xee" * 8192, handle=3)
    assert client.simple_reply()[:2] == (nbd.ENOSPC, 3)
    client.request(nbd.CMD_TRIM, GIB, 1, handle=4)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 4)
    client.request(99, 0, 0, handle=5)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 5)
    client.request(nbd.CMD_FLUSH, 0, 0, handle=6)
    assert client.simple_reply()[:2] == (0, 6)
    # the connection still works, and the refused write left nothing behind
    client.request(nbd.CMD_READ, GIB - 4096, 4096, handle=8)
    assert client.simple_reply(4096) == (0, 8, bytes(4096))
    client.request(nbd.CMD_DISC, 0, 0)
    assert client.closed()


def test_lying_write_length_and_disconnect_mid_request(export: tuple[int, str]) -> None:
    huge = connected(export)
    huge.request(nbd.CMD_WRITE, 0, 0xFFFFFFFF)  # a 4 GiB payload announced: the connection goes
    assert huge.closed()
    cut = connected(export)
    cut.request(nbd.CMD_WRITE, 1048576, 65536, b"\xcc" * 1000)  # then hang up mid-payload
    cut.close()
    bad = connected(export)
    bad.sock.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, nbd.CMD_WRITE, 1, 0, 4) + b"\xcc" * 4)
    assert bad.closed()
    # nothing of the cut-off write was applied; a good write on another connection is
    ok = connected(export)
    ok.request(nbd.CMD_WRITE, 2097152, 4, b"good", handle=9, flags=nbd.CMD_FLAG_FUA)
    assert ok.simple_reply()[:2] == (0, 9)
    ok.close()
    assert read(export, 1048576, 65536) == bytes(65536)
    assert read(export, 2097152, 4) == b"good"


def test_pipelined_requests_are_answered_by_handle(export: tuple[int, str]) -> None:
    client = connected(export)
    for h in range(40):
        client.request(nbd.CMD_WRITE, 4 * 1048576 + h * 4096, 4096, bytes([h]) * 4096, handle=1000 + h)
    handles = {client.simple_reply()[1] for _ in range(40)}
    assert handles == {1000 + h for h in range(40)}
    client.request(nbd.CMD_READ, 4 * 1048576, 40 * 4096, handle=5)
    error, handle, data = client.simple_reply(40 * 4096)
    assert (error, handle) == (0, 5)
    assert data == b"".join(bytes([h]) * 4096 for h in range(40))
    client.close()


def test_snapshot_holds_a_write_acknowledged_on_a_connection_still_open(server: Any, aws: Any) -> None:
    """R-ATTACH-4 with the client still connected (qemu-io's exit would flush on disconnect):
    a write acknowledged, never flushed, before CreateSnapshot is in the snapshot."""
    from tests.helpers import new_account, read_blocks

    acct = new_account()
    ec2, ebs = aws("ec2", account=acct), aws("ebs", account=acct)
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    client = connected((server.nbd_port, vol))
    try:
        client.request(nbd.CMD_WRITE, 0, 8192, b"\x61" * 8192)
        assert client.simple_reply()[0] == 0  # acknowledged; no NBD_CMD_FLUSH sent
        sid = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1})
        got = read_blocks(ebs, sid)
        assert got[0][:8192] == b"\x61" * 8192
    finally:
        client.close()
