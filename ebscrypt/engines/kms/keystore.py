"""The root of trust: the key store that wraps and unwraps KMS key material at rest.

Every KMS key's material is stored only wrapped, with ``"<key id>/<material id>"`` bound
to it, so a wrapped blob moved to another key's row does not unwrap. *Who* wraps is a
:class:`KeyStore`, named by ``ebscrypt serve --key-store``:

* ``file:PATH`` (the embedded default, ``<data_dir>/root.key``): a 32-byte AES-256 root key
  in a file (mode 0600, checked at start), optionally sealed by a passphrase (scrypt;
  ``?passphrase-env=VAR`` or ``?passphrase-file=PATH``, never on the command line). The
  wrapping is AES-256-GCM in this process (:class:`KeyWrapper`).
* ``pkcs11:token=…;object=…?module-path=…&pin-source=file:…`` (RFC 7512): root keys made
  inside a PKCS#11 token and never leaving it; the token wraps and unwraps
  (:mod:`.pkcs11_store`).

The store gives no key bytes out: the seam is ``wrap(key_id, material_id, material) ->
(ref, blob)`` and ``unwrap(key_id, material_id, blob, ref)``. ``ref`` names the root key
that wrapped a row (``file:kid=<fingerprint>`` or ``pkcs11:token=…;object=…;id=…``) and is
stored beside the blob (``kms_key_material.wrapped_by``), so rows of several stores or root
keys coexist while ``ebscrypt keystore migrate``/``rotate`` move them one at a time. A blob
starts with a header naming its mechanism::

    "EKW" | version (1) | mechanism (1) | mechanism body

Rows written before key stores existed have ``wrapped_by`` NULL and no header (``nonce ||
AES-256-GCM``): the file store reads them as before.
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.parse
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

ROOT_KEY_BYTES = 32
_NONCE = 12
WRAP_MAGIC = b"EKW"
WRAP_VERSION = 1


class Mechanism(IntEnum):
    """How a blob was wrapped (its header's mechanism byte)."""

    FILE_AES_GCM = 1  # AES-256-GCM in process under a file root key: nonce || ct || tag
    PKCS11_AES_GCM = 2  # CKM_AES_GCM by the token, AAD bound: iv || ct || tag
    PKCS11_AES_KEY_WRAP_PAD = 3  # CKM_AES_KEY_WRAP_PAD by the token (RFC 5649), AAD digest inside


class RootKeyError(RuntimeError):
    """A key store cannot be used as configured (missing, wrong PIN or passphrase, bad
    file mode), or a blob does not unwrap under it. Not retryable."""


class KeyStoreUnavailable(RuntimeError):
    """The key store cannot be reached right now (token removed, session lost, PIN changed
    under a running server). Retryable: the next call reconnects."""


def material_aad(key_id: str, material_id: str) -> bytes:
    """What a wrapped blob is bound to: the row it belongs to."""
    return f"ebscrypt-kms-material:{key_id}/{material_id}".encode()


def wrap_header(mechanism: Mechanism) -> bytes:
    return WRAP_MAGIC + bytes((WRAP_VERSION, int(mechanism)))


def split_header(blob: bytes) -> tuple[Mechanism, bytes]:
    """(mechanism, body) of a headed blob."""
    if len(blob) < 5 or blob[:3] != WRAP_MAGIC or blob[3] != WRAP_VERSION:
        raise RootKeyError("wrapped key material has no ebscrypt key-store header")
    try:
        return Mechanism(blob[4]), blob[5:]
    except ValueError:
        raise RootKeyError(f"wrapped key material names an unknown mechanism {blob[4]}") from None


class KeyStore(Protocol):
    """A root of trust. ``uri`` names it (never with a secret); ``current_ref`` is the root
    key new material is wrapped under; ``holds(ref)`` says whether it can unwrap rows of
    ``ref`` (None: rows from before key stores)."""

    uri: str
    kind: str  # "file" | "pkcs11"

    def current_ref(self) -> str: ...

    def holds(self, ref: str | None) -> bool: ...

    def wrap(self, key_id: str, material_id: str, material: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, key_id: str, material_id: str, wrapped: bytes, ref: str | None) -> bytes: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------- file store


class KeyWrapper:
    """AES-256-GCM under a root key held in this process (the file store's mechanism)."""

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != ROOT_KEY_BYTES:
            raise RootKeyError("the root key must be 32 bytes")
        self._aead = AESGCM(root_key)

    @staticmethod
    def _aad(key_id: str, material_id: str) -> bytes:
        return material_aad(key_id, material_id)

    def wrap(self, key_id: str, material_id: str, material: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, material, self._aad(key_id, material_id))

    def unwrap(self, key_id: str, material_id: str, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], self._aad(key_id, material_id))
        except (InvalidTag, ValueError):
            raise RootKeyError(f"key material of {key_id} does not unwrap under this root key") from None


# A passphrase-sealed root key file: magic | log2(N) | r | p | salt (16) | nonce (12) |
# AES-256-GCM(scrypt(passphrase), root key) with the magic and parameters as AAD.
_SEALED_MAGIC = b"ERK1"
_SCRYPT = (15, 8, 1)  # N = 2**15, r = 8, p = 1: 32 MiB, ~0.1 s once per start
_SEALED_LEN = 4 + 3 + 16 + _NONCE + ROOT_KEY_BYTES + 16


def _scrypt_key(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log_n, r=r, p=p).derive(passphrase)


def seal_root_key(root_key: bytes, passphrase: bytes) -> bytes:
    log_n, r, p = _SCRYPT
    salt, nonce = os.urandom(16), os.urandom(_NONCE)
    head = _SEALED_MAGIC + bytes((log_n, r, p))
    ct = AESGCM(_scrypt_key(passphrase, salt, log_n, r, p)).encrypt(nonce, root_key, head)
    return head + salt + nonce + ct


def unseal_root_key(data: bytes, passphrase: bytes, path: Path) -> bytes:
    log_n, r, p = data[4], data[5], data[6]
    if not (10 <= log_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise RootKeyError(f"root key file {path} has unusable scrypt parameters")
    salt, nonce, ct = data[7:23], data[23:35], data[35:]
    try:
        return AESGCM(_scrypt_key(passphrase, salt, log_n, r, p)).decrypt(nonce, ct, data[:7])
    except InvalidTag:
        raise RootKeyError(f"wrong passphrase for root key file {path}") from None


class FileRootKeySource:
    """A root key kept in a file, created (0600, never overwritten) on first use; sealed by
    ``passphrase`` when one is given. ``load()`` refuses a file group or others can read."""

    def __init__(self, path: Path, passphrase: bytes | None = None, *, create: bool = True) -> None:
        self.path = Path(path)
        self.passphrase = passphrase
        self.create = create

    def load(self) -> bytes:
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                try:
                    key = os.urandom(ROOT_KEY_BYTES)
                    os.write(fd, seal_root_key(key, self.passphrase) if self.passphrase else key)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        try:
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except FileNotFoundError:
            raise RootKeyError(f"root key file {self.path} does not exist") from None
        if mode & 0o077:
            raise RootKeyError(
                f"root key file {self.path} has mode {mode:04o}: group or others may read it; "
                f"run: chmod 600 {self.path}"
            )
        data = self.path.read_bytes()
        if data[:4] == _SEALED_MAGIC and len(data) == _SEALED_LEN:
            if not self.passphrase:
                raise RootKeyError(
                    f"root key file {self.path} is sealed by a passphrase: give it with "
                    "?passphrase-env=VAR or ?passphrase-file=PATH in --key-store"
                )
            return unseal_root_key(data, self.passphrase, self.path)
        if len(data) != ROOT_KEY_BYTES:
            raise RootKeyError(
                f"root key file {self.path} holds {len(data)} bytes, expected {ROOT_KEY_BYTES}"
            )
        if self.passphrase:
            raise RootKeyError(
                f"root key file {self.path} is not sealed by a passphrase (a passphrase was given); "
                "`ebscrypt keystore migrate --to 'file:NEW?passphrase-env=VAR'` makes a sealed one"
            )
        return data


def file_ref(root_key: bytes) -> str:
    """A file root key's name in ``wrapped_by``: a fingerprint (SHA-256 of a domain string
    and the key; reveals nothing of a 256-bit key)."""
    return "file:kid=" + hashlib.sha256(b"ebscrypt-root-key-id\0" + root_key).hexdigest()[:16]


class FileKeyStore:
    """Root key in a file; wraps in process (AES-256-GCM)."""

    kind = "file"

    def __init__(self, path: Path, passphrase: bytes | None = None, *, create: bool = True) -> None:
        self.path = Path(path)
        self.uri = f"file:{self.path}"
        key = FileRootKeySource(self.path, passphrase, create=create).load()
        self._wrapper = KeyWrapper(key)
        self._ref = file_ref(key)

    def current_ref(self) -> str:
        return self._ref

    def holds(self, ref: str | None) -> bool:
        # Rows from before key stores (None) were wrapped by the file store.
        return ref is None or ref == self._ref

    def wrap(self, key_id: str, material_id: str, material: bytes) -> tuple[str, bytes]:
        return self._ref, wrap_header(Mechanism.FILE_AES_GCM) + self._wrapper.wrap(key_id, material_id, material)

    def unwrap(self, key_id: str, material_id: str, wrapped: bytes, ref: str | None) -> bytes:
        if ref is None:  # the format from before key stores: nonce || AES-GCM, no header
            return self._wrapper.unwrap(key_id, material_id, wrapped)
        if ref != self._ref:
            raise RootKeyError(f"key material of {key_id} is wrapped by {ref}, not by {self.uri}")
        mechanism, body = split_header(wrapped)
        if mechanism is not Mechanism.FILE_AES_GCM:
            raise RootKeyError(f"key material of {key_id} was wrapped by {mechanism.name}, not a file key store")
        return self._wrapper.unwrap(key_id, material_id, body)

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------- opening


def _file_passphrase(query: dict[str, list[str]]) -> bytes | None:
    if "passphrase-env" in query:
        name = query["passphrase-env"][0]
        value = os.environ.get(name)
        if not value:
            raise RootKeyError(f"the key store passphrase variable {name} is not set")
        return value.encode()
    if "passphrase-file" in query:
        p = Path(query["passphrase-file"][0])
        try:
            value = p.read_text().rstrip("\r\n")
        except OSError as exc:
            raise RootKeyError(f"cannot read the key store passphrase file {p}: {exc.strerror}") from None
        if not value:
            raise RootKeyError(f"the key store passphrase file {p} is empty")
        return value.encode()
    return None


def default_key_store_uri(data_dir: Path) -> str:
    return f"file:{Path(data_dir) / 'root.key'}"


def open_key_store(uri: str | None, data_dir: Path, *, create: bool = True) -> KeyStore:
    """The key store ``uri`` names (None: ``file:<data_dir>/root.key``). ``create``: a
    missing root key file is made (PKCS#11 root objects are made only by ``keystore init``).
    Raises :class:`RootKeyError` with the reason when it cannot be used."""
    if not uri:
        uri = default_key_store_uri(data_dir)
    if uri.startswith("file:"):
        path_text, _, query_text = uri[len("file:"):].partition("?")
        query = urllib.parse.parse_qs(query_text, keep_blank_values=True)
        unknown = set(query) - {"passphrase-env", "passphrase-file"}
        if unknown:
            raise RootKeyError(f"unknown file key store option(s): {', '.join(sorted(unknown))}")
        path = Path(urllib.parse.unquote(path_text)) if path_text else Path(data_dir) / "root.key"
        return FileKeyStore(path, _file_passphrase(query), create=create)
    if uri.startswith("pkcs11:"):
        from ebscrypt.engines.kms.pkcs11_store import Pkcs11KeyStore

        return Pkcs11KeyStore(uri)
    raise RootKeyError(f"--key-store must be file:PATH or a pkcs11: URI (RFC 7512), not {uri!r}")
