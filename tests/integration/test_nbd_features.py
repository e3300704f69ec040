"""NBD features beyond the basics (R-ATTACH-3): FUA durability, structured replies and
NBD_CMD_BLOCK_STATUS (``base:allocation``: holes are blocks never written here nor in
the source snapshot, or trimmed), and read-only exports (a completed snapshot served as
``snap-…``: NBD_FLAG_READ_ONLY, writes/trims/zeroes refused with EPERM)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from tests.helpers import new_account, new_key, pattern, upload_snapshot
from tests.integration.test_nbd_protocol import GIB, RawClient, connected
from tests.integration.test_nbd_support import BLOCK, MIB, attach_new, launch, need, qemu_io, run, snapshot_of, uri
from ebscrypt.wire import nbd


def structured_client(port: int, name: str, *, meta: bool = True) -> tuple[RawClient, int]:
    """A raw client that negotiated structured replies (and base:allocation), then GO;
    returns it and the transmission flags."""
    client = RawClient(port)
    client.option(nbd.OPT_STRUCTURED_REPLY, b"")
    assert client.reply()[1] == nbd.REP_ACK
    if meta:
        raw = name.encode()
        query = nbd.META_BASE_ALLOCATION.encode()
        client.option(nbd.OPT_SET_META_CONTEXT, struct.pack(">I", len(raw)) + raw + struct.pack(">II", 1, len(query)) + query)
        _opt, kind, data = client.reply()
        assert kind == nbd.REP_META_CONTEXT and data[4:] == query
        assert client.reply()[1] == nbd.REP_ACK
    kind, info = client.go(name)
    assert kind == nbd.REP_ACK
    _t, size, flags = struct.unpack(">HQH", info[:12])
    assert size == GIB
    return client, flags


def chunk(client: RawClient) -> tuple[int, int, int, bytes]:
    """(flags, type, handle, payload) of one structured reply chunk."""
    magic, flags, kind, handle, length = struct.unpack(">IHHQI", client.recv(20))
    assert magic == nbd.STRUCTURED_REPLY_MAGIC
    return flags, kind, handle, client.recv(length)


def block_status(client: RawClient, offset: int, length: int, handle: int = 3, flags: int = 0) -> list[tuple[int, int]]:
    client.request(nbd.CMD_BLOCK_STATUS, offset, length, handle=handle, flags=flags)
    cflags, kind, got, body = chunk(client)
    assert (kind, got) == (nbd.REPLY_TYPE_BLOCK_STATUS, handle) and cflags & nbd.REPLY_FLAG_DONE
    assert struct.unpack(">I", body[:4])[0] == nbd.BASE_ALLOCATION_ID
    return [struct.unpack(">II", body[i:i + 8]) for i in range(4, len(body), 8)]


def test_fua_write_survives_kill9_without_flush(server_factory: Any) -> None:
    """A write with NBD_CMD_FLAG_FUA is durable when acknowledged: kill -9 right after,
    no FLUSH, connection still open — it reads back after restart (the write-back cache
    holds other writes in memory until a flush)."""
    srv = server_factory()
    ec2 = srv.client("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    client = connected((srv.nbd_port, vol))
    client.request(nbd.CMD_WRITE, 3 * BLOCK + 4096, 8192, b"\x5a" * 8192, handle=1, flags=nbd.CMD_FLAG_FUA)
    assert client.simple_reply()[:2] == (0, 1)
    client.request(nbd.CMD_WRITE_ZEROES, 0, 4096, handle=2, flags=nbd.CMD_FLAG_FUA)
    assert client.simple_reply()[:2] == (0, 2)
    srv.kill()
    client.close()
    srv.start()
    again = connected((srv.nbd_port, vol))
    again.request(nbd.CMD_READ, 3 * BLOCK, 16384, handle=4)
    assert again.simple_reply(16384) == (0, 4, bytes(4096) + b"\x5a" * 8192 + bytes(4096))
    again.close()


def test_structured_replies_and_meta_context_negotiation(server: Any, aws: Any) -> None:
    """Raw socket: STRUCTURED_REPLY, LIST/SET_META_CONTEXT (only base:allocation; SET needs
    structured replies first), then READ answered as OFFSET_DATA / ERROR chunks and
    BLOCK_STATUS as one BLOCK_STATUS chunk (EINVAL without the context)."""
    ec2 = aws("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf")
    port = server.nbd_port
    raw = vol.encode()

    def meta_request(*queries: str) -> bytes:
        body = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
        return body + b"".join(struct.pack(">I", len(q)) + q.encode() for q in queries)

    plain = RawClient(port)
    plain.option(nbd.OPT_SET_META_CONTEXT, meta_request(nbd.META_BASE_ALLOCATION))
    assert plain.reply()[1] == nbd.REP_ERR_INVALID  # structured replies must come first
    plain.option(nbd.OPT_LIST_META_CONTEXT, meta_request())
    _o, kind, data = plain.reply()
    assert kind == nbd.REP_META_CONTEXT and data[4:] == b"base:allocation"
    assert plain.reply()[1] == nbd.REP_ACK
    plain.option(nbd.OPT_STRUCTURED_REPLY, b"x")
    assert plain.reply()[1] == nbd.REP_ERR_INVALID
    plain.option(nbd.OPT_STRUCTURED_REPLY, b"")
    assert plain.reply()[1] == nbd.REP_ACK
    plain.option(nbd.OPT_SET_META_CONTEXT, meta_request("qemu:dirty-bitmap:x", "base:"))
    assert plain.reply()[1] == nbd.REP_ACK  # nothing selected
    plain.option(nbd.OPT_SET_META_CONTEXT, b"\x00\x00\x00\x09vol")
    assert plain.reply()[1] == nbd.REP_ERR_INVALID
    kind, info = plain.go(vol)
    assert kind == nbd.REP_ACK
    flags = struct.unpack(">HQH", info[:12])[2]
    assert flags & nbd.TF_SEND_DF and flags & nbd.TF_SEND_FUA and not flags & nbd.TF_READ_ONLY
    plain.request(nbd.CMD_BLOCK_STATUS, 0, BLOCK, handle=9)
    assert plain.simple_reply()[:2] == (nbd.EINVAL, 9)  # base:allocation was not selected
    plain.close()

    client, _flags = structured_client(port, vol)
    client.request(nbd.CMD_WRITE, BLOCK + 100, 5, b"hello", handle=1)
    assert client.simple_reply()[:2] == (0, 1)
    client.request(nbd.CMD_READ, BLOCK + 98, 9, handle=2)
    cflags, kind, handle, body = chunk(client)
    assert (cflags, kind, handle) == (nbd.REPLY_FLAG_DONE, nbd.REPLY_TYPE_OFFSET_DATA, 2)
    assert body == struct.pack(">Q", BLOCK + 98) + b"\x00\x00hello\x00\x00"
    client.request(nbd.CMD_READ, GIB - 10, 20, handle=3)
    cflags, kind, handle, body = chunk(client)
    assert (cflags, kind, handle) == (nbd.REPLY_FLAG_DONE, nbd.REPLY_TYPE_ERROR, 3)
    assert struct.unpack(">I", body[:4])[0] == nbd.EINVAL
    # block 1 is dirty (in the cache, not flushed): data; the rest of the first 4 blocks holes
    assert block_status(client, 0, 4 * BLOCK) == [(BLOCK, 3), (BLOCK, 0), (2 * BLOCK, 3)]
    assert block_status(client, 100, 4 * BLOCK, flags=nbd.CMD_FLAG_REQ_ONE) == [(BLOCK - 100, 3)]
    client.request(nbd.CMD_BLOCK_STATUS, GIB - 10, 20, handle=5)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 5)
    client.request(nbd.CMD_BLOCK_STATUS, 0, 0, handle=6)
    assert client.simple_reply()[:2] == (nbd.EINVAL, 6)
    client.close()


def test_nbdinfo_map_shows_holes_of_a_volume_from_a_snapshot(server: Any, aws: Any, tmp_path: Path) -> None:
    """``nbdinfo --map``: blocks inherited from the source snapshot and written ones are data,
    a trimmed block and everything never written are holes; nbdcopy copies it equal."""
    need("nbdinfo", "qemu-io", "nbdcopy")
    acct = new_account()
    ec2, ebs, kms = aws("ec2", account=acct), aws("ebs", account=acct), aws("kms", account=acct)
    key = new_key(kms)
    sid = upload_snapshot(ebs, {0: pattern("map", 0), 5: pattern("map", 5)}, Encrypted=True, KmsKeyArn=key)
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", SnapshotId=sid, Encrypted=True, KmsKeyId=key)
    qemu_io(uri(server, vol), f"write -P 0x33 {10 * BLOCK} 4096", f"discard 0 {BLOCK}", "flush")
    out = run("nbdinfo", "--map", uri(server, vol)).stdout
    data = []
    for line in out.splitlines():
        offset, length, kind = (int(x) for x in line.split()[:3])
        if kind == 0:
            data.append((offset, length))
    assert data == [(5 * BLOCK, BLOCK), (10 * BLOCK, BLOCK)], out
    assert sum(int(line.split()[1]) for line in out.splitlines()) == GIB
    assert out.splitlines()[0].split()[:3] == ["0", str(5 * BLOCK), "3"]  # block 0 trimmed: a hole again
    copy = tmp_path / "copy.img"
    run("nbdcopy", uri(server, vol), str(copy), timeout=300)
    with copy.open("rb") as f:
        f.seek(5 * BLOCK)
        assert f.read(BLOCK) == pattern("map", 5)
        f.seek(10 * BLOCK)
        assert f.read(4096) == b"\x33" * 4096
        f.seek(0)
        assert f.read(BLOCK) == bytes(BLOCK)


def test_snapshot_is_a_read_only_export(server: Any, aws: Any, tmp_path: Path) -> None:
    """A completed snapshot is exported read-only as ``snap-…``: NBD_FLAG_READ_ONLY, its
    blocks read back (the volume as it was, later writes not included), every kind of
    write refused with EPERM and nothing changed; a pending/unknown snapshot is refused."""
    need("nbdinfo", "qemu-io")
    ec2 = aws("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    qemu_io(uri(server, vol), f"write -P 0x44 {2 * MIB} {MIB}", "flush")
    sid = snapshot_of(ec2, vol)
    qemu_io(uri(server, vol), f"write -P 0x45 {2 * MIB} 4096", "flush")  # after: not in the snapshot
    info = run("nbdinfo", uri(server, sid)).stdout
    assert "is_read_only: true" in info and f"export-size: {GIB}" in info, info
    read_back = run("qemu-io", "-r", "-f", "raw", "-c", f"read -P 0x44 {2 * MIB} {MIB}", uri(server, sid))
    assert "fail" not in (read_back.stdout + read_back.stderr).lower()
    refused = run("qemu-io", "-f", "raw", "-c", "write -P 0x46 0 4096", uri(server, sid), check=False)
    text = (refused.stdout + refused.stderr).lower()
    assert refused.returncode != 0 or any(w in text for w in ("fail", "denied", "read-only", "not permitted")), text
    client = RawClient(server.nbd_port)
    kind, info_raw = client.go(sid)
    assert kind == nbd.REP_ACK
    flags = struct.unpack(">HQH", info_raw[:12])[2]
    assert flags & nbd.TF_READ_ONLY and not flags & (nbd.TF_SEND_TRIM | nbd.TF_SEND_WRITE_ZEROES | nbd.TF_SEND_FUA)
    client.request(nbd.CMD_WRITE, 0, 4096, b"\x47" * 4096, handle=1)
    assert client.simple_reply()[:2] == (nbd.EPERM, 1)
    client.request(nbd.CMD_WRITE, GIB, 4096, b"\x47" * 4096, handle=2)  # out of range too: still EPERM
    assert client.simple_reply()[:2] == (nbd.EPERM, 2)
    client.request(nbd.CMD_TRIM, 0, BLOCK, handle=3)
    assert client.simple_reply()[:2] == (nbd.EPERM, 3)
    client.request(nbd.CMD_WRITE_ZEROES, 2 * MIB, 4096, handle=4)
    assert client.simple_reply()[:2] == (nbd.EPERM, 4)
    client.request(nbd.CMD_FLUSH, 0, 0, handle=5)
    assert client.simple_reply()[:2] == (0, 5)
    client.request(nbd.CMD_READ, 2 * MIB, 8192, handle=6)
    assert client.simple_reply(8192) == (0, 6, b"\x44" * 8192)
    client.close()
    for name in ("snap-0123456789abcdef0", f"{sid}:secret"):
        other = RawClient(server.nbd_port)
        assert other.go(name)[0] == nbd.REP_ERR_UNKNOWN, name
        other.close()


def test_graceful_stop_with_open_connections_keeps_acknowledged_writes(server_factory: Any) -> None:
    """SIGTERM while clients are connected (their connections run on threads of their own):
    the server stops promptly, the clients see the connection end, and a write that was
    acknowledged but never flushed was written back at shutdown (detach-like close)."""
    import time

    srv = server_factory()
    ec2 = srv.client("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    client = connected((srv.nbd_port, vol))
    client.request(nbd.CMD_WRITE, 7 * BLOCK + 512, 4096, b"\x6e" * 4096, handle=1)
    assert client.simple_reply()[:2] == (0, 1)
    idle = connected((srv.nbd_port, vol))
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 15
    assert client.closed() and idle.closed()
    srv.start()
    again = connected((srv.nbd_port, vol))
    again.request(nbd.CMD_READ, 7 * BLOCK, 8192, handle=2)
    assert again.simple_reply(8192) == (0, 2, bytes(512) + b"\x6e" * 4096 + bytes(8192 - 4608))
    again.close()


def test_strict_auth_snapshot_exports_follow_create_volume_permission(server_factory: Any, tmp_path: Path) -> None:
    """Under --auth strict a snapshot export needs ``snap-…:<account>:<secret>``, shown by
    DescribeSnapshots to that account only; an account other than the owner reads it only
    while createVolumePermission grants it; the bare id and another account's name are refused."""
    import boto3
    from botocore.config import Config

    from tests.integration.test_nbd_attach import CREDS, exported

    need("nbdinfo", "qemu-io")
    creds = tmp_path / "creds.toml"
    creds.write_text(CREDS)
    srv = server_factory(["--auth", "strict", "--credentials", str(creds)])

    def ec2_of(key: str, secret: str) -> Any:
        return boto3.client("ec2", endpoint_url=srv.url, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))

    alice, bob = ec2_of("AKIAALICENBD00000001", "alice-secret"), ec2_of("AKIABOBNBD0000000002", "bob-secret")
    vol = attach_new(alice, launch(alice), "/dev/sdf")

    def export_tag(client: Any, resource: str) -> str:
        if resource.startswith("vol-"):
            tags = client.describe_volumes(VolumeIds=[resource])["Volumes"][0].get("Tags", [])
        else:
            tags = client.describe_snapshots(SnapshotIds=[resource])["Snapshots"][0].get("Tags", [])
        return {t["Key"]: t["Value"] for t in tags}["ebscrypt:nbd-export"]

    qemu_io(uri(srv, export_tag(alice, vol)), f"write -P 0x52 {BLOCK} 4096", "flush")
    sid = snapshot_of(alice, vol)
    mine = export_tag(alice, sid)
    assert mine.startswith(f"{sid}:333333333301:")
    assert exported(srv, mine)
    out = run("qemu-io", "-r", "-f", "raw", "-c", f"read -P 0x52 {BLOCK} 4096", uri(srv, mine))
    assert "fail" not in (out.stdout + out.stderr).lower()
    assert not exported(srv, sid)  # the bare id is not enough under strict auth
    forged = f"{sid}:444444444401:{mine.rsplit(':', 1)[1]}"
    assert not exported(srv, forged)  # alice's secret is not bob's
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    OperationType="add", UserIds=["444444444401"])
    theirs = export_tag(bob, sid)
    assert theirs.startswith(f"{sid}:444444444401:") and theirs != mine
    assert exported(srv, theirs)
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    OperationType="remove", UserIds=["444444444401"])
    assert not exported(srv, theirs)  # no longer shared: refused at the next connection
    assert exported(srv, mine)
