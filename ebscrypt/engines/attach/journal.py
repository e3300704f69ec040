"""A per-volume write journal: small writes to blocks the cache does not hold, without a
read-modify-write of their 512 KiB blocks (issue 12, R-ATTACH-3).

A write smaller than a block, to a block not cached, is appended here as one sealed
record instead of loading, patching and re-sealing the whole block; reads overlay the
records on the block as stored; FLUSH/FUA make them durable with one ``fdatasync`` of the
journal; the journal is merged into whole blocks (each block once, however many records
it has) when it reaches its bound — frozen and merged outside the volume's lock while a
new journal takes writes (:class:`VolumeJournal`) — at a snapshot, and at
detach/stop/shutdown; after a crash the next open replays it (both, when a merge was
in flight). Partial writes to a block with records are journaled
too until the merge (the cache holds it clean); a whole-block write makes the block
leave the journal, and the marks below keep replay from laying its older records over
what is stored later.

File (``<data-dir>/journal/<volume-id>.jnl``: local even when blocks live in S3; the
plaintext never reaches it)::

    header:  b"EBSJ" | version 1 | mode (1: AES-256-GCM, 0: plain) | journal id (16 random bytes)
             | len (2, BE) + volume id | len (2, BE) + data-key id | tag (16)
    record:  b"JR" | type (1: data, 2: zeros, 3: commit, 4: mark) | 0 | length (4) | seq (8)
             | committed (8) | block index (4) | offset in block (4)
             | [sealed payload (length): data records, marks] | tag (16)

Sealing (encrypted volumes): a journal key HKDF-SHA256(data key, salt = journal id,
info = "ebscrypt-journal-v1"), the journal id fresh (random) for every journal file, and
the nonce the record's sequence number (the header's is 0): a nonce is never used twice
under one key, and no random-nonce limit applies. The associated data binds the volume
id, the data-key id, the journal id and the whole record header (sequence, block index,
offset, length, type). Plain volumes: the tag is a SHA-256 of the same associated data
and payload (it detects corruption; an unencrypted volume's bytes are not secret).
Every record is authenticated again when a read overlays it or a merge applies it.

Replay and tampering: records are read in sequence order; each carries ``committed``,
the highest sequence number made durable (fdatasync returned) before it was written,
and after each fdatasync a commit record carries the new value. Replay stops at the
first record that fails authentication or breaks the sequence: if a later-written record
said that one was durable (its sequence ≤ the highest ``committed`` seen), the journal
was altered — :class:`JournalIntegrityError`, the volume's I/O fails, nothing is dropped
silently; otherwise it is the torn tail of writes that were never flushed (a crash), and
is dropped, as NBD allows. (Damage to the records of the very last flush before a crash,
before any later record or commit record reached the disk, cannot be told from a torn
write — as with any write-ahead log; those records are dropped, never read as other bytes.)
After a replay the records that still apply are re-sealed into a new journal (a new id
and key) that replaces the old one atomically, so the sequence numbers (nonces) of a torn
tail are never reused.

Marks: a block with records may be stored again before the merge (a whole-block write
makes it leave the journal: cached dirty, then stored as usual). Every store of a block
the journal has seen appends a mark — (block, the sequence number its content covers,
the object key it is stored under) — before the publication that records it. At replay
the block's records up to that sequence number are skipped if its recorded entry is
that object (the publication committed); otherwise (a crash before the commit) every
record applies to the entry as it was. So replay never lays older records over newer
content, whether the crash came before or after a publication or a merge's commit.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, DataKey
from ebscrypt.engines.blocks.errors import BlockIntegrityError
from ebscrypt.engines.blocks.store import fsync_dir

MAGIC = b"EBSJ"
VERSION = 1
MODE_PLAIN, MODE_GCM = 0, 1
DATA, ZEROS, COMMIT, MARK = 1, 2, 3, 4
TAG = 16
_REC = struct.Struct(">2sBBIQQII")  # magic, type, 0, length (of the range), seq, committed, block index, offset
_REC_MAGIC = b"JR"
_FIXED = struct.Struct(">4sBB16s")  # magic, version, mode, journal id
_RUN_MAX = 1 << 20  # records adjacent in the file read with one pread, up to this many bytes
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
# A block with more records than this gets a mask of the 4 KiB pages they touch
# (Journal._masks): a small read of a page no record touches skips the scan of them
# all (after a few seconds of random writes a block has tens of records; the scan was
# the largest single share of a random read's CPU).
_MASK_MIN = 4
_NO_BLOCKS: frozenset[int] = frozenset()  # (VolumeJournal.blocks_with_records without a frozen journal)
_PAGE_SHIFT = 12


class JournalIntegrityError(BlockIntegrityError):
    """A journal record that was made durable fails authentication (altered, truncated or
    replaced): the volume's writes since its last merge cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Extent:
    """One record's part of a block: ``length`` bytes at ``offset``, its record at ``pos``."""

    seq: int
    offset: int
    length: int
    pos: int
    zeros: bool


class Journal:
    """One volume's journal (not thread-safe: its OpenVolume's lock orders every call)."""

    def __init__(self, path: Path, volume_id: str, key: DataKey | None, *,
                 max_bytes: int = 256 << 20, max_records: int = 65536) -> None:
        self.path = path
        self.volume_id = volume_id
        self._key = key
        self.max_bytes = max_bytes
        self.max_records = max_records
        self._fd = -1
        self._aead: AESGCM | None = None
        self._jid = b""
        self._prefix = b""
        self._end = self._seq = self._synced = 0
        self._unsynced = False
        self._extents: dict[int, list[Extent]] = {}
        # Pages (bit i: bytes [i << 12, (i+1) << 12)) touched by the records of a block in
        # _extents, for blocks with more than _MASK_MIN records, built when first asked
        # (extents): a superset is harmless (the records are scanned), so any change other
        # than an append drops the block's mask.
        self._masks: dict[int, int] = {}
        self._records = 0
        self.replayed = 0  # records found at open (a crash left them): rewrite() before appending
        self.recovered = False  # opened from a file a crash left (reset before appending)
        self._touched: set[int] = set()  # blocks with records or marks in this journal
        self._marks: dict[int, list[tuple[int, str]]] = {}  # replayed: block -> [(covered seq, object key)]
        self._reader: RecordFile | None = None  # the current file's, for reads outside the lock (records())

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open the journal, replaying what a crash left (see :attr:`replayed`), or start
        a new one. Raises :class:`JournalIntegrityError` if durable records were altered."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            self._fd = os.open(self.path, os.O_RDWR)
            self.recovered = True
            self._replay()
        else:
            self._create()

    def close(self) -> None:
        self._retire_reader()  # (closed once the reads holding it end)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._key = None
        self._aead = None

    def remove(self) -> None:
        """Close and delete the journal (its records are all merged into stored blocks)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fsync_dir(self.path.parent)

    def reset(self) -> None:
        """Start an empty journal with a new id (and key) in place of this one, atomically:
        every record is merged into stored blocks, durably, before this is called."""
        saved = (self._fd, self._jid, self._aead, self._prefix, self._end, self._seq, self._synced, self._unsynced)
        try:
            self._create()
        except BaseException:  # still the old journal (its records are merged: harmless)
            (self._fd, self._jid, self._aead, self._prefix, self._end, self._seq, self._synced,
             self._unsynced) = saved
            raise
        if saved[0] >= 0:
            os.close(saved[0])
        self._retire_reader()  # reads outside the lock still holding the old file keep it
        self._extents.clear()
        self._masks.clear()
        self._touched.clear()
        self._marks.clear()
        self._records = 0
        self.replayed = 0
        self.recovered = False

    def _create(self, fills: "tuple[Journal, ...]" = ()) -> None:
        """A new journal file (new id and key) in place of the old one, atomically: the
        header (and the records of ``fills`` still to apply, re-sealed, in order) durable
        before the rename."""
        self._jid = secrets.token_bytes(16)
        self._setup_crypto()
        header = self._header()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header)
            self._fd = fd
            self._end = len(header)
            self._seq = self._synced = 0
            self._unsynced = False
            if fills:
                for fill in fills:
                    for index in sorted(fill._extents):
                        for ext in fill._extents[index]:
                            if ext.zeros:
                                self.append_zeros(index, ext.offset, ext.length)
                            else:
                                self.append(index, ext.offset, fill._read_record(ext))
                self.sync()  # and the commit record after it, made durable below
            os.fdatasync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            self._fd = -1
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(self.path.parent)

    def rewrite(self) -> "Journal":
        """After a replay (and :meth:`apply_marks`): a new journal holding the records that
        still apply, re-sealed under a new id and key, atomically in place of this one
        (closed). Appending to a replayed journal could reuse the sequence numbers (the
        nonces) of its torn tail; the old marks are no longer needed either."""
        fresh = Journal(self.path, self.volume_id, self._key, max_bytes=self.max_bytes, max_records=self.max_records)
        fresh._create((self,))
        self.close()
        return fresh

    def move_to(self, path: Path) -> None:
        """Rename the journal's file (rotation: the full journal is merged under another
        name while a new one takes writes); durable with the next fsync of the directory."""
        os.replace(self.path, path)
        self.path = path

    def _setup_crypto(self) -> None:
        kid = self._key.key_id if self._key is not None else ""
        self._prefix = (MAGIC + bytes([VERSION]) + self._jid + _lp(self.volume_id.encode()) + _lp(kid.encode()))
        if self._key is None:
            self._aead = None
        else:
            subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=self._jid,
                          info=b"ebscrypt-journal-v1").derive(self._key.plaintext)
            self._aead = AESGCM(subkey)

    def _header(self) -> bytes:
        kid = self._key.key_id if self._key is not None else ""
        body = (_FIXED.pack(MAGIC, VERSION, MODE_GCM if self._key is not None else MODE_PLAIN, self._jid)
                + _lp(self.volume_id.encode()) + _lp(kid.encode()))
        return body + self._tag(0, body, b"")

    # ------------------------------------------------------------------ sealing

    def _tag(self, seq: int, aad: bytes, data: bytes | memoryview) -> bytes:
        """Sealed ``data`` (ciphertext and tag, or data and digest) under ``aad``."""
        if self._aead is None:
            return bytes(data) + hashlib.sha256(self._prefix + aad + data).digest()[:TAG]
        return self._aead.encrypt(seq.to_bytes(12, "big"), bytes(data), self._prefix + aad)

    def _open(self, seq: int, aad: bytes, sealed: bytes | memoryview) -> bytes:
        return bytes(_open_sealed(self._aead, self._prefix, seq, aad, sealed))

    # ------------------------------------------------------------------ writing

    @property
    def full(self) -> bool:
        return self._end >= self.max_bytes or self._records >= self.max_records

    def has(self, index: int) -> bool:
        """Does block ``index`` have records not covered by a later store of it?"""
        return index in self._extents

    def blocks_with_records(self) -> Container[int]:
        """(Locked) The blocks :meth:`has` says yes for, as they are now: to test ``in``
        against without a call per block (a batch of reads under the volume's lock)."""
        return self._extents

    def touched(self, index: int) -> bool:
        """Has this journal ever had records of block ``index`` (its stores need marks)?"""
        return index in self._touched

    @property
    def jid(self) -> bytes:
        """This journal file's random id (a new one for every file: it names the key; it
        changes when a merge, a rotation or a replay replaces the file)."""
        return self._jid

    @property
    def seq(self) -> int:
        """The sequence number of the last record: a content captured now covers up to it."""
        return self._seq

    def leave(self, index: int) -> None:
        """Block ``index`` leaves the journal (a whole-block write: its cached content now
        covers every record). Its records stay in the file until the merge; the mark of its
        next store tells replay which of them that store covers."""
        self._extents.pop(index, None)
        self._masks.pop(index, None)

    def mark(self, index: int, covered: int, object_key: str) -> None:
        """Block ``index`` is being stored under ``object_key`` with content that covers its
        records up to sequence ``covered`` (appended before the publication recording it)."""
        payload = covered.to_bytes(8, "big") + object_key.encode()
        seq = self._seq + 1
        header = _REC.pack(_REC_MAGIC, MARK, 0, len(payload), seq, self._synced, index, 0)
        record = header + self._tag(seq, header, payload)
        if os.pwrite(self._fd, record, self._end) != len(record):
            raise OSError(f"short write to the journal of {self.volume_id}")
        self._end += len(record)
        self._seq = seq
        self._unsynced = True

    def marked_blocks(self) -> list[int]:
        """Blocks with marks found by the replay (their entries decide what applies)."""
        return sorted(self._marks)

    def apply_marks(self, stored: dict[int, str | None]) -> None:
        """After replay: ``stored`` gives each marked block's recorded object key. The
        records a committed store covers are dropped; the others apply."""
        for index, marks in self._marks.items():
            covered = max((c for c, key in marks if key == stored.get(index)), default=0)
            kept = [e for e in self._extents.get(index, []) if e.seq > covered]
            self._masks.pop(index, None)
            if kept:
                self._extents[index] = kept
            else:
                self._extents.pop(index, None)
        self._marks.clear()

    def blocks(self) -> list[int]:
        return sorted(self._extents)

    def touched_blocks(self) -> list[int]:
        """Every block this journal has had records of (sorted)."""
        return sorted(self._touched)

    def __len__(self) -> int:
        return self._records

    def append(self, index: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Journal ``data`` at ``offset`` of block ``index`` (not durable until :meth:`sync`)."""
        self._append(DATA, index, offset, len(data), data)

    def append_zeros(self, index: int, offset: int, length: int) -> None:
        self._append(ZEROS, index, offset, length, b"")

    def _append(self, kind: int, index: int, offset: int, length: int, data: bytes | bytearray | memoryview) -> None:
        if not (0 <= offset and 0 < length and offset + length <= BLOCK_SIZE):
            raise ValueError("a journal record stays within one block")
        seq = self._seq + 1
        header = _REC.pack(_REC_MAGIC, kind, 0, length, seq, self._synced, index, offset)
        record = header + self._tag(seq, header, memoryview(data))
        pos = self._end
        if os.pwrite(self._fd, record, pos) != len(record):
            raise OSError(f"short write to the journal of {self.volume_id}")
        self._end += len(record)
        self._seq = seq
        self._unsynced = True
        self._records += 1
        self._touched.add(index)
        self._extents.setdefault(index, []).append(Extent(seq, offset, length, pos, kind == ZEROS))
        mask = self._masks.get(index)
        if mask is not None:
            self._masks[index] = mask | _page_mask(offset, offset + length)

    def sync(self) -> None:
        """Every record appended so far is durable on return (one fdatasync); a commit
        record then says so, for replay to tell a torn tail from an altered record."""
        if not self._unsynced:
            return
        os.fdatasync(self._fd)
        self._synced = self._seq
        self._unsynced = False
        self._seq += 1
        header = _REC.pack(_REC_MAGIC, COMMIT, 0, 0, self._seq, self._synced, 0, 0)
        record = header + self._tag(self._seq, header, b"")
        os.pwrite(self._fd, record, self._end)
        self._end += len(record)

    # ------------------------------------------------------------------ reading

    def overlay(self, index: int, buf: bytearray | memoryview, start: int = 0, *, since: int = 0,
                nowait: bool = False, extents: list[Extent] | None = None) -> bool:
        """Apply the records of block ``index`` to ``buf``, which holds the block's bytes
        [start, start + len(buf)) as stored (records authenticated again here). ``since``:
        only the records after that sequence number (those before are applied already).
        ``nowait``: False (``buf`` left as it was) if a record is not in the page cache.
        ``extents``: those of :meth:`extents` for this window, taken just before."""
        if extents is None:
            extents = self._extents.get(index)
        if not extents:
            return True
        if since:
            extents = [e for e in extents if e.seq > since]
        return _apply(extents, buf, start,
                      lambda exts, nw: _read_records(self._fd, exts, nw, self._aead, self._prefix), nowait=nowait)

    def extents(self, index: int, start: int = 0, stop: int = BLOCK_SIZE) -> list[Extent]:
        """(Locked) The records of block ``index`` that touch [start, stop), oldest first: a
        snapshot for :meth:`RecordFile.overlay` outside the volume's lock."""
        found = self._extents.get(index)
        if not found:
            return []
        if len(found) > _MASK_MIN and stop > start:
            mask = self._masks.get(index)
            if mask is None:
                mask = 0
                for e in found:
                    mask |= _page_mask(e.offset, e.offset + e.length)
                self._masks[index] = mask
            if not mask & _page_mask(start, stop):
                return []  # no record touches these pages
        return [e for e in found if e.offset < stop and e.offset + e.length > start]

    def records(self) -> "RecordFile":
        """(Locked) The current file's records for a read outside the volume's lock, held
        (:meth:`RecordFile.release` it): records never change once written, and a held file
        stays readable after a merge replaced it (its descriptor is closed when released)."""
        reader = self._reader
        if reader is None or reader.jid != self._jid:
            if reader is not None:
                reader.retire()
            reader = self._reader = RecordFile(os.dup(self._fd), self._jid, self._prefix, self._aead, self.volume_id)
        return reader.acquire()

    def _retire_reader(self) -> None:
        if self._reader is not None:
            self._reader.retire()
            self._reader = None

    def _read_record(self, ext: Extent) -> bytes:
        got = _read_records(self._fd, [ext], False, self._aead, self._prefix)
        assert got is not None
        return bytes(got[ext.seq])

    # ------------------------------------------------------------------ replay

    def _replay(self) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        view = memoryview(raw)
        pos = self._read_header(view)
        seq, committed, records = 0, 0, 0
        extents: dict[int, list[Extent]] = {}
        marks: dict[int, list[tuple[int, str]]] = {}
        while True:
            rec = self._next_record(view, pos, seq + 1)
            if rec is None:
                break
            kind, index, offset, length, size, rec_committed = rec
            seq += 1
            committed = max(committed, rec_committed)
            if kind == MARK:
                payload = self._open(seq, bytes(view[pos:pos + _REC.size]), view[pos + _REC.size:pos + size])
                marks.setdefault(index, []).append((int.from_bytes(payload[:8], "big"), payload[8:].decode()))
            elif kind != COMMIT:
                records += 1
                extents.setdefault(index, []).append(Extent(seq, offset, length, pos, kind == ZEROS))
            pos += size
        if seq < committed or self._later_commit(view, pos, seq + 1):
            raise JournalIntegrityError()  # a record said to be durable is missing or altered
        self._extents = extents
        self._masks.clear()
        self._marks = marks
        self._touched = set(extents) | set(marks)
        self._records = records
        self.replayed = records
        self._end = pos
        self._seq = seq
        self._synced = seq
        self._unsynced = False

    def _read_header(self, view: memoryview) -> int:
        if len(view) < _FIXED.size:
            raise JournalIntegrityError()
        magic, version, mode, jid = _FIXED.unpack(view[:_FIXED.size])
        if magic != MAGIC or version != VERSION or mode != (MODE_GCM if self._key is not None else MODE_PLAIN):
            raise JournalIntegrityError()
        self._jid = bytes(jid)
        self._setup_crypto()
        pos = _FIXED.size
        for expected in (self.volume_id, self._key.key_id if self._key is not None else ""):
            if len(view) < pos + 2:
                raise JournalIntegrityError()
            n = int.from_bytes(view[pos:pos + 2], "big")
            if bytes(view[pos + 2:pos + 2 + n]) != expected.encode():
                raise JournalIntegrityError()
            pos += 2 + n
        body = bytes(view[:pos])
        sealed = view[pos:pos + TAG]
        if self._aead is None:
            if hashlib.sha256(self._prefix + body).digest()[:TAG] != bytes(sealed):
                raise JournalIntegrityError()
        else:
            self._open(0, body, sealed)
        return pos + TAG

    def _later_commit(self, view: memoryview, pos: int, seq: int) -> bool:
        """Past the end of the valid records (at ``pos``, where record ``seq`` fails): does an
        authentic later record say that ``seq`` was durable? Then it was altered, not torn.
        (Records are found by their magic and authenticated: cheap, and only after a crash.)"""
        raw = view.obj if isinstance(view.obj, bytes) else bytes(view)
        at = raw.find(_REC_MAGIC, pos + 1)
        while at >= 0:
            if len(raw) >= at + _REC.size:
                later_seq = _REC.unpack_from(raw, at)[4]
                if later_seq > seq:
                    rec = self._next_record(view, at, later_seq)
                    while rec is not None:
                        if rec[5] >= seq:
                            return True
                        at += rec[4]
                        later_seq += 1
                        rec = self._next_record(view, at, later_seq)
            at = raw.find(_REC_MAGIC, at + 1)
        return False

    def _next_record(self, view: memoryview, pos: int, seq: int) -> tuple[int, int, int, int, int, int] | None:
        """(kind, index, offset, length, size, committed) of the record at ``pos`` if it is
        whole, authentic and the next in sequence; None where the valid records end."""
        if len(view) < pos + _REC.size:
            return None
        header = bytes(view[pos:pos + _REC.size])
        magic, kind, _z, length, rec_seq, committed, index, offset = _REC.unpack(header)
        if magic != _REC_MAGIC or rec_seq != seq or kind not in (DATA, ZEROS, COMMIT, MARK):
            return None
        if kind in (DATA, ZEROS) and not (0 < length and offset + length <= BLOCK_SIZE):
            return None
        if kind == MARK and not 8 < length <= 8 + 1024:
            return None
        size = _REC.size + (length if kind in (DATA, MARK) else 0) + TAG
        if len(view) < pos + size:
            return None
        try:
            self._open(rec_seq, header, view[pos + _REC.size:pos + size])
        except JournalIntegrityError:
            return None
        return kind, index, offset, length, size, committed


class RecordFile:
    """One journal file's records, read outside the volume's lock (a duplicate descriptor
    of the file and its opening key). Reference-counted: the descriptor is closed once the
    journal moved on to another file (:meth:`retire`) and no read holds it, so a read never
    uses a descriptor closed (or reused for another file) under it."""

    def __init__(self, fd: int, jid: bytes, prefix: bytes, aead: AESGCM | None, volume_id: str) -> None:
        self.jid = jid  # the journal file's id
        self._fd = fd
        self._prefix = prefix
        self._aead = aead
        self.volume_id = volume_id
        self._users = 0
        self._retired = False
        self._mutex = threading.Lock()

    def acquire(self) -> "RecordFile":
        with self._mutex:
            self._users += 1
        return self

    def release(self) -> None:
        with self._mutex:
            self._users -= 1
            self._close_if_done()

    def retire(self) -> None:
        with self._mutex:
            self._retired = True
            self._close_if_done()

    def _close_if_done(self) -> None:
        if self._retired and self._users <= 0 and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._aead = None

    def overlay(self, extents: list[Extent], buf: bytearray | memoryview, start: int = 0, *,
                nowait: bool = False) -> bool:
        """Apply these records (:meth:`Journal.extents`, taken under the lock) to ``buf``,
        the block's bytes [start, start + len(buf)) as stored; authenticated here. Held
        (:meth:`acquire`). ``nowait``: False (``buf`` left as it was) if a record is not
        in the page cache (RWF_NOWAIT), for a caller that must not wait for the disk."""
        return _apply(extents, buf, start, lambda exts, nw: _read_records(self._fd, exts, nw, self._aead, self._prefix),
                      nowait=nowait)


def _page_mask(start: int, stop: int) -> int:
    """The bits of the 4 KiB pages [start, stop) of a block touches (stop > start)."""
    first, last = start >> _PAGE_SHIFT, (stop - 1) >> _PAGE_SHIFT
    return ((1 << (last - first + 1)) - 1) << first


def covers(extents: list[Extent], start: int, stop: int) -> bool:
    """Do these records together cover all of [start, stop)? (Then what is stored under
    them need not be read.)"""
    pos = start
    for lo, hi in sorted((e.offset, e.offset + e.length) for e in extents):
        if lo > pos:
            return False
        pos = max(pos, hi)
        if pos >= stop:
            return True
    return pos >= stop


def _apply(extents: list[Extent], buf: bytearray | memoryview, start: int,
           read: Callable[[list[Extent], bool], dict[int, bytes | memoryview] | None], *, nowait: bool = False) -> bool:
    """Lay ``extents`` (oldest first) over ``buf`` = bytes [start, start+len(buf)) of the
    block. ``read(data extents, nowait)`` gives their payloads by sequence number (None:
    not all in the page cache, with ``nowait``; then False and ``buf`` is left as it was).
    A record that a newer one rewrote exactly (the same range: a page written again) is
    not read at all."""
    stop = start + len(buf)
    wanted = []
    seen: set[tuple[int, int]] = set()
    for ext in reversed(extents):
        lo, hi = max(ext.offset, start), min(ext.offset + ext.length, stop)
        if lo >= hi or (lo, hi) in seen:
            continue
        seen.add((lo, hi))
        wanted.append((ext, lo, hi))
    wanted.reverse()
    data = [e for e, _lo, _hi in wanted if not e.zeros]
    payloads = read(data, nowait) if data else {}
    if payloads is None:
        return False
    view = memoryview(buf)
    for ext, lo, hi in wanted:
        if ext.zeros:
            view[lo - start:hi - start] = bytes(hi - lo)
        elif lo == ext.offset and hi - lo == ext.length:
            view[lo - start:hi - start] = payloads[ext.seq]
        else:
            view[lo - start:hi - start] = memoryview(payloads[ext.seq])[lo - ext.offset:hi - ext.offset]
    return True


def _read_records(fd: int, extents: list[Extent], nowait: bool, aead: AESGCM | None,
                  prefix: bytes) -> dict[int, bytes | memoryview] | None:
    """The authenticated payloads of these data records, by sequence number: records
    adjacent in the file are read with one ``pread`` (a run of sequential small writes).
    ``nowait``: None if a record is not in the page cache (RWF_NOWAIT)."""
    out: dict[int, bytes | memoryview] = {}
    todo = sorted(extents, key=lambda e: e.pos) if len(extents) > 1 else extents
    unpack, head = _REC.unpack_from, _REC.size
    i = 0
    while i < len(todo):
        j = i + 1
        end = todo[i].pos + head + todo[i].length + TAG
        while j < len(todo) and todo[j].pos == end and end - todo[i].pos < _RUN_MAX:
            end += head + todo[j].length + TAG
            j += 1
        at = todo[i].pos
        if nowait:
            if _RWF_NOWAIT is None:
                return None
            raw = bytearray(end - at)
            try:
                got = os.preadv(fd, [raw], at, _RWF_NOWAIT)
            except OSError:  # EAGAIN: not all in the page cache
                return None
            if got != len(raw):
                return None
            whole = memoryview(raw)
        else:
            whole = memoryview(os.pread(fd, end - at, at))
        if len(whole) != end - at:
            raise JournalIntegrityError()  # the file is shorter than its index says
        for ext in todo[i:j]:
            rel = ext.pos - at
            magic, kind, _z, length, seq, _c, _index, offset = unpack(whole, rel)
            if magic != _REC_MAGIC or kind != DATA or length != ext.length or seq != ext.seq or offset != ext.offset:
                raise JournalIntegrityError()
            out[seq] = _open_sealed(aead, prefix, seq, whole[rel:rel + head], whole[rel + head:rel + head + length + TAG])
        i = j
    return out


def _open_sealed(aead: AESGCM | None, prefix: bytes, seq: int, aad: bytes | memoryview,
                 sealed: bytes | memoryview) -> bytes | memoryview:
    """A record's payload, authenticated: AES-GCM under the journal key (nonce = its
    sequence number), or a plain volume's SHA-256 digest (then a view of ``sealed``)."""
    if len(sealed) < TAG:
        raise JournalIntegrityError()
    if aead is None:
        data = memoryview(sealed)[:-TAG]
        digest = hashlib.sha256(prefix)
        digest.update(aad)
        digest.update(data)
        if not hmac.compare_digest(digest.digest()[:TAG], memoryview(sealed)[-TAG:]):
            raise JournalIntegrityError()
        return data
    try:
        return aead.decrypt(seq.to_bytes(12, "big"), sealed, prefix + bytes(aad))
    except InvalidTag:
        raise JournalIntegrityError() from None


def _lp(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


# Where a volume's content was when it was captured (a cached block taken to be stored):
# each journal's id and the sequence number its last record had then (see VolumeJournal).
Position = dict[bytes, int]


def merging_path(path: Path) -> Path:
    """Where a volume's full journal is merged (renamed from ``path``) while a new one
    at ``path`` takes writes."""
    return path.with_name(path.name + ".merging")


def journal_exists(path: Path) -> bool:
    """Does a journal (being written, or being merged) exist for this path?"""
    return path.exists() or merging_path(path).exists()


class VolumeJournal:
    """A volume's journals: the active one, which takes new records, and — while a full
    journal is merged into the blocks outside the volume's lock (``OpenVolume``) — the
    merging one, frozen (no records; marks still) at ``merging_path``. Reads overlay
    both, the merging one first (its records are older). Not thread-safe: the volume's
    lock orders every call, except the merge's reads of the frozen journal (``overlay``
    of :attr:`merging`: preads of records at fixed places, its index only shrinking) and
    reads outside the lock, which overlay what :meth:`hold` took under it (both journals'
    records over their span, each file held through its own descriptor: readable after
    the rotation renamed it and after the merge's end deleted it).

    Crash safety: rotation renames the full journal to ``merging_path`` and creates the
    new one (header durable, directory fsync'd) before any record goes to it; the merge
    marks what it stores in both journals like any store (so replay never lays older
    records over newer content) and removes the frozen journal only after its blocks are
    published. At the next open both files are replayed, the frozen one first, and their
    records that still apply are re-sealed into one new journal (see :meth:`open`).
    """

    def __init__(self, path: Path, volume_id: str, key: DataKey | None, *,
                 max_bytes: int = 256 << 20, max_records: int = 65536) -> None:
        self.path = path
        self.volume_id = volume_id
        self._key = key
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.active = self._journal(path)
        self.merging: Journal | None = None
        self._resets = 0

    def _journal(self, path: Path) -> Journal:
        return Journal(path, self.volume_id, self._key, max_bytes=self.max_bytes, max_records=self.max_records)

    # ------------------------------------------------------------------ lifecycle

    def open(self, stored_keys: "Callable[[list[int]], dict[int, str | None]]") -> None:
        """Open (replaying what a crash left, the frozen journal first) or start the
        journal. ``stored_keys`` gives the recorded object key of blocks (marks decide
        which replayed records still apply); the records that do are re-sealed into one
        new journal (new id and key: no nonce reused), which replaces both files: first
        the active one, then the frozen one is removed (a crash between replays the
        frozen one's records twice, in order, before the rest: the same bytes).
        Raises :class:`JournalIntegrityError` if durable records were altered."""
        old_path = merging_path(self.path)
        old: Journal | None = None
        try:
            if old_path.exists():
                old = self._journal(old_path)
                old.open()
            self.active.open()
            parts = [j for j in (old, self.active) if j is not None]
            if not any(j.recovered for j in parts):
                return
            marked = sorted({i for j in parts for i in j.marked_blocks()})
            stored = stored_keys(marked) if marked else {}
            for j in parts:
                j.apply_marks(stored)
            self.replayed = sum(j.replayed for j in parts)
            fresh = self._journal(self.path)
            fresh._create(tuple(parts))
            self.active.close()
            self.active = fresh
            if old is not None:
                old.remove()
                old = None
        finally:
            if old is not None:
                old.close()

    replayed = 0  # records found at open (a crash left them)

    def close(self) -> None:
        for j in (self.merging, self.active):
            if j is not None:
                j.close()
        self._key = None

    def remove(self) -> None:
        """Close and delete both journals (every record merged into stored blocks)."""
        if self.merging is not None:
            self.merging.remove()
            self.merging = None
        self.active.remove()

    def reset(self) -> None:
        """(No merge in flight) The active journal's records are all merged: start anew."""
        assert self.merging is None
        self.active.reset()
        self._resets += 1

    def rotate(self) -> Journal:
        """(No merge in flight) Freeze the active journal, renamed to ``merging_path``,
        and start a new active one; the frozen one is returned, to be merged."""
        assert self.merging is None
        old = self.active
        fresh = self._journal(self.path)
        old.move_to(merging_path(self.path))
        try:
            fresh.open()  # a new file: created beside it, renamed in, the directory fsync'd
        except BaseException:
            old.move_to(self.path)
            raise
        self.merging, self.active = old, fresh
        return old

    def merged(self) -> None:
        """The frozen journal's records are all in published blocks: delete it."""
        if self.merging is not None:
            self.merging.remove()
            self.merging = None

    # ------------------------------------------------------------------ records

    @property
    def full(self) -> bool:
        return self.active.full

    def has(self, index: int) -> bool:
        return self.active.has(index) or (self.merging is not None and self.merging.has(index))

    def blocks_with_records(self) -> tuple[Container[int], Container[int]]:
        """(Locked) :meth:`has` of either journal (active, frozen) as two containers to test
        ``in`` against: a batch of reads under the volume's lock asks once, not once a read
        (valid while that lock is held: records, rotations and merges change under it)."""
        frozen = self.merging.blocks_with_records() if self.merging is not None else _NO_BLOCKS
        return self.active.blocks_with_records(), frozen

    def touched(self, index: int) -> bool:
        return self.active.touched(index) or (self.merging is not None and self.merging.touched(index))

    def position(self) -> Position:
        """What content captured now covers: each journal's last sequence number."""
        pos = {self.active.jid: self.active.seq}
        if self.merging is not None:
            pos[self.merging.jid] = self.merging.seq
        return pos

    def mark(self, index: int, covered: Position, object_key: str) -> None:
        """Block ``index`` is being stored under ``object_key`` with content covering each
        journal's records up to ``covered`` (a journal newer than the capture: none)."""
        for j in (self.merging, self.active):
            if j is not None and j.touched(index) and covered.get(j.jid, 0) > 0:
                j.mark(index, covered[j.jid], object_key)

    def leave(self, index: int) -> None:
        self.active.leave(index)
        if self.merging is not None:
            self.merging.leave(index)

    def append(self, index: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.active.append(index, offset, data)

    def append_zeros(self, index: int, offset: int, length: int) -> None:
        self.active.append_zeros(index, offset, length)

    def sync(self) -> None:
        if self.merging is not None:
            self.merging.sync()  # its marks
        self.active.sync()

    def blocks(self) -> list[int]:
        if self.merging is None:
            return self.active.blocks()
        return sorted(set(self.active.blocks()) | set(self.merging.blocks()))

    def __len__(self) -> int:
        return len(self.active) + (len(self.merging) if self.merging is not None else 0)

    def overlay(self, index: int, buf: bytearray | memoryview, start: int = 0) -> None:
        """(Locked) Lay both journals' records of block ``index`` over ``buf`` (its bytes
        [start, start + len(buf)) as stored): the frozen one's first (older)."""
        if self.merging is not None:
            self.merging.overlay(index, buf, start)
        self.active.overlay(index, buf, start)

    # Reads outside the volume's lock (issue 12): what to overlay is taken under the lock
    # — for each journal, its file held and the records touching the span — and read
    # outside it. Records never change once written; a held file stays readable after
    # the journal moved on (a rotation renames it, a merge's end deletes the frozen one,
    # a merge under the lock replaces the active one): its descriptor is closed only
    # when the last read lets go (RecordFile).

    def extents(self, index: int, start: int = 0, stop: int = BLOCK_SIZE) -> "list[tuple[Journal, list[Extent]]]":
        """(Locked) Each journal's records of block ``index`` that touch [start, stop),
        the frozen journal first (its records are older): only journals with some."""
        out = []
        for j in (self.merging, self.active):
            if j is not None and (found := j.extents(index, start, stop)):
                out.append((j, found))
        return out

    def hold(self, index: int, start: int = 0, stop: int = BLOCK_SIZE) -> "HeldRecords | None":
        """(Locked) The records of block ``index`` over [start, stop) in both journals, held
        for an overlay outside the lock (:meth:`HeldRecords.release` it); None: none."""
        found = self.extents(index, start, stop)
        if not found:
            return None
        return HeldRecords([(j.records(), extents) for j, extents in found])

    @property
    def resets(self) -> int:
        """How many times the active journal was emptied by a merge under the lock (its
        records then live only in stored blocks: a load claimed before cannot catch up)."""
        return self._resets

    def overlay_since(self, index: int, buf: bytearray | memoryview, position: Position) -> None:
        """(Locked) Lay over ``buf`` (block ``index``, as loaded with the records as of
        ``position``, a :meth:`position` taken earlier) the records appended since: in a
        journal ``position`` knows, those after its sequence number; in one it does not
        (created since by a rotation), all. The frozen journal first."""
        for j in (self.merging, self.active):
            if j is not None:
                j.overlay(index, buf, since=position.get(j.jid, 0))


class HeldRecords:
    """One span's journal records for a read outside the volume's lock: per journal (the
    frozen one first, then the active one: in sequence order, a newer record wins) its
    held file and the records touching the span, taken under the lock."""

    __slots__ = ("parts",)

    def __init__(self, parts: "list[tuple[RecordFile, list[Extent]]]") -> None:
        self.parts = parts

    def covers(self, start: int, stop: int) -> bool:
        """Do the records together cover all of [start, stop) (nothing stored to read)?"""
        return covers([e for _f, extents in self.parts for e in extents], start, stop)

    def overlay(self, buf: bytearray | memoryview, start: int = 0) -> None:
        """Lay the records over ``buf`` (the block's bytes [start, start + len(buf)) as
        stored), authenticated here (JournalIntegrityError if one was altered)."""
        for records, extents in self.parts:
            records.overlay(extents, buf, start)

    def release(self) -> None:
        """Let go of the journal files (each closed by its last reader once retired)."""
        parts, self.parts = self.parts, []
        for records, _extents in parts:
            records.release()
