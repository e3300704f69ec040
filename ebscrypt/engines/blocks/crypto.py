"""Block object format and crypto: AES-256-GCM per block, bound to the object's identity.

Stored object layout (format version 2; version 1 objects are still read)::

    b"EBSB" | version (1 byte) | mode (1 byte) | body
    mode 1 (AES-256-GCM): body = nonce (12) | ciphertext (524288) | tag (16)
    mode 0 (plain):       body = data (524288), checked against the SHA-256 in metadata

Associated data of a version 2 object::

    b"EBSB" | 2 | 1 | len(key id) (2, BE) | key id | len(identity) (2, BE) | identity | index (8, BE)

The *identity* is the object's key in the object store (unique per write, never reused,
kept by compaction and sharing). Binding it makes every stored object readable only as
itself: a block moved to another index, another resource's key, or over another object
of the same data key — e.g. a parent snapshot's older block copied over its child's, the
two sharing one data key — truncated or altered fails with one opaque
:class:`BlockIntegrityError`, never wrong bytes.

Version 1 objects (written before identities were bound) bind only the key id and the
index. They are still opened, and then — like plain objects — checked against the
block's SHA-256 recorded (sealed) in metadata, which is what detects substituting one of
them (or a version 2 object replaced by an older version 1 one) within a lineage. A
re-encrypting copy rewrites every object as version 2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebscrypt.engines.blocks.errors import BlockIntegrityError

BLOCK_SIZE = 524288
MAGIC = b"EBSB"
VERSION = 2  # written; LEGACY_VERSION objects are still read
LEGACY_VERSION = 1
MODE_PLAIN = 0
MODE_GCM = 1
HEADER = 6
NONCE = 12
TAG = 16
GCM_OBJECT_SIZE = HEADER + NONCE + BLOCK_SIZE + TAG
PLAIN_OBJECT_SIZE = HEADER + BLOCK_SIZE
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_CHECKSUM = base64.b64encode(hashlib.sha256(ZERO_BLOCK).digest()).decode()
_SEALED_PREFIX = "e1:"


@dataclass(frozen=True)
class DataKey:
    """A resource's plaintext data key, in memory only. ``key_id`` is its stable id."""

    key_id: str
    plaintext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.plaintext) != 32:
            raise ValueError("a data key is 32 bytes (AES-256)")
        if not self.key_id:
            raise ValueError("a data key needs a key_id")


def block_aad(key_id: str, identity: str, index: int) -> bytes:
    """The associated data of a version 2 object (see the module docstring)."""
    kid, ident = key_id.encode(), identity.encode()
    return (
        MAGIC + bytes([VERSION, MODE_GCM]) + struct.pack(">H", len(kid)) + kid
        + struct.pack(">H", len(ident)) + ident + struct.pack(">Q", index)
    )


def legacy_block_aad(key_id: str, index: int) -> bytes:
    """The associated data of a version 1 object: key id and index only."""
    kid = key_id.encode()
    return MAGIC + bytes([LEGACY_VERSION, MODE_GCM]) + struct.pack(">H", len(kid)) + kid + struct.pack(">Q", index)


def checksum_aad(key_id: str, index: int) -> bytes:
    # (unchanged since format 1: sealed checksums in metadata stay readable)
    return b"ebscrypt-checksum-v1" + legacy_block_aad(key_id, index)


def sha256_b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class BlockCipher:
    """Seals and opens block objects for one data key (or none), reusing its buffers.

    Not thread-safe (the buffers are shared): one per thread or worker process.
    """

    def __init__(self, key: DataKey | None, *, obj_buf: bytearray | None = None, plain_buf: bytearray | None = None) -> None:
        """``obj_buf`` (GCM_OBJECT_SIZE bytes) / ``plain_buf`` (BLOCK_SIZE): buffers to reuse
        across ciphers (worker processes keep buffers, not keys, between batches)."""
        self.key = key
        self._aead = AESGCM(key.plaintext) if key is not None else None
        size = GCM_OBJECT_SIZE if key is not None else PLAIN_OBJECT_SIZE
        self._obj = obj_buf if obj_buf is not None and len(obj_buf) == size else bytearray(size)
        self._plain = plain_buf if plain_buf is not None and len(plain_buf) == BLOCK_SIZE else bytearray(BLOCK_SIZE)

    # -- sealing ------------------------------------------------------------------------

    def seal(self, identity: str, index: int, data: bytes | bytearray | memoryview) -> memoryview:
        """The stored object for ``data`` at ``index``, to be stored under the key
        ``identity`` and nowhere else (a view of an internal buffer)."""
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes")
        _check_identity(identity)
        obj = self._obj
        view = memoryview(obj)
        if self._aead is None:
            obj[0:HEADER] = MAGIC + bytes([VERSION, MODE_PLAIN])
            view[HEADER:] = data
            return view
        assert self.key is not None
        nonce = os.urandom(NONCE)
        obj[0:HEADER] = MAGIC + bytes([VERSION, MODE_GCM])
        obj[HEADER : HEADER + NONCE] = nonce
        self._aead.encrypt_into(nonce, data, block_aad(self.key.key_id, identity, index), view[HEADER + NONCE :])
        return view

    def open(self, identity: str, index: int, obj: bytes | bytearray | memoryview, checksum: str) -> memoryview:
        """The plaintext of the object stored under ``identity`` (a view of an internal buffer).

        ``checksum``: the block's base64 SHA-256 as recorded in metadata (opened with
        :meth:`open_checksum` when sealed). Verified where the object's format does not
        bind its identity: plain and version 1 objects.
        """
        _check_identity(identity)
        view = memoryview(obj)
        if len(view) < HEADER or bytes(view[:4]) != MAGIC or view[4] not in (VERSION, LEGACY_VERSION):
            raise BlockIntegrityError()
        version, mode = view[4], view[5]
        if self._aead is None:
            if mode != MODE_PLAIN or len(view) != PLAIN_OBJECT_SIZE:
                raise BlockIntegrityError()
            body = view[HEADER:]
            if not hmac.compare_digest(sha256_b64(body), checksum):
                raise BlockIntegrityError()
            return body
        assert self.key is not None
        if mode != MODE_GCM or len(view) != GCM_OBJECT_SIZE:
            raise BlockIntegrityError()
        nonce = bytes(view[HEADER : HEADER + NONCE])
        if version == VERSION:
            aad = block_aad(self.key.key_id, identity, index)
        else:
            aad = legacy_block_aad(self.key.key_id, index)
        try:
            self._aead.decrypt_into(nonce, view[HEADER + NONCE :], aad, self._plain)
        except InvalidTag:
            raise BlockIntegrityError() from None
        if version == LEGACY_VERSION and not hmac.compare_digest(sha256_b64(self._plain), checksum):
            raise BlockIntegrityError()
        return memoryview(self._plain)

    # -- checksums ----------------------------------------------------------------------

    def seal_checksum(self, index: int, checksum_b64: str) -> str:
        """The checksum as stored in metadata: sealed under the data key when encrypted."""
        if self._aead is None:
            return checksum_b64
        assert self.key is not None
        nonce = os.urandom(NONCE)
        ct = self._aead.encrypt(nonce, base64.b64decode(checksum_b64), checksum_aad(self.key.key_id, index))
        return _SEALED_PREFIX + base64.b64encode(nonce + ct).decode()

    def open_checksum(self, index: int, stored: str) -> str:
        if not stored.startswith(_SEALED_PREFIX):
            if self._aead is not None:
                raise BlockIntegrityError()
            return stored
        if self._aead is None:
            raise BlockIntegrityError()
        assert self.key is not None
        raw = base64.b64decode(stored[len(_SEALED_PREFIX) :])
        try:
            digest = self._aead.decrypt(raw[:NONCE], raw[NONCE:], checksum_aad(self.key.key_id, index))
        except InvalidTag:
            raise BlockIntegrityError() from None
        return base64.b64encode(digest).decode()


def _check_identity(identity: str) -> None:
    if not isinstance(identity, str) or not identity or len(identity.encode()) > 0xFFFF:
        raise ValueError("a block object needs its identity (its object key)")

