"""A null HTTP server: reads each request whole (headers + Content-Length body) and answers
``200`` with a tiny JSON body, or with ``--get-bytes`` zero bytes to a GET. Nothing is
parsed beyond framing, stored or checked: the ceiling of client + HTTP on this machine,
measured in the same run as the real servers (bench/README.md, "Server cost").

    python bench/null_server.py --port 8000 [--get-bytes 524288]
"""

from __future__ import annotations

import argparse
import asyncio


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, get_bytes: int) -> None:
    get_body = b"\0" * get_bytes
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            body = get_body if method == b"GET" and get_bytes else b"{}"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main_async(port: int, get_bytes: int) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, get_bytes), "127.0.0.1", port,
                                        limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--get-bytes", type=int, default=0)
    args = p.parse_args()
    try:
        asyncio.run(main_async(args.port, args.get_bytes))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
