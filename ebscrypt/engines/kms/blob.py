"""Self-describing symmetric ciphertext blobs.

Layout (all fixed size before the ciphertext)::

    version (1 byte, 0x01) | key id (16 bytes, UUID) | material id (16 bytes) |
    nonce (12 bytes) | AES-256-GCM ciphertext || tag (16 bytes)

The associated data is the 45-byte header followed by the canonical encryption context
(JSON, keys sorted, no spaces; empty when there is none): changing any header byte, the
ciphertext, or the context makes decryption fail with one opaque error.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ebscrypt.jsonenc import compact_encoder

VERSION = 1
HEADER = 1 + 16 + 16 + 12
TAG = 16


class BadCiphertext(ValueError):
    """The blob is malformed, tampered, or bound to another context/key (opaque on purpose)."""


@dataclass(frozen=True)
class BlobHeader:
    key_id: str
    material_id: str
    raw: bytes  # the header bytes (part of the AAD)


# What ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes,
# with the encoder built once (issue 15: every data-key call encodes its context).
_canonical = compact_encoder(sort_keys=True, ensure_ascii=False)


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    if not context:
        return b""
    return _canonical(dict(context)).encode()


def _uuid_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw))`` without the UUID object."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_header(blob: bytes) -> BlobHeader:
    if len(blob) < HEADER + TAG or blob[0] != VERSION:
        raise BadCiphertext()
    return BlobHeader(
        key_id=_uuid_text(blob[1:17]),
        material_id=blob[17:33].hex(),
        raw=blob[:HEADER],
    )


def material_id_of(blob: bytes | bytearray) -> str | None:
    """The backing material id a blob's header names (what ``parse_header`` would read),
    None when it is not a blob of this format; nothing else is parsed."""
    if len(blob) < HEADER + TAG or blob[0] != VERSION:
        return None
    return blob[17:33].hex()


@functools.lru_cache(maxsize=4096)
def _header_prefix(key_id: str, material_id: str) -> bytes:
    """The header before its nonce (version, key id, material id), per key material."""
    return bytes([VERSION]) + uuid.UUID(key_id).bytes + bytes.fromhex(material_id)


def seal(key_id: str, material_id: str, material: bytes, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
    nonce = os.urandom(12)
    header = _header_prefix(key_id, material_id) + nonce
    return header + AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))


def open_blob(header: BlobHeader, blob: bytes, material: bytes, context: Mapping[str, str] | None) -> bytes:
    nonce = header.raw[33:45]
    try:
        return AESGCM(material).decrypt(nonce, blob[HEADER:], header.raw + canonical_context(context))
    except (InvalidTag, ValueError):
        raise BadCiphertext() from None
