"""The all-zero test of a block being staged (crypto.is_zero_block, BlockEngine._stage_one):
right for every buffer kind whatever its leading zeros, and staging keeps its rules — an
all-zero block is recorded without an object, any other gets one that reads back, its
entry's checksum sealed as the block's (never the zero block's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, ZERO_BLOCK, ZERO_CHECKSUM, BlockCipher, DataKey, is_zero_block
from tests.helpers import local_block_engine


def _kinds(data: bytes) -> list[bytes | bytearray | memoryview]:
    big = bytearray(data) + b"\x01" * 7  # a view into a larger buffer, as a request's
    return [data, bytearray(data), memoryview(bytearray(data)), memoryview(big)[:len(data)]]


@pytest.mark.parametrize("where", [None, 0, 7, 8, BLOCK_SIZE // 2, BLOCK_SIZE - 1])
def test_is_zero_block_for_every_buffer_kind(where: int | None) -> None:
    data = bytearray(BLOCK_SIZE)
    if where is not None:
        data[where] = 1
    for buf in _kinds(bytes(data)):
        assert is_zero_block(buf) is (where is None), type(buf)
    assert not is_zero_block(memoryview(bytes(BLOCK_SIZE - 1)))  # not a block


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_staging_records_zeros_without_an_object_and_anything_else_with_one(tmp_path: Path, encrypted: bool) -> None:
    key = DataKey("dk-zero", os.urandom(32)) if encrypted else None
    tail = bytearray(BLOCK_SIZE)
    tail[-1] = 0x5A  # zeros but for its last byte: must not pass for zeros
    with local_block_engine(tmp_path) as blocks:
        zero_view = memoryview(bytearray(BLOCK_SIZE))
        staged = blocks.stage_blocks("vol-00000000000000081", [(0, zero_view), (1, memoryview(tail))], key)
        assert staged[0].ref.object_key is None and staged[1].ref.object_key is not None
        cipher = BlockCipher(key)
        assert cipher.open_checksum(0, staged[0].ref.checksum) == ZERO_CHECKSUM
        assert cipher.open_checksum(1, staged[1].ref.checksum) != ZERO_CHECKSUM
        assert blocks.open_ref(staged[0].ref, key) == ZERO_BLOCK
        assert bytes(blocks.open_ref(staged[1].ref, key)) == bytes(tail)
        # an all-zero block the caller needs an object for (an attached volume's journal marks)
        marked = blocks.stage_blocks("vol-00000000000000081", [(2, zero_view)], key, zero_objects={2})
        assert marked[0].ref.object_key is not None and bytes(blocks.open_ref(marked[0].ref, key)) == ZERO_BLOCK
        blocks.discard_staged(staged + marked)
