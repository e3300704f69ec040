"""Block object format and crypto: AES-256-GCM per block, bound to the object's identity.

Stored object layout (format version 3 is written; versions 1 and 2 are still read)::

    version 3, sector-granular (a 512 KiB block as SECTORS independently checked sectors):
      header = b"EBSB" | 3 | mode (1 byte) | log2(sector size) (1 byte) | 0
      mode 1 (AES-256-GCM): header | salt (16) | per sector: ciphertext (sector size) | tag (16)
      mode 0 (plain):       header | BLAKE3-256 of each sector (32 each) | data (524288)
    version 2 (and 1), whole-block:
      b"EBSB" | version (1 byte) | mode (1 byte) | body
      mode 1 (AES-256-GCM): body = nonce (12) | ciphertext (524288) | tag (16)
      mode 0 (plain):       body = data (524288), checked against the SHA-256 in metadata

Why sectors: an attached volume's small random read that misses its cache must not read
and authenticate a whole 512 KiB block (one GCM tag, or the SHA-256 of a plain block,
covers all of it): with version 3, reading 4 KiB reads and checks one sector
(:meth:`BlockCipher.sector_reader`). SECTOR_SIZE is 16 KiB: per-sector calls cost little
more than one whole-block call at that size (AES-GCM of 512 KiB in 32 sectors ~1.5x one
call, in 128 4 KiB sectors ~4.4x; bench/README.md, area F), and a 4 KiB read opens 16 KiB.

Nonces of version 3 (encrypted): each object has its own AES-256 subkey, HKDF-SHA256
(``cryptography``'s) of the data key with a fresh random 16-byte salt stored in the
object and info binding the key id, the object's identity and the block index; the
nonce of sector *i* is *i* (96 bits, big-endian). A (subkey, nonce) pair is thus never
used twice: the identity is unique per write, and the random salt keeps subkeys apart
even if an identity were ever reused (2^-64 odds at 2^32 objects), whereas a random
96-bit nonce per sector would reach GCM's random-nonce limit (2^32 messages per key)
within 64 TiB written under one data key. The associated data of sector *i*::

    header (8) | salt (16) | len(key id) (2, BE) | key id | len(identity) (2, BE) | identity
      | block index (8, BE) | i (4, BE)

so a sector moved to another index of its object, to another object (other subkey), a
flipped header byte or a truncated object fail. Plain version 3 objects have no key: the
entry's checksum in metadata records both the block's SHA-256 and the SHA-256 of the
object's header and sector table (``t1:<block>:<table>``, see :func:`plain_entry_checksum`);
a read checks the table against metadata, then each sector it reads against the table —
a whole read too, so no SHA-256 of the 512 KiB: the table holds BLAKE3 digests (the
``blake3`` package, Rust with SIMD: 16 KiB sectors hash ~2.8x faster than with
SHA-256 even with the CPU's SHA instructions; bench/README.md, area F). A plain object
recorded with the bare SHA-256 (a re-encrypting copy to a plain owner records that) is
read whole and checked against it.

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
them (or a newer object replaced by an older version 1 one) within a lineage. A
re-encrypting copy rewrites every object in the current version. Objects of versions 1
and 2 have no sectors: a ranged read of one reads and checks the whole block.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Callable

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebscrypt.engines.blocks.errors import BlockIntegrityError

BLOCK_SIZE = 524288
MAGIC = b"EBSB"
VERSION = 3  # written; versions 1 and 2 (whole-block) are still read
WHOLE_VERSION = 2
LEGACY_VERSION = 1
MODE_PLAIN = 0
MODE_GCM = 1
HEADER = 6  # versions 1 and 2
NONCE = 12
TAG = 16
# Version 1/2 object sizes (still read).
WHOLE_GCM_OBJECT_SIZE = HEADER + NONCE + BLOCK_SIZE + TAG
WHOLE_PLAIN_OBJECT_SIZE = HEADER + BLOCK_SIZE

SECTOR_SHIFT = 14  # 16 KiB sectors are written (see the module docstring for the choice)
SECTOR_SIZE = 1 << SECTOR_SHIFT
MIN_SECTOR_SHIFT, MAX_SECTOR_SHIFT = 12, 19  # what a version 3 header may say (4 KiB .. 512 KiB)
HEADER3 = 8
SALT = 16
DIGEST = 32
GCM_PREFIX = HEADER3 + SALT  # what a sector read of an encrypted object reads first
_INFO = b"ebscrypt block sector key v3"
# Per-sector nonces and associated-data suffixes, made once (a whole block has up to 128).
_NONCES = [i.to_bytes(NONCE, "big") for i in range(1 << (19 - 12))]
_SECTOR_IDS = [struct.pack(">I", i) for i in range(1 << (19 - 12))]
_SECTOR_BOUNDS: dict[int, list[tuple[int, int]]] = {}


def _sector_bounds(shift: int) -> list[tuple[int, int]]:
    """(start, end) of each sector of a block at this sector size (made once per size)."""
    bounds = _SECTOR_BOUNDS.get(shift)
    if bounds is None:
        size = 1 << shift
        bounds = _SECTOR_BOUNDS[shift] = [(at, at + size) for at in range(0, BLOCK_SIZE, size)]
    return bounds


def gcm_object_size(shift: int = SECTOR_SHIFT) -> int:
    """The size of a version 3 encrypted object with sectors of ``1 << shift`` bytes."""
    return GCM_PREFIX + (BLOCK_SIZE >> shift) * ((1 << shift) + TAG)


def plain_prefix_size(shift: int = SECTOR_SHIFT) -> int:
    """Header and sector table of a version 3 plain object (what a sector read reads first)."""
    return HEADER3 + (BLOCK_SIZE >> shift) * DIGEST


GCM_OBJECT_SIZE = gcm_object_size()  # as written now
PLAIN_OBJECT_SIZE = plain_prefix_size() + BLOCK_SIZE
# The largest object of any version: a read buffer one byte longer shows a too-long object.
MAX_OBJECT_SIZE = max(gcm_object_size(MIN_SECTOR_SHIFT), plain_prefix_size(MIN_SECTOR_SHIFT) + BLOCK_SIZE,
                      WHOLE_GCM_OBJECT_SIZE)
ZERO_BLOCK = bytes(BLOCK_SIZE)
ZERO_CHECKSUM = base64.b64encode(hashlib.sha256(ZERO_BLOCK).digest()).decode()


def is_zero_block(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is ZERO_BLOCK. A memoryview compared with bytes goes item by item
    (3.7 ms for 512 KiB of zeros, so for any block that begins with many zeros); bytes
    and bytearrays compare with memcmp: a view is copied first (~0.05 ms), and only when
    its first bytes are zeros."""
    if isinstance(data, memoryview):
        return len(data) == BLOCK_SIZE and data[:8] == ZERO_BLOCK[:8] and bytes(data) == ZERO_BLOCK
    return data == ZERO_BLOCK
# The block checksum of an entry written without it (an attached volume's evicted or
# merged block, BlockEngine.stage_blocks: hashing every block cost ~18% of its sequential
# writes): recorded as the empty string — sealed like any checksum when encrypted, and
# ``t1::<table digest>`` when plain, so the sector table stays bound. A format 3 object
# is never checked with it; whoever shows or carries a block's SHA-256 computes it from
# the bytes (GetSnapshotBlock always does; BlockEngine._plain_checksums, reencrypt).
# Objects of versions 1 and 2, which are checked against it, always have it: an entry
# claiming it lazily for one fails the check (BlockIntegrityError), never reads.
LAZY_CHECKSUM = ""
_SEALED_PREFIX = "e1:"
_TABLE_PREFIX = "t1:"


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
    return MAGIC + bytes([WHOLE_VERSION, MODE_GCM]) + _binding(key_id, identity, index)


def _binding(key_id: str, identity: str, index: int) -> bytes:
    kid, ident = key_id.encode(), identity.encode()
    return struct.pack(">H", len(kid)) + kid + struct.pack(">H", len(ident)) + ident + struct.pack(">Q", index)


def legacy_block_aad(key_id: str, index: int) -> bytes:
    """The associated data of a version 1 object: key id and index only."""
    kid = key_id.encode()
    return MAGIC + bytes([LEGACY_VERSION, MODE_GCM]) + struct.pack(">H", len(kid)) + kid + struct.pack(">Q", index)


def checksum_aad(key_id: str, index: int) -> bytes:
    # (unchanged since format 1: sealed checksums in metadata stay readable)
    return b"ebscrypt-checksum-v1" + legacy_block_aad(key_id, index)


def sector_subkey(key: DataKey, salt: bytes, identity: str, index: int) -> bytes:
    """A version 3 object's AES-256 key: HKDF-SHA256 of the data key, salted with the
    object's random salt, bound to its key id, identity and block index."""
    return HKDF(hashes.SHA256(), 32, salt, _INFO + _binding(key.key_id, identity, index)).derive(key.plaintext)


def sha256_b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def plain_entry_checksum(block_checksum: str, table_digest: bytes) -> str:
    """The checksum recorded in metadata for a version 3 plain object: the block's base64
    SHA-256 (what the EBS APIs and listings show) and the digest of its sector table."""
    return f"{_TABLE_PREFIX}{block_checksum}:{base64.b64encode(table_digest).decode()}"


def split_plain_checksum(stored: str) -> tuple[str, bytes | None]:
    """(the block's base64 SHA-256, the table digest or None) of a plain entry's checksum."""
    if not stored.startswith(_TABLE_PREFIX):
        return stored, None
    block, _, table = stored[len(_TABLE_PREFIX):].partition(":")
    try:
        return block, base64.b64decode(table, validate=True)
    except ValueError:
        raise BlockIntegrityError() from None


def sector_span(encrypted: bool, shift: int, offset: int, length: int) -> tuple[int, int]:
    """(offset, length) in a version 3 object (encrypted or plain, sectors of
    ``1 << shift`` bytes) of the sectors covering [offset, offset+length) of its block."""
    first, last = _sectors(offset, length, shift)
    data_at = GCM_PREFIX if encrypted else plain_prefix_size(shift)
    stride = (1 << shift) + (TAG if encrypted else 0)
    return data_at + first * stride, (last - first + 1) * stride


def _sectors(offset: int, length: int, shift: int) -> tuple[int, int]:
    """First and last sector covering [offset, offset+length) of a block (length > 0)."""
    if offset < 0 or length <= 0 or offset + length > BLOCK_SIZE:
        raise ValueError(f"a range within one block of {BLOCK_SIZE} bytes, got {offset}+{length}")
    return offset >> shift, (offset + length - 1) >> shift


class SectorReader:
    """What a sector read of one version 3 object needs, from its verified header:
    :meth:`span` says which bytes of the object to read, :meth:`open` checks (and
    decrypts) them. Made by :meth:`BlockCipher.sector_reader`."""

    def __init__(self, shift: int, *, aead: AESGCM | None = None, aad_prefix: bytes = b"",
                 table: bytes = b"") -> None:
        self.shift = shift
        self._aead = aead
        self._aad = aad_prefix
        self._table = table
        self._stride = (1 << shift) + (TAG if aead is not None else 0)
        self._data_at = GCM_PREFIX if aead is not None else plain_prefix_size(shift)

    def span(self, offset: int, length: int) -> tuple[int, int]:
        """(offset, length) in the object of the sectors covering [offset, offset+length)
        of the block (:func:`sector_span`, its constants computed once: one per read)."""
        first, last = _sectors(offset, length, self.shift)
        return self._data_at + first * self._stride, (last - first + 1) * self._stride

    def open(self, raw: bytes | bytearray | memoryview, offset: int, length: int) -> bytes:
        """The block's bytes [offset, offset+length) from ``raw``, the object bytes
        :meth:`span` named (fewer, e.g. a truncated object: BlockIntegrityError)."""
        first, last = _sectors(offset, length, self.shift)
        size, stride = 1 << self.shift, self._stride
        view = memoryview(raw)
        if len(view) != (last - first + 1) * stride:
            raise BlockIntegrityError()
        skip = offset - (first << self.shift)
        if self._aead is not None:
            out = bytearray((last - first + 1) * size)
            try:
                for n, sector in enumerate(range(first, last + 1)):
                    self._aead.decrypt_into(_NONCES[sector], view[n * stride:(n + 1) * stride],
                                            self._aad + _SECTOR_IDS[sector], memoryview(out)[n * size:(n + 1) * size])
            except InvalidTag:
                raise BlockIntegrityError() from None
            return bytes(memoryview(out)[skip:skip + length])
        _check_sectors(self._table, first, view)
        return bytes(view[skip:skip + length])

    def read_into(self, read: Callable[[str, int, memoryview], bool], name: str, offset: int, dest: memoryview,
                  buf: memoryview) -> bool:
        """The block's bytes [offset, offset+len(dest)) of object ``name`` into ``dest``, in
        one pass: the covering sectors read by ``read(name, at, into)`` (False: not read
        — False here, nothing served) into ``buf`` (the caller's reused buffer; a new
        one if too small), checked — decrypted into ``buf`` after them — and the part
        asked for copied to ``dest``. The hot path of an attached volume's random small
        reads (:meth:`open` and :meth:`span` in one call). BlockIntegrityError as
        :meth:`open`."""
        length = len(dest)
        shift = self.shift
        if offset < 0 or length <= 0 or offset + length > BLOCK_SIZE:  # (_sectors, inline: once a read)
            raise ValueError(f"a range within one block of {BLOCK_SIZE} bytes, got {offset}+{length}")
        first, last = offset >> shift, (offset + length - 1) >> shift
        count, stride = last - first + 1, self._stride
        n = count * stride
        plain = (count << shift) if self._aead is not None else 0
        if len(buf) < n + plain:
            buf = memoryview(bytearray(n + plain))
        raw = buf[:n]
        if not read(name, self._data_at + first * stride, raw):
            return False
        skip = offset - (first << shift)
        if self._aead is None:
            if count == 1:  # (_check_sectors of one sector, inline: a random small read's case)
                if not hmac.compare_digest(blake3(raw).digest(), self._table[first * DIGEST:(first + 1) * DIGEST]):
                    raise BlockIntegrityError()
            else:
                _check_sectors(self._table, first, raw)
            dest[:] = raw[skip:skip + length]
            return True
        size = 1 << self.shift
        out = buf[n:n + plain]
        try:
            for k in range(count):
                self._aead.decrypt_into(_NONCES[first + k], raw[k * stride:(k + 1) * stride],
                                        self._aad + _SECTOR_IDS[first + k], out[k * size:(k + 1) * size])
        except InvalidTag:
            raise BlockIntegrityError() from None
        dest[:] = out[skip:skip + length]
        return True

    def aligned(self, offset: int, length: int) -> bool:
        """Whether [offset, offset+length) is whole sectors: a plain object's sectors are
        then the bytes asked for (read straight into the caller's buffer, checked there:
        :meth:`check_in_place`)."""
        mask = (1 << self.shift) - 1
        return not (offset & mask or length & mask)

    def check_in_place(self, offset: int, data: memoryview) -> None:
        """(A plain object) ``data``, the whole sectors from ``offset`` as read, against the
        checked table: BlockIntegrityError if any differs. The caller drops ``data``
        on an error (nothing of it is served)."""
        if self._aead is not None or not self.aligned(offset, len(data)):
            raise ValueError("whole sectors of a plain object")
        _check_sectors(self._table, offset >> self.shift, data)

    def open_into(self, raw: bytes | bytearray | memoryview, offset: int, length: int, dest: memoryview) -> None:
        """:meth:`open` into ``dest`` (``length`` bytes) without a buffer of its own where
        the range is whole sectors (an encrypted object's are decrypted straight into
        ``dest``). On BlockIntegrityError ``dest`` may hold unchecked bytes: the caller
        drops it."""
        first, last = _sectors(offset, length, self.shift)
        size, stride = 1 << self.shift, self._stride
        view = memoryview(raw)
        if len(view) != (last - first + 1) * stride or len(dest) != length:
            raise BlockIntegrityError()
        skip = offset - (first << self.shift)
        if self._aead is None:
            _check_sectors(self._table, first, view)
            dest[:] = view[skip:skip + length]
            return
        whole = self.aligned(offset, length)
        out = dest if whole else memoryview(bytearray((last - first + 1) * size))
        try:
            for n, sector in enumerate(range(first, last + 1)):
                self._aead.decrypt_into(_NONCES[sector], view[n * stride:(n + 1) * stride],
                                        self._aad + _SECTOR_IDS[sector], out[n * size:(n + 1) * size])
        except InvalidTag:
            raise BlockIntegrityError() from None
        if not whole:
            dest[:] = out[skip:skip + length]

    @property
    def plain(self) -> bool:
        return self._aead is None


class BlockCipher:
    """Seals and opens block objects for one data key (or none), reusing its buffers.

    Not thread-safe (the buffers are shared): one per thread or worker process.
    """

    def __init__(self, key: DataKey | None, *, obj_buf: bytearray | None = None, plain_buf: bytearray | None = None,
                 sector_shift: int = SECTOR_SHIFT) -> None:
        """``obj_buf`` (the object size) / ``plain_buf`` (BLOCK_SIZE): buffers to reuse
        across ciphers (worker processes keep buffers, not keys, between batches).
        ``sector_shift``: log2 of the sector size written (benchmarks try others)."""
        if not MIN_SECTOR_SHIFT <= sector_shift <= MAX_SECTOR_SHIFT:
            raise ValueError("sector size out of range")
        self.key = key
        self.sector_shift = sector_shift
        self._aead = AESGCM(key.plaintext) if key is not None else None
        size = gcm_object_size(sector_shift) if key is not None else plain_prefix_size(sector_shift) + BLOCK_SIZE
        self._size = size
        self._obj: bytearray | mmap.mmap = obj_buf if obj_buf is not None and len(obj_buf) == size else _page_aligned(size)
        self._plain = plain_buf if plain_buf is not None and len(plain_buf) == BLOCK_SIZE else bytearray(BLOCK_SIZE)
        self._table_digest = b""

    # -- sealing ------------------------------------------------------------------------

    def seal(self, identity: str, index: int, data: bytes | bytearray | memoryview) -> memoryview:
        """The stored object (version 3) for ``data`` at ``index``, to be stored under the
        key ``identity`` and nowhere else (a view of an internal buffer).

        A plain object's sector table is bound by the entry's checksum
        (:meth:`seal_block` gives it); recorded with the bare SHA-256 instead
        (:meth:`seal_checksum`), it is still read, whole (a sector read falls back to it).
        """
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes")
        _check_identity(identity)
        shift = self.sector_shift
        size, count = 1 << shift, BLOCK_SIZE >> shift
        header = MAGIC + bytes([VERSION, MODE_GCM if self._aead is not None else MODE_PLAIN, shift, 0])
        obj = self._obj
        view = memoryview(obj)
        src = memoryview(data)
        obj[0:HEADER3] = header
        if self._aead is None:
            at = self._plain_prefix(src, shift)
            view[at:at + BLOCK_SIZE] = src
            return view[:at + BLOCK_SIZE]
        assert self.key is not None
        salt = os.urandom(SALT)
        obj[HEADER3:GCM_PREFIX] = salt
        aead = AESGCM(sector_subkey(self.key, salt, identity, index))
        aad = header + salt + _binding(self.key.key_id, identity, index)
        stride, at = size + TAG, GCM_PREFIX
        for sector in range(count):
            aead.encrypt_into(_NONCES[sector], src[sector * size:(sector + 1) * size],
                              aad + _SECTOR_IDS[sector], view[at:at + stride])
            at += stride
        return view[:at]

    def _plain_prefix(self, src: memoryview, shift: int) -> int:
        """Fill a plain object's sector table (after its header, already in the buffer) for
        ``src``; note its digest; return where the data goes."""
        obj = self._obj
        # The digests joined and stored at once, over sector bounds made once per size: the
        # per-sector index arithmetic and slice stores were ~7% of this function's CPU
        # around 32 short hashes (bench/README.md W8).
        at = HEADER3 + (BLOCK_SIZE >> shift) * DIGEST
        obj[HEADER3:at] = b"".join([blake3(src[start:end]).digest() for start, end in _sector_bounds(shift)])
        self._table_digest = hashlib.sha256(memoryview(obj)[:at]).digest()
        return at

    def seal_block_parts(self, identity: str, index: int, data: bytes | bytearray | memoryview,
                         checksum: str) -> tuple[list[memoryview], str]:
        """:meth:`seal_block` as the pieces of the object to write one after the other
        (``os.writev``): a plain object's header and sector table, then ``data`` itself —
        not copied into the object buffer (a 512 KiB copy per block); an encrypted object
        whole. ``data`` must not change until the pieces are written."""
        if self._aead is not None:
            view, sealed = self.seal_block(identity, index, data, checksum)
            return [view], sealed
        if len(data) != BLOCK_SIZE:
            raise ValueError(f"a block is exactly {BLOCK_SIZE} bytes")
        _check_identity(identity)
        shift = self.sector_shift
        self._obj[0:HEADER3] = MAGIC + bytes([VERSION, MODE_PLAIN, shift, 0])
        at = self._plain_prefix(memoryview(data), shift)
        return [memoryview(self._obj)[:at], memoryview(data)], plain_entry_checksum(checksum, self._table_digest)

    def seal_block(self, identity: str, index: int, data: bytes | bytearray | memoryview,
                   checksum: str) -> tuple[memoryview, str]:
        """:meth:`seal`, and the entry's checksum as recorded in metadata (``checksum``:
        the block's base64 SHA-256): sealed under the data key when encrypted, with the
        digest of the sector table when plain."""
        view = self.seal(identity, index, data)
        if self._aead is None:
            return view, plain_entry_checksum(checksum, self._table_digest)
        return view, self.seal_checksum(index, checksum)

    # -- opening ------------------------------------------------------------------------

    def open(self, identity: str, index: int, obj: bytes | bytearray | memoryview, checksum: str) -> memoryview:
        """The plaintext of the object stored under ``identity`` (a view of an internal
        buffer, or of ``obj`` for a plain object).

        ``checksum``: for a plain block, the entry's checksum as stored; for an encrypted
        one, the block's base64 SHA-256 (:meth:`open_checksum` of the stored one), needed
        only by version 1 objects, which do not bind their identity.
        """
        _check_identity(identity)
        view = memoryview(obj)
        if len(view) < HEADER or bytes(view[:4]) != MAGIC or view[4] not in (VERSION, WHOLE_VERSION, LEGACY_VERSION):
            raise BlockIntegrityError()
        version, mode = view[4], view[5]
        if self._aead is None:
            if mode != MODE_PLAIN:
                raise BlockIntegrityError()
            block_sum, table_digest = split_plain_checksum(checksum)
            if version == VERSION:
                shift = _header_shift(view)
                prefix = plain_prefix_size(shift)
                if len(view) != prefix + BLOCK_SIZE:
                    raise BlockIntegrityError()
                body = view[prefix:]
                if table_digest is not None:  # the table as recorded, each sector as in the table
                    if not hmac.compare_digest(hashlib.sha256(view[:prefix]).digest(), table_digest):
                        raise BlockIntegrityError()
                    _check_sectors(view[HEADER3:prefix], 0, body)
                    return body
            else:
                if len(view) != WHOLE_PLAIN_OBJECT_SIZE:
                    raise BlockIntegrityError()
                body = view[HEADER:]
            if not hmac.compare_digest(sha256_b64(body), block_sum):
                raise BlockIntegrityError()
            return body
        assert self.key is not None
        if mode != MODE_GCM:
            raise BlockIntegrityError()
        if version == VERSION:
            shift = _header_shift(view)
            if len(view) != gcm_object_size(shift):
                raise BlockIntegrityError()
            reader = self._gcm_reader(identity, index, view[:GCM_PREFIX], shift)
            size, stride = 1 << shift, (1 << shift) + TAG
            plain = memoryview(self._plain)
            aead, aad = reader._aead, reader._aad
            assert aead is not None
            try:
                for sector in range(BLOCK_SIZE >> shift):
                    at = GCM_PREFIX + sector * stride
                    aead.decrypt_into(_NONCES[sector], view[at:at + stride],
                                      aad + _SECTOR_IDS[sector], plain[sector * size:(sector + 1) * size])
            except InvalidTag:
                raise BlockIntegrityError() from None
            return plain
        if len(view) != WHOLE_GCM_OBJECT_SIZE:
            raise BlockIntegrityError()
        nonce = bytes(view[HEADER : HEADER + NONCE])
        if version == WHOLE_VERSION:
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

    # -- sector reads -------------------------------------------------------------------

    @property
    def prefix_size(self) -> int:
        """How many bytes a sector read reads first (header, and a plain object's table,
        at the sector size written now): :meth:`sector_reader` asks for more if an
        object's sectors are smaller."""
        return GCM_PREFIX if self._aead is not None else plain_prefix_size(self.sector_shift)

    def sector_reader(self, identity: str, index: int, prefix: bytes | bytearray | memoryview,
                      checksum: str) -> SectorReader | int | None:
        """The reader of the object stored under ``identity`` from its first bytes
        (``prefix``; ``checksum``: the entry's checksum as stored).

        None: the object has no sectors a read may check alone (version 1 or 2, or a plain
        object recorded without its table digest) — read it whole. An int: the prefix
        needed is that long (read again). Raises BlockIntegrityError on a damaged header
        or a sector table that is not the one recorded.
        """
        _check_identity(identity)
        view = memoryview(prefix)
        if len(view) < HEADER or bytes(view[:4]) != MAGIC:
            raise BlockIntegrityError()
        version, mode = view[4], view[5]
        if version in (WHOLE_VERSION, LEGACY_VERSION):
            return None
        if version != VERSION or mode != (MODE_GCM if self._aead is not None else MODE_PLAIN) or len(view) < HEADER3:
            raise BlockIntegrityError()
        shift = _header_shift(view)
        if self._aead is not None:
            if len(view) < GCM_PREFIX:
                return GCM_PREFIX
            return self._gcm_reader(identity, index, view[:GCM_PREFIX], shift)
        _block_sum, table_digest = split_plain_checksum(checksum)
        if table_digest is None:
            return None
        need = plain_prefix_size(shift)
        if len(view) < need:
            return need
        if not hmac.compare_digest(hashlib.sha256(view[:need]).digest(), table_digest):
            raise BlockIntegrityError()
        return SectorReader(shift, table=bytes(view[HEADER3:need]))

    def _gcm_reader(self, identity: str, index: int, prefix: memoryview, shift: int) -> SectorReader:
        assert self.key is not None
        salt = bytes(prefix[HEADER3:GCM_PREFIX])
        aead = AESGCM(sector_subkey(self.key, salt, identity, index))
        return SectorReader(shift, aead=aead, aad_prefix=bytes(prefix) + _binding(self.key.key_id, identity, index))

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
        """The block's base64 SHA-256 from the checksum as stored."""
        if not stored.startswith(_SEALED_PREFIX):
            if self._aead is not None:
                raise BlockIntegrityError()
            return split_plain_checksum(stored)[0]
        if self._aead is None:
            raise BlockIntegrityError()
        assert self.key is not None
        raw = base64.b64decode(stored[len(_SEALED_PREFIX) :])
        try:
            digest = self._aead.decrypt(raw[:NONCE], raw[NONCE:], checksum_aad(self.key.key_id, index))
        except InvalidTag:
            raise BlockIntegrityError() from None
        return base64.b64encode(digest).decode()


def _page_aligned(size: int) -> mmap.mmap:
    """A zeroed buffer of ``size`` bytes (rounded up to whole pages) that starts on a page
    boundary: an object sealed into it is written with O_DIRECT straight from it, without
    the 512 KiB copy into an aligned buffer the store would make otherwise
    (engines/blocks/store.py ``_write_direct``; issue 15, bench/README.md section E6)."""
    return mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)


def _check_sectors(table: bytes | memoryview, first: int, data: memoryview) -> None:
    """Each whole sector in ``data`` (sector ``first`` on) has its digest in ``table``.
    (The digests are compared at once: a sequential reader checks 64 sectors a MiB, and
    the per-sector slicing and comparing in Python showed beside BLAKE3 itself.)"""
    size = BLOCK_SIZE // (len(table) // DIGEST)
    count = len(data) // size
    if count == 1:
        digests = blake3(data[:size]).digest()
    else:
        digests = b"".join([blake3(data[at:at + size]).digest() for at in range(0, count * size, size)])
    if not hmac.compare_digest(digests, table[first * DIGEST:(first + count) * DIGEST]):
        raise BlockIntegrityError()


def _header_shift(view: memoryview) -> int:
    """The sector shift of a version 3 header (its reserved byte must be zero)."""
    if len(view) < HEADER3 or view[7] != 0 or not MIN_SECTOR_SHIFT <= view[6] <= MAX_SECTOR_SHIFT:
        raise BlockIntegrityError()
    return int(view[6])


def _check_identity(identity: str) -> None:
    if not isinstance(identity, str) or not identity or len(identity.encode()) > 0xFFFF:
        raise ValueError("a block object needs its identity (its object key)")
