"""Block format 3: sector-granular objects (issue 12, read side; R-DATA-1).

A version 3 object is opened whole or by sector; every kind of tampering — a byte flipped
in a sector, sectors swapped, a sector moved to another object or index, a truncated
object, a plain object's sector table altered — fails with BlockIntegrityError, never
wrong bytes. The expected objects are built here independently from the layout in the
crypto module's docstring (HKDF subkey, sector-index nonces, the associated data).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct
from pathlib import Path
from typing import Iterator

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebscrypt.engines.blocks.crypto import (
    BLOCK_SIZE,
    GCM_OBJECT_SIZE,
    PLAIN_OBJECT_SIZE,
    SECTOR_SIZE,
    BlockCipher,
    BlockIntegrityError,
    DataKey,
    SectorReader,
    plain_entry_checksum,
    sha256_b64,
)
from ebscrypt.engines.blocks.engine import BlockEngine
from tests.helpers import local_block_engine

OBJ = "00/0123456789abcdef0123456789abcdef"
OTHER = "01/fedcba9876543210fedcba9876543210"
KEY = DataKey("dk-vectors", bytes(range(32)))
SALT = bytes(range(100, 116))


def block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


def binding(key_id: str, identity: str, index: int) -> bytes:
    kid, ident = key_id.encode(), identity.encode()
    return len(kid).to_bytes(2, "big") + kid + len(ident).to_bytes(2, "big") + ident + index.to_bytes(8, "big")


def reference_gcm_object(key: DataKey, identity: str, index: int, data: bytes, salt: bytes = SALT,
                         shift: int = 14) -> bytes:
    """A version 3 encrypted object built from the documented layout alone."""
    header = b"EBSB" + bytes([3, 1, shift, 0])
    subkey = HKDF(hashes.SHA256(), 32, salt, b"ebscrypt block sector key v3" + binding(key.key_id, identity, index)
                  ).derive(key.plaintext)
    aead = AESGCM(subkey)
    size = 1 << shift
    out = [header, salt]
    for i in range(BLOCK_SIZE // size):
        aad = header + salt + binding(key.key_id, identity, index) + struct.pack(">I", i)
        out.append(aead.encrypt(i.to_bytes(12, "big"), data[i * size:(i + 1) * size], aad))
    return b"".join(out)


def reference_plain_object(data: bytes, shift: int = 14) -> tuple[bytes, str]:
    """A version 3 plain object and its entry checksum, from the documented layout."""
    size = 1 << shift
    prefix = b"EBSB" + bytes([3, 0, shift, 0]) + b"".join(
        blake3(data[i * size:(i + 1) * size]).digest() for i in range(BLOCK_SIZE // size))
    checksum = "t1:" + sha256_b64(data) + ":" + base64.b64encode(hashlib.sha256(prefix).digest()).decode()
    return prefix + data, checksum


def read_sector_range(cipher: BlockCipher, identity: str, index: int, obj: bytes, checksum: str,
                      offset: int, length: int) -> bytes:
    """A sector read as the engine does it, from an object held in memory."""
    reader = cipher.sector_reader(identity, index, obj[:cipher.prefix_size], checksum)
    if isinstance(reader, int):
        reader = cipher.sector_reader(identity, index, obj[:reader], checksum)
    if isinstance(reader, int):  # still too short: a truncated object (as the engine decides)
        raise BlockIntegrityError()
    assert isinstance(reader, SectorReader)
    at, n = reader.span(offset, length)
    try:
        want = reader.open(obj[at:at + n], offset, length)
    except BlockIntegrityError:
        with pytest.raises(BlockIntegrityError):  # the hot path fails alike: never bytes
            read_into(reader, obj, offset, length)
        raise
    assert read_into(reader, obj, offset, length) == want
    return want


def read_into(reader: SectorReader, obj: bytes, offset: int, length: int) -> bytes:
    """The same range through ``SectorReader.read_into`` (an attached volume's hot reads),
    once with a buffer too small for it (one is made) and once with room to spare."""
    results = []
    for room in (16, 4 * BLOCK_SIZE):
        dest = memoryview(bytearray(length))

        def read(name: str, at: int, into: memoryview) -> bool:
            assert name == OBJ
            part = obj[at:at + len(into)]
            into[:len(part)] = part
            return len(part) == len(into)  # (past the end of a truncated object: not read)
        if not reader.read_into(read, OBJ, offset, dest, memoryview(bytearray(room))):
            raise BlockIntegrityError()  # (as the engine's blocking read then decides: short)
        results.append(bytes(dest))
    assert results[0] == results[1]
    return results[0]


def test_read_into_serves_nothing_when_the_sectors_are_not_read() -> None:
    """``read_into``'s reader says the sectors could not be read at once (not in the page
    cache): False, and nothing written to the destination."""
    data = block(9)
    for cipher, (obj, checksum) in ((BlockCipher(KEY), (reference_gcm_object(KEY, OBJ, 1, data), "")),
                                    (BlockCipher(None), reference_plain_object(data))):
        reader = cipher.sector_reader(OBJ, 1, obj[:cipher.prefix_size], checksum)
        assert isinstance(reader, SectorReader)
        dest = memoryview(bytearray(b"u" * 4096))
        assert not reader.read_into(lambda name, at, into: False, OBJ, 8192, dest, memoryview(bytearray(1 << 17)))
        assert bytes(dest) == b"u" * 4096
        assert read_into(reader, obj, 8192, 4096) == data[8192:12288]


RANGES = [(0, 4096), (4096, 4096), (SECTOR_SIZE - 512, 1024), (BLOCK_SIZE - 4096, 4096), (0, BLOCK_SIZE),
          (12345, 70000), (BLOCK_SIZE - 1, 1)]


# ------------------------------------------------------------------ vectors


def test_reference_encrypted_object_opens_whole_and_by_sector() -> None:
    data = block(1)
    obj = reference_gcm_object(KEY, OBJ, 7, data)
    assert len(obj) == GCM_OBJECT_SIZE
    cipher = BlockCipher(KEY)
    assert bytes(cipher.open(OBJ, 7, obj, "")) == data
    for offset, length in RANGES:
        assert read_sector_range(cipher, OBJ, 7, obj, "", offset, length) == data[offset:offset + length]


def test_sealed_object_matches_the_reference_layout() -> None:
    """What seal writes is the documented layout (its salt read back from the object)."""
    data = block(2)
    sealed = bytes(BlockCipher(KEY).seal(OBJ, 3, data))
    assert sealed == reference_gcm_object(KEY, OBJ, 3, data, salt=sealed[8:24])
    plain = BlockCipher(None)
    obj, checksum = plain.seal_block(OBJ, 3, data, sha256_b64(data))
    assert (bytes(obj), checksum) == reference_plain_object(data)
    assert len(obj) == PLAIN_OBJECT_SIZE


@pytest.mark.parametrize("shift", [12, 14, 16])
def test_objects_of_other_sector_sizes_are_read(shift: int) -> None:
    """The sector size is in the header: objects written with 4/16/64 KiB sectors all read."""
    data = block(shift)
    enc = reference_gcm_object(KEY, OBJ, 1, data, shift=shift)
    plain, checksum = reference_plain_object(data, shift=shift)
    for cipher, obj, ck in ((BlockCipher(KEY), enc, ""), (BlockCipher(None), plain, checksum)):
        assert bytes(cipher.open(OBJ, 1, obj, ck)) == data
        for offset, length in RANGES:
            assert read_sector_range(cipher, OBJ, 1, obj, ck, offset, length) == data[offset:offset + length]
    assert bytes(BlockCipher(KEY, sector_shift=shift).seal(OBJ, 1, data))[6] == shift


def test_plain_objects_of_every_sector_size_match_the_reference_layout() -> None:
    """BlockCipher's sector table (one comprehension over bounds made once per size, W8):
    for every sector size a header may name, sealed whole and in pieces, the bytes and the
    entry checksum are the documented layout's — sizes alternating through the same
    process, so no size's bounds serve another."""
    for shift in [12, 19, 13, 18, 14, 17, 15, 16, 12]:
        data = block(shift + 40)
        want, checksum = reference_plain_object(data, shift=shift)
        cipher = BlockCipher(None, sector_shift=shift)
        sealed, got_checksum = cipher.seal_block(OBJ, 1, data, sha256_b64(data))
        assert bytes(sealed) == want and got_checksum == checksum, shift
        parts, parts_checksum = cipher.seal_block_parts(OBJ, 1, data, sha256_b64(data))
        assert b"".join(bytes(p) for p in parts) == want and parts_checksum == checksum, shift


def test_reference_plain_object_opens_whole_and_by_sector() -> None:
    data = block(3)
    obj, checksum = reference_plain_object(data)
    cipher = BlockCipher(None)
    assert bytes(cipher.open(OBJ, 0, obj, checksum)) == data
    for offset, length in RANGES:
        assert read_sector_range(cipher, OBJ, 0, obj, checksum, offset, length) == data[offset:offset + length]
    assert cipher.open_checksum(0, checksum) == sha256_b64(data)


# ------------------------------------------------------------------ tampering


def sector_at(i: int, encrypted: bool = True) -> int:
    return (24 + i * (SECTOR_SIZE + 16)) if encrypted else (8 + 32 * (BLOCK_SIZE // SECTOR_SIZE) + i * SECTOR_SIZE)


def fails(cipher: BlockCipher, identity: str, index: int, obj: bytes, checksum: str, offset: int, length: int) -> None:
    with pytest.raises(BlockIntegrityError):
        read_sector_range(cipher, identity, index, obj, checksum, offset, length)


@pytest.mark.parametrize("where", [0, 4, 5, 6, 7, 8, 23, 24, 100, 24 + SECTOR_SIZE + 15, 24 + SECTOR_SIZE + 16])
def test_byte_flip_fails_the_sector_and_the_whole(where: int) -> None:
    data = block(4)
    obj = bytearray(reference_gcm_object(KEY, OBJ, 2, data))
    obj[where] ^= 0x40
    cipher = BlockCipher(KEY)
    with pytest.raises(BlockIntegrityError):
        cipher.open(OBJ, 2, obj, "")
    hit = max(0, (where - 24) // (SECTOR_SIZE + 16))
    fails(cipher, OBJ, 2, bytes(obj), "", hit * SECTOR_SIZE, 4096)
    if where >= 24:  # a flip in a sector spoils that sector only: the others still read
        other = (hit + 1) * SECTOR_SIZE
        assert read_sector_range(cipher, OBJ, 2, bytes(obj), "", other, 4096) == data[other:other + 4096]


def test_sectors_swapped_within_an_object_fail() -> None:
    data = block(5)
    obj = bytearray(reference_gcm_object(KEY, OBJ, 2, data))
    a, b, n = sector_at(1), sector_at(2), SECTOR_SIZE + 16
    obj[a:a + n], obj[b:b + n] = obj[b:b + n], obj[a:a + n]
    for offset in (SECTOR_SIZE, 2 * SECTOR_SIZE):
        fails(BlockCipher(KEY), OBJ, 2, bytes(obj), "", offset, 4096)
    with pytest.raises(BlockIntegrityError):
        BlockCipher(KEY).open(OBJ, 2, obj, "")


def test_sector_moved_to_another_object_or_index_fails() -> None:
    """A sector of another object of the same data key (same or another index), put at
    the same place, or a whole object read as another index or another identity: fail."""
    mine, theirs = block(6), block(7)
    obj = bytearray(reference_gcm_object(KEY, OBJ, 2, mine))
    for donor in (reference_gcm_object(KEY, OTHER, 2, theirs, salt=os.urandom(16)),
                  reference_gcm_object(KEY, OBJ, 3, theirs),  # same identity and salt, another index
                  reference_gcm_object(KEY, OBJ, 2, theirs, salt=os.urandom(16))):  # same place, another salt
        moved = bytearray(obj)
        a, n = sector_at(4), SECTOR_SIZE + 16
        moved[a:a + n] = donor[a:a + n]
        fails(BlockCipher(KEY), OBJ, 2, bytes(moved), "", 4 * SECTOR_SIZE, 4096)
    for identity, index, key in ((OBJ, 3, KEY), (OTHER, 2, KEY), (OBJ, 2, DataKey("dk-other", KEY.plaintext)),
                                 (OBJ, 2, DataKey(KEY.key_id, os.urandom(32)))):
        fails(BlockCipher(key), identity, index, bytes(obj), "", 0, 4096)


def test_truncated_or_extended_object_fails() -> None:
    data = block(8)
    obj = reference_gcm_object(KEY, OBJ, 0, data)
    cipher = BlockCipher(KEY)
    for cut in (1, 16, SECTOR_SIZE + 16, len(obj) - 24, len(obj) - 10):
        short = obj[:len(obj) - cut]
        with pytest.raises(BlockIntegrityError):
            cipher.open(OBJ, 0, short, "")
        fails(cipher, OBJ, 0, short, "", BLOCK_SIZE - 4096, 4096)
    with pytest.raises(BlockIntegrityError):
        cipher.open(OBJ, 0, obj + b"\0", "")
    plain, checksum = reference_plain_object(data)
    with pytest.raises(BlockIntegrityError):
        BlockCipher(None).open(OBJ, 0, plain[:-1], checksum)
    fails(BlockCipher(None), OBJ, 0, plain[:-1], checksum, BLOCK_SIZE - 4096, 4096)
    fails(BlockCipher(None), OBJ, 0, plain[:100], checksum, 0, 4096)


def test_plain_tampering_fails() -> None:
    """A plain object: a data byte flipped fails its sector; the table altered (or a
    sector and its table entry both replaced, or another object's table) fails against
    the digest recorded in metadata; a plain object never passes under an encrypted key."""
    data, other = block(9), block(10)
    obj, checksum = reference_plain_object(data)
    cipher = BlockCipher(None)
    flipped = bytearray(obj)
    flipped[sector_at(3, False) + 77] ^= 1
    fails(cipher, OBJ, 0, bytes(flipped), checksum, 3 * SECTOR_SIZE, 4096)
    assert read_sector_range(cipher, OBJ, 0, bytes(flipped), checksum, 0, 4096) == data[:4096]
    with pytest.raises(BlockIntegrityError):
        cipher.open(OBJ, 0, flipped, checksum)
    table = bytearray(obj)
    table[8 + 3 * 32] ^= 1
    fails(cipher, OBJ, 0, bytes(table), checksum, 0, 4096)
    with pytest.raises(BlockIntegrityError):
        cipher.open(OBJ, 0, table, checksum)
    donor, _ = reference_plain_object(other)
    swapped = bytearray(obj)
    swapped[8 + 3 * 32:8 + 4 * 32] = donor[8 + 3 * 32:8 + 4 * 32]
    a = sector_at(3, False)
    swapped[a:a + SECTOR_SIZE] = donor[a:a + SECTOR_SIZE]
    fails(cipher, OBJ, 0, bytes(swapped), checksum, 3 * SECTOR_SIZE, 4096)
    fails(cipher, OBJ, 0, donor, checksum, 0, 4096)
    with pytest.raises(BlockIntegrityError):
        BlockCipher(KEY).sector_reader(OBJ, 0, obj[:24], "")
    with pytest.raises(BlockIntegrityError):
        cipher.sector_reader(OBJ, 0, reference_gcm_object(KEY, OBJ, 0, data)[:4104], checksum)


def test_plain_object_recorded_without_its_table_digest_is_read_whole() -> None:
    """A plain object recorded with the bare SHA-256 (a re-encrypting copy to a plain
    owner records that): no sector reader; the whole read checks the block's digest."""
    data = block(11)
    obj, _ = reference_plain_object(data)
    cipher = BlockCipher(None)
    assert cipher.sector_reader(OBJ, 0, obj[:cipher.prefix_size], sha256_b64(data)) is None
    assert bytes(cipher.open(OBJ, 0, obj, sha256_b64(data))) == data
    with pytest.raises(BlockIntegrityError):
        cipher.open(OBJ, 0, obj, sha256_b64(block(12)))
    assert plain_entry_checksum(sha256_b64(data), b"x").startswith("t1:")


# ------------------------------------------------------------------ engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[BlockEngine]:
    with local_block_engine(tmp_path) as eng:
        yield eng


def object_path(eng: BlockEngine, owner: str, index: int) -> Path:
    ref = eng.block_ref(owner, index)
    assert ref is not None and ref.object_key is not None
    return eng.store.root / ref.object_key  # type: ignore[attr-defined]


@pytest.mark.parametrize("encrypted", [True, False])
def test_read_sectors_through_the_lineage(engine: BlockEngine, encrypted: bool) -> None:
    key = DataKey("dk-1", os.urandom(32)) if encrypted else None
    base, child = block(20), block(21)
    engine.write_block("snap-base", 0, base, key)
    engine.write_block("snap-base", 1, base, key)
    engine.share("snap-base", "vol-1")
    engine.write_block("vol-1", 1, child, key)
    for offset, length in RANGES:
        assert engine.read_sectors("vol-1", 0, offset, length, key) == base[offset:offset + length]
        assert engine.read_sectors("vol-1", 1, offset, length, key) == child[offset:offset + length]
        assert engine.read_sectors("vol-1", 9, offset, length, key) == bytes(length)
    with pytest.raises(ValueError):
        engine.read_sectors("vol-1", 0, BLOCK_SIZE - 10, 20, key)
    assert engine.read_block("vol-1", 1, key) == child  # whole reads of format 3 objects
    path = object_path(engine, "vol-1", 1)
    raw = bytearray(path.read_bytes())
    assert raw[4] == 3
    raw[-5] ^= 1  # the last sector
    path.write_bytes(raw)
    with pytest.raises(BlockIntegrityError):
        engine.read_sectors("vol-1", 1, BLOCK_SIZE - 4096, 4096, key)
    with pytest.raises(BlockIntegrityError):
        engine.read_block("vol-1", 1, key)
    assert engine.read_sectors("vol-1", 1, 0, 4096, key) == child[:4096]


def test_read_sectors_of_format_2_objects_reads_them_whole(engine: BlockEngine) -> None:
    """An object of an earlier release (format 2, no sectors) is read whole, checked, and
    the range cut from it."""
    from ebscrypt.engines.blocks.crypto import block_aad

    key = DataKey("dk-1", os.urandom(32))
    data = block(22)
    engine.write_block("vol-1", 0, data, key)
    ref = engine.block_ref("vol-1", 0)
    assert ref is not None and ref.object_key is not None
    nonce = os.urandom(12)
    v2 = b"EBSB" + bytes([2, 1]) + nonce + AESGCM(key.plaintext).encrypt(nonce, data, block_aad(key.key_id, ref.object_key, 0))
    path = object_path(engine, "vol-1", 0)
    path.write_bytes(v2)
    assert engine.read_sectors("vol-1", 0, 5000, 3000, key) == data[5000:8000]
    path.write_bytes(v2[:-1])
    with pytest.raises(BlockIntegrityError):
        engine.read_sectors("vol-1", 0, 5000, 3000, key)


def test_reencrypted_copies_read_by_sector(engine: BlockEngine) -> None:
    k1, k2 = DataKey("dk-1", os.urandom(32)), DataKey("dk-2", os.urandom(32))
    data = block(23)
    engine.write_block("snap-a", 4, data, None)
    engine.reencrypt("snap-a", None, "snap-b", k2)
    engine.reencrypt("snap-b", k2, "snap-c", k1)
    engine.reencrypt("snap-c", k1, "snap-d", None)  # plain again: recorded with the bare SHA-256
    for owner, key in (("snap-a", None), ("snap-b", k2), ("snap-c", k1), ("snap-d", None)):
        assert engine.read_sectors(owner, 4, 40000, 9000, key) == data[40000:49000]
        assert engine.read_block(owner, 4, key) == data
    assert engine.list_blocks("snap-a") == [(4, sha256_b64(data))] == engine.list_blocks("snap-d")
