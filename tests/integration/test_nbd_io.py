"""Attached volumes as block devices, driven by real NBD clients (qemu-io, qemu-img, nbdinfo,
nbdcopy, mkfs.ext4/e2fsck): R-ATTACH-3 (reads, writes encrypted before they are stored,
flush durable) and R-ATTACH-4 (CreateSnapshot of an in-use volume, incremental)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import new_account, new_key, pattern, read_blocks, upload_snapshot
from tests.integration.test_nbd_support import (
    BLOCK,
    MIB,
    attach_new,
    launch,
    need,
    qemu_io,
    run,
    snapshot_of,
    uri,
)

GIB = 1024 ** 3


def export_bytes(srv: Any, volume_id: str, path: Path) -> bytes:
    """The whole export copied to a local file with nbdcopy; returns its first 8 MiB (the
    tests only ever write there; the rest is checked to be zeros by hashing)."""
    run("nbdcopy", uri(srv, volume_id), str(path), timeout=300)
    data = path.read_bytes()
    assert len(data) == GIB
    assert hashlib.sha256(data[8 * MIB:]).digest() == hashlib.sha256(bytes(GIB - 8 * MIB)).digest()
    return data[:8 * MIB]


def test_read_volume_created_from_uploaded_image(server: Any, aws: Any, tmp_path: Path) -> None:
    """R-ATTACH-3: an encrypted volume created from an uploaded image reads back as the image
    (copy-on-write from the snapshot's blocks), through nbdinfo and nbdcopy."""
    need("nbdcopy", "nbdinfo")
    acct = new_account()
    ec2, ebs, kms = aws("ec2", account=acct), aws("ebs", account=acct), aws("kms", account=acct)
    key = new_key(kms)
    blocks = {0: pattern("img", 0), 1: pattern("img", 1), 9: pattern("img", 9)}
    sid = upload_snapshot(ebs, blocks, Encrypted=True, KmsKeyArn=key)
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", SnapshotId=sid, Encrypted=True, KmsKeyId=key)
    size = run("nbdinfo", "--size", uri(server, vol)).stdout.strip()
    assert size == str(GIB)
    got = export_bytes(server, vol, tmp_path / "export.img")
    expected = bytearray(8 * MIB)
    for index, data in blocks.items():
        expected[index * BLOCK:(index + 1) * BLOCK] = data
    assert got == bytes(expected)


def test_writes_flush_snapshot_and_changed_blocks(server: Any, aws: Any) -> None:
    """R-ATTACH-3/4: patterns written with qemu-io (partial blocks, block boundaries), flushed,
    are in CreateSnapshot (read back through GetSnapshotBlock); a second snapshot is
    incremental: ListChangedBlocks names exactly the blocks written in between."""
    need("qemu-io")
    acct = new_account()
    ec2, ebs = aws("ec2", account=acct), aws("ebs", account=acct)
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True)
    model = bytearray(8 * MIB)
    writes = [(0x41, 0, 4096), (0x42, BLOCK - 100, 300), (0x43, 3 * BLOCK, BLOCK), (0x44, 5 * BLOCK + 7, 2 * BLOCK)]
    for value, offset, length in writes:
        model[offset:offset + length] = bytes([value]) * length
    qemu_io(uri(server, vol), *[f"write -P {v:#x} {o} {n}" for v, o, n in writes], "flush")
    first = snapshot_of(ec2, vol)
    snap_blocks = read_blocks(ebs, first)
    assert sorted(snap_blocks) == [0, 1, 3, 5, 6, 7]
    for index, data in snap_blocks.items():
        assert data == bytes(model[index * BLOCK:(index + 1) * BLOCK]), index
    # Written after the first snapshot: only these blocks change.
    qemu_io(uri(server, vol), "write -P 0x51 1048576 4096", "write -P 0x52 9437184 100", "flush")
    second = snapshot_of(ec2, vol)
    changed = ebs.list_changed_blocks(FirstSnapshotId=first, SecondSnapshotId=second)["ChangedBlocks"]
    assert sorted(b["BlockIndex"] for b in changed) == [2, 18]
    assert read_blocks(ebs, first).keys() == snap_blocks.keys()  # the first is unchanged


def test_snapshot_holds_every_acknowledged_write_without_flush(server: Any, aws: Any) -> None:
    """R-ATTACH-4: a write acknowledged (but never flushed by the client) before
    CreateSnapshot is in the snapshot; one issued after it is not."""
    need("qemu-io")
    acct = new_account()
    ec2, ebs = aws("ec2", account=acct), aws("ebs", account=acct)
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf")
    # qemu-io with cache=writeback-less raw access: the write is acknowledged, no flush sent
    qemu_io(uri(server, vol), "write -P 0x61 0 8192")
    sid = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    qemu_io(uri(server, vol), "write -P 0x62 0 8192", "flush")
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1})
    got = read_blocks(ebs, sid)
    assert got[0][:8192] == b"\x61" * 8192 and got[0][8192:] == bytes(BLOCK - 8192)


def test_copy_unencrypted_volume_to_encrypted_with_nbdcopy(server: Any, aws: Any, tmp_path: Path) -> None:
    """The seeds' migration: nbdcopy from an unencrypted volume's export to an encrypted
    volume's export; the encrypted volume's snapshot is encrypted under its key and reads
    back equal (GetSnapshotBlock)."""
    need("nbdcopy")
    acct = new_account()
    ec2, ebs, kms = aws("ec2", account=acct), aws("ebs", account=acct), aws("kms", account=acct)
    key = new_key(kms)
    blocks = {0: pattern("plain", 0), 2: pattern("plain", 2), 100: pattern("plain", 100)}
    plain_snap = upload_snapshot(ebs, blocks)
    iid = launch(ec2)
    src = attach_new(ec2, iid, "/dev/sdf", SnapshotId=plain_snap, Encrypted=False)
    dst = attach_new(ec2, iid, "/dev/sdg", Encrypted=True, KmsKeyId=key)
    assert ec2.describe_volumes(VolumeIds=[src])["Volumes"][0]["Encrypted"] is False
    run("nbdcopy", uri(server, src), uri(server, dst), timeout=300)
    sid = snapshot_of(ec2, dst)
    snap = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert snap["Encrypted"] is True and snap["KmsKeyId"] == key
    assert read_blocks(ebs, sid) == blocks  # zero blocks are not stored


def test_no_plaintext_on_disk_copy_on_write_and_kill9(server_factory: Any, tmp_path: Path) -> None:
    """R-ATTACH-3: what is written to an encrypted volume never reaches disk in plaintext;
    a volume from a snapshot stores only what is written to it; after kill -9 every flushed
    write reads back and the volume is usable."""
    need("qemu-io", "nbdcopy")
    srv = server_factory()
    acct = new_account()
    ec2, ebs = srv.client("ec2", account=acct), srv.client("ebs", account=acct)
    marker = b"ebscrypt-nbd-plaintext-marker-7f3a9c:"
    source = tmp_path / "marker.img"
    source.write_bytes((marker * (4 * MIB // len(marker) + 1))[:4 * MIB])
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True)
    run("nbdcopy", "--flush", str(source), uri(srv, vol), timeout=120)
    # copy-on-write: a 16 GiB volume from a snapshot of it stores nothing of its own
    sid = snapshot_of(ec2, vol)
    blocks_dir = srv.data_dir / "blocks"
    objects_before = sum(1 for p in blocks_dir.rglob("*") if p.is_file())
    big = attach_new(ec2, iid, "/dev/sdg", SnapshotId=sid, Size=16)
    assert sum(1 for p in blocks_dir.rglob("*") if p.is_file()) == objects_before
    qemu_io(uri(srv, big), "write -P 0x71 17179860992 8192", "flush", "read -P 0x71 17179860992 8192")
    # (a small write to a block not cached is in the volume's journal until merged: 0 or 1 object)
    assert sum(1 for p in blocks_dir.rglob("*") if p.is_file()) <= objects_before + 1
    # flushed writes, then kill -9 during more writes
    qemu_io(uri(srv, vol), "write -P 0x7a 6291456 1048576", "flush")
    writer = subprocess.Popen(["qemu-io", "-f", "raw", *sum((["-c", f"write -P 0x7b {o} 65536"]
                                                           for o in range(8 * MIB, 40 * MIB, 65536)), []),
                               uri(srv, vol)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv.kill()
    finally:
        writer.kill()
        writer.wait(10)
    hits = run("grep", "-rl", "--binary-files=binary", marker.decode(), str(srv.data_dir), check=False)
    assert hits.returncode == 1 and hits.stdout == "", f"plaintext found on disk: {hits.stdout}"
    srv.start()
    qemu_io(uri(srv, vol), "read -P 0x7a 6291456 1048576", "write -P 0x7c 0 4096", "flush", "read -P 0x7c 0 4096")
    back = tmp_path / "back.img"
    head = export_bytes(srv, vol, back)
    assert head[4096:4 * MIB] == source.read_bytes()[4096:]
    assert read_blocks(ebs, sid)[0][:len(marker)] == marker


def test_kill9_after_flush_journaled_small_writes_read_back(server_factory: Any, tmp_path: Path) -> None:
    """R-ATTACH-3 with the write journal: 4 KiB writes scattered over blocks the cache does
    not hold are journaled (no read-modify-write); after FLUSH and kill -9 every one reads
    back (the journal is replayed and merged at the next open), none in plaintext on disk;
    a snapshot then holds them (R-ATTACH-4), and detach leaves no journal behind."""
    need("qemu-io")
    srv = server_factory()
    acct = new_account()
    ec2, ebs = srv.client("ec2", account=acct), srv.client("ebs", account=acct)
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True)
    offsets = [i * 7 * BLOCK + 4096 * (i % 5) for i in range(40)]  # 40 blocks, one 4 KiB each
    cmds = [f"write -P {0x30 + i % 64} {off} 4096" for i, off in enumerate(offsets)]
    qemu_io(uri(srv, vol), *cmds, "flush")
    journal = srv.data_dir / "journal" / f"{vol}.jnl"
    assert journal.exists() and journal.stat().st_size > 40 * 4096
    srv.kill()
    sealed = journal.read_bytes()
    assert not any(bytes([0x30 + i]) * 4096 in sealed for i in range(40)), "plaintext in the journal"
    srv.start()
    # a snapshot before any NBD client came back: the journal left by the crash is merged first
    sid = snapshot_of(ec2, vol)
    blocks = read_blocks(ebs, sid)
    for i, off in enumerate(offsets):
        index, start = divmod(off, BLOCK)
        assert blocks[index][start:start + 4096] == bytes([0x30 + i % 64]) * 4096
    assert not journal.exists()
    qemu_io(uri(srv, vol), *[f"read -P {0x30 + i % 64} {off} 4096" for i, off in enumerate(offsets)],
            f"read -P 0 {offsets[1] + 4096} 4096", "write -P 0x99 4096 4096", "flush")
    assert journal.exists()
    ec2.detach_volume(VolumeId=vol)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert not journal.exists()


def test_ext4_round_trip_through_reencrypted_copy(server: Any, aws: Any, tmp_path: Path) -> None:
    """A filesystem written through NBD survives snapshot → CopySnapshot under another key →
    new volume → attach: e2fsck -n finds it clean and its bytes are unchanged."""
    need("nbdcopy", "mkfs.ext4", "e2fsck")
    acct = new_account()
    ec2, kms = aws("ec2", account=acct), aws("kms", account=acct)
    key_a, key_b = new_key(kms, "a"), new_key(kms, "b")
    content = tmp_path / "content"
    content.mkdir()
    for i in range(20):
        (content / f"file{i}.txt").write_bytes(os.urandom(1000) + f"file {i}\n".encode() * 2000)
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(GIB)
    run("mkfs.ext4", "-q", "-F", "-d", str(content), str(image), timeout=120)
    iid = launch(ec2)
    vol = attach_new(ec2, iid, "/dev/sdf", Encrypted=True, KmsKeyId=key_a)
    run("nbdcopy", "--flush", str(image), uri(server, vol), timeout=300)
    sid = snapshot_of(ec2, vol)
    copy = ec2.copy_snapshot(SourceSnapshotId=sid, SourceRegion="us-east-1", Encrypted=True,
                             KmsKeyId=key_b)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[copy], WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    again = attach_new(ec2, iid, "/dev/sdg", SnapshotId=copy, Encrypted=True, KmsKeyId=key_b)
    back = tmp_path / "back.img"
    run("nbdcopy", uri(server, again), str(back), timeout=300)
    run("e2fsck", "-n", "-f", str(back), timeout=120)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    assert ec2.describe_volumes(VolumeIds=[again])["Volumes"][0]["KmsKeyId"] == key_b

