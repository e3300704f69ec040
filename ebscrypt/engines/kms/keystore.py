"""The root key and wrapping of key material at rest.

Every KMS key's material is stored only wrapped: ``nonce || AES-256-GCM(root, material)``
with ``"<key id>/<material id>"`` bound as associated data, so a wrapped blob moved to
another key's row does not unwrap. The root key comes from a :class:`RootKeySource`; the
default is a 32-byte file ``<data_dir>/root.key`` created on first start with mode 0600
(an HSM-backed source can implement the same protocol).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT_KEY_BYTES = 32
_NONCE = 12


class RootKeyError(RuntimeError):
    """The root key cannot be loaded (wrong size, unreadable) or a blob does not unwrap."""


class RootKeySource(Protocol):
    """Where the root key comes from. ``load()`` returns the 32-byte AES-256 root key."""

    def load(self) -> bytes: ...


class FileRootKeySource:
    """A root key kept in a file, created (0600, never overwritten) on first use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> bytes:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, os.urandom(ROOT_KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        data = self.path.read_bytes()
        if len(data) != ROOT_KEY_BYTES:
            raise RootKeyError(
                f"root key file {self.path} holds {len(data)} bytes, expected {ROOT_KEY_BYTES}"
            )
        return data


class KeyWrapper:
    """Wraps and unwraps key material under the root key."""

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != ROOT_KEY_BYTES:
            raise RootKeyError("the root key must be 32 bytes")
        self._aead = AESGCM(root_key)

    @staticmethod
    def _aad(key_id: str, material_id: str) -> bytes:
        return f"ebscrypt-kms-material:{key_id}/{material_id}".encode()

    def wrap(self, key_id: str, material_id: str, material: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, material, self._aad(key_id, material_id))

    def unwrap(self, key_id: str, material_id: str, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], self._aad(key_id, material_id))
        except (InvalidTag, ValueError):
            raise RootKeyError(f"key material of {key_id} does not unwrap under this root key") from None
