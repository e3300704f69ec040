"""Ciphertext blob format and key wrapping (ebscrypt.engines.kms.blob/keystore), property tests."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebscrypt.engines.kms import blob as blobfmt
from ebscrypt.engines.kms.keystore import FileRootKeySource, KeyWrapper, RootKeyError

KEY_ID = str(uuid.uuid4())
MATERIAL_ID = os.urandom(16).hex()
MATERIAL = os.urandom(32)
contexts = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4)


def open_(b: bytes, ctx: dict | None) -> bytes:
    return blobfmt.open_blob(blobfmt.parse_header(b), b, MATERIAL, ctx)


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=300), ctx=contexts)
def test_round_trip_and_self_description(plaintext: bytes, ctx: dict) -> None:
    b = blobfmt.seal(KEY_ID, MATERIAL_ID, MATERIAL, plaintext, ctx)
    header = blobfmt.parse_header(b)
    assert header.key_id == KEY_ID and header.material_id == MATERIAL_ID
    assert blobfmt.material_id_of(b) == MATERIAL_ID
    assert blobfmt.material_id_of(b[:20]) is None and blobfmt.material_id_of(b"\x09" + b[1:]) is None
    assert open_(b, dict(reversed(list(ctx.items())))) == plaintext  # context order does not matter


@settings(max_examples=80, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=64), data=st.data())
def test_any_bit_flip_is_detected(plaintext: bytes, data: st.DataObject) -> None:
    b = bytearray(blobfmt.seal(KEY_ID, MATERIAL_ID, MATERIAL, plaintext, {"a": "b"}))
    i = data.draw(st.integers(0, len(b) - 1))
    bit = data.draw(st.integers(0, 7))
    b[i] ^= 1 << bit
    with pytest.raises((blobfmt.BadCiphertext, ValueError)):
        open_(bytes(b), {"a": "b"})


@settings(max_examples=40, deadline=None)
@given(ctx=contexts, other=contexts)
def test_other_context_is_refused(ctx: dict, other: dict) -> None:
    b = blobfmt.seal(KEY_ID, MATERIAL_ID, MATERIAL, b"data", ctx)
    if other == ctx:
        assert open_(b, other) == b"data"
    else:
        with pytest.raises(blobfmt.BadCiphertext):
            open_(b, other)


def test_truncated_and_wrong_material() -> None:
    b = blobfmt.seal(KEY_ID, MATERIAL_ID, MATERIAL, b"data", None)
    for cut in (0, 10, blobfmt.HEADER, len(b) - 1):
        with pytest.raises((blobfmt.BadCiphertext, ValueError)):
            open_(b[:cut], None)
    with pytest.raises(blobfmt.BadCiphertext):
        blobfmt.open_blob(blobfmt.parse_header(b), b, os.urandom(32), None)


def test_wrapping_binds_key_and_material_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = KeyWrapper(FileRootKeySource(tmp_path / "root.key").load())
    wrapped = w.wrap(KEY_ID, MATERIAL_ID, MATERIAL)
    assert MATERIAL not in wrapped
    assert w.unwrap(KEY_ID, MATERIAL_ID, wrapped) == MATERIAL
    with pytest.raises(RootKeyError):
        w.unwrap(str(uuid.uuid4()), MATERIAL_ID, wrapped)  # moved to another key's row
    with pytest.raises(RootKeyError):
        KeyWrapper(os.urandom(32)).unwrap(KEY_ID, MATERIAL_ID, wrapped)


def test_root_key_file_refuses_wrong_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "root.key"
    p.write_bytes(b"short")
    with pytest.raises(RootKeyError):
        FileRootKeySource(p).load()
