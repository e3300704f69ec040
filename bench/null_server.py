"""A null HTTP server: reads each request whole (headers + Content-Length body) and answers
``200`` with a tiny JSON body, or with ``--get-bytes`` zero bytes to a GET. Nothing is
parsed beyond framing, stored or checked: the ceiling of client + HTTP on this machine,
measured in the same run as the real servers (bench/README.md, "Server cost").

``--ebs``: answers the EBS direct APIs just well enough for ``ebscrypt upload`` and
``ebscrypt download`` to run against it (bench/bench_data.py): StartSnapshot names a
snapshot, PutSnapshotBlock drops the block and echoes its x-amz-Checksum (only the index
is remembered), CompleteSnapshot answers ``completed``, ListSnapshotBlocks lists the
indexes received, and GetSnapshotBlock answers one fixed random 512 KiB block with its
checksum (so the client verifies and writes real bytes, as against a real server).

``--canned``: answers each AWS operation with a canned answer set beforehand by
``PUT /_null/canned`` (a JSON object: operation name -> {"status", "content_type",
"body"}; bench/bench_boto3_ceiling.py records them from a real server), so boto3 parses
a real CreateVolume/CreateKey/... answer and nothing else is done: the ceiling one boto3
client can reach at all. The operation is the ``X-Amz-Target``'s (JSON protocols) or
the form body's ``Action`` (EC2 query); one not set is answered ``200 {}``.

    python bench/null_server.py --port 8000 [--get-bytes 524288] [--ebs] [--canned]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re

BLOCK = 524288
_BLOCK_DATA = os.urandom(BLOCK)
_BLOCK_SUM = base64.b64encode(hashlib.sha256(_BLOCK_DATA).digest()).decode()
_PUT_OR_GET = re.compile(rb"^/snapshots/([^/]+)/blocks/(\d+)")
_LIST = re.compile(rb"^/snapshots/([^/?]+)/blocks(\?|$)")
_ACTION = re.compile(rb"(?:^|&)Action=([A-Za-z0-9]+)")
CANNED_PATH = b"/_null/canned"


class _Canned:
    """Canned answers by operation name (see the module docstring, ``--canned``)."""

    def __init__(self) -> None:
        self.answers: dict[bytes, bytes] = {}

    def answer(self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes) -> bytes:
        if method == b"PUT" and target == CANNED_PATH:
            for op, a in json.loads(body).items():
                payload = a["body"].encode()
                self.answers[op.encode()] = (
                    b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nx-amzn-RequestId: null\r\nContent-Length: %d\r\n\r\n"
                    % (a.get("status", 200), a.get("content_type", "application/json").encode(), len(payload))
                ) + payload
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        amz_target = headers.get(b"x-amz-target")
        if amz_target is not None:
            op = amz_target.rpartition(b".")[2]
        else:
            m = _ACTION.search(body)
            op = m.group(1) if m else b""
        canned = self.answers.get(op)
        if canned is not None:
            return canned
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Ebs:
    """The least of the EBS direct APIs the datapath CLI needs (see the module docstring)."""

    def __init__(self) -> None:
        self.blocks: dict[str, set[int]] = {}
        self.sizes: dict[str, int] = {}

    def answer(self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes) -> bytes:
        extra = b""
        payload: bytes = b"{}"
        status = b"200 OK"
        put_get = _PUT_OR_GET.match(target)
        if method == b"POST" and target.split(b"?")[0] == b"/snapshots":
            snap = "snap-" + os.urandom(8).hex()[:17]
            size = int(json.loads(body or b"{}").get("VolumeSize", 1))
            self.blocks[snap], self.sizes[snap] = set(), size
            payload = json.dumps({"SnapshotId": snap, "OwnerId": "111111111111", "Status": "pending",
                                  "VolumeSize": size, "BlockSize": BLOCK, "SseType": "none"}).encode()
            status = b"201 Created"
        elif method == b"PUT" and put_get:
            self.blocks.setdefault(put_get.group(1).decode(), set()).add(int(put_get.group(2)))
            extra = (b"x-amz-Checksum: " + headers.get(b"x-amz-checksum", b"") +
                     b"\r\nx-amz-Checksum-Algorithm: SHA256\r\n")
            status = b"201 Created"
        elif method == b"POST" and target.startswith(b"/snapshots/completion/"):
            payload, status = b'{"Status": "completed"}', b"202 Accepted"
        elif method == b"GET" and put_get:
            extra = (b"x-amz-Data-Length: %d\r\nx-amz-Checksum: %s\r\nx-amz-Checksum-Algorithm: SHA256\r\n"
                     % (BLOCK, _BLOCK_SUM.encode()))
            return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n"
                    % BLOCK) + extra + b"\r\n" + _BLOCK_DATA
        elif method == b"GET" and _LIST.match(target):
            snap = _LIST.match(target).group(1).decode()  # type: ignore[union-attr]
            payload = json.dumps({"Blocks": [{"BlockIndex": i, "BlockToken": "t"} for i in sorted(self.blocks.get(snap, ()))],
                                  "VolumeSize": self.sizes.get(snap, 1), "BlockSize": BLOCK,
                                  "ExpiryTime": 4102444800}).encode()
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                % len(payload)) + extra + b"\r\n" + payload


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, get_bytes: int,
                 ebs: _Ebs | _Canned | None = None) -> None:
    get_body = b"\0" * get_bytes
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target = (lines[0].split(b" ") + [b"/"])[:2]
            length = 0
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if ebs is not None:
                writer.write(ebs.answer(method, target, headers, body))
                await writer.drain()
                continue
            body = get_body if method == b"GET" and get_bytes else b"{}"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main_async(port: int, get_bytes: int, ebs: bool = False, canned: bool = False) -> None:
    state: _Ebs | _Canned | None = _Canned() if canned else (_Ebs() if ebs else None)
    server = await asyncio.start_server(lambda r, w: _serve(r, w, get_bytes, state), "127.0.0.1", port,
                                        limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--get-bytes", type=int, default=0)
    p.add_argument("--ebs", action="store_true", help="answer the EBS direct APIs (upload/download CLI)")
    p.add_argument("--canned", action="store_true", help="answer AWS operations with canned answers (PUT /_null/canned)")
    args = p.parse_args()
    try:
        asyncio.run(main_async(args.port, args.get_bytes, args.ebs, args.canned))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
