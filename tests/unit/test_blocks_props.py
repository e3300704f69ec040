"""Property tests of the block format (hypothesis): round trips, and any single-bit change,
truncation or re-binding fails authentication (R-DATA-1)."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, GCM_OBJECT_SIZE, BlockCipher, BlockIntegrityError, DataKey

keys = st.builds(DataKey, st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40), st.binary(min_size=32, max_size=32))
indices = st.integers(min_value=0, max_value=2**40)
identities = st.text(alphabet="0123456789abcdef/", min_size=1, max_size=40)
OBJ = "00/0123456789abcdef0123456789abcdef"


def block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


@settings(max_examples=25, deadline=None)
@given(keys, indices, st.integers())
def test_round_trip(key: DataKey, index: int, seed: int) -> None:
    data = block(seed)
    cipher = BlockCipher(key)
    obj = bytes(cipher.seal(OBJ, index, data))
    assert len(obj) == GCM_OBJECT_SIZE
    assert bytes(BlockCipher(key).open(OBJ, index, obj, "")) == data
    checksum = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
    assert cipher.open_checksum(index, cipher.seal_checksum(index, checksum)) == checksum


@settings(max_examples=40, deadline=None)
@given(keys, indices, st.integers(min_value=0, max_value=GCM_OBJECT_SIZE * 8 - 1))
def test_any_bit_flip_fails(key: DataKey, index: int, bit: int) -> None:
    obj = bytearray(BlockCipher(key).seal(OBJ, index, block(index)))
    obj[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BlockIntegrityError):
        BlockCipher(key).open(OBJ, index, obj, "")


@settings(max_examples=25, deadline=None)
@given(keys, indices, st.integers(min_value=1, max_value=GCM_OBJECT_SIZE))
def test_truncation_fails(key: DataKey, index: int, cut: int) -> None:
    obj = bytes(BlockCipher(key).seal(OBJ, index, block(1)))
    with pytest.raises(BlockIntegrityError):
        BlockCipher(key).open(OBJ, index, obj[: GCM_OBJECT_SIZE - cut], "")


@settings(max_examples=25, deadline=None)
@given(keys, indices, indices, st.text(min_size=1, max_size=10), identities)
def test_rebinding_fails(key: DataKey, index: int, other: int, suffix: str, identity: str) -> None:
    """Opened as another index, under another key id, or as another object (identity):
    always an integrity error (R-DATA-1; issue 10 item 6)."""
    obj = bytes(BlockCipher(key).seal(OBJ, index, block(2)))
    if other != index:
        with pytest.raises(BlockIntegrityError):
            BlockCipher(key).open(OBJ, other, obj, "")
    with pytest.raises(BlockIntegrityError):
        BlockCipher(DataKey(key.key_id + suffix, key.plaintext)).open(OBJ, index, obj, "")
    if identity != OBJ:
        with pytest.raises(BlockIntegrityError):
            BlockCipher(key).open(identity, index, obj, "")


@settings(max_examples=40, deadline=None)
@given(keys, indices, st.integers(min_value=0, max_value=GCM_OBJECT_SIZE * 8 - 1),
       st.integers(min_value=0, max_value=BLOCK_SIZE - 1), st.integers(min_value=1, max_value=65536))
@example(DataKey("0", bytes(32)), 0, 32, 0, 1)  # the version byte 3 -> 2 (found by hypothesis)
def test_sector_reads_fail_exactly_where_a_bit_flipped(key: DataKey, index: int, bit: int, offset: int,
                                                       length: int) -> None:
    """Format 3 by sector: after any single-bit flip, a range read that covers the flipped
    sector (or any read, if the header or salt flipped) fails; one that does not returns
    the block's bytes (R-DATA-1)."""
    from ebscrypt.engines.blocks.crypto import GCM_PREFIX, SECTOR_SIZE, TAG, SectorReader

    length = min(length, BLOCK_SIZE - offset)
    data = block(index % 1000)
    obj = bytearray(BlockCipher(key).seal(OBJ, index, data))
    obj[bit // 8] ^= 1 << (bit % 8)
    cipher = BlockCipher(key)
    byte = bit // 8
    hit_all = byte < GCM_PREFIX
    hit = (byte - GCM_PREFIX) // (SECTOR_SIZE + TAG)
    first, last = offset // SECTOR_SIZE, (offset + length - 1) // SECTOR_SIZE
    try:
        reader = cipher.sector_reader(OBJ, index, bytes(obj[:GCM_PREFIX]), "")
        if reader is None:  # the version byte flipped to an older format's: read whole, which fails
            assert hit_all
            with pytest.raises(BlockIntegrityError):
                cipher.open(OBJ, index, bytes(obj), "")
            return
        assert isinstance(reader, SectorReader)
        at, n = reader.span(offset, length)
        got = reader.open(bytes(obj[at:at + n]), offset, length)
    except BlockIntegrityError:
        assert hit_all or first <= hit <= last
    else:
        assert not hit_all and not first <= hit <= last
        assert got == data[offset:offset + length]
