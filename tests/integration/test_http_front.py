"""The HTTP front path (issue 15): the AWS API served by the gateway as a plain ASGI app
(no Starlette objects), over both HTTP stacks ``serve`` offers — httptools/uvloop (the
default) and h11/asyncio — with each response written whole (wire/http_server.py)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ServerProcess, make_client

STACKS = {
    "default": [],
    "h11-asyncio": ["--http", "h11", "--loop", "asyncio"],
}


@pytest.fixture(scope="module", params=sorted(STACKS))
def stack_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp(f"front-{request.param}") / "data",
                        extra_args=STACKS[request.param]).start()
    yield srv
    srv.stop()


def _conn(srv: ServerProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)


def test_kms_pair_and_ec2_call_through_boto3(stack_server: ServerProcess) -> None:
    kms = make_client(stack_server.url, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    ec2 = make_client(stack_server.url, "ec2")
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["VolumeId"] == vol


def test_keep_alive_answers_back_to_back(stack_server: ServerProcess) -> None:
    conn = _conn(stack_server)
    body = "Action=DescribeRegions&Version=2016-11-15"
    for _ in range(5):
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200 and b"<regionName>us-east-1</regionName>" in data
        assert int(resp.getheader("content-length")) == len(data)
    conn.close()


def test_head_gets_headers_and_no_body(stack_server: ServerProcess) -> None:
    conn = _conn(stack_server)
    conn.request("HEAD", "/?Action=DescribeRegions&Version=2016-11-15")
    resp = conn.getresponse()
    assert resp.read() == b""
    assert resp.getheader("content-length") is not None
    # The connection is still usable: the held header block did not linger.
    conn.request("GET", "/?Action=DescribeRegions&Version=2016-11-15")
    assert conn.getresponse().status == 200
    conn.close()


def test_connection_close_answer_arrives_whole(stack_server: ServerProcess) -> None:
    conn = _conn(stack_server)
    conn.request("GET", "/?Action=DescribeRegions&Version=2016-11-15", headers={"Connection": "close"})
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200 and b"DescribeRegionsResponse" in data
    conn.close()


def test_expect_100_continue_is_answered_before_the_body(stack_server: ServerProcess) -> None:
    body = b"Action=DescribeRegions&Version=2016-11-15"
    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        answer = b""
        while b"</DescribeRegionsResponse>" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")


def test_method_not_allowed_and_site_routes(stack_server: ServerProcess) -> None:
    conn = _conn(stack_server)
    conn.request("TRACE", "/")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.read() == b"Method Not Allowed"
    assert "POST" in (resp.getheader("allow") or "")
    conn.request("GET", "/_ebscrypt/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    # A path under /_ebscrypt/ that no route names is still the API's (as before).
    conn.request("GET", "/_ebscrypt/nothing?Action=DescribeRegions&Version=2016-11-15")
    resp = conn.getresponse()
    assert resp.status == 200 and b"DescribeRegionsResponse" in resp.read()
    conn.close()


def test_body_over_the_limit_refused_without_content_length(stack_server: ServerProcess) -> None:
    """A chunked body is counted as it arrives (no Content-Length to refuse it up front)."""
    conn = _conn(stack_server)

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * (64 * 1024)  # 2.5 MiB > the 2 MiB default limit

    conn.request("POST", "/", body=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()


def test_client_gone_mid_body_leaves_the_server_answering(stack_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nAction=")
    log: Any = Path(stack_server.log_path)
    conn = _conn(stack_server)
    conn.request("GET", "/?Action=DescribeRegions&Version=2016-11-15")
    assert conn.getresponse().status == 200
    conn.close()
    assert "internal error" not in log.read_text()


def _read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP answers (head, body) read by their Content-Length."""
    data, out = b"", []
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(data) >= head_end + 4 + length:
                out.append((head, data[head_end + 4:head_end + 4 + length]))
                data = data[head_end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, (out, data)
        data += chunk
    return out


def test_pipelined_requests_answered_in_order(stack_server: ServerProcess) -> None:
    """Small POSTs (the whole-body path on httptools, wire/http_server.py) sent back to
    back in one write: each answered once, in order, the connection kept; a worker-thread
    handler (CreateVolume) between two inline ones keeps its place."""
    def post(body: bytes) -> bytes:
        return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    regions = b"Action=DescribeRegions&Version=2016-11-15"
    volume = b"Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size=1"
    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=30) as sock:
        sock.sendall(post(regions) + post(volume) + post(regions) + post(b"Action=NoSuchThing&Version=2016-11-15"))
        answers = _read_answers(sock, 4)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # nothing more: each answered once
            sock.recv(1)
    assert [head.split(b" ")[1] for head, _ in answers] == [b"200", b"200", b"200", b"400"]
    assert b"DescribeRegionsResponse" in answers[0][1] and b"CreateVolumeResponse" in answers[1][1]
    assert b"DescribeRegionsResponse" in answers[2][1]


def test_body_in_pieces_is_answered_once_whole(stack_server: ServerProcess) -> None:
    """A small body that arrives in several segments is answered when its last byte is in."""
    body = b"Action=DescribeRegions&Version=2016-11-15"
    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 10):
            time.sleep(0.02)
            sock.sendall(body[i:i + 10])
        [(head, answer)] = _read_answers(sock, 1)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # answered once
            sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200") and b"DescribeRegionsResponse" in answer


def test_worker_thread_answers_small_and_large_arrive_whole(stack_server: ServerProcess) -> None:
    """Answers of worker-thread handlers (ebscrypt/handoff.py) written as inline ones are
    (wire/http_server.py ``_Finish``): a small one and one larger than the joined-write
    limit (a DescribeVolumes page of 60 volumes, ~23 KB, header block and body in one
    writelines) arrive whole, in order, on one kept-alive connection."""
    ec2 = make_client(stack_server.url, "ec2", account="111122223333")
    made = {ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"] for _ in range(60)}

    def post(body: bytes) -> bytes:
        return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Authorization: AWS4-HMAC-SHA256 Credential=111122223333/20260101/us-east-1/ec2/aws4_request, "
                b"SignedHeaders=host, Signature=0\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    small = b"Action=DescribeVolumes&Version=2016-11-15&MaxResults=5"
    large = b"Action=DescribeVolumes&Version=2016-11-15"
    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(post(small))
            sock.sendall(post(large))
            (small_head, small_body), (large_head, large_body) = _read_answers(sock, 2)
            assert small_head.startswith(b"HTTP/1.1 200") and small_body.count(b"<volumeId>") == 5
            assert large_head.startswith(b"HTTP/1.1 200") and len(large_body) > 16384
            assert {v.split(b"</volumeId>")[0].decode() for v in large_body.split(b"<volumeId>")[1:]} == made


def test_pipelined_block_puts_are_stored_whole_and_read_back(stack_server: ServerProcess) -> None:
    """PutSnapshotBlock's 512 KiB bodies (on httptools, gathered whole before the gateway
    answers: wire/http_server.py) sent back to back in one write — the second's body
    arrives while the first is answered — and one sent in small pieces: each answered
    201 once, in order, and each block reads back as written."""
    import base64
    import hashlib
    import os

    ebs = make_client(stack_server.url, "ebs", account="111122223333")
    snap = ebs.start_snapshot(VolumeSize=1, Encrypted=True)["SnapshotId"]
    blocks = {i: os.urandom(524288) for i in range(3)}

    def put(index: int) -> bytes:
        data = blocks[index]
        digest = base64.b64encode(hashlib.sha256(data).digest())
        return (b"PUT /snapshots/%s/blocks/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: AWS4-HMAC-SHA256 Credential=111122223333/20260101/us-east-1/ebs/aws4_request, "
                b"SignedHeaders=host, Signature=0\r\n"
                b"x-amz-Data-Length: 524288\r\nx-amz-Checksum: %s\r\nx-amz-Checksum-Algorithm: SHA256\r\n"
                b"Content-Length: 524288\r\n\r\n" % (snap.encode(), index, digest)) + data

    with socket.create_connection(("127.0.0.1", stack_server.port), timeout=30) as sock:
        sock.sendall(put(0) + put(1))
        answers = _read_answers(sock, 2)
        wire = put(2)
        for at in range(0, len(wire), 100000):
            sock.sendall(wire[at:at + 100000])
        answers += _read_answers(sock, 1)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # each answered once
            sock.recv(1)
    assert [head.split(b" ")[1] for head, _ in answers] == [b"201"] * 3, answers
    ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=3)
    listed = ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == [0, 1, 2]
    for b in listed:
        got = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        assert got["BlockData"].read() == blocks[b["BlockIndex"]]
