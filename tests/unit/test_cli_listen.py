"""`ebscrypt serve` binds its API socket itself (to fail before announcing on a taken port).
That socket must give accepted connections Nagle off: with it on, every small response
waited for the client's delayed ACK (~40 ms a request, a 10x regression of every call)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ebscrypt.cli import _listen


def test_listening_socket_is_tcp_with_nodelay() -> None:
    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only when proto says TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


def test_accepted_connections_have_nodelay() -> None:
    async def run() -> int:
        sock = _listen("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("socket")
            seen.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) != 0


def test_serve_on_port_zero_announces_the_port_it_listens_on(tmp_path: Path) -> None:
    """`serve --port 0` lets the system choose: the banner names that port (it printed
    ``:0`` before), and the endpoint it names answers."""
    proc = subprocess.Popen([sys.executable, "-m", "ebscrypt", "serve", "--port", "0", "--nbd-port", "0",
                             "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"serving on (http://127\.0\.0\.1:(\d+))", first)
        assert match and int(match.group(2)) != 0, first
        for _ in range(100):  # the banner comes before the lifespan has started
            try:
                with urllib.request.urlopen(match.group(1) + "/_ebscrypt/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the announced endpoint never answered")
    finally:
        proc.terminate()
        proc.wait(15)
